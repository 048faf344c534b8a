"""The chunk-wise engine: laziness, chunking invariance, no-data, options, backends, schedulers."""

from __future__ import annotations

import dask
import dask.array as dsa
import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from support.dask_checks import raise_if_dask_computes

import xs2mask
from xs2mask.models import ModelSpec, Weights, sha256_file

BANDS4 = ["B02", "B03", "B04", "B08"]


@pytest.fixture(scope="module")
def demo() -> xr.DataArray:
    """The shipped real scene, cropped to keep the tests fast (uint16 DN)."""
    return xs2mask.data.demo_scene().isel(y=slice(0, 320), x=slice(96, 416)).load()


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, ModelSpec]:
    """A small smp U-Net with fixed random weights, as safetensors (torch) and ONNX.

    Random weights suffice here: these tests check the engine's arithmetic
    (tiling, blending, chunk invariance, backend equivalence), not accuracy;
    accuracy is the real models' business (test_parity).
    """
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    arch = (
        ("arch", "unet"),
        ("encoder_name", "resnet18"),
        ("encoder_depth", 3),
        ("decoder_channels", (32, 16, 8)),
    )
    net = smp.create_model(**dict(arch), encoder_weights=None, in_channels=4, classes=4).eval()
    folder = tmp_path_factory.mktemp("weights")
    st_path = folder / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, st_path)
    onnx_path = folder / "tiny.onnx"
    torch.onnx.export(
        net,
        torch.zeros(1, 4, 64, 64),
        onnx_path,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}},
        dynamo=False,
    )
    common = dict(
        bands=tuple(BANDS4),
        classes=(0, 1, 2, 3),
        mean=(0.1, 0.1, 0.1, 0.2),
        std=(0.1, 0.1, 0.1, 0.1),
        patch_size=64,
        overlap=16,
    )
    specs = {
        "torch": ModelSpec(
            name="test-tiny-torch",
            backend="torch",
            weights=Weights(str(st_path), sha256_file(st_path)),
            architecture=arch,
            **common,
        ),
        "onnx": ModelSpec(
            name="test-tiny-onnx",
            backend="onnx",
            weights=Weights(str(onnx_path), sha256_file(onnx_path)),
            **common,
        ),
    }
    for spec in specs.values():
        xs2mask.models.register(spec, overwrite=True)
    return specs


@pytest.fixture(scope="module")
def demo512() -> xr.DataArray:
    """The whole shipped scene: 512 x 512, enough for chunks larger than ukis-csmask's halo."""
    return xs2mask.data.demo_scene().load()


# --------------------------------------------------------------------------- laziness


def test_building_the_graph_computes_nothing_and_loads_no_model():
    xs2mask.models.clear_cache()
    cube = xs2mask.data.demo_scene(chunks=256)  # lazily read from the GeoTIFF
    with raise_if_dask_computes():
        ds = cube.s2mask.predict(model="ukis-csmask-4b-l2a", output="both")
        coarse = cube.s2mask.predict(model="ukis-csmask-4b-l2a", processing_resolution=20, tta=3)
    assert isinstance(coarse.mask.data, dsa.Array)
    assert isinstance(ds.mask.data, dsa.Array)
    assert isinstance(ds.probability.data, dsa.Array)
    assert ds.mask.chunks == ((256, 256), (256, 256))
    assert xs2mask.models.load_counts() == {}
    assert ds.mask.dtype == np.uint8


def test_numpy_in_numpy_out(demo):
    ds = xs2mask.predict(demo.isel(y=slice(0, 64), x=slice(0, 64)), model="ukis-csmask-4b-l2a")
    assert isinstance(ds.mask.data, np.ndarray)
    assert ds.mask.shape == (64, 64)


# --------------------------------------------------------------------------- chunking


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_chunking_gives_the_same_mask(demo, tiny_models, data):
    cube = demo.isel(y=slice(0, 240), x=slice(0, 200))
    reference = xs2mask.predict(cube, model="test-tiny-torch", output="both")

    def chunks(n: int) -> tuple[int, ...]:
        sizes = []
        while sum(sizes) < n:
            sizes.append(min(data.draw(st.integers(70, 150)), n - sum(sizes)))
        return tuple(sizes)

    lazy = cube.chunk({"y": chunks(240), "x": chunks(200)})
    result = xs2mask.predict(lazy, model="test-tiny-torch", output="both").compute()
    np.testing.assert_array_equal(result.mask.values, reference.mask.values)
    diff = np.abs(result.probability.values.astype(int) - reference.probability.values.astype(int))
    assert diff.max() <= 1  # float rounding only


