"""Bad input gives a clear, typed error (or, for no-data and odd chunking, a sane result)."""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
import warnings

import dask.array as dsa
import numpy as np
import pytest
import xarray as xr

import xs2mask
from xs2mask import BandError, DeviceError, InputError, ModelNotFoundError, WeightsError, XS2MaskError
from xs2mask.models import Weights, registry

UKIS4 = "ukis-csmask-4b-l2a"
BANDS4 = ["B02", "B03", "B04", "B08"]
# Nearly every path resolves the default 4-band model's weights (xs2mask[ukis]).
pytestmark = pytest.mark.skipif(UKIS4 not in xs2mask.models.available(), reason=f"{UKIS4} is not installed")


@pytest.fixture(scope="module")
def demo() -> xr.DataArray:
    """The shipped real scene (uint16 DN, 10 m, with x/y coordinates and CRS), cropped for speed."""
    return xs2mask.data.demo_scene().isel(y=slice(0, 128), x=slice(0, 128)).load()


def _cube(data, bands=BANDS4) -> xr.DataArray:
    dims = ("band", "y", "x") if np.ndim(data) == 3 else ("time", "band", "y", "x")
    return xr.DataArray(data, dims=dims, coords={"band": bands})


# --------------------------------------------------------------------------- bands


@pytest.mark.parametrize(
    ("model", "lacks"),
    [
        ("ukis-csmask-6b-l2a", r"\['B11', 'B12'\]"),
        ("s2cloudless", r"\['B01', 'B05', 'B8A', 'B09', 'B10', 'B11', 'B12'\]"),
    ],
)
def test_missing_bands_names_model_and_bands(demo, model, lacks):
    with pytest.raises(BandError, match=rf"model '{model}' needs bands .*the input lacks {lacks}") as err:
        xs2mask.predict(demo, model=model)
    assert "B02" in str(err.value)  # says what the input has
    assert isinstance(err.value, XS2MaskError) and isinstance(err.value, ValueError)


def test_missing_bands_of_an_ensemble_member(demo):
    with pytest.raises(BandError, match="ukis-csmask-6b-l1c"):
        xs2mask.predict(demo, model=[UKIS4, "ukis-csmask-6b-l1c"])


def test_default_model_with_too_few_bands(demo):
    with pytest.raises(
        ModelNotFoundError, match=r"no installed model can run on bands \['B02', 'B03', 'B04'\]"
    ):
        xs2mask.predict(demo.sel(band=["B02", "B03", "B04"]))


@pytest.mark.parametrize(
    ("bands", "bad"),
    [
        (["B02", "B03", "B04", "NIR_X"], "NIR_X"),
        (["B02", "B03", "B04", "B13"], "B13"),
    ],
)
def test_unknown_band_name(demo, bands, bad):  # rioxarray's numbers 1..n: the test below
    with pytest.raises(BandError, match=rf"unknown band name .*{bad}.*use Sentinel-2 names \(B01"):
        xs2mask.predict(demo.assign_coords(band=bands))


def test_band_names_stored_as_bytes_are_names(demo):
    """netCDF and Zarr v2 files often hold names as fixed-width bytes (numpy "S3"): str() made them
    "b'B02'", an unknown band."""
    as_bytes = demo.assign_coords(band=np.array([b.encode() for b in demo["band"].values]))
    assert as_bytes["band"].dtype.kind == "S"
    np.testing.assert_array_equal(xs2mask.predict(as_bytes).mask.values, xs2mask.predict(demo).mask.values)
    with pytest.raises(BandError, match="unknown band name 'NIR_X'"):
        xs2mask.predict(demo.assign_coords(band=np.array([b"B02", b"B03", b"B04", b"NIR_X"])))


def test_unknown_band_variable_in_dataset(demo):
    ds = demo.to_dataset(dim="band").rename({"B08": "near_infrared"})
    with pytest.raises(BandError, match="unknown band name 'near_infrared'"):
        xs2mask.predict(ds)


def test_dataset_without_band_variables(demo):
    ds = xr.Dataset({"scl": demo.isel(band=0, drop=True), "label": ("z", [1, 2])})
    with pytest.raises(
        BandError, match=r"no Sentinel-2 band among the Dataset's variables \['scl', 'label'\]"
    ):
        xs2mask.predict(ds)


