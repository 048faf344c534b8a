"""Cubes from the usual loaders are masked as they come, without hand fixes (issue 17, item 2).

Every cube here holds the demo scene's pixels (the package's GeoTIFF, 512 x 512 DN of 2020-04-29),
read by a real loader: odc-stac and stackstac from the COGs and real item JSON of
``tests/support/catalogue.py`` (its ``baseline_0400`` item holds DN + 1000, its ``swath_edge`` item
the DN, cut by a swath edge), rioxarray from the GeoTIFF, ``xr.open_zarr`` from a real Zarr store.
Each mask must equal the mask of the same pixels given as a plain DN array (``reference``).

=================  ==========================================================  =========================
loader             needed before                                               now
=================  ==========================================================  =========================
odc-stac float32   failed in ``compute``, deep in Dask ("looks like DN")       ``InputError`` at the call
odc-stac uint16    masked                                                      masked (``offset=``)
stackstac          ~40 coords in the mask, 11 zarr warnings; one offset for    metadata dropped; one
                   every date (a cube spanning baseline 04.00 was wrong)       offset per date
rioxarray GeoTIFF  refused (band 1..N): ``assign_coords(band=long_name)``      band names from long_name
``xr.open_zarr``   masked                                                      masked; ``offset="auto"``
no CRS             masked silently, a mask without CRS                         ``InputWarning``
=================  ==========================================================  =========================
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from support.catalogue import build_catalogue
from support.dask_checks import raise_if_dask_computes

import xs2mask
from xs2mask.exceptions import InputError, InputWarning, OptionError
from xs2mask.store import prepare

BANDS = ["B02", "B03", "B04", "B08"]


@pytest.fixture(scope="module")
def demo() -> xr.DataArray:
    return xs2mask.data.demo_scene()


@pytest.fixture(scope="module")
def reference(demo: xr.DataArray) -> np.ndarray:
    """The mask of the demo scene's DN, given as a plain in-memory array."""
    return xs2mask.predict(demo).mask.values


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory):
    return build_catalogue("pc", tmp_path_factory.mktemp("pc"))


@pytest.fixture(scope="module")
def items(catalogue) -> dict[str, object]:
    """pystac Items of the generated Planetary Computer catalogue, by role."""
    import pystac

    by_id = {item["id"]: item for item in catalogue.items}
    return {s.role: pystac.Item.from_dict(by_id[s.item_id]) for s in catalogue.scenes}


@pytest.fixture(scope="module")
def bounds(catalogue) -> tuple[float, float, float, float]:
    """The scene grid's bounds (UTM 36S), for stackstac to read it pixel for pixel."""
    _, (step, _, west, _, _, north) = catalogue.grid
    side = catalogue.size * step
    return west, north - side, west + side, north


def _without_offset(cube: xr.DataArray) -> xr.DataArray:
    """DN + 1000 where measured: the baseline-04.00 encoding of the same pixels."""
    return xr.where(cube != 0, cube + 1000, 0).astype(cube.dtype)


def test_odc_stac_float_dn_is_refused_at_the_call(items) -> None:
    odc_stac = pytest.importorskip("odc.stac")
    ds = odc_stac.load([items["baseline_0400"]], bands=BANDS, chunks={}, crs="EPSG:32736", resolution=10)
    assert ds["B02"].dtype == np.float32  # odc-stac's default: DN as float
    with pytest.raises(InputError, match=r"band B02 is float but looks like DN.*offset=-1000"):
        xs2mask.predict(ds)  # lazy input: only the eager check can raise here


def test_odc_stac_dataset_of_dn_is_masked(items, reference: np.ndarray) -> None:
    odc_stac = pytest.importorskip("odc.stac")
    ds = odc_stac.load(
        [items["baseline_0400"]], bands=BANDS, chunks={}, crs="EPSG:32736", resolution=10, dtype="uint16"
    )
    out = xs2mask.predict(ds, offset=-1000)
    assert out.mask.chunks is not None  # still lazy
    np.testing.assert_array_equal(out.mask.isel(time=0).values, reference)
    assert out.rio.crs.to_epsg() == 32736


