"""Zarr output: template + region writes, resume after a kill, append, refusal of foreign stores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

import xs2mask
from xs2mask import store
from xs2mask.exceptions import StoreError

MODEL = "ukis-csmask-4b-l2a"
DATES = np.array(["2020-04-29", "2020-05-04", "2020-05-09"], "datetime64[ns]")


def make_cube(n_times: int = 3, chunks: int = 256) -> xr.DataArray:
    """The shipped real scene on several dates: mirrored copies, so each date differs."""
    scene = xs2mask.data.demo_scene()
    frames = [scene, scene[:, ::-1, :], scene[:, :, ::-1]][:n_times]
    frames = [f.assign_coords(y=scene.y, x=scene.x) for f in frames]
    cube = xr.concat(frames, dim="time").assign_coords(time=DATES[:n_times])
    return cube.chunk({"time": 1, "band": -1, "y": chunks, "x": chunks})


@pytest.fixture(scope="module")
def masks() -> xr.Dataset:
    # Computed once, then re-chunked: the tests exercise the writing, not the model.
    return xs2mask.predict(make_cube(), model=MODEL).compute().chunk({"time": 1, "y": 256, "x": 256})


@pytest.fixture(scope="module")
def expected(masks: xr.Dataset) -> np.ndarray:
    return masks.mask.values


class Interrupting:
    """A slab builder that stops the job (as Ctrl-C would) after ``n_ok`` slabs."""

    def __init__(self, ds: xr.Dataset, n_ok: int) -> None:
        self.ds, self.n_ok, self.calls = ds, n_ok, 0

    def __call__(self, slab: store.Slab) -> xr.Dataset:
        self.calls += 1
        if self.calls > self.n_ok:
            raise KeyboardInterrupt("simulated interruption")
        return self.ds.isel(slab.isel)


def attrs_of(path: Path) -> dict:
    return dict(zarr.open_group(str(path), mode="r").attrs)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_round_trip_keeps_codes_fill_flags_and_crs(tmp_path, masks, expected, zarr_format):
    path = tmp_path / "m.zarr"
    assert store.to_zarr(masks, str(path), zarr_format=zarr_format, block=256) == str(path)
    back = xs2mask.open_masks(str(path))
    assert back.mask.dtype == np.uint8
    np.testing.assert_array_equal(back.mask.values, expected)
    assert back.mask.attrs["_FillValue"] == 255
    assert back.mask.attrs["flag_values"] == [0, 1, 2, 3]
    assert back.mask.attrs["flag_meanings"] == "clear thick_cloud thin_cloud cloud_shadow"
    assert back.mask.rio.crs.to_epsg() == 32736
    assert back.mask.rio.transform() == masks.mask.rio.transform()
    assert back.attrs["xs2mask_status"] == "complete"
    assert back.attrs["xs2mask_model"] == MODEL
    # Zarr chunks are exactly the Dask chunks: one date, 256 x 256.
    assert back.mask.encoding["chunks"] == (1, 256, 256)
    assert (zarr_format == 2) == back.attrs["xs2mask_consolidated"]


def test_accessor_writes_the_same(tmp_path, masks, expected):
    path = tmp_path / "m.zarr"
    masks.s2mask.to_zarr(str(path), block=512)
    np.testing.assert_array_equal(xs2mask.open_masks(str(path)).mask.values, expected)


def test_interrupted_store_is_never_complete_and_resume_is_bit_identical(tmp_path, masks, expected):
    path = tmp_path / "m.zarr"
    with pytest.raises(KeyboardInterrupt):
        store.to_zarr(masks, str(path), block=256, batch=1, build=Interrupting(masks, 5))
    attrs = attrs_of(path)
    assert attrs["xs2mask_status"] == "incomplete"
    assert len(attrs["xs2mask_done"]) == 5
    with pytest.raises(StoreError, match=r"incomplete.*Rerun"):
        xs2mask.open_masks(str(path))
    partial = xs2mask.open_masks(str(path), allow_incomplete=True).mask.values
    # What was never written reads as no-data (Zarr's fill value is 255 too), never as "clear".
    assert (partial == 255).sum() >= (12 - 5) * 256 * 256

    rerun = Interrupting(masks, 10**6)
    store.to_zarr(masks, str(path), block=256, build=rerun)
    assert rerun.calls == 12 - 5  # only the missing slabs
    back = xs2mask.open_masks(str(path))
    np.testing.assert_array_equal(back.mask.values, expected)

    again = Interrupting(masks, 0)
    store.to_zarr(masks, str(path), block=256, build=again)  # complete: nothing to do
    assert again.calls == 0


def test_killed_process_then_rerun_equals_an_undisturbed_run(tmp_path, expected):
    """A real SIGKILL in the middle of a job; the rerun completes it with identical bytes."""
    path = tmp_path / "killed.zarr"
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import xs2mask
        from test_store import make_cube, MODEL
        from xs2mask import store

        masks = xs2mask.predict(make_cube(), model=MODEL)
        slow = lambda slab: (time.sleep(float(sys.argv[2])), masks.isel(slab.isel))[1]
        store.to_zarr(masks, sys.argv[1], block=256, batch=1, build=slow)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(path), "0.5"])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (path / "zarr.json").exists() and len(attrs_of(path).get("xs2mask_done", [])) >= 3:
                break
            assert child.poll() is None, "the job ended before it could be killed"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    attrs = attrs_of(path)
    assert attrs["xs2mask_status"] == "incomplete"
    assert 3 <= len(attrs["xs2mask_done"]) < 12

    rerun = subprocess.run([sys.executable, "-c", script, str(path), "0"], timeout=300)
    assert rerun.returncode == 0
    back = xs2mask.open_masks(str(path))
    np.testing.assert_array_equal(back.mask.values, expected)
    assert len(back.attrs["xs2mask_done"]) == 12


def test_append_new_dates(tmp_path, masks, expected):
    path = tmp_path / "m.zarr"
    store.to_zarr(masks.isel(time=[0, 1]), str(path), block=256)
    with pytest.raises(StoreError, match="mode='a'"):
        store.to_zarr(masks, str(path), block=256)
    counting = Interrupting(masks, 10**6)
    store.to_zarr(masks, str(path), block=256, mode="a", build=counting)
    assert counting.calls == 4  # the new date's slabs only
    back = xs2mask.open_masks(str(path))
    np.testing.assert_array_equal(back.time.values, DATES)
    np.testing.assert_array_equal(back.mask.values, expected)


def test_interrupted_append_resumes(tmp_path, masks, expected):
    path = tmp_path / "m.zarr"
    store.to_zarr(masks.isel(time=[0]), str(path), block=256)
    with pytest.raises(KeyboardInterrupt):
        store.to_zarr(masks, str(path), block=256, mode="a", batch=1, build=Interrupting(masks, 3))
    assert attrs_of(path)["xs2mask_status"] == "incomplete"
    store.to_zarr(masks, str(path), block=256, mode="a")
    np.testing.assert_array_equal(xs2mask.open_masks(str(path)).mask.values, expected)


def test_incompatible_store_is_refused_and_left_untouched(tmp_path, masks):
    path = tmp_path / "m.zarr"
    store.to_zarr(masks.isel(time=[0]), str(path), block=256)
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    other_area = masks.isel(time=[0], x=slice(0, 256))
    with pytest.raises(StoreError, match=r"incompatible layout.*x coordinates"):
        store.to_zarr(other_area, str(path), block=256, mode="a")
    with pytest.raises(StoreError, match="chunks differ"):
        store.to_zarr(masks.isel(time=[0]), str(path), chunks={"y": 128, "x": 128}, block=256)
    after = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    assert before == after


def test_foreign_folder_is_never_overwritten(tmp_path, masks):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    with pytest.raises(StoreError, match="not a Zarr store; refusing"):
        store.to_zarr(masks, str(folder))
    foreign = tmp_path / "foreign.zarr"
    xr.Dataset({"a": ("x", np.arange(3))}).to_zarr(str(foreign), consolidated=False)
    with pytest.raises(StoreError, match="not written by xs2mask"):
        store.to_zarr(masks, str(foreign), mode="a")
    assert (folder / "notes.txt").read_text() == "precious"
    # Only an explicit mode="w" replaces.
    store.to_zarr(masks.isel(time=[0]), str(foreign), mode="w", block=512)
    assert xs2mask.open_masks(str(foreign)).sizes["time"] == 1


def test_shards_hold_whole_dask_chunks(tmp_path, masks, expected):
    path = tmp_path / "sharded.zarr"
    store.to_zarr(masks, str(path), zarr_format=3, chunks={"y": 128, "x": 128}, shards={"y": 256, "x": 256})
    raw = zarr.open_array(str(path / "mask"), mode="r")
    assert raw.chunks == (1, 128, 128)
    assert raw.shards == (1, 256, 256)
    np.testing.assert_array_equal(xs2mask.open_masks(str(path)).mask.values, expected)
    with pytest.raises(StoreError, match="multiple of the chunk size"):
        bad = str(tmp_path / "bad.zarr")
        store.to_zarr(masks, bad, chunks={"y": 96, "x": 96}, shards={"y": 256, "x": 256})


def test_stale_encodings_and_object_coords_are_cleared(masks):
    ds = masks.copy()
    ds.mask.encoding.update({"chunks": (1, 7, 7), "compressor": "gone", "preferred_chunks": {"y": 7}})
    ds = ds.assign_coords(**{"proj:transform": ("time", np.array([object()] * 3, dtype=object))})
    ready = store.prepare(ds)
    assert "proj:transform" not in ready.coords
    assert set(ready.mask.encoding) <= {"_FillValue", "dtype", "grid_mapping"}
    assert ready.mask.encoding["_FillValue"] == 255
    # The caller's object is not modified.
    assert ds.mask.encoding["compressor"] == "gone"


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (lambda m: m.isel(time=0), "no `time` dimension"),
        (lambda m: m.rename(x="lon"), "lacks spatial dims"),
    ],
)
def test_bad_datasets_are_refused(tmp_path, masks, bad, match):
    with pytest.raises(StoreError, match=match):
        store.to_zarr(bad(masks), str(tmp_path / "m.zarr"))
    assert not (tmp_path / "m.zarr").exists()


def test_bad_arguments(tmp_path, masks):
    with pytest.raises(StoreError, match="append_dim"):
        store.to_zarr(masks, str(tmp_path / "a.zarr"), append_dim="x")
    with pytest.raises(StoreError, match="mode"):
        store.to_zarr(masks, str(tmp_path / "a.zarr"), mode="r")
    with pytest.raises(StoreError, match="shards need Zarr format 3"):
        store.to_zarr(masks, str(tmp_path / "a.zarr"), zarr_format=2, shards={"y": 512, "x": 512})
    with pytest.raises(StoreError, match=r"not an xs2mask mask store|cannot open"):
        xs2mask.open_masks(str(tmp_path / "missing.zarr"))