def test_real_model_is_seamless_across_chunks(demo512):
    reference = xs2mask.predict(demo512, model="ukis-csmask-4b-l2a", output="both")
    lazy = xs2mask.predict(demo512.chunk(y=256, x=(260, 252)), model="ukis-csmask-4b-l2a", output="both")
    assert lazy.mask.chunks == ((256, 256), (260, 252))
    np.testing.assert_array_equal(lazy.mask.values, reference.mask.values)
    assert np.abs(lazy.probability.values.astype(int) - reference.probability.values.astype(int)).max() <= 1


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_window_of_any_size_anywhere_gives_the_masks_of_the_whole_scene(demo512, data):
    """``predict_window`` (a job's slab read with its halo) gives the pixels of ``predict`` on the
    whole scene, also for a slab a few pixels wide at the scene's edge, where the patches see the
    image mirrored: the mirror must reflect the scene's own edge, not the slab's few columns again."""
    from xs2mask.inference import predict_window, prepare, window_rows

    cube = demo512.expand_dims(time=[np.datetime64("2020-04-29")])
    reference = xs2mask.predict(cube, model="ukis-csmask-4b-l2a").mask.values
    plan = prepare(cube.chunk(), model="ukis-csmask-4b-l2a").plan

    def span(n: int) -> tuple[int, int]:
        width = data.draw(st.integers(1, 48))
        start = data.draw(st.one_of(st.integers(0, n - width), st.sampled_from([0, n - width])))
        return start, start + width

    core_y, core_x = span(512), span(512)
    rows, cols = window_rows(plan, *core_y, 512), window_rows(plan, *core_x, 512)
    window = dsa.from_array(cube.values[:, :, rows[0] : rows[1], cols[0] : cols[1]])
    got = predict_window(window, plan, (rows[0], cols[0]), core_y, core_x, 256).compute()[:, 0]
    want = reference[:, core_y[0] : core_y[1], core_x[0] : core_x[1]]
    np.testing.assert_array_equal(got, want, err_msg=f"core {core_y} x {core_x}")


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flip_y=st.booleans(), flip_x=st.booleans(), chunk=st.sampled_from([None, 96, 160]), lazy=st.booleans())
def test_a_cube_sorted_against_map_order_gets_the_masks_of_the_north_up_scene(
    demo, flip_y, flip_x, chunk, lazy
):
    """``.sortby("y")`` turns a scene upside down; the model must still see it north up (upside down
    it called 8 % of the pixels otherwise), and the masks come back in the cube's own order."""
    cube = demo.isel(y=slice(0, 200), x=slice(0, 240))
    reference = xs2mask.predict(cube, model="xs2mask-4b", output="both")
    turned = cube.isel(y=slice(None, None, -1 if flip_y else 1), x=slice(None, None, -1 if flip_x else 1))
    if lazy:
        turned = turned.chunk({"y": chunk or -1, "x": chunk or -1})
    result = xs2mask.predict(turned, model="xs2mask-4b", output="both").compute()
    np.testing.assert_array_equal(result.y.values, turned.y.values)
    np.testing.assert_array_equal(result.x.values, turned.x.values)
    back = result.sortby(["y", "x"])
    expected = reference.sortby(["y", "x"])
    np.testing.assert_array_equal(back.mask.values, expected.mask.values)
    assert np.abs(back.probability.values.astype(int) - expected.probability.values.astype(int)).max() <= 1
    assert result.rio.crs == reference.rio.crs


