"""After predict: masking a cube with a buffer, clear fractions, composites, plots and GeoTIFF export.

Real pixels throughout: the shipped demo scene and the masks xs2mask-4b predicts on it. The time
series is the scene and its mirror images on the same grid (real pixels, clouds in other places).
"""

from __future__ import annotations

import warnings

import dask.array as dsa
import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.dask_checks import raise_if_dask_computes

import xs2mask
from xs2mask.analysis import apply_mask, clear_fraction, composite, disk_half_widths, usable
from xs2mask.classes import CLASS_COLOURS, NODATA
from xs2mask.exceptions import InputError

DATES = np.array(["2020-04-29", "2020-05-04", "2020-05-09"], "datetime64[ns]")
LABELS = ["2020-04-29", "2020-05-04", "2020-05-09"]


@pytest.fixture(scope="module")
def scene() -> xr.DataArray:
    return xs2mask.data.demo_scene().load()


@pytest.fixture(scope="module")
def masks(scene: xr.DataArray) -> xr.Dataset:
    return xs2mask.predict(scene, model="xs2mask-4b")


@pytest.fixture(scope="module")
def series(scene: xr.DataArray) -> xr.DataArray:
    """``(time, band, y, x)``: the scene, the scene upside down, the scene mirrored left-right."""
    flipped_y = scene[:, ::-1].assign_coords(y=scene.y)
    flipped_x = scene[:, :, ::-1].assign_coords(x=scene.x)
    return xr.concat([scene, flipped_y, flipped_x], "time").assign_coords(time=DATES)


@pytest.fixture(scope="module")
def series_masks(series: xr.DataArray) -> xr.Dataset:
    """Masks of :func:`series` with no-data where a swath would end: a corner of date 1, a strip of all."""
    ds = xs2mask.predict(series, model="xs2mask-4b")
    values = ds.mask.values.copy()
    values[1, :100, :150] = NODATA
    values[:, 500:, :] = NODATA
    ds["mask"] = ds.mask.copy(data=values)
    return ds


def _forbidden(*args, **kwargs):
    raise AssertionError("matplotlib.use was called")


