"""Adversarial input: every failure is an ``XS2MaskError``, and a bad pixel spoils only itself.

Families (each parametrized case and each hypothesis strategy is one distinct case):

* options: every option checked at the call, before any graph or compute (a poisoned Dask input
  proves nothing is read); numpy scalars accepted; random option values.
* coordinates: duplicated, irregular, non-monotonic, non-numeric or non-square grids are refused by
  name when ``processing_resolution`` needs them, and harmless when it does not.
* CRS: CRS metadata that does not parse is an ``InputError`` naming it.
* scale: decided per band (a Dataset's integer bands are DN, float bands reflectance) and checked
  per band and per date; an all-65535 cube is saturated integer DN, not "float".
* bad pixels: +-inf, 3e38, NaN, DN 65535 ... are no-data (255) for their pixel only, counted by an
  ``InputWarning``; the mask elsewhere is what the clean cube gives.
* random cubes: random dtypes, shapes (down to 1 x 1), special values, chunkings, offsets.

The model is ``xs2mask-4b`` (ONNX, shipped with the package) on crops of the shipped demo scene.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings

import dask
import dask.array as dsa
import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xs2mask
from xs2mask import InputError, XS2MaskError
from xs2mask.classes import NODATA
from xs2mask.exceptions import InputWarning, OptionError
from xs2mask.kernel import REFLECTANCE_RANGE
from xs2mask.tiling import axis_grid

MODEL = "xs2mask-4b"
BANDS4 = ["B02", "B03", "B04", "B08"]
CLASSES = {0, 1, 2, 3, NODATA}
HYPOTHESIS = settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


@functools.cache
def _demo() -> xr.DataArray:
    """128 x 160 px of the shipped real scene: uint16 DN with 10 m x/y coordinates and a CRS."""
    return xs2mask.data.demo_scene().isel(y=slice(200, 328), x=slice(40, 200)).load()


def _refl() -> xr.DataArray:
    """The demo crop as float32 reflectance, computed as the engine scales DN."""
    return _demo().astype(np.float32) / np.float32(10_000)


def _mask(cube, **kwargs) -> np.ndarray:
    return xs2mask.predict(cube, model=kwargs.pop("model", MODEL), **kwargs)["mask"].values


def _boom():
    raise AssertionError("the input was computed: the options must be checked before")


def _poisoned(dtype=np.uint16) -> xr.DataArray:
    """A lazy (band, y, x) cube on a regular 10 m grid whose data raise when computed."""
    data = dsa.from_delayed(dask.delayed(_boom)(), shape=(4, 64, 64), dtype=dtype)
    coords = {"band": BANDS4, "y": 9_000_000 - 10.0 * np.arange(64), "x": 400_000 + 10.0 * np.arange(64)}
    return xr.DataArray(data, dims=("band", "y", "x"), coords=coords)


# =========================================================================== options

BAD_OPTIONS = [
    ("offset", np.nan),
    ("offset", np.inf),
    ("offset", -np.inf),
    ("offset", -1e9),
    ("offset", 1e9),
    ("offset", 2000.5),
    ("offset", -2001),
    ("offset", "0"),
    ("offset", True),
    ("offset", [0]),
    ("offset", 1j),
    ("offset", np.float32(np.nan)),
    ("threads", -3),
    ("threads", -1),
    ("threads", 1.5),
    ("threads", 2.0),
    ("threads", "4"),
    ("threads", True),
    ("threads", None),
    ("threads", 10**6),
    ("threads", np.float32(2)),
    ("batch_size", np.int64(0)),
    ("batch_size", "2"),
    ("batch_size", True),
    ("batch_size", np.float64(2.0)),
    ("batch_size", -(10**20)),
    ("tta", 1.5),
    ("tta", True),
    ("tta", "1"),
    ("tta", None),
    ("tta", np.int64(8)),
    ("tta", np.uint8(255)),
    ("patch_size", 64.0),
    ("patch_size", True),
    ("patch_size", "256"),
    ("patch_size", np.float32(64)),
    ("patch_size", np.int64(48)),
    ("overlap", -1),
    ("overlap", 1.5),
    ("overlap", "8"),
    ("overlap", True),
    ("overlap", np.int64(-8)),
    ("processing_resolution", 0),
    ("processing_resolution", -20),
    ("processing_resolution", np.nan),
    ("processing_resolution", np.inf),
    ("processing_resolution", "20"),
    ("processing_resolution", True),
    ("processing_resolution", [20]),
    ("processing_resolution", np.float64(-10)),
    ("output", None),
    ("output", 1),
    ("output", "MASK"),
    ("probability_dtype", np.float16),
    ("probability_dtype", None),
    ("device", 3),
    ("device", None),
    ("dtype", None),
    ("dtype", np.float32),
    ("model", 3),
    ("model", None),
    ("model", [3]),
    ("model", ()),
    ("model", (MODEL, 5)),
    ("compile", "yes"),
    ("compile", 1),
    ("compile", None),
    ("model_dir", 3),
    ("model_dir", b"/tmp"),
]


@pytest.mark.parametrize(("name", "value"), BAD_OPTIONS, ids=[f"{n}={v!r}" for n, v in BAD_OPTIONS])
def test_bad_option_refused_before_anything_is_read(name, value):
    kwargs = {"model": MODEL, name: value}
    with pytest.raises(OptionError, match=rf"^{name}\b") as err:
        xs2mask.predict(_poisoned(), **kwargs)
    assert isinstance(err.value, XS2MaskError) and isinstance(err.value, ValueError)


NUMPY_OPTIONS = [
    ({"batch_size": np.int64(2)}, {"batch_size": 2}),
    ({"batch_size": np.uint8(3)}, {"batch_size": 3}),
    ({"threads": np.int16(1)}, {"threads": 1}),
    ({"tta": np.int32(1)}, {"tta": 1}),
    ({"patch_size": np.int64(64)}, {"patch_size": 64}),
    ({"patch_size": np.int64(64), "overlap": np.int64(16)}, {"patch_size": 64, "overlap": 16}),
    ({"processing_resolution": np.float32(20)}, {"processing_resolution": 20}),
    ({"processing_resolution": np.int64(20)}, {"processing_resolution": 20.0}),
    ({"offset": np.float64(-1000)}, {"offset": -1000}),
    ({"offset": np.int32(-1000)}, {"offset": -1000.0}),
    ({"compile": np.bool_(False)}, {"compile": False}),
]


@pytest.mark.parametrize(("numpy_kwargs", "plain_kwargs"), NUMPY_OPTIONS, ids=lambda k: repr(k))
def test_numpy_scalars_are_accepted_as_numbers(numpy_kwargs, plain_kwargs):
    cube = _demo().isel(y=slice(0, 64), x=slice(0, 96))
    got = xs2mask.predict(cube, model=MODEL, **numpy_kwargs)
    expected = xs2mask.predict(cube, model=MODEL, **plain_kwargs)
    np.testing.assert_array_equal(got["mask"].values, expected["mask"].values)
    assert got.attrs == expected.attrs
    for value in got.attrs.values():  # plain Python types: the attrs go to Zarr / netCDF as they are
        assert type(value) in (str, int, float), got.attrs


@pytest.mark.parametrize("overlap", [33, np.int64(100)])
def test_overlap_beyond_half_the_models_patch(overlap):
    # the bound depends on the model's patch size (xs2mask-4b: 544, patch_size=64 here)
    with pytest.raises(OptionError, match=r"overlap must be between 0 and patch_size/2 \(32\)"):
        xs2mask.predict(_poisoned(), model=MODEL, patch_size=64, overlap=overlap)


def _number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _whole(value: object, low: int, high: float = math.inf) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and low <= value <= high


def _valid(options: dict) -> bool:
    """The documented ranges, restated independently of the implementation."""
    for name, value in options.items():
        if name == "offset" and not (
            value is None or (_number(value) and math.isfinite(value) and abs(value) <= 2000)
        ):  # None: not given (0)
            return False
        if name == "threads" and not _whole(value, 0, 1024):
            return False
        if name == "batch_size" and not (value is None or _whole(value, 1)):
            return False
        if name == "tta" and not _whole(value, 0, 7):
            return False
        if name == "processing_resolution" and value is not None:
            if not (_number(value) and math.isfinite(value) and value > 0):
                return False
            ratio = float(value) / 10  # the poisoned cube's grid is 10 m
            factor = round(ratio)
            if not (1 <= factor <= 64 and math.isclose(ratio, factor, rel_tol=1e-3)):
                return False
    patch = options.get("patch_size")
    patch = 544 if patch is None else patch
    overlap = options.get("overlap")
    overlap = 32 if overlap is None else overlap
    if not (_whole(patch, 32) and patch % 32 == 0):
        return False
    return _whole(overlap, 0, patch // 2)


ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.integers(-3, 40),
    st.sampled_from([0, 1, 2, 7, 8, 16, 20, 32, 40, 64, 96, 128, 544, -1000, 2000, 2001]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-100, 3000).map(np.int64),
    st.floats(-3000, 3000, width=32).map(np.float32),
    st.text(max_size=4),
    st.lists(st.integers(0, 3), max_size=2),
)
NUMERIC_OPTIONS = ["offset", "threads", "batch_size", "tta", "patch_size", "overlap", "processing_resolution"]


@settings(HYPOTHESIS, max_examples=150)
@given(st.dictionaries(st.sampled_from(NUMERIC_OPTIONS), ANY_VALUE, min_size=1, max_size=3))
def test_random_options_are_accepted_exactly_when_valid(options):
    try:
        ds = xs2mask.predict(_poisoned(), model=MODEL, **options)
    except OptionError:
        assert not _valid(options)
    except InputError as err:  # a processing_resolution the 10 m grid cannot have
        assert "processing_resolution" in str(err)
        assert not _valid(options)
    else:
        assert _valid(options)
        assert ds["mask"].chunks is not None  # lazy: nothing read


# =========================================================================== coordinates


def _with_coords(**coords) -> xr.DataArray:
    cube = _demo().isel(y=slice(0, 64), x=slice(0, 64))
    return cube.assign_coords(**coords)


def _x() -> np.ndarray:
    return _demo()["x"].values[:64].copy()


def _y() -> np.ndarray:
    return _demo()["y"].values[:64].copy()


def _jitter(values: np.ndarray, at: int, by: float) -> np.ndarray:
    values = values.copy()
    values[at] += by
    return values


BROKEN_GRIDS = {
    "x-duplicated": (lambda: {"x": np.repeat(_x()[::2], 2)}, "x coordinate repeats"),
    "y-duplicated": (lambda: {"y": np.repeat(_y()[::2], 2)}, "y coordinate repeats"),
    "x-irregular": (lambda: {"x": _jitter(_x(), 5, 3.0)}, "x coordinate is not a regular grid"),
    "y-irregular": (lambda: {"y": _jitter(_y(), 40, -4.0)}, "y coordinate is not a regular grid"),
    "x-shuffled": (
        lambda: {"x": np.random.default_rng(0).permutation(_x())},
        "x coordinate is not monotonic",
    ),
    "x-zigzag": (lambda: {"x": _x()[np.r_[0:32, 63:31:-1]]}, "x coordinate is not monotonic"),
    "x-nan": (lambda: {"x": _jitter(_x(), 10, np.nan)}, "x coordinate holds NaN"),
    "y-inf": (lambda: {"y": _jitter(_y(), 0, np.inf)}, "y coordinate holds NaN or inf"),
    "x-dates": (
        lambda: {"x": np.datetime64("2020-01-01") + np.arange(64).astype("timedelta64[D]")},
        "x coordinate is datetime64",
    ),
    "x-strings": (lambda: {"x": [f"c{i}" for i in range(64)]}, "x coordinate is <U3"),
    "x-complex": (lambda: {"x": _x() + 0j}, "x coordinate is complex128"),
    "non-square": (lambda: {"y": 9_000_000 - 20.0 * np.arange(64)}, r"10 wide \(x\) and 20 high \(y\)"),
    "x-and-y-constant-step-zero": (lambda: {"x": np.zeros(64), "y": np.zeros(64)}, "x coordinate repeats"),
}


@pytest.mark.parametrize("case", list(BROKEN_GRIDS))
def test_broken_grid_is_refused_by_name_when_the_resolution_matters(case):
    make, message = BROKEN_GRIDS[case]
    cube = _with_coords(**make())
    with pytest.raises(InputError, match=message):
        xs2mask.predict(cube.chunk(), model=MODEL, processing_resolution=20)


@pytest.mark.parametrize("case", list(BROKEN_GRIDS))
def test_broken_grid_is_harmless_without_processing_resolution(case):
    make, _ = BROKEN_GRIDS[case]
    cube = _with_coords(**make())
    expected = _mask(_demo().isel(y=slice(0, 64), x=slice(0, 64)))
    np.testing.assert_array_equal(_mask(cube), expected)  # the pixels are the same, so is the mask


GOOD_GRIDS = {
    "y-descending": lambda: {},
    "y-ascending": lambda: {"y": _y()[::-1].copy()},
    "x-descending": lambda: {"x": _x()[::-1].copy()},
    "integer-metres": lambda: {"x": _x().astype(np.int64), "y": _y().astype(np.int64)},
    "float32-rounding": lambda: {"x": _x().astype(np.float32), "y": _y().astype(np.float32)},
    "single-row": lambda: {},
}


@pytest.mark.parametrize("case", list(GOOD_GRIDS))
def test_regular_grids_run_at_the_processing_resolution(case):
    cube = _with_coords(**GOOD_GRIDS[case]())
    if case == "single-row":
        cube = cube.isel(y=slice(0, 1))  # the resolution comes from x alone
    ds = xs2mask.predict(cube, model=MODEL, processing_resolution=20)
    assert ds.attrs["xs2mask_processing_resolution"] == 20.0
    assert ds["mask"].shape == (cube.sizes["y"], cube.sizes["x"])
    # at 20 m each 2 x 2 block of the input is one model pixel: the mask is not the 10 m one
    assert set(np.unique(ds["mask"].values)) <= CLASSES


def test_processing_resolution_coarser_than_the_whole_input():
    with pytest.raises(InputError, match=r"coarser than the whole input \(64 x 64 pixels of 10 m\)"):
        xs2mask.predict(_poisoned(), model=MODEL, processing_resolution=1000)


# =========================================================================== CRS

GARBAGE_CRS = {
    "wkt-garbage": lambda c: c.assign_coords(
        spatial_ref=c.spatial_ref.assign_attrs(crs_wkt="garbage", spatial_ref="garbage")
    ),
    "attr-garbage": lambda c: c.drop_vars("spatial_ref").assign_attrs(crs="garbage"),
    "attr-proj-garbage": lambda c: c.drop_vars("spatial_ref").assign_attrs(crs="+proj=garbage"),
    "attr-unknown-epsg": lambda c: c.drop_vars("spatial_ref").assign_attrs(crs="EPSG:999999"),
    "attr-number": lambda c: c.drop_vars("spatial_ref").assign_attrs(crs=12345678),
    "wkt-empty": lambda c: c.assign_coords(
        spatial_ref=c.spatial_ref.assign_attrs(crs_wkt="", spatial_ref="")
    ),
}


def _fresh() -> xr.DataArray:
    """A new DataArray each time: rioxarray caches the CRS it parsed on the object."""
    demo = _demo().isel(y=slice(0, 32), x=slice(0, 32))
    return xr.DataArray(demo.values, dims=demo.dims, coords=demo.coords, attrs=dict(demo.attrs)).chunk()


@pytest.mark.parametrize("case", list(GARBAGE_CRS))
def test_garbage_crs_is_an_input_error(case):
    cube = GARBAGE_CRS[case](_fresh())
    with pytest.raises(InputError, match=r"CRS metadata is not a valid CRS: .*\.rio\.write_crs"):
        xs2mask.predict(cube, model=MODEL)


def test_valid_crs_is_kept():
    ds = xs2mask.predict(_fresh().rio.write_crs("EPSG:32736"), model=MODEL)
    assert ds.rio.crs.to_epsg() == 32736


# =========================================================================== scale


@pytest.mark.parametrize("band", BANDS4)
def test_integer_band_in_a_float_dataset_is_dn(band):
    ds = _refl().to_dataset(dim="band")
    ds[band] = _demo().sel(band=band, drop=True)  # still uint16 DN
    np.testing.assert_array_equal(_mask(ds), _mask(_refl()))


@pytest.mark.parametrize("band", BANDS4)
def test_float_band_holding_dn_is_named(band):
    ds = _refl().to_dataset(dim="band")
    ds[band] = _demo().sel(band=band, drop=True).astype(np.float32)
    with pytest.raises(InputError, match=rf"band {band} is float but looks like DN.*divide it by 10000"):
        xs2mask.predict(ds, model=MODEL)


def test_mixed_dataset_with_offset_applies_it_to_the_integer_bands_only():
    ds = _refl().to_dataset(dim="band")
    ds["B08"] = _demo().sel(band="B08", drop=True) + np.uint16(1000)  # baseline 04.00 DN
    np.testing.assert_array_equal(_mask(ds, offset=-1000), _mask(_refl()))


def test_lazy_mixed_dataset_matches_numpy():
    ds = _refl().to_dataset(dim="band")
    ds["B04"] = _demo().sel(band="B04", drop=True)
    np.testing.assert_array_equal(_mask(ds.chunk({"x": 80})), _mask(ds))


@pytest.mark.parametrize("lazy", [False, True], ids=["numpy", "dask"])
def test_one_date_in_dn_is_named_per_band(lazy):
    series = xr.concat([_refl(), _refl().where(_refl().band != "B03", _demo().astype(np.float32))], "time")
    cube = series.chunk({"time": 1}) if lazy else series
    with pytest.raises(InputError, match=r"band B03 is float but looks like DN"):
        xs2mask.predict(cube, model=MODEL).compute()


def test_percent_reflectance_is_refused():
    with pytest.raises(InputError, match="looks like DN"):
        xs2mask.predict(_refl() * 100, model=MODEL)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.uint32, np.int64])
def test_all_65535_is_saturated_integer_not_float(dtype):
    cube = xr.full_like(_demo().isel(y=slice(0, 32), x=slice(0, 32)), 65535, dtype=dtype)
    with pytest.warns(
        InputWarning, match=r"4096 value\(s\) in 1024 pixel\(s\).*DN 65535 is saturated"
    ) as rec:
        mask = _mask(cube)
    assert (mask == NODATA).all()
    assert not any("float" in str(w.message) for w in rec)


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.int64, np.uint32, np.float64])
def test_other_dtypes_give_the_uint16_mask(dtype):
    cube = _demo().astype(dtype) if np.dtype(dtype).kind in "iu" else _refl().astype(dtype)
    np.testing.assert_array_equal(_mask(cube), _mask(_demo()))


def test_float16_reflectance_is_close_to_float32():
    agree = (_mask(_refl().astype(np.float16)) == _mask(_refl())).mean()
    assert agree > 0.99  # float16 rounds reflectance to ~3 digits


# =========================================================================== bad pixels

SPOILERS = {  # one value in one band: (dtype, value)
    "+inf": ("float32", np.inf),
    "-inf": ("float32", -np.inf),
    "3e38": ("float32", 3e38),
    "-3e38": ("float32", -3e38),
    "1e9": ("float32", 1e9),
    "3.6": ("float32", 3.6),
    "-0.6": ("float32", -0.6),
    "NaN": ("float32", np.nan),
    "f64-1e300": ("float64", 1e300),
    "DN-65535": ("uint16", 65535),
    "DN-40000": ("uint16", 40000),
    "DN-0": ("uint16", 0),
    "int16-minus-6000": ("int16", -6000),
}
PLACES = {"corner": (0, 0), "edge": (0, 77), "interior": (64, 80), "last": (127, 159)}


# Measured on 250 random single bad pixels (demo scene and crops, 544- and 64-px patches): no other
# pixel's probability moved by more than 0.019, and the few pixels that changed class (0.5-0.9 per
# bad pixel on average) were near ties of the clean run (top-two margin below 0.015).
MAX_SHIFT = 0.05


def _assert_local(got: xr.Dataset, clean: xr.Dataset, pixels) -> None:
    """255 and NaN probabilities at ``pixels``; elsewhere every probability within MAX_SHIFT."""
    where = tuple(np.array(pixels).T)
    assert (got["mask"].values[where] == NODATA).all()
    assert np.isnan(got["probability"].values[(slice(None), *where)]).all()
    others = np.ones(got["mask"].shape, bool)
    others[where] = False
    p_got = got["probability"].values[:, others].astype(np.float32)
    p_clean = clean["probability"].values[:, others].astype(np.float32)
    shift = np.abs(p_got - p_clean).max(axis=0)
    assert shift.max() <= MAX_SHIFT, f"a probability {np.argmax(shift)} moved by {shift.max():.3f}"
    ranked = np.sort(p_clean, axis=0)
    flipped = got["mask"].values[others] != clean["mask"].values[others]
    assert (ranked[-1] - ranked[-2])[flipped].max(initial=0) <= 2 * MAX_SHIFT  # only near ties flip


def _cube_of(dtype: str) -> xr.DataArray:
    return _demo().astype(dtype) if np.dtype(dtype).kind in "iu" else _refl().astype(dtype)


def _spoil(cube: xr.DataArray, pixels, value, band: int = 3) -> xr.DataArray:
    cube = cube.copy()
    for y, x in pixels:
        cube[band, y, x] = value
    return cube


@functools.cache
def _clean(dtype: str, model: str | tuple[str, ...] = MODEL, **kwargs) -> xr.Dataset:
    models = list(model) if isinstance(model, tuple) else model
    return xs2mask.predict(
        _cube_of(dtype), model=models, output="both", probability_dtype="float16", **kwargs
    )


@pytest.mark.parametrize("place", list(PLACES))
@pytest.mark.parametrize("spoiler", list(SPOILERS))
def test_one_bad_value_is_no_data_for_its_pixel_only(spoiler, place):
    dtype, value = SPOILERS[spoiler]
    y, x = PLACES[place]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        got = xs2mask.predict(
            _spoil(_cube_of(dtype), [(y, x)], value), model=MODEL, output="both", probability_dtype="float16"
        )
    _assert_local(got, _clean(dtype), [(y, x)])
    messages = [str(w.message) for w in rec if issubclass(w.category, InputWarning)]
    if spoiler in ("NaN", "DN-0"):  # no-data markers: quiet
        assert messages == []
    else:
        assert len(messages) == 1 and messages[0].startswith("1 value(s) in 1 pixel(s)")
        assert "(B08: 1)" in messages[0]
    assert not [w for w in rec if issubclass(w.category, RuntimeWarning)]


def test_every_spoiler_gives_the_same_result():
    """The pixel's other bands are there; whatever spoiled it, the model sees its neighbours' mean."""
    pixels = [(10, 10), (11, 10), (60, 100), (127, 0)]
    results = []
    for value in (np.inf, -np.inf, 3e38, np.nan, 7.0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InputWarning)
            ds = xs2mask.predict(_spoil(_refl(), pixels, value), model=MODEL, output="both")
        results.append(ds)
    for ds in results[1:]:
        xr.testing.assert_identical(ds, results[0])


def test_bad_pixel_in_a_dask_cube_warns_at_compute_and_matches_numpy():
    pixels = [(63, 79), (64, 80), (0, 159)]  # on and around the chunk corner
    cube = _spoil(_refl(), pixels, np.inf)
    with pytest.warns(InputWarning):
        expected = _mask(cube, patch_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)  # nothing computed yet: no warning
        lazy = xs2mask.predict(cube.chunk({"y": 64, "x": 80}), model=MODEL, patch_size=64)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        got = lazy["mask"].compute(scheduler="synchronous").values
    counts = [str(w.message).split(" value(s)")[0] for w in rec if issubclass(w.category, InputWarning)]
    assert sum(map(int, counts)) == len(pixels)  # each block counts its own core, halos not twice
    np.testing.assert_array_equal(got, expected)
    assert (expected[tuple(np.array(pixels).T)] == NODATA).all()


def test_bad_pixel_in_one_date_spoils_only_that_date():
    series = xr.concat([_refl(), _spoil(_refl(), [(30, 30)], np.inf)], dim="time")
    with pytest.warns(InputWarning, match=r"^1 value\(s\) in 1 pixel"):
        mask = _mask(series)
    np.testing.assert_array_equal(mask[0], _mask(_refl()))
    assert mask[1, 30, 30] == NODATA and (mask[1] != NODATA).sum() == mask[1].size - 1


def test_bad_pixel_at_20_m_spoils_only_its_input_pixel():
    # the model pixel averages 3 good input pixels and, for the bad one, their neighbours' mean
    with pytest.warns(InputWarning):
        got = xs2mask.predict(
            _spoil(_refl(), [(31, 41)], -np.inf),
            model=MODEL,
            processing_resolution=20,
            output="both",
            probability_dtype="float16",
        )
    _assert_local(got, _clean("float32", processing_resolution=20), [(31, 41)])


def test_bad_pixel_with_an_ensemble():
    models = (MODEL, "ukis-csmask-4b-l2a")
    if not set(models) <= set(xs2mask.models.available()):
        pytest.skip("ukis-csmask is not installed")
    with pytest.warns(InputWarning):
        got = xs2mask.predict(
            _spoil(_refl(), [(50, 50)], 3e38), model=list(models), output="both", probability_dtype="float16"
        )
    _assert_local(got, _clean("float32", model=models), [(50, 50)])


def test_bad_pixel_probability_as_uint8():
    with pytest.warns(InputWarning):
        ds = xs2mask.predict(_spoil(_refl(), [(5, 6)], np.inf), model=MODEL, output="probability")
    assert (ds["probability"].values[:, 5, 6] == 0).all()
    assert abs(int(ds["probability"].values[:, 4, 6].astype(int).sum()) - 255) <= 2  # a valid neighbour


def test_block_of_bad_pixels_is_no_data_and_its_inside_gets_the_no_data_fill():
    cube = _refl().copy()
    # the ring gets its valid neighbours' mean; the inside has none: the no-data fill, as for a hole
    cube[:, 40:50, 60:70] = np.inf
    with pytest.warns(InputWarning, match=r"^400 value\(s\) in 100 pixel"):
        mask = _mask(cube)
    assert (mask[40:50, 60:70] == NODATA).all()
    assert (mask != NODATA).sum() == mask.size - 100


# --------------------------------------------------------------------------- hypothesis: locality

BAD_VALUES = st.sampled_from([np.inf, -np.inf, 3e38, -3e38, np.nan, 1e6, 3.51, -0.51])


def _blend_region(n: int, patch: int, overlap: int, coords: list[int]) -> np.ndarray:
    """Pixels of an axis whose value any patch reading one of ``coords`` (or a mirror image) weighs."""
    grid = axis_grid(n, patch, overlap, fixed=False)
    out = np.zeros(n, bool)
    images = {c2 for c in coords for c2 in (c, -1 - c, 2 * n - 1 - c)}
    for origin in grid.origins(0, n):
        if any(origin <= c < origin + grid.patch for c in images):
            out[max(origin + grid.margin, 0) : max(origin + grid.patch - grid.margin, 0)] = True
    return out


@HYPOTHESIS
@given(
    pixels=st.lists(st.tuples(st.integers(0, 127), st.integers(0, 159)), min_size=1, max_size=6, unique=True),
    values=st.lists(BAD_VALUES, min_size=6, max_size=6),
    bands=st.lists(st.integers(0, 3), min_size=6, max_size=6),
)
def test_bad_pixels_stay_inside_the_patches_that_read_them(pixels, values, bands):
    """Exact guarantee of the blending: outside the patches that read a bad pixel, nothing changes
    (with 64-px patches, overlap 32, margin 8: nothing beyond 55 pixels); inside, no probability
    moves by more than MAX_SHIFT."""
    cube = _refl().copy()
    for (y, x), value, band in zip(pixels, values, bands, strict=False):
        cube[band, y, x] = value
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        got = xs2mask.predict(cube, model=MODEL, patch_size=64, output="both", probability_dtype="float16")
    clean = _clean("float32", patch_size=64)
    _assert_local(got, clean, pixels)
    outside = np.ones(got["mask"].shape, bool)
    outside[
        np.ix_(
            _blend_region(128, 64, 32, [p[0] for p in pixels]),
            _blend_region(160, 64, 32, [p[1] for p in pixels]),
        )
    ] = False
    np.testing.assert_array_equal(
        got["probability"].values[:, outside], clean["probability"].values[:, outside]
    )
    impossible = sum(1 for v in values[: len(pixels)] if not np.isnan(v))
    counted = sum(int(str(w.message).split(" ")[0]) for w in rec if issubclass(w.category, InputWarning))
    assert counted == impossible
    assert not [w for w in rec if issubclass(w.category, RuntimeWarning)]


@HYPOTHESIS
@given(
    pixels=st.lists(st.tuples(st.integers(0, 127), st.integers(0, 159)), min_size=1, max_size=5, unique=True),
    chunk_y=st.integers(16, 128),
    chunk_x=st.integers(16, 160),
    resolution=st.sampled_from([None, 20]),
)
def test_bad_pixels_do_not_depend_on_the_chunking(pixels, chunk_y, chunk_x, resolution):
    cube = _spoil(_refl(), pixels, np.inf, band=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # InputWarning, and the rechunking warning of small chunks
        expected = _mask(cube, patch_size=64, processing_resolution=resolution)
        lazy = cube.chunk({"y": chunk_y, "x": chunk_x})
        got = _mask(lazy, patch_size=64, processing_resolution=resolution)
    np.testing.assert_array_equal(got, expected)


# --------------------------------------------------------------------------- hypothesis: random cubes

DTYPES = ["uint8", "uint16", "int16", "int32", "int64", "uint32", "float16", "float32", "float64"]


def _expected_nodata(values: np.ndarray, offset: float) -> np.ndarray:
    """The documented no-data rule, per pixel of (band, y, x)."""
    lo, hi = REFLECTANCE_RANGE
    if values.dtype.kind in "iu":
        refl = (values.astype(np.float32) + np.float32(offset)) / np.float32(10_000)
        bad = (values == 0) | ~((refl >= lo) & (refl <= hi))
        return bad.any(axis=0)
    refl = values.astype(np.float32)
    with np.errstate(invalid="ignore"):
        bad = ~((refl >= lo) & (refl <= hi))
    return bad.any(axis=0) | (refl == 0).all(axis=0)


@st.composite
def random_cubes(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    h, w = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    y0, x0 = draw(st.integers(0, 128 - h)), draw(st.integers(0, 160 - w))
    base = _demo().values[:, y0 : y0 + h, x0 : x0 + w]
    if dtype.kind == "f":
        values = (base / 10_000).astype(dtype)
        specials = [np.nan, np.inf, -np.inf, 0.0, 3e38 if dtype.itemsize >= 4 else 6e4, 5.0, -1.0, 1.5]
    else:
        info = np.iinfo(dtype)
        values = np.clip(base, info.min, info.max).astype(dtype)
        specials = [
            v for v in (0, 1, 65535, 40000, -6000, 32767, info.max, info.min) if info.min <= v <= info.max
        ]
    n_bad = draw(st.integers(0, 6))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    for _ in range(n_bad):
        values[rng.integers(4), rng.integers(h), rng.integers(w)] = rng.choice(specials)
    if draw(st.booleans()):  # a whole special pixel or a whole special band
        special = draw(st.sampled_from(specials))
        if draw(st.booleans()):
            values[:, rng.integers(h), rng.integers(w)] = special
        else:
            values[rng.integers(4)] = special
    offset = float(draw(st.sampled_from([0, -1000, 1000, -2000]))) if dtype.kind in "iu" else 0.0
    return values, offset


@settings(HYPOTHESIS, max_examples=60)
@given(
    case=random_cubes(),
    chunks=st.one_of(st.none(), st.tuples(st.integers(1, 48), st.integers(1, 48))),
    dated=st.booleans(),
    resolution=st.sampled_from([None, 20]),
)
def test_random_cubes_give_an_xs2mask_error_or_a_mask_with_255_where_documented(
    case, chunks, dated, resolution
):
    values, offset = case
    _, h, w = values.shape
    coords = {"band": BANDS4, "y": 10.0 * np.arange(h)[::-1], "x": 10.0 * np.arange(w)}
    cube = xr.DataArray(values, dims=("band", "y", "x"), coords=coords)
    if dated:
        cube = cube.expand_dims(time=[np.datetime64("2020-04-29")])
    if chunks is not None:
        cube = cube.chunk({"y": chunks[0], "x": chunks[1]})
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        try:
            mask = _mask(cube, offset=offset, processing_resolution=resolution)
        except XS2MaskError as err:
            # the only errors these cubes deserve: a float band holding DN, a 20 m run on a 1-px cube,
            # 8-bit DN (which cannot hold Sentinel-2's)
            allowed = ("looks like DN", "coarser than the whole input", "needs numeric x coordinates")
            if values.dtype.itemsize == 1:
                allowed = ("holds 0-255 at most",)
            assert any(a in str(err) for a in allowed), err
            return
    assert values.dtype.itemsize > 1, "8-bit input must be refused"
    assert not [w for w in rec if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in rec]
    mask = mask[0] if dated else mask
    assert mask.shape == (h, w) and set(np.unique(mask)) <= CLASSES
    np.testing.assert_array_equal(mask == NODATA, _expected_nodata(values, offset))


@HYPOTHESIS
@given(offset=st.floats(-2000, 2000), dn_shift=st.integers(0, 1000))
def test_integer_offsets_equal_the_documented_scaling(offset, dn_shift):
    dn = _demo().isel(y=slice(0, 48), x=slice(0, 64)) + np.uint16(dn_shift)
    refl = ((dn.astype(np.float32) + np.float32(offset)) / np.float32(10_000)).where(dn != 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)
        np.testing.assert_array_equal(_mask(dn, offset=offset), _mask(refl))


@HYPOTHESIS
@given(integer=st.lists(st.sampled_from(["", "uint16", "int32", "int64", "uint32"]), min_size=4, max_size=4))
def test_datasets_of_any_dtype_mix_give_the_reflectance_mask(integer):
    ds = _refl().isel(y=slice(0, 64), x=slice(0, 64)).to_dataset(dim="band")
    dn = _demo().isel(y=slice(0, 64), x=slice(0, 64))
    for band, dtype in zip(BANDS4, integer, strict=True):
        if dtype:
            ds[band] = dn.sel(band=band, drop=True).astype(dtype)
    np.testing.assert_array_equal(_mask(ds), _mask(_refl().isel(y=slice(0, 64), x=slice(0, 64))))