def test_stackstac_cube_spanning_baseline_0400(items, bounds, reference: np.ndarray, tmp_path: Path) -> None:
    import stackstac

    stack = stackstac.stack(
        [items["swath_edge"], items["baseline_0400"]],
        assets=BANDS,
        epsg=32736,
        resolution=10,
        bounds=bounds,
        dtype="uint16",
        fill_value=np.uint16(0),
        rescale=False,
    )
    assert len(stack.coords) > 40
    baseline = stack["s2:processing_baseline"]
    out = xs2mask.predict(stack, offset=xr.where(baseline >= "04.00", -1000, 0))

    assert set(out.coords) <= {"time", "y", "x", "spatial_ref"} | {
        name for name, c in stack.coords.items() if c.dims == ("time",) and c.dtype.kind in "biuf"
    }
    assert not [name for name, c in out.coords.items() if c.dtype.kind in "OUS"]
    mask = out.mask.values
    np.testing.assert_array_equal(mask[1], reference)  # DN + 1000 with -1000: the reference pixels
    swath = stack.isel(time=0, band=0).values == 0
    assert swath.any() and (mask[0][swath] == 255).all()

    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        prepare(out).to_zarr(tmp_path / "masks.zarr", mode="w")
    assert not [w for w in rec if type(w.message).__name__ == "UnstableSpecificationWarning"]
    back = xr.open_zarr(tmp_path / "masks.zarr")
    np.testing.assert_array_equal(back.mask.values, mask)


def test_prepare_drops_a_loaders_text_coordinates(items, tmp_path: Path) -> None:
    """A mask that carries stackstac's metadata (assigned after predict) still goes to Zarr cleanly."""
    import stackstac

    stack = stackstac.stack([items["swath_edge"], items["baseline_0400"]], assets=BANDS, epsg=32736)
    metadata = {n: c for n, c in stack.coords.items() if set(c.dims) <= {"time"} and n != "time"}
    mask = xr.DataArray(np.zeros((2, 4, 4), np.uint8), dims=("time", "y", "x"), name="mask")
    ds = mask.to_dataset().assign_coords(time=stack.time.values, **metadata)
    assert [n for n, c in ds.coords.items() if c.dtype.kind in "US"]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        prepare(ds).to_zarr(tmp_path / "m.zarr", mode="w")
    assert not [w for w in rec if type(w.message).__name__ == "UnstableSpecificationWarning"]
    back = xr.open_zarr(tmp_path / "m.zarr")
    assert "s2:mean_solar_zenith" in back.coords  # numbers per date stay
    assert not [n for n, c in back.coords.items() if c.dtype.kind in "OUS"]


@pytest.mark.parametrize("chunks", [None, 256])
def test_rioxarray_multiband_geotiff(chunks, reference: np.ndarray) -> None:
    import rioxarray

    cube = rioxarray.open_rasterio(xs2mask.data.demo_path(), chunks=chunks)
    assert cube["band"].values.tolist() == [1, 2, 3, 4] and tuple(cube.attrs["long_name"]) == tuple(BANDS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)  # it has a CRS
        out = xs2mask.predict(cube, offset=0)
    np.testing.assert_array_equal(out.mask.values, reference)
    assert out.rio.crs == cube.rio.crs


def test_open_zarr_reflectance_cube_with_auto_offset(demo, reference: np.ndarray, tmp_path: Path) -> None:
    """A float cube as ``xs2mask.stac.load`` writes it: ``offset="auto"`` adds nothing (it is applied)."""
    refl = (demo.astype(np.float32) / np.float32(10_000)).where(demo != 0)
    cube = refl.expand_dims(time=[np.datetime64("2020-04-29", "ns")])
    cube = cube.assign_coords(radiometric_offset=("time", np.float32([-0.1])))
    cube.to_dataset("band").to_zarr(tmp_path / "cube.zarr", mode="w")  # one variable per band
    opened = xr.open_zarr(tmp_path / "cube.zarr")
    out = xs2mask.predict(opened, offset="auto")
    np.testing.assert_array_equal(out.mask.isel(time=0).values, reference)
    np.testing.assert_array_equal(out.radiometric_offset.values, [np.float32(-0.1)])