@pytest.mark.parametrize(
    ("bands", "dupe"),
    [(["B02", "blue", "B04", "B08"], "B02"), (["B02", "B03", "B04", "B08", "nir"], "B08")],
)
def test_duplicate_bands(demo, bands, dupe):
    data = demo.values[[0, 1, 2, 3, 3][: len(bands)]]
    with pytest.raises(BandError, match=rf"\['{dupe}'\] appear more than once"):
        xs2mask.predict(_cube(data, bands))


def test_band_dim_without_coordinate(demo):
    with pytest.raises(BandError, match="the band dim has no coordinate"):
        xs2mask.predict(demo.drop_vars("band"))


# --------------------------------------------------------------------------- array shape and type


@pytest.mark.parametrize(
    ("make", "advice"),
    [
        (
            lambda d: d.rename(band="bands", y="lat", x="lon"),
            "Rename them: .rename(bands='band', lat='y', lon='x')",
        ),
        (
            lambda d: d.rename(y="latitude", x="longitude"),
            "Rename them: .rename(latitude='y', longitude='x') (y and x in metres",
        ),
        (lambda d: d.expand_dims(t=[1]), "Rename them: .rename(t='time')."),
        (lambda d: d.expand_dims(scene=[1]), "Rename the dims to these names"),
        (lambda d: d.isel(band=0), "Rename the dims to these names"),
    ],
    ids=["bands-lat-lon", "latitude-longitude", "t", "extra-dim", "2d"],
)
def test_wrong_dims_name_the_renames_other_libraries_call_for(demo, make, advice):
    with pytest.raises(
        InputError, match=r"input dims are .*expected \(band, y, x\) or \(time, band, y, x\)"
    ) as err:
        xs2mask.predict(make(demo))
    assert advice in str(err.value)


def _in_degrees(cube: xr.DataArray) -> xr.DataArray:
    """The cube on a lon/lat grid of about 10 m pixels (EPSG:4326), as odc-stac loads with crs='EPSG:4326'
    once its latitude / longitude dims are renamed."""
    import rioxarray  # noqa: F401

    y = -2.5 - np.arange(cube.sizes["y"]) * 9e-5
    x = 32.9 + np.arange(cube.sizes["x"]) * 9e-5
    return cube.assign_coords(y=y, x=x).rio.write_crs("EPSG:4326")


def test_processing_resolution_on_a_grid_in_degrees_asks_for_metres(demo):
    with pytest.raises(
        InputError, match=r"processing_resolution=20 m needs a grid in metres.*EPSG:4326.*in degrees"
    ):
        xs2mask.predict(_in_degrees(demo), processing_resolution=20)


def test_a_model_with_its_own_resolution_runs_on_a_grid_in_degrees_as_it_is(demo, monkeypatch):
    """Degrees are not metres: a model that runs at 20 m by default runs on the pixels as they are,
    instead of reading 9e-5 degrees as 9e-5 m and refusing the cube as too small for 20 m."""
    own = dataclasses.replace(registry.get(UKIS4), name="test-ukis-at-20m", processing_resolution=20)
    monkeypatch.setitem(registry._REGISTRY, own.name, own)  # undone after the test
    got = xs2mask.predict(_in_degrees(demo), model=own.name)["mask"]
    np.testing.assert_array_equal(got.values, xs2mask.predict(demo, model=UKIS4)["mask"].values)
    # on the projected grid the same model runs at its own 20 m: other masks
    at_20m = xs2mask.predict(demo, model=own.name)["mask"].values
    assert (at_20m != got.values).any()


def test_numpy_array_is_refused_with_a_hint(demo):
    with pytest.raises(
        InputError, match=r"expected an xarray DataArray or Dataset, got ndarray.*xr\.DataArray"
    ):
        xs2mask.predict(demo.values)


@pytest.mark.parametrize("dtype", [str, bool, complex, object])
def test_non_numeric_dtype(demo, dtype):
    with pytest.raises(InputError, match=r"input dtype .* is not numeric"):
        xs2mask.predict(demo.astype(dtype), model=UKIS4)