def _grow_reference(flags: np.ndarray, buffer: float, res: tuple[float, float] = (10.0, 10.0)) -> np.ndarray:
    """Dilation by OR-ing the array shifted to every offset of the disk: slow and obviously right."""
    ry, rx = int(buffer // res[0]), int(buffer // res[1])
    pad = [(0, 0)] * (flags.ndim - 2) + [(ry, ry), (rx, rx)]
    padded = np.pad(flags, pad)
    ny, nx = flags.shape[-2:]
    out = np.zeros_like(flags)
    for dy in range(-ry, ry + 1):
        for dx in range(-rx, rx + 1):
            if (dy * res[0]) ** 2 + (dx * res[1]) ** 2 <= buffer**2 + 1e-6:
                out |= padded[..., ry + dy : ry + dy + ny, rx + dx : rx + dx + nx]
    return out


def _usable_reference(mask: np.ndarray, keep: tuple[int, ...], buffer: float) -> np.ndarray:
    kept = np.isin(mask, keep)
    return kept & ~_grow_reference(~kept & (mask != NODATA), buffer)


# --------------------------------------------------------------------------- clear fraction


def test_clear_fraction_counts_valid_pixels_per_date(series_masks):
    mask = series_masks.mask.copy()
    mask[2] = NODATA  # a date without data
    values = mask.values
    frac = mask.s2mask.clear_fraction()
    assert frac.dims == ("time",)
    np.testing.assert_array_equal(frac["time"], DATES)
    for t in range(2):
        valid = values[t] != NODATA
        assert frac[t].item() == (values[t] == 0).sum() / valid.sum()
    assert np.isnan(frac[2].item())
    loose = clear_fraction(mask, clear=("clear", "thin_cloud"))
    assert loose[0].item() == np.isin(values[0], (0, 2)).sum() / (values[0] != NODATA).sum()
    assert 0 < frac[0].item() < loose[0].item() < 1


# --------------------------------------------------------------------------- apply with a buffer


def test_no_buffer_is_plain_masking(series, series_masks):
    out = series.s2mask.apply(series_masks)
    mask = series_masks.mask.values
    expected = np.where((mask == 0)[:, None], series.values.astype(np.float32), np.nan)
    assert out.dtype == np.float32
    assert out.dims == series.dims
    np.testing.assert_array_equal(out.values, expected)
    assert out.isel(y=slice(500, None)).isnull().all()  # no-data is dropped


def test_keep_takes_names_or_codes(series, series_masks):
    by_name = apply_mask(series, series_masks, keep=("clear", "thin_cloud"))
    by_code = apply_mask(series, series_masks.mask, keep=(0, 2))
    xr.testing.assert_identical(by_name, by_code)
    numpy_scalars = usable(series_masks, keep=np.uint8(0), buffer=np.int64(60))
    xr.testing.assert_identical(numpy_scalars, usable(series_masks, keep="clear", buffer=60.0))
    assert int(by_name.notnull().sum()) > int(apply_mask(series, series_masks).notnull().sum())


@pytest.mark.parametrize("buffer", [10, 35, 60, 100])
def test_buffer_drops_exactly_a_disk_of_that_radius(masks, buffer):
    mask = xr.zeros_like(masks.mask)
    mask[256, 300] = 1  # one cloud pixel on the real 10 m grid
    dropped = ~usable(mask, buffer=buffer).values
    dy, dx = np.nonzero(dropped)
    assert ((dy - 256) ** 2 + (dx - 300) ** 2 <= (buffer / 10) ** 2).all()
    yy, xx = np.mgrid[:512, :512]
    assert dropped.sum() == ((yy - 256) ** 2 + (xx - 300) ** 2 <= (buffer / 10) ** 2).sum()


def test_buffer_is_in_metres_on_rectangular_pixels(masks):
    # 20 m rows, 10 m columns: a 40 m buffer reaches 2 rows and 4 columns
    mask = xr.zeros_like(masks.mask).isel(y=slice(0, 40), x=slice(0, 40))
    mask = mask.assign_coords(y=9_000_000 - 20.0 * np.arange(40), x=500_000 + 10.0 * np.arange(40))
    mask[20, 20] = 3
    dropped = ~usable(mask, buffer=40).values
    np.testing.assert_array_equal(dropped, _grow_reference(mask.values == 3, 40, res=(20.0, 10.0)))
    assert dropped[18, 20] and not dropped[17, 20] and dropped[20, 24] and not dropped[20, 25]
    assert disk_half_widths(40, (20.0, 10.0)) == (0, 3, 4, 3, 0)


@pytest.mark.parametrize(("keep", "buffer"), [(("clear",), 60), (("clear", "thin_cloud"), 35)])
def test_buffer_on_real_masks_matches_a_brute_force_dilation(series_masks, keep, buffer):
    mask = series_masks.mask.values
    expected = _usable_reference(mask, xs2mask.analysis.class_codes(keep), buffer)
    ok = usable(series_masks, keep=keep, buffer=buffer)
    np.testing.assert_array_equal(ok.values, expected)
    # the buffer does not grow no-data: a clear pixel beside the no-data strip stays usable
    assert ok.values[:, 499].any()
    assert ok.sum() < usable(series_masks, keep=keep).sum()


def test_a_buffer_in_metres_on_a_mask_without_coordinates_is_refused():
    """xarray gives a dim without coordinates its positions: read as metres, a 50 m buffer grew the one
    cloud pixel of a bare 20 x 20 mask over all of it."""
    bare = xr.DataArray(np.zeros((20, 20), np.uint8), dims=("y", "x"))
    bare[10, 10] = 1
    with pytest.raises(InputError, match="a buffer in metres needs numeric y coordinates"):
        usable(bare, buffer=50.0)
    assert int((~usable(bare).values).sum()) == 1  # without a buffer no pixel size is needed
    placed = bare.assign_coords(y=1000.0 - 10 * np.arange(20), x=10.0 * np.arange(20))
    assert int((~usable(placed, buffer=10.0).values).sum()) == 5


def test_a_buffer_wider_than_the_array_reaches_across_it(series_masks):
    mask = series_masks.mask.isel(y=slice(200, 230), x=slice(0, 45))
    for buffer in (290, 420, 1000):
        expected = _usable_reference(mask.values, (0,), buffer)
        np.testing.assert_array_equal(usable(mask, buffer=buffer).values, expected)
        lazy = usable(mask.chunk(y=10, x=(20, 25)), buffer=buffer)
        np.testing.assert_array_equal(lazy.values, expected)


def _partition(data: st.DataObject, n: int, smallest: int) -> tuple[int, ...]:
    sizes: list[int] = []
    while sum(sizes) < n:
        sizes.append(min(data.draw(st.integers(smallest, n)), n - sum(sizes)))
    return tuple(sizes)


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_masking_with_a_buffer_is_the_same_for_any_chunking(series, series_masks, data):
    window = {"y": slice(40, 200), "x": slice(100, 300)}  # holds the no-data corner of date 1
    cube, mask = series.isel(window), series_masks.mask.isel(window)
    buffer = data.draw(st.sampled_from([0, 10, 30, 55, 100, 250, 2500]))
    keep = data.draw(st.sampled_from([("clear",), ("clear", "thin_cloud"), ("thick_cloud",)]))
    expected = apply_mask(cube, mask, keep, buffer)

    def chunks() -> dict[str, tuple[int, ...]]:
        return {
            "time": _partition(data, 3, 1),
            "y": _partition(data, 160, 12),
            "x": _partition(data, 200, 12),
        }

    lazy = apply_mask(cube.chunk(chunks()), mask.chunk(chunks()), keep, buffer)
    assert isinstance(lazy.data, dsa.Array)
    np.testing.assert_array_equal(lazy.values, expected.values)


# --------------------------------------------------------------------------- alignment


def test_masks_are_matched_to_the_cube_dates(series, series_masks):
    expected = apply_mask(series, series_masks, buffer=30)
    shuffled = series_masks.isel(time=[2, 0, 1])
    xr.testing.assert_identical(apply_mask(series, shuffled, buffer=30), expected)
    subset = apply_mask(series.isel(time=[2, 0]), series_masks, buffer=30)
    xr.testing.assert_identical(subset, expected.isel(time=[2, 0]))
    # one mask for every date
    one = apply_mask(series, series_masks.mask[0])
    np.testing.assert_array_equal(one.isnull().values[1], one.isnull().values[0])
    # coordinates off by floating-point rounding are the same grid
    nudged = series_masks.assign_coords(x=series_masks.x + 1e-7)
    xr.testing.assert_identical(apply_mask(series, nudged, buffer=30), expected)


def test_misaligned_masks_say_how_to_align_them(series, series_masks):
    with pytest.raises(InputError, match=r"1 of the cube's dates have no mask .*cube.sel\(time=masks.time\)"):
        apply_mask(series, series_masks.isel(time=[0, 1]))
    with pytest.raises(InputError, match=r"differs from the cube's.*reproject_match"):
        apply_mask(series.isel(x=slice(0, 300)), series_masks)
    with pytest.raises(InputError, match="differs from the cube's"):
        apply_mask(series, series_masks.assign_coords(x=series_masks.x + 10))
    with pytest.raises(InputError, match="has no time dim: select one date"):
        apply_mask(series[0].drop_vars("time"), series_masks)


def test_bad_arguments_name_the_fix(series, series_masks, masks, scene):
    with pytest.raises(InputError, match=r"unknown class 'cloud'.*'thick_cloud'"):
        apply_mask(series, series_masks, keep="cloud")
    with pytest.raises(InputError, match="never kept"):
        apply_mask(series, series_masks, keep=NODATA)
    for bad in (-10, float("nan"), float("inf"), "60 m", True):
        with pytest.raises(InputError, match="buffer must be a distance in metres"):
            apply_mask(series, series_masks, buffer=bad)
    with pytest.raises(InputError, match="col_wrap"):
        series_masks.s2mask.plot(col_wrap=0)
    with pytest.raises(InputError, match="not the cube"):
        scene.s2mask.clear_fraction()
    with pytest.raises(InputError, match="no 'mask' variable"):
        clear_fraction(masks.rename(mask="cloud"))
    with pytest.raises(InputError, match="the cube has no time dim"):
        composite(scene, masks)
    with pytest.raises(InputError, match="'median' or 'best'"):
        composite(series, series_masks, method="mean")
    degrees = masks.rio.write_crs("EPSG:4326")
    with pytest.raises(InputError, match=r"in degrees.*projected"):
        usable(degrees, buffer=60)


# --------------------------------------------------------------------------- composites


def test_median_composite_is_the_nanmedian_of_usable_pixels(series, series_masks):
    result = series.s2mask.composite(series_masks, buffer=30)
    ok = _usable_reference(series_masks.mask.values, (0,), 30)
    stack = np.where(ok[:, None], series.values.astype(np.float32), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nanmedian(stack, axis=0)
    assert result.dims == ("band", "y", "x")
    assert result.dtype == np.float32
    np.testing.assert_allclose(result.values, expected, rtol=1e-6)
    assert result.isel(y=slice(500, None)).isnull().all()  # no date has data there
    assert result.isel(y=slice(0, 500)).notnull().mean() > 0.5


def test_best_composite_takes_the_latest_pixel_of_the_best_class(series, series_masks):
    result = series.s2mask.composite(series_masks, method="best")
    mask, values = series_masks.mask.values, series.values.astype(np.float32)
    # a date replaces the pick so far when its class is as good or better: ties go to the latest
    order = {0: 0, 2: 1, 3: 2, 1: 3, NODATA: 99}
    best = np.full(mask.shape[1:], 99)
    expected = np.full(values.shape[1:], np.nan, np.float32)
    for t in range(mask.shape[0]):
        rank = np.vectorize(order.get)(mask[t])
        better = (rank <= best) & (rank < 99)
        expected[:, better] = values[t][:, better]
        best = np.where(better, rank, best)
    np.testing.assert_array_equal(result.values, expected)
    has_clear = (mask == 0).any(axis=0)
    assert has_clear.mean() > 0.5
    # wherever a date is clear, the pick is clear
    picked_clear = np.zeros_like(has_clear)
    for t in range(mask.shape[0]):
        picked_clear |= (mask[t] == 0) & (values[t, 0] == result.values[0])
    assert picked_clear[has_clear].all()
    assert result.isel(y=slice(500, None)).isnull().all()


def test_best_composite_prefers_pixels_outside_the_buffer(series, series_masks):
    plain = composite(series, series_masks, method="best")
    buffered = composite(series, series_masks, method="best", buffer=100)
    mask = series_masks.mask.values
    ok = _usable_reference(mask, (0,), 100)
    # where one date is clear and far from clouds, that date (the latest such) is taken
    latest_ok = mask.shape[0] - 1 - np.argmax(ok[::-1], axis=0)
    y, x = np.nonzero(ok.any(axis=0))
    np.testing.assert_array_equal(buffered.values[:, y, x], series.values[latest_ok[y, x], :, y, x].T)
    assert not np.array_equal(plain.values, buffered.values, equal_nan=True)


def test_composites_of_a_dataset_cube(series, series_masks):
    bands = series.to_dataset("band")
    for method in ("median", "best"):
        result = composite(bands, series_masks, method=method)
        expected = composite(series, series_masks, method=method)
        assert set(result.data_vars) == {"B02", "B03", "B04", "B08"}
        np.testing.assert_array_equal(result["B08"].values, expected.sel(band="B08").values)


# --------------------------------------------------------------------------- laziness


def test_nothing_is_computed_until_asked(series, series_masks):
    cube = series.chunk(time=1, y=128, x=200)
    lazy_masks = series_masks.chunk(time=1, y=200, x=100)
    with raise_if_dask_computes():
        results = {
            "apply": cube.s2mask.apply(lazy_masks, keep=("clear",), buffer=60),
            "usable": lazy_masks.s2mask.usable(buffer=60),
            "clear_fraction": lazy_masks.s2mask.clear_fraction(),
            "median": cube.s2mask.composite(lazy_masks, buffer=30),
            "best": cube.s2mask.composite(lazy_masks, method="best", buffer=30),
            "for_raster": lazy_masks.s2mask.for_raster(),
        }
    for name, result in results.items():
        assert isinstance(result.data, dsa.Array), name
    eager = {
        "apply": series.s2mask.apply(series_masks, keep=("clear",), buffer=60),
        "usable": series_masks.s2mask.usable(buffer=60),
        "clear_fraction": series_masks.s2mask.clear_fraction(),
        "median": series.s2mask.composite(series_masks, buffer=30),
        "best": series.s2mask.composite(series_masks, method="best", buffer=30),
        "for_raster": series_masks.s2mask.for_raster(),
    }
    for name, result in results.items():
        np.testing.assert_array_equal(result.values, eager[name].values, err_msg=name)


# --------------------------------------------------------------------------- plots


def test_plot_is_categorical_with_a_legend_and_a_panel_per_date(series_masks, masks, monkeypatch):
    import matplotlib
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    monkeypatch.setattr(matplotlib, "use", _forbidden)
    drawn = series_masks.s2mask.plot(col_wrap=2)
    try:
        assert [ax.get_title() for ax in drawn.axes] == LABELS
        assert len(drawn.figure.axes) == 3  # the fourth cell of the 2 x 2 grid is removed
        labels = [t.get_text() for t in drawn.legend.get_texts()]
        assert labels == ["clear", "thick cloud", "thin cloud", "cloud shadow", "no data"]
        assert drawn.legend in drawn.figure.legends
        shown = drawn.axes[1].images[0].get_array()
        for code, colour in CLASS_COLOURS.items():
            assert (shown[series_masks.mask.values[1] == code] == colour).all()
        x0, x1, y0, y1 = drawn.axes[0].images[0].get_extent()  # map coordinates, pixel edges
        assert (x0, x1, y0, y1) == (482215.0, 487335.0, 9715975.0, 9721095.0)
    finally:
        plt.close(drawn.figure)
    single = masks.mask.s2mask.plot()
    try:
        assert len(single.axes) == 1
        assert single.axes[0].get_title() == ""
        assert [t.get_text() for t in single.legend.get_texts()][-1] == "cloud shadow"  # no no-data
    finally:
        plt.close(single.figure)
    assert matplotlib.get_backend() == backend


def test_quicklook_leaves_the_backend_and_pyplot_alone(scene, masks, tmp_path, monkeypatch):
    import matplotlib
    import matplotlib.pyplot as plt

    previous = matplotlib.get_backend()
    plt.switch_backend("svg")
    try:
        monkeypatch.setattr(matplotlib, "use", _forbidden)
        figures = plt.get_fignums()
        rgb = scene.sel(band=["B04", "B03", "B02"]).values / 10_000
        out = xs2mask.export.quicklook(rgb, masks.mask.values, tmp_path / "q.png", title="demo")
        assert matplotlib.get_backend() == "svg"
        assert plt.get_fignums() == figures
    finally:
        plt.switch_backend(previous)
    header = out.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")) == (900, 486)


# --------------------------------------------------------------------------- GeoTIFF


def test_the_former_io_module_still_resolves_with_a_warning():
    from xs2mask import export

    with pytest.warns(
        DeprecationWarning, match="xs2mask.io is renamed xs2mask.export: use xs2mask.export.to_geotiff"
    ):
        assert xs2mask.io.to_geotiff is export.to_geotiff
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = xs2mask.io.no_such_name


def test_for_raster_writes_nodata_crs_and_dates(series_masks, tmp_path):
    import rasterio

    path = tmp_path / "masks.tif"
    series_masks.s2mask.for_raster().rio.to_raster(path)
    with rasterio.open(path) as src:
        assert src.count == 3
        assert src.dtypes == ("uint8",) * 3
        assert src.nodata == NODATA
        assert src.crs.to_epsg() == 32736
        assert src.descriptions == tuple(LABELS)
        assert src.transform.c == 482215.0
        np.testing.assert_array_equal(src.read(), series_masks.mask.values)


def test_to_geotiff_writes_one_file_per_date_with_colours(series_masks, masks, tmp_path):
    import rasterio

    paths = series_masks.s2mask.to_geotiff(tmp_path / "mask_{date}.tif")
    assert [p.name for p in paths] == [f"mask_{d}.tif" for d in LABELS]
    for t, p in enumerate(paths):
        with rasterio.open(p) as src:
            assert src.nodata == NODATA
            assert src.colormap(1)[1] == CLASS_COLOURS[1]
            np.testing.assert_array_equal(src.read(1), series_masks.mask.values[t])
    (one,) = masks.s2mask.to_geotiff(tmp_path / "one.tif")
    with rasterio.open(one) as src:
        np.testing.assert_array_equal(src.read(1), masks.mask.values)
    with pytest.raises(InputError, match=r"put \{date\} in the path"):
        series_masks.s2mask.to_geotiff(tmp_path / "mask.tif")
    with pytest.raises(InputError, match=r"no date to put in"):
        masks.s2mask.to_geotiff(tmp_path / "mask_{date}.tif")
    (dated,) = series_masks.isel(time=1).s2mask.to_geotiff(tmp_path / "one_{date}.tif")
    assert dated.name == "one_2020-05-04.tif"


# --------------------------------------------------------------------------- the whole road


def test_stac_cube_and_stored_masks_work_together(stac_pc, tmp_path):
    """STAC API -> lazy stackstac cube -> predict -> Zarr -> open_masks -> mask, count, composite."""
    from xs2mask import stac

    items = stac.search(
        stac_pc.url, collections="sentinel-2-l2a", bbox=stac_pc.bbox, datetime="2020-06-01/2020-06-30"
    )
    cube = stac.load(items, bounds_latlon=stac_pc.bbox, model="xs2mask-4b", chunks=256)
    xs2mask.to_zarr(xs2mask.predict(cube, model="xs2mask-4b"), str(tmp_path / "masks.zarr"))
    stored = xs2mask.open_masks(str(tmp_path / "masks.zarr"))
    with raise_if_dask_computes():
        clear = cube.s2mask.apply(stored, buffer=60)
        best = cube.s2mask.composite(stored, method="best")
        fraction = stored.s2mask.clear_fraction()
    mask = stored.mask.values
    assert mask.shape[0] == 3
    np.testing.assert_array_equal(fraction.values, [(m == 0).sum() / (m != NODATA).sum() for m in mask])
    values = cube.values
    np.testing.assert_array_equal(
        clear.values, np.where(_usable_reference(mask, (0,), 60)[:, None], values, np.nan)
    )
    best = best.values
    assert np.isnan(best[:, (mask == NODATA).all(axis=0)]).all()  # the grid's border has no data
    clear_somewhere = (mask == 0).any(axis=0)
    assert clear_somewhere.mean() > 0.5
    assert np.isfinite(best[:, clear_somewhere]).all()


def test_a_big_scene_is_drawn_thinned_over_its_whole_extent():
    """A 10980 px tile's panel would be 480 MB of colour: panels keep at most max_pixels a side, the
    classes nearest (every n-th pixel), the extent the scene's."""
    import matplotlib.pyplot as plt

    from xs2mask.plotting import plot_masks

    rng = np.random.default_rng(0)
    h, w = 3001, 2000
    values = rng.integers(0, 4, (h, w), dtype=np.uint8)
    big = xr.DataArray(
        values,
        dims=("y", "x"),
        coords={"y": 9_700_005.0 - 10.0 * np.arange(h), "x": 500_005.0 + 10.0 * np.arange(w)},
        name="mask",
    )
    drawn = plot_masks(big)
    try:
        shown = drawn.axes[0].images[0].get_array()
        assert shown.shape[:2] == (1000, 667)  # every 3rd pixel: at most 1024 a side
        assert (shown[5, 7] == CLASS_COLOURS[int(values[1 + 3 * 5, 1 + 3 * 7])]).all()
        x0, x1, y0, y1 = drawn.axes[0].images[0].get_extent()
        assert (x0, y1) == (500_000.0, 9_700_010.0)  # the scene's top-left pixel edges
        assert abs(x1 - (500_000.0 + 10 * w)) <= 30 and abs(y0 - (9_700_010.0 - 10 * h)) <= 30
    finally:
        plt.close(drawn.figure)
    full = plot_masks(big.isel(y=slice(0, 50)), max_pixels=None)
    try:
        assert full.axes[0].images[0].get_array().shape[:2] == (50, 2000)
    finally:
        plt.close(full.figure)
    with pytest.raises(InputError, match="max_pixels must be a positive integer or None"):
        plot_masks(big, max_pixels=0)