def test_dates_with_different_offsets_mask_right(demo, reference: np.ndarray) -> None:
    times = np.array(["2021-12-01", "2022-02-01"], "datetime64[ns]")
    cube = xr.concat([demo, _without_offset(demo)], dim=xr.Variable("time", times))
    per_date = xr.DataArray([-1000.0, 0.0], dims="time", coords={"time": times[::-1]})  # any date order
    out = xs2mask.predict(cube, offset=per_date)
    for t in range(2):
        np.testing.assert_array_equal(out.mask.values[t], reference)

    recorded = cube.assign_coords(radiometric_offset=("time", np.float32([0.0, -0.1])))
    auto = xs2mask.predict(recorded.chunk(band=-1, y=256, x=256), offset="auto")
    np.testing.assert_array_equal(auto.mask.values, out.mask.values)


@pytest.mark.parametrize(
    ("coords", "offset", "error", "match"),
    [
        ({}, "auto", InputError, r"offset='auto' reads the `radiometric_offset` coordinate"),
        ({"radiometric_offset": ("time", [0.0, np.nan])}, "auto", InputError, r"NaN on some dates"),
        (
            {},
            xr.DataArray([0.0], dims="time", coords={"time": [np.datetime64("2021-12-01", "ns")]}),
            InputError,
            r"no value for the dates",
        ),
        ({}, xr.DataArray([0.0, 1.0, 2.0], dims="time"), InputError, r"3 values for 2 date"),
        ({}, xr.DataArray([[0.0]], dims=("time", "band")), OptionError, r"single dim `time`"),
        ({}, xr.DataArray([0.0, -5000.0], dims="time"), OptionError, r"offset must be a DN offset"),
        ({}, "other", OptionError, r"offset must be"),
    ],
)
def test_offset_that_does_not_fit_is_refused_before_any_model(coords, offset, error, match) -> None:
    times = np.array(["2021-12-01", "2022-02-01"], "datetime64[ns]")
    cube = xr.DataArray(
        np.ones((2, 4, 8, 8), np.uint16),
        dims=("time", "band", "y", "x"),
        coords={"time": times, "band": BANDS, **coords},
    )
    with pytest.raises(error, match=match):
        xs2mask.predict(cube, offset=offset)


def test_float_cube_with_per_date_offsets_is_refused() -> None:
    cube = xr.DataArray(np.full((2, 4, 8, 8), 0.1, np.float32), dims=("time", "band", "y", "x"))
    cube = cube.assign_coords(band=BANDS)
    with pytest.raises(InputError, match="offset= applies to integer DN"):
        xs2mask.predict(cube, offset=xr.DataArray([0.0, -1000.0], dims="time"))


def test_cube_without_crs_warns_and_is_masked(demo, reference: np.ndarray) -> None:
    bare = demo.drop_vars("spatial_ref")
    with pytest.warns(InputWarning, match=r"no CRS: the mask will have none.*rio\.write_crs"):
        out = xs2mask.predict(bare)
    np.testing.assert_array_equal(out.mask.values, reference)
    assert "spatial_ref" not in out.coords


def test_a_cube_from_stac_load_is_not_read_at_the_call(items) -> None:
    """stac.load's cubes are reflectance by construction: the call reads nothing (the blocks still check)."""
    from xs2mask import stac

    cube = stac.load([items["baseline_0400"]], model="xs2mask-4b")
    with raise_if_dask_computes("predict read the cube at the call"):
        masks = xs2mask.predict(cube, model="xs2mask-4b")
    assert masks.mask.chunks is not None