@pytest.mark.parametrize(
    "make",
    [
        lambda d: d.isel(y=slice(0, 0)),
        lambda d: d.isel(x=slice(0, 0)),
        lambda d: d.isel(band=slice(0, 0)),
        lambda d: d.expand_dims(time=[0]).isel(time=slice(0, 0)),
    ],
    ids=["y", "x", "band", "time"],
)
def test_empty_array(demo, make):
    with pytest.raises(InputError, match="input is empty"):
        xs2mask.predict(make(demo))


# --------------------------------------------------------------------------- models and weights


def test_unknown_model_lists_available_ones(demo):
    with pytest.raises(ModelNotFoundError, match="unknown model 'no-such-model'; available here: ") as err:
        xs2mask.predict(demo, model="no-such-model")
    assert all(name in str(err.value) for name in xs2mask.models.registered())
    assert isinstance(err.value, KeyError)
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        xs2mask.models.get("no-such-model")


def test_empty_model_list(demo):
    with pytest.raises(ValueError, match="model list is empty"):
        xs2mask.predict(demo, model=[])


@pytest.fixture
def registered_spec(tmp_path):
    """Register a copy of the 4-band spec under a unique name; remove it afterwards."""
    names = []

    def register(weights_bytes: bytes | None, sha256: str):
        name = f"test-bad-weights-{uuid.uuid4().hex[:8]}"
        path = tmp_path / f"{name}.onnx"
        if weights_bytes is not None:
            path.write_bytes(weights_bytes)
        spec = dataclasses.replace(xs2mask.models.get(UKIS4), name=name, weights=Weights(str(path), sha256))
        xs2mask.models.register(spec, overwrite=True)
        names.append(name)
        return spec

    yield register
    for name in names:
        registry._REGISTRY.pop(name, None)  # no public unregister
    assert not set(names) & set(xs2mask.models.registered())


def test_weights_failing_checksum(demo, registered_spec):
    spec = registered_spec(b"not an onnx model", "0" * 64)
    assert spec.name in xs2mask.models.available()  # the file is there ...
    with pytest.raises(WeightsError, match=r"fails its checksum: sha256 [0-9a-f]{64}, expected 0{64}"):
        xs2mask.predict(demo, model=spec.name)  # ... but is refused when loaded
    lazy = xs2mask.predict(demo.chunk(), model=spec.name)  # nothing loaded yet
    with pytest.raises(WeightsError, match="fails its checksum"):
        lazy.compute()
    assert spec.name not in xs2mask.models.load_counts()


def test_weights_with_right_checksum_but_unreadable(demo, registered_spec):
    junk = b"not an onnx model either"
    spec = registered_spec(junk, hashlib.sha256(junk).hexdigest())
    with pytest.raises(WeightsError, match=rf"{spec.name}: cannot load ONNX weights"):
        xs2mask.predict(demo, model=spec.name)


def test_missing_weights_file_fails_at_once(demo, registered_spec):
    spec = registered_spec(None, "0" * 64)
    assert spec.name not in xs2mask.models.available()
    with pytest.raises(WeightsError, match="does not exist"):
        xs2mask.predict(demo.chunk(), model=spec.name)  # before any compute


# --------------------------------------------------------------------------- device and precision


def _onnx_has_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.skipif(_onnx_has_cuda(), reason="this machine has CUDA for onnxruntime")
@pytest.mark.parametrize("device", ["cuda", "cuda:1", "mps"])
def test_absent_device(demo, device):
    with pytest.raises(
        DeviceError, match=rf"device '{device}' is not available on this machine.*device='cpu'"
    ):
        xs2mask.predict(demo, model=UKIS4, device=device)


@pytest.mark.parametrize("device", ["tpu", "gpu", "CPU0"])
def test_unknown_device(demo, device):
    with pytest.raises(DeviceError, match=rf"unknown device '{device}'"):
        xs2mask.predict(demo, device=device)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_reduced_precision_on_cpu(demo, dtype):
    with pytest.raises(DeviceError, match=rf"dtype='{dtype}' on the CPU .* use dtype='float32'"):
        xs2mask.predict(demo, device="cpu", dtype=dtype)