@pytest.mark.parametrize("lazy", [False, True])
def test_the_cube_is_read_in_place_never_written_and_any_band_order_gives_one_mask(demo, lazy):
    """The model's bands, side by side in the cube, are a view (selecting them by a list copied a 3 GB
    cube for 7.6 s of a 32 s predict); the kernel fills bad pixels in its own copy, never the caller's."""
    refl = demo.isel(y=slice(0, 160), x=slice(0, 160)).astype("float32") / 10_000
    extra = refl.isel(band=[0]).assign_coords(band=["B01"])
    refl = xr.concat([extra, refl, extra.assign_coords(band=["B11"])], dim="band")
    refl[1, 40, 50] = np.inf  # spoiled: the kernel fills it with its neighbours' mean
    refl[:, 90, 20] = np.nan
    before = refl.values.copy()
    cubes = {"in order": refl, "reversed": refl.isel(band=slice(None, None, -1))}
    if lazy:
        cubes = {name: cube.chunk({"y": 96, "x": 96}) for name, cube in cubes.items()}
    with pytest.warns(xs2mask.InputWarning, match="cannot come from Sentinel-2"):
        masks = {name: xs2mask.predict(cube, model="xs2mask-4b").mask.values for name, cube in cubes.items()}
    np.testing.assert_array_equal(refl.values, before)
    np.testing.assert_array_equal(masks["in order"], masks["reversed"])
    assert masks["in order"][40, 50] == masks["in order"][90, 20] == 255
    assert (masks["in order"] != 255).sum() == 160 * 160 - 2


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(range(6)), lazy=st.booleans())
def test_any_band_order_among_other_bands_gives_the_same_masks(demo, order, lazy):
    """Whether the model's bands are a view (side by side, in order) or a copy, the masks are the same."""
    refl = demo.isel(y=slice(0, 96), x=slice(0, 96)).astype("float32") / 10_000
    reference = xs2mask.predict(refl, model="xs2mask-4b").mask.values
    extra = refl.isel(band=[0, 3]).assign_coords(band=["B01", "B11"])
    cube = xr.concat([refl, extra], dim="band").isel(band=list(order))
    if lazy:
        cube = cube.chunk({"y": 48, "x": 48})
    np.testing.assert_array_equal(xs2mask.predict(cube, model="xs2mask-4b").mask.values, reference)


def test_an_array_without_coordinates_is_an_image_its_first_row_north(demo):
    """A bare array's y positions run 0, 1, 2...: ascending, which for map coordinates means south up.
    Read so, every coordinate-less cube went through the model upside down (12 % of this crop's pixels
    changed class)."""
    cube = demo.isel(y=slice(0, 200), x=slice(0, 240))
    bare = xr.DataArray(cube.values, dims=cube.dims, coords={"band": cube["band"].values})
    expected = xs2mask.predict(cube, model="xs2mask-4b").mask.values
    np.testing.assert_array_equal(xs2mask.predict(bare, model="xs2mask-4b").mask.values, expected)
    lazy = xs2mask.predict(bare.chunk({"y": 100, "x": 120}), model="xs2mask-4b").mask.values
    np.testing.assert_array_equal(lazy, expected)
    # row and column numbers as coordinates are an image's too, not a map sorted south to north
    numbered = bare.assign_coords(y=np.arange(200), x=np.arange(240.0))
    np.testing.assert_array_equal(xs2mask.predict(numbered, model="xs2mask-4b").mask.values, expected)


def test_patches_run_side_by_side_with_the_same_result(demo512):
    # the demo scene is one block of 1 x 1 patches of 544 px: tile it to have several
    cube = xr.concat([demo512, demo512.isel(x=slice(None, None, -1))], dim="x").isel(x=slice(0, 1000))
    kw = dict(model="xs2mask-4b", output="probability", probability_dtype="float16")
    serial = xs2mask.predict(cube, threads=1, **kw).probability.values
    side_by_side = xs2mask.predict(cube, threads=3, **kw).probability.values
    np.testing.assert_array_equal(side_by_side, serial)


def test_processing_resolution_is_chunk_invariant_and_returns_input_grid(demo, tiny_models):
    reference = xs2mask.predict(demo, model="test-tiny-torch", processing_resolution=20)
    assert reference.mask.shape == (320, 320)
    np.testing.assert_array_equal(reference.x.values, demo.x.values)
    assert reference.attrs["xs2mask_processing_resolution"] == 20
    lazy = xs2mask.predict(demo.chunk(y=150, x=170), model="test-tiny-torch", processing_resolution=20)
    np.testing.assert_array_equal(lazy.mask.values, reference.mask.values)
    # 20 m processing differs from 10 m, but not wildly (same model, same scene)
    at10 = xs2mask.predict(demo, model="test-tiny-torch").mask.values
    assert 0.5 < (at10 == reference.mask.values).mean() < 1.0