def test_unknown_dtype(demo):
    with pytest.raises(DeviceError, match="unknown dtype 'float64'"):
        xs2mask.predict(demo, dtype="float64")


# --------------------------------------------------------------------------- radiometry


def test_float_dn_is_refused(demo):
    dn_float = demo.astype(np.float32)  # DN ~300-3000 passed as if reflectance
    with pytest.raises(InputError, match=r"band B02 is float but looks like DN.*divide it by 10000"):
        xs2mask.predict(dn_float, model=UKIS4)


def test_float_dn_is_refused_at_the_call_when_lazy(demo):
    with pytest.raises(InputError, match="10000"):
        xs2mask.predict(demo.astype(np.float32).chunk(), model=UKIS4)  # one chunk read, no model


def test_float_dn_in_chunks_too_big_to_read_now_is_refused_at_compute(demo, monkeypatch):
    monkeypatch.setattr(xs2mask.inference, "EAGER_CHECK_BYTES", 0)
    lazy = xs2mask.predict(demo.astype(np.float32).chunk(), model=UKIS4)  # lazy: no data read yet
    with pytest.raises(InputError, match="10000"):
        lazy.compute()


def test_offset_with_float_input(demo):
    with pytest.raises(InputError, match=r"offset= applies to integer DN; this input is float"):
        xs2mask.predict(demo.astype(np.float32) / 10_000, offset=-1000)


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("tta", [8, -1, 100])
def test_tta_out_of_range(demo, tta):
    with pytest.raises(ValueError, match=rf"tta must be an integer from 0 to 7, got {tta}"):
        xs2mask.predict(demo, tta=tta)


@pytest.mark.parametrize("patch_size", [100, 16, -32, 500, 0])
def test_patch_size_not_multiple_of_32(demo, patch_size):
    free = dataclasses.replace(xs2mask.models.get(UKIS4), name="ukis-free-size", fixed_patch_size=False)
    with pytest.raises(ValueError, match=rf"patch_size must be a positive multiple of 32, got {patch_size}"):
        xs2mask.predict(demo, model=free, patch_size=patch_size)


def test_overlap_out_of_range(demo):
    free = dataclasses.replace(xs2mask.models.get(UKIS4), name="ukis-free-size", fixed_patch_size=False)
    with pytest.raises(ValueError, match=r"overlap must be between 0 and patch_size/2 \(64\), got 96"):
        xs2mask.predict(demo, model=free, patch_size=128, overlap=96)


@pytest.mark.parametrize("patch_size", [128, 512, np.int64(64)])
def test_fixed_patch_model_refuses_other_patch_size(demo, patch_size):
    with pytest.raises(ValueError, match=rf"model '{UKIS4}' only accepts patch_size=256"):
        xs2mask.predict(demo, model=UKIS4, patch_size=patch_size)


def test_fixed_patch_model_accepts_its_own_size(demo):
    ds = xs2mask.predict(demo.chunk(), model=UKIS4, patch_size=256)  # lazy: nothing computed
    assert ds.attrs["xs2mask_patch_size"] == "256"


@pytest.mark.parametrize("resolution", [25, 15, 5, 0.5])
def test_processing_resolution_not_a_multiple(demo, resolution):
    with pytest.raises(
        InputError, match=rf"processing_resolution={resolution} m must be a whole multiple .*\(10 m\)"
    ):
        xs2mask.predict(demo, processing_resolution=resolution)


def test_processing_resolution_without_x_coordinate(demo):
    bare = _cube(demo.values)
    assert "x" not in bare.coords
    with pytest.raises(InputError, match="x coordinates"):
        xs2mask.predict(bare.chunk(), processing_resolution=20)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"output": "masks"}, "output must be 'mask', 'probability' or 'both'"),
        ({"probability_dtype": "float32"}, "probability_dtype must be 'uint8' or 'float16'"),
    ],
)
def test_bad_output_options(demo, kwargs, message):
    with pytest.raises(ValueError, match=message):
        xs2mask.predict(demo, **kwargs)


@pytest.mark.parametrize("batch_size", [-1, 0, 1.5])
def test_bad_batch_size(demo, batch_size):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        xs2mask.predict(demo, batch_size=batch_size)


def test_float_tta(demo):
    with pytest.raises(ValueError, match="tta must be an integer"):
        xs2mask.predict(demo, tta=1.0)


# --------------------------------------------------------------------------- no-data


@pytest.mark.parametrize("lazy", [False, True], ids=["numpy", "dask"])
@pytest.mark.parametrize(
    "data",
    [np.zeros((4, 64, 96), np.uint16), np.full((4, 64, 96), np.nan, np.float32)],
    ids=["zero-dn", "nan-float"],
)
def test_all_no_data(data, lazy):
    cube = _cube(dsa.from_array(data, chunks=(4, 32, 48)) if lazy else data)
    ds = xs2mask.predict(cube, model=UKIS4, output="both", probability_dtype="float16").compute()
    assert ds["mask"].dtype == np.uint8
    assert (ds["mask"].values == xs2mask.classes.NODATA).all()
    assert np.isnan(ds["probability"].values).all()
    u8 = xs2mask.predict(cube, model=UKIS4, output="probability").compute()
    assert u8["probability"].dtype == np.uint8 and (u8["probability"].values == 0).all()


def test_no_data_date_in_a_time_series(demo):
    small = demo.isel(y=slice(0, 64), x=slice(0, 96))
    series = xr.concat([xr.zeros_like(small), small], dim="time")
    expected = xs2mask.predict(small, model=UKIS4)["mask"].values
    for cube in (series, series.chunk({"time": 1})):
        got = xs2mask.predict(cube, model=UKIS4)["mask"].values
        assert got.shape == (2, 64, 96)
        assert (got[0] == xs2mask.classes.NODATA).all()
        np.testing.assert_array_equal(got[1], expected)


def test_partial_no_data_is_255_only_there(demo):
    cube = demo.copy()
    cube[:, :, :20] = 0  # a no-data stripe, as at a swath edge
    cube[:, 50:60, 50:60] = 0
    mask = xs2mask.predict(cube, model=UKIS4)["mask"].values
    nodata = (cube.values == 0).all(axis=0)
    np.testing.assert_array_equal(mask == xs2mask.classes.NODATA, nodata)
    assert set(np.unique(mask[~nodata])) <= {0, 1, 2, 3}


# --------------------------------------------------------------------------- chunking


def test_chunks_smaller_than_halo_warn_and_match():
    """Chunks of 64 px, far below the 250 px halo of 256 px patches: rechunked, same mask."""
    cube = xs2mask.data.demo_scene().isel(x=slice(200, 328)).load()  # 512 x 128
    expected = xs2mask.predict(cube, model=UKIS4)["mask"].values
    with pytest.warns(UserWarning, match=r"smaller than the halo of 250 pixels.*rechunked"):
        lazy = xs2mask.predict(cube.chunk({"y": 64, "x": 64}), model=UKIS4)
    assert len(lazy["mask"].data.chunks[0]) > 1  # still several blocks: the halo is exercised
    np.testing.assert_array_equal(lazy["mask"].values, expected)


def test_array_smaller_than_halo_in_small_chunks(demo):
    expected = xs2mask.predict(demo, model=UKIS4)["mask"].values
    got = xs2mask.predict(demo.chunk({"y": 32, "x": 48}), model=UKIS4)["mask"].values
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("as_dataset", [False, True])
def test_dn_of_the_offset_era_without_an_offset_are_said_once(demo, as_dataset):
    """Integer DN dated from 25 January 2022 on (processing baseline 04.00 added 1000 to every DN) and no
    offset given: DN / 10000 as before, with a warning that names the fix; older dates, an offset given,
    or reflectance: nothing to say."""
    from xs2mask.exceptions import RadiometryWarning

    def dated(cube, *days):
        out = cube.expand_dims(time=np.array(days, "datetime64[ns]"))
        return out.to_dataset("band") if as_dataset else out

    both = dated(demo, "2021-12-30", "2022-03-01")
    with pytest.warns(
        RadiometryWarning, match=r"1 of 2 date\(s\) from 2022-01-25 on .*pass offset=-1000"
    ) as said:
        masks = xs2mask.predict(both, model=UKIS4)
    assert len([w for w in said if issubclass(w.category, RadiometryWarning)]) == 1
    assert said[0].filename == __file__  # points at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error", RadiometryWarning)
        np.testing.assert_array_equal(
            masks.mask.values, xs2mask.predict(both, model=UKIS4, offset=0).mask.values
        )
        xs2mask.predict(dated(demo, "2021-12-30"), model=UKIS4)
        xs2mask.predict(dated(demo, "2022-03-01"), model=UKIS4, offset=-1000)
        xs2mask.predict(dated(demo.astype("float32") / 10_000, "2022-03-01"), model=UKIS4)