# --------------------------------------------------------------------------- no-data


def test_no_data_is_255_and_its_fill_does_not_leak(demo):
    refl = (demo.astype("float32") / 10_000).copy()
    zeros = refl.copy()
    zeros[:, 100:180, 100:180] = 0.0
    nans = refl.copy()
    nans[:, 100:180, 100:180] = np.nan
    a = xs2mask.predict(zeros, model="ukis-csmask-4b-l2a", output="both")
    b = xs2mask.predict(nans, model="ukis-csmask-4b-l2a", output="both")
    assert (a.mask.values[100:180, 100:180] == 255).all()
    assert (a.mask.values != 255).sum() == 320 * 320 - 80 * 80
    np.testing.assert_array_equal(a.mask.values, b.mask.values)
    np.testing.assert_array_equal(a.probability.values, b.probability.values)


def test_integer_dn_equals_float_reflectance_and_offset_applies(demo):
    dn = xs2mask.predict(demo, model="ukis-csmask-4b-l2a", output="probability")
    refl = xs2mask.predict(demo.astype("float32") / 10_000, model="ukis-csmask-4b-l2a", output="probability")
    assert np.abs(dn.probability.values.astype(int) - refl.probability.values.astype(int)).max() <= 1
    shifted = xs2mask.predict((demo + 1000).astype("uint16"), model="ukis-csmask-4b-l2a", offset=-1000)
    assert (
        shifted.mask.values == xs2mask.predict(demo, model="ukis-csmask-4b-l2a").mask.values
    ).mean() > 0.999


# --------------------------------------------------------------------------- options


def test_tta_averages_symmetries(demo, tiny_models):
    cube = demo.isel(y=slice(0, 128), x=slice(0, 128))

    def probability(image: xr.DataArray, **kw) -> np.ndarray:
        ds = xs2mask.predict(
            image, model="test-tiny-torch", output="probability", probability_dtype="float16", **kw
        )
        return ds.probability.values.astype("float32")

    p = probability(cube, tta=7)
    np.testing.assert_allclose(p.sum(axis=0), 1.0, atol=5e-3)
    assert not np.allclose(p, probability(cube), atol=1e-3)
    # TTA over all 8 symmetries is itself symmetric: a flipped input gives the flipped output
    one_patch = dict(tta=7, patch_size=128, overlap=0)
    flipped = probability(cube.isel(x=slice(None, None, -1)), **one_patch)
    np.testing.assert_allclose(flipped[:, :, ::-1], probability(cube, **one_patch), atol=2e-3)


def test_ensemble_averages_member_probabilities(demo):
    cube = demo.isel(y=slice(0, 256), x=slice(0, 256))
    kw = dict(output="probability", probability_dtype="float16")
    a = xs2mask.predict(cube, model="ukis-csmask-4b-l2a", **kw).probability.values.astype("float32")
    b = xs2mask.predict(cube, model="ukis-csmask-4b-l1c", **kw).probability.values.astype("float32")
    both = xs2mask.predict(cube, model=["ukis-csmask-4b-l2a", "ukis-csmask-4b-l1c"], **kw)
    np.testing.assert_allclose(both.probability.values.astype("float32"), (a + b) / 2, atol=2e-3)
    assert both.attrs["xs2mask_model"] == "ukis-csmask-4b-l2a,ukis-csmask-4b-l1c"


def test_mask_is_the_most_probable_class_first_on_ties():
    from xs2mask.kernel import _top_class

    rng = np.random.default_rng(0)
    probs = rng.integers(0, 4, (4, 64, 64)).astype(np.float32)  # small integers: many ties
    classes = (0, 1, 2, 3)
    np.testing.assert_array_equal(_top_class(probs, classes), np.argmax(probs, axis=0))
    # classes need not be 0..n-1 (ukis-csmask: clear, cloud, shadow)
    expected = np.array([0, 1, 3])[np.argmax(probs[:3], axis=0)]
    np.testing.assert_array_equal(_top_class(probs[:3], (0, 1, 3)), expected)