def test_percent_reflectance_is_told_to_divide_by_100(demo):
    percent = demo.astype("float32") / 100  # DN / 100: reflectance in percent
    with pytest.raises(InputError, match=r"looks like DN.*If it is reflectance in percent, divide it by 100"):
        xs2mask.predict(percent, model=UKIS4)
    with pytest.raises(InputError, match=r"looks like DN") as err:
        xs2mask.predict(demo.astype("float32"), model=UKIS4)  # DN as float: no percent advice
    assert "percent" not in str(err.value)


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_8_bit_input_is_refused(demo, dtype):
    eight_bit = (demo // 40).clip(0, 127).astype(dtype)  # a stretched quick-look
    with pytest.raises(InputError, match=rf"input dtype {dtype} holds 0-255 at most.*8-bit imagery"):
        xs2mask.predict(eight_bit, model=UKIS4)


@pytest.mark.parametrize("chunked", [False, True])
def test_reflectance_scaled_twice_is_said(demo, chunked):
    """Reflectance divided by 10000 once too often masks as clear everywhere: a warning says why."""
    from xs2mask import InputWarning

    reflectance = demo.astype("float32") / 10_000
    twice = reflectance / 100
    with pytest.warns(InputWarning, match=r"darker than any Sentinel-2 scene.*scaled twice") as said:
        xs2mask.predict(twice.chunk(64) if chunked else twice, model=UKIS4)
    assert [w.filename for w in said if "darker" in str(w.message)] == [__file__]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "the input is darker", InputWarning)
        xs2mask.predict(reflectance, model=UKIS4)


def test_a_layer_that_is_no_band_is_named_with_the_way_to_leave_it_out(demo):
    with_mask = xr.concat([demo, demo.isel(band=[0]).assign_coords(band=["mask"])], dim="band")
    with pytest.raises(
        BandError, match=r"unknown band name 'mask'.*leave it out: cube.drop_sel\(band=\['mask'\]\)"
    ):
        xs2mask.predict(with_mask, model=UKIS4)
    ds = demo.to_dataset("band").assign(cloud_mask=lambda d: d["B02"] * 0)
    with pytest.raises(BandError, match=r"unknown band name 'cloud_mask'.*ds.drop_vars\(\['cloud_mask'\]\)"):
        xs2mask.predict(ds, model=UKIS4)
    # as the error says
    np.testing.assert_array_equal(
        xs2mask.predict(ds.drop_vars(["cloud_mask"]), model=UKIS4).mask.values,
        xs2mask.predict(demo, model=UKIS4).mask.values,
    )


def test_numbered_bands_of_a_file_without_band_names_are_told_to_be_named(demo, tmp_path):
    """rioxarray numbers the bands 1..n of a file without descriptions: the error asks for names, and
    the names given as it shows give the masks of the named cube."""
    import rioxarray

    path = tmp_path / "unnamed.tif"
    demo.rio.to_raster(path)  # descriptions: the array's name, not band names
    numbered = rioxarray.open_rasterio(path)
    assert numbered["band"].values.tolist() == [1, 2, 3, 4]
    with pytest.raises(
        BandError, match=r"the bands are numbered \[1, 2, 3, 4\], not named.*assign_coords\(band=\['B02'"
    ):
        xs2mask.predict(numbered, model=UKIS4)
    named = numbered.assign_coords(band=BANDS4)
    np.testing.assert_array_equal(
        xs2mask.predict(named, model=UKIS4).mask.values, xs2mask.predict(demo, model=UKIS4).mask.values
    )