def test_torch_and_onnx_backends_agree(demo, tiny_models):
    cube = demo.isel(y=slice(0, 160), x=slice(0, 160))
    kw = dict(output="probability", probability_dtype="float16")
    t = xs2mask.predict(cube, model="test-tiny-torch", **kw).probability.values.astype("float32")
    o = xs2mask.predict(cube, model="test-tiny-onnx", **kw).probability.values.astype("float32")
    np.testing.assert_allclose(t, o, atol=2e-3)


# --------------------------------------------------------------------------- input forms


def test_plain_arrays_do_not_import_rioxarray_and_a_crs_attribute_is_kept():
    # rioxarray costs about a second to import: a cold call on an array without CRS metadata skips it.
    import subprocess
    import sys

    code = """
import sys, numpy as np, xarray as xr, xs2mask
cube = xr.DataArray(np.full((4, 64, 64), 0.1, "float32"), dims=("band", "y", "x"),
                    coords={"band": ["B02", "B03", "B04", "B08"]})
xs2mask.predict(cube, model="xs2mask-4b")
print("rioxarray" in sys.modules)
out = xs2mask.predict(cube.assign_attrs(crs="EPSG:32736"), model="xs2mask-4b")
print(out.rio.crs.to_epsg())
"""
    lines = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert lines == ["False", "32736"]


def test_dataset_time_series_common_names_and_crs(demo):
    cube = demo.isel(y=slice(0, 128), x=slice(0, 128))
    series = xr.concat([cube, cube[:, ::-1, :].assign_coords(y=cube.y)], dim="time")
    series = series.assign_coords(
        time=np.array(["2020-04-29", "2020-05-04"], dtype="datetime64[ns]"),
        band=["blue", "green", "red", "nir"],
    )
    ds = series.to_dataset("band")
    out = ds.s2mask.predict(model="ukis-csmask-4b-l2a")
    assert out.mask.dims == ("time", "y", "x")
    np.testing.assert_array_equal(out.time.values, series.time.values)
    assert out.rio.crs == demo.rio.crs
    single = xs2mask.predict(cube, model="ukis-csmask-4b-l2a")
    np.testing.assert_array_equal(out.mask.values[0], single.mask.values)
    assert out.mask.attrs["flag_meanings"] == "clear thick_cloud thin_cloud cloud_shadow"


# --------------------------------------------------------------------------- schedulers


def test_processes_scheduler(demo512):
    cube = demo512.isel(y=slice(0, 256))
    reference = xs2mask.predict(cube, model="ukis-csmask-4b-l2a").mask.values
    lazy = xs2mask.predict(cube.chunk(x=256), model="ukis-csmask-4b-l2a")
    with dask.config.set(scheduler="processes", num_workers=2):
        np.testing.assert_array_equal(lazy.mask.values, reference)


def test_distributed_loads_the_model_once_per_worker(demo512):
    from distributed import Client, LocalCluster

    cube = demo512.chunk(x=256, y=256)  # 4 chunks ...
    series = xr.concat([cube, cube], dim="time").chunk(time=1)  # ... x 2 dates = 8 tasks
    reference = xs2mask.predict(demo512, model="ukis-csmask-4b-l2a").mask.values
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        out = xs2mask.predict(series, model="ukis-csmask-4b-l2a").compute()
        counts = client.run(xs2mask.models.load_counts)
    for t in range(2):
        np.testing.assert_array_equal(out.mask.values[t], reference)
    assert all(c.get("ukis-csmask-4b-l2a", 0) <= 1 for c in counts.values()), counts
    assert sum(c.get("ukis-csmask-4b-l2a", 0) for c in counts.values()) >= 1


def test_predicts_of_different_cubes_computed_together_keep_their_own_masks(demo):
    """Dask keys must come from the inputs: a fixed layer name once gave two cubes' masks, computed
    in one pass (as the STAC job writes several dates at once), the pixels of one of them."""
    flipped = demo.copy(data=demo.values[..., ::-1])
    lazy = [xs2mask.predict(c.chunk({"y": 160, "x": 160}), "xs2mask-4b").mask for c in (demo, flipped)]
    together = dask.compute(*(m.data for m in lazy))
    for cube, got in zip((demo, flipped), together, strict=True):
        np.testing.assert_array_equal(got, xs2mask.predict(cube, "xs2mask-4b").mask.values)
    assert not np.array_equal(together[0], together[1])
