"""Zarr output: the one-way writer, provenance and grid checks, time rules, a kill at every write step,
and stores that plain xarray and GDAL read with their CRS.

Run as a script (``python tests/test_store.py JOB PATH FORMAT``) it is the child process that the
crash tests kill: it imports only xs2mask and builds a tiny synthetic cube, so it starts fast.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xs2mask
from xs2mask import classes, store
from xs2mask.exceptions import ReadWarning, StoreError

MODEL = "ukis-csmask-4b-l2a"
DATES = np.array(["2020-04-29", "2020-05-04", "2020-05-09"], "datetime64[ns]")


def make_cube(n_times: int = 3, chunks: int = 256) -> xr.DataArray:
    """The shipped real scene on several dates: mirrored copies, so each date differs."""
    scene = xs2mask.data.demo_scene()
    frames = [scene, scene[:, ::-1, :], scene[:, :, ::-1]][:n_times]
    frames = [f.assign_coords(y=scene.y, x=scene.x) for f in frames]
    cube = xr.concat(frames, dim="time").assign_coords(time=DATES[:n_times])
    return cube.chunk({"time": 1, "band": -1, "y": chunks, "x": chunks})


def tiny(n_times: int = 3, size: int = 64, chunk: int = 32, tta: int = 0) -> xr.Dataset:
    """A small mask cube shaped like predict's output (codes, flags, CRS, a per-date coordinate),
    at northings near 1e7 m, where relative tolerances are tens of metres."""
    codes = np.random.default_rng(0).choice(np.array([0, 1, 2, 3, 255], np.uint8), (3, size, size))
    ds = xr.Dataset(
        {"mask": (("time", "y", "x"), codes[:n_times], classes.mask_attrs())},
        coords={
            "time": DATES[:n_times],
            "y": 9_700_005.0 - 10 * np.arange(size),
            "x": 500_005.0 + 10 * np.arange(size),
            "radiometric_offset": ("time", [0.0, -0.1, 0.0][:n_times]),
            "spatial_ref": ((), 0, {"crs_wkt": _wkt()}),
        },
        attrs={"xs2mask_model": MODEL, "xs2mask_tta": tta, "xs2mask_patch_size": "256"},
    )
    ds["mask"].encoding.update({"_FillValue": classes.NODATA, "grid_mapping": "spatial_ref"})
    return ds.chunk({"time": 1, "y": chunk, "x": chunk})


def _wkt() -> str:
    from pyproj import CRS

    return CRS.from_epsg(32736).to_wkt()


def run_job(job: str, path: str, zarr_format: int) -> None:
    """The jobs the crash tests kill: create 2 dates (or resume them), or append a third."""
    n_times = 3 if job == "append" else 2
    mode = "a" if job == "append" else "w-"
    store.to_zarr(tiny(n_times), path, mode=mode, block=32, batch=2, zarr_format=zarr_format)


@pytest.fixture(scope="module")
def masks() -> xr.Dataset:
    # Computed once, then re-chunked: the tests exercise the writing, not the model.
    return xs2mask.predict(make_cube(), model=MODEL).compute().chunk({"time": 1, "y": 256, "x": 256})


@pytest.fixture(scope="module")
def expected(masks: xr.Dataset) -> np.ndarray:
    return masks.mask.values


def attrs_of(path: Path) -> dict:
    return dict(zarr.open_group(str(path), mode="r", use_consolidated=False).attrs)


def snapshot(path: Path) -> dict[str, object]:
    """Every file of a store: metadata parsed (key order aside), chunks as bytes."""
    out: dict[str, object] = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        name = str(file.relative_to(path))
        raw = file.read_bytes()
        out[name] = (
            json.loads(raw)
            if file.name in ("zarr.json", ".zattrs", ".zarray", ".zgroup", ".zmetadata")
            else raw
        )
    return out


class Steps:
    """Stands in for ``store._step``: records the write steps, or interrupts (as Ctrl-C) at one."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.names: list[str] = []
        self.stop_at = stop_at

    def __call__(self, name: str) -> None:
        self.names.append(name)
        if len(self.names) == self.stop_at:
            raise KeyboardInterrupt(f"interrupted before {name}")

    def writes(self) -> list[str]:
        return [n for n in self.names if n.startswith("write")]


# --------------------------------------------------------------------------- round trip, readers


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_round_trip_keeps_codes_flags_and_crs(tmp_path, masks, expected, zarr_format):
    path = tmp_path / "m.zarr"
    assert store.to_zarr(masks, str(path), zarr_format=zarr_format, block=256) == str(path)
    back = xs2mask.open_masks(str(path))
    assert back.mask.dtype == np.uint8
    np.testing.assert_array_equal(back.mask.values, expected)
    assert "_FillValue" not in back.mask.attrs  # xarray would decode the mask to float NaN
    assert back.mask.attrs["flag_values"] == [0, 1, 2, 3, 255]
    assert back.mask.attrs["flag_meanings"] == "clear thick_cloud thin_cloud cloud_shadow no_data"
    assert back.mask.rio.crs.to_epsg() == 32736
    assert back.mask.rio.transform() == masks.mask.rio.transform()
    assert back.attrs["xs2mask_status"] == "complete"
    assert back.attrs["xs2mask_model"] == MODEL
    assert back.attrs["xs2mask_provenance"]["weights_sha256"] == {
        MODEL: xs2mask.models.get(MODEL).weights.sha256
    }
    # Zarr chunks are exactly the Dask chunks: one date, 256 x 256.
    assert back.mask.encoding["chunks"] == (1, 256, 256)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_plain_xarray_reads_uint8_mask_with_crs_and_no_warning(tmp_path, zarr_format):
    import rioxarray  # noqa: F401  (the .rio accessor a plain user would use)

    path = tmp_path / "m.zarr"
    cube = tiny(2)
    store.to_zarr(cube, str(path), zarr_format=zarr_format, block=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no consolidated-metadata warning, no decoding warning
        plain = xr.open_zarr(str(path))
    assert plain.mask.dtype == np.uint8
    np.testing.assert_array_equal(plain.mask.values, cube.mask.values)
    assert "spatial_ref" in plain.coords
    assert plain.mask.rio.crs.to_epsg() == 32736
    np.testing.assert_array_equal(plain.radiometric_offset.values, [0.0, -0.1])
    assert plain.time.dtype == np.dtype("datetime64[ns]")
    assert plain.sel(time=slice("2020-05-01", None)).sizes["time"] == 1


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    unit=st.sampled_from(["D", "h", "m", "s", "ms", "us", "ns"]),
    zarr_format=st.sampled_from([2, 3]),
    start=st.integers(0, 3000),
)
def test_dates_of_any_numpy_unit_are_stored_as_given_and_appended(tmp_path_factory, unit, zarr_format, start):
    # np.datetime64("2020-04-29") is a date in days; xarray once wrote such dates as NaT.
    first = np.datetime64("2017-01-01") + np.timedelta64(start, "D")
    dates = np.array([first, first + np.timedelta64(5, "D")]).astype(f"datetime64[{unit}]")
    later = np.array([first + np.timedelta64(9, "D")]).astype(f"datetime64[{unit}]")
    path = str(tmp_path_factory.mktemp("units") / "m.zarr")
    cube = tiny(3).assign_coords(time=np.concatenate([dates, later]))
    write = dict(zarr_format=zarr_format, block=32, progress=False)
    store.to_zarr(cube.isel(time=[0, 1]), path, **write)
    store.to_zarr(cube.isel(time=[0, 1]), path, **write)  # a rerun: nothing to do
    store.to_zarr(cube, path, mode="a", **write)
    back = xr.open_zarr(path)
    np.testing.assert_array_equal(back.time.values, cube.time.values.astype("datetime64[ns]"))
    np.testing.assert_array_equal(back.mask.values, cube.mask.values)
    assert zarr.open_group(path).attrs[store.STATUS_ATTR] == "complete"


@pytest.mark.parametrize(
    ("times", "match"),
    [
        (np.array(["2020-04-29", "NaT"], "datetime64[ns]"), "with NaT among them"),
        (np.array([0, 1]), "must hold dates .* not int64"),
    ],
)
def test_times_that_are_not_dates_are_refused(tmp_path, times, match):
    with pytest.raises(StoreError, match=match):
        store.to_zarr(tiny(2).assign_coords(time=times), str(tmp_path / "m.zarr"))
    assert not (tmp_path / "m.zarr").exists()


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_probabilities_decode_to_fractions(tmp_path, zarr_format):
    cube = make_cube(1).isel(y=slice(0, 256), x=slice(0, 256))
    ds = xs2mask.predict(cube, model=MODEL, output="both").compute()
    path = tmp_path / "p.zarr"
    with warnings.catch_warnings():
        # Zarr 3 warns of data types with no spec (numpy's fixed-width text of `class_name` was one)
        warnings.simplefilter("error", zarr.errors.UnstableSpecificationWarning)
        store.to_zarr(ds, str(path), block=256, zarr_format=zarr_format)
    plain = xr.open_zarr(str(path))
    assert plain.probability.dtype.kind == "f" and plain.mask.dtype == np.uint8
    np.testing.assert_allclose(plain.probability.values, ds.probability.values / 255, atol=1e-6)
    np.testing.assert_array_equal(plain.class_name.values, ds.class_name.values)  # written with the template


def test_gdal_reads_the_store_with_its_crs(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    path = tmp_path / "m.zarr"
    cube = tiny(2)
    # Format 2: GDAL 3.10 (rasterio's wheel) refuses zarr-python's format 3 `bytes` codec.
    store.to_zarr(cube, str(path), zarr_format=2, block=32)
    with rasterio.open(f'ZARR:"{path}":/mask') as src:
        assert src.count == 2  # one band per date
        assert src.crs.to_epsg() == 32736
        assert src.transform.c == 500_000.0 and src.transform.f == 9_700_010.0 and src.transform.a == 10.0
        np.testing.assert_array_equal(src.read(), cube.mask.values)


def test_accessor_writes_the_same(tmp_path, masks, expected):
    path = tmp_path / "m.zarr"
    masks.s2mask.to_zarr(str(path), block=512)
    np.testing.assert_array_equal(xs2mask.open_masks(str(path)).mask.values, expected)


# --------------------------------------------------------------------------- interruptions


def test_interrupted_store_is_never_complete_and_resume_is_bit_identical(tmp_path, monkeypatch):
    path, reference = tmp_path / "m.zarr", tmp_path / "ref.zarr"
    store.to_zarr(tiny(2), str(reference), block=32, batch=1)
    steps = Steps(stop_at=2 + 5 * 2 + 1)  # template, status, 5 slabs written and recorded
    monkeypatch.setattr(store, "_step", steps)
    with pytest.raises(KeyboardInterrupt):
        store.to_zarr(tiny(2), str(path), block=32, batch=1)
    attrs = attrs_of(path)
    assert attrs["xs2mask_status"] == "incomplete"
    assert len(attrs["xs2mask_done"]) == 5
    with pytest.raises(StoreError, match=r"incomplete.*Rerun"):
        xs2mask.open_masks(str(path))
    partial = xs2mask.open_masks(str(path), allow_incomplete=True).mask.values
    # What was never written reads as no-data (Zarr's fill value is 255), never as "clear".
    assert (partial == 255).sum() >= (8 - 5) * 32 * 32

    rerun = Steps()
    monkeypatch.setattr(store, "_step", rerun)
    store.to_zarr(tiny(2), str(path), batch=1)  # no block given: the store's own (32) goes on
    assert len(rerun.writes()) == 8 - 5  # only the missing slabs
    assert snapshot(path) == snapshot(reference)

    again = Steps()
    monkeypatch.setattr(store, "_step", again)
    store.to_zarr(tiny(2), str(path), block=32, batch=1)
    store.to_zarr(tiny(2), str(path), block=40, batch=1)  # rounded to 32 px: the same slabs
    assert again.names == []  # complete: nothing is written, not even an attribute
    with pytest.raises(StoreError, match="slab size: stored 32, new 64"):
        store.to_zarr(tiny(2), str(path), block=64)  # one slab a date: recorded slabs would not match


def test_a_write_the_storage_loses_is_an_error_and_the_rerun_writes_it(tmp_path, monkeypatch):
    """A chunk write that never reaches the storage (the slab would read as 255, no-data, in a
    store marked complete) is caught by reading each block back: a StoreError naming the slab, the
    batch not recorded, and the same call again writes it."""
    path, reference = tmp_path / "m.zarr", tmp_path / "ref.zarr"
    store.to_zarr(tiny(2), str(reference), block=32, batch=2)
    original, calls = zarr.storage.LocalStore.set, []

    async def losing(self, key, value, *args, **kwargs):
        if key.startswith("mask/c"):  # a chunk of the mask (Zarr 3 keys: mask/c/t/y/x)
            calls.append(key)
            if len(calls) == 3:  # the first slab of the second batch: lost on its way to storage
                return None
        return await original(self, key, value, *args, **kwargs)

    monkeypatch.setattr(zarr.storage.LocalStore, "set", losing)
    lost = r"slab .* does not read back as written \(\+\d+ no-data pixels.*run the same"
    with pytest.raises(StoreError, match=lost):
        store.to_zarr(tiny(2), str(path), block=32, batch=2)
    attrs = attrs_of(path)
    assert attrs["xs2mask_status"] == "incomplete"
    assert len(attrs["xs2mask_done"]) == 2  # the first batch only
    monkeypatch.setattr(zarr.storage.LocalStore, "set", original)
    store.to_zarr(tiny(2), str(path), block=32, batch=2)
    assert snapshot(path) == snapshot(reference)


_SOURCE_CALLS: list[int] = []


def _counted_source(block: np.ndarray) -> np.ndarray:
    # module level: a distributed worker unpickles it by reference, in-process the same list
    _SOURCE_CALLS.append(1)
    return block


@pytest.mark.parametrize("scheduler", ["threads", "distributed"])
def test_a_batch_and_its_checks_compute_each_source_block_once(tmp_path, scheduler):
    """The writes and the caller's checks (the job's radiometric test of the inputs) run in one pass:
    each block of the source is computed once, with Dask's threads and on a distributed cluster."""
    import contextlib

    _SOURCE_CALLS.clear()
    ds = tiny(2)
    # as in the job: the masks made from the inputs (here: a copy), the checks from the inputs too
    inputs = ds.mask.copy(data=ds.mask.data.map_blocks(_counted_source, meta=np.empty((0, 0, 0), np.uint8)))
    masks = ds.assign(mask=inputs + np.uint8(0))
    if scheduler == "distributed":
        distributed = pytest.importorskip("distributed")
        # in-process workers: they append to this process's `calls`
        running = distributed.Client(
            processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None
        )
    else:
        running = contextlib.nullcontext()
    with running:
        writer = store.MaskStore.open(str(tmp_path / "m.zarr"), masks, block=32)
        parts = [(slab, masks.isel(slab.isel)) for slab in writer.todo()]
        values = writer.write(parts, also=[(inputs.isel(slab.isel) == 1).sum() for slab, _ in parts])
        writer.complete()
    assert len(_SOURCE_CALLS) == masks.mask.data.npartitions == 8
    assert [int(v) for v in values] == [int((ds.mask.isel(slab.isel) == 1).sum()) for slab, _ in parts]
    np.testing.assert_array_equal(xr.open_zarr(str(tmp_path / "m.zarr")).mask.values, ds.mask.values)


def _kill_then_rerun(tmp_path: Path, job: str, zarr_format: int, setup) -> None:
    """Kill the job before its n-th write, for every n, then rerun it: always the undisturbed store."""
    reference, start = tmp_path / "ref.zarr", tmp_path / "start.zarr"
    setup(start)
    if start.exists():
        shutil.copytree(start, reference)
    steps = Steps()
    store_step, store._step = store._step, steps
    try:
        run_job(job, str(reference), zarr_format)
    finally:
        store._step = store_step
    n_steps = len(steps.names)
    assert n_steps >= 6, steps.names
    expected = snapshot(reference)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(xs2mask.__file__).parents[1]), *sys.path])}
    for n in range(1, n_steps + 1):
        path = tmp_path / f"killed{n}.zarr"
        if start.exists():
            shutil.copytree(start, path)
        child = subprocess.run(
            [sys.executable, __file__, job, str(path), str(zarr_format)],
            env={**env, store.KILL_ENV: str(n)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert child.returncode == -9, f"step {n} ({steps.names[n - 1]}): {child.stderr[-2000:]}"
        group_file = path / ("zarr.json" if zarr_format == 3 else ".zgroup")
        # A store that says "complete" holds every date it lists (its consolidation may be missing).
        if group_file.exists() and attrs_of(path).get("xs2mask_status") == "complete":
            got = xr.open_zarr(str(path), consolidated=False).mask.values
            want = [
                xr.open_zarr(str(p), consolidated=False).mask.values for p in (start, reference) if p.exists()
            ]
            assert any(np.array_equal(got, w) for w in want), steps.names[n - 1]
        run_job(job, str(path), zarr_format)
        assert snapshot(path) == expected, f"killed before step {n}: {steps.names[n - 1]}"
        shutil.rmtree(path)


def test_kill_at_every_write_step_of_a_new_store(tmp_path):
    _kill_then_rerun(tmp_path, "create", 3, lambda start: None)


def test_kill_at_every_write_step_of_a_resume(tmp_path, monkeypatch):
    def interrupted(start: Path) -> None:
        with monkeypatch.context() as m:
            m.setattr(store, "_step", Steps(stop_at=2 + 2 * 2 + 1))  # two batches of two slabs
            with pytest.raises(KeyboardInterrupt):
                run_job("create", str(start), 3)
        assert len(attrs_of(start)["xs2mask_done"]) == 4

    _kill_then_rerun(tmp_path, "resume", 3, interrupted)


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_kill_at_every_write_step_of_an_append(tmp_path, zarr_format):
    def two_dates(start: Path) -> None:
        store.to_zarr(tiny(2), str(start), block=32, batch=2, zarr_format=zarr_format)

    _kill_then_rerun(tmp_path, "append", zarr_format, two_dates)


def test_empty_group_left_by_a_kill_is_written_over(tmp_path):
    path = tmp_path / "m.zarr"
    zarr.open_group(str(path), mode="w")  # what a kill right after the group's creation leaves
    store.to_zarr(tiny(1), str(path), block=32)
    assert xs2mask.open_masks(str(path)).sizes["time"] == 1


# --------------------------------------------------------------------------- append, time


def test_append_new_dates(tmp_path, monkeypatch):
    path, reference = tmp_path / "m.zarr", tmp_path / "ref.zarr"
    store.to_zarr(tiny(3), str(reference), block=32)
    store.to_zarr(tiny(2), str(path), block=32)
    with pytest.raises(StoreError, match="mode='a'"):
        store.to_zarr(tiny(3), str(path), block=32)
    steps = Steps()
    monkeypatch.setattr(store, "_step", steps)
    store.to_zarr(tiny(3), str(path), block=32, mode="a")
    assert len(steps.writes()) == 1  # the new date's 4 slabs, in one batch
    back = xs2mask.open_masks(str(path))
    np.testing.assert_array_equal(back.time.values, DATES)
    np.testing.assert_array_equal(back.mask.values, tiny(3).mask.values)
    np.testing.assert_array_equal(back.radiometric_offset.values, [0.0, -0.1, 0.0])
    assert snapshot(path)["mask/c/2/0/0"] == snapshot(reference)["mask/c/2/0/0"]


def test_append_of_an_earlier_date_is_refused_and_leaves_the_store_as_it_was(tmp_path):
    path = tmp_path / "m.zarr"
    store.to_zarr(tiny(3).isel(time=[1, 2]), str(path), block=32)
    before = snapshot(path)
    with pytest.raises(
        StoreError, match=r"ends at 2020-05-09T00:00:00; the new date\(s\) 2020-04-29.*earlier"
    ):
        store.to_zarr(tiny(3), str(path), block=32, mode="a")
    assert snapshot(path) == before
    assert xs2mask.open_masks(str(path)).indexes["time"].is_monotonic_increasing


def test_duplicated_times_are_refused_naming_the_time(tmp_path):
    cube = tiny(3).assign_coords(time=DATES[[0, 1, 1]])
    with pytest.raises(StoreError, match=r"2020-05-04T00:00:00.*drop_duplicates"):
        store.to_zarr(cube, str(tmp_path / "m.zarr"), block=32)
    assert not (tmp_path / "m.zarr").exists()


def test_unsorted_times_are_written_in_order(tmp_path):
    path = tmp_path / "m.zarr"
    store.to_zarr(tiny(3).isel(time=[2, 0, 1]), str(path), block=32)
    back = xs2mask.open_masks(str(path))
    np.testing.assert_array_equal(back.time.values, DATES)
    np.testing.assert_array_equal(back.mask.values, tiny(3).mask.values)


def test_incomplete_dates_the_job_does_not_cover_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "m.zarr"
    store.to_zarr(tiny(1), str(path), block=32)
    with monkeypatch.context() as m:
        m.setattr(store, "_step", Steps(stop_at=7))  # the append is committed, no slab written
        with pytest.raises(KeyboardInterrupt):
            store.to_zarr(tiny(2), str(path), block=32, mode="a")
    before = snapshot(path)
    with pytest.raises(
        StoreError, match=r"incomplete: 1 of its dates \(2020-05-04T00:00:00\).*Rerun that job"
    ):
        store.to_zarr(tiny(1), str(path), block=32)
    later = tiny(3).isel(time=[0, 2])  # a later date, but the interrupted one is still missing
    with pytest.raises(StoreError, match=r"incomplete: 1 of its dates"):
        store.to_zarr(later, str(path), block=32, mode="a")
    assert snapshot(path) == before
    store.to_zarr(tiny(2), str(path), block=32, mode="a")
    assert xs2mask.open_masks(str(path)).sizes["time"] == 2


# --------------------------------------------------------------------------- provenance, grid


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.assign_attrs(xs2mask_tta=2), r"tta: stored 0, new 2"),
        (
            lambda d: d.assign_attrs(xs2mask_model="omnicloudmask-v4"),
            r"model: stored 'ukis-csmask-4b-l2a', new",
        ),
        (lambda d: d.assign_attrs(xs2mask_patch_size="512"), r"patch_size: stored '256', new '512'"),
        # 70 m north at a northing of 9.7e6: np.allclose's default relative tolerance (~97 m) let it in.
        (
            lambda d: d.assign_coords(y=d.y + 70.0),
            r"y coordinates: stored from 9700005.0, new from 9700075.0",
        ),
        (lambda d: d.assign_coords(x=d.x + 0.5), r"x coordinates"),
        # the same area sorted south to north: said so, with the way back
        (
            lambda d: d.sortby("y"),
            r"y coordinates: the store's grid in the other order \(stored descending\): sort the masks as "
            r"the store has them, e.g. ds.sortby\('y', ascending=False\)",
        ),
        (lambda d: d.sortby("x", ascending=False), r"x coordinates: the store's grid in the other order"),
        (lambda d: d.isel(x=slice(0, 32)), r"x: stored 64 pixels, new 32"),
        (
            lambda d: d.assign_coords(spatial_ref=((), 0, {"crs_wkt": _epsg_wkt(32636)})),
            r"CRS: stored EPSG:32736",
        ),
        (lambda d: d.chunk({"y": 16, "x": 16}), r"chunks differ"),
    ],
)
def test_resume_or_append_made_otherwise_is_refused_and_untouched(tmp_path, change, match):
    path = tmp_path / "m.zarr"
    store.to_zarr(tiny(1), str(path), block=32)
    before = snapshot(path)
    with pytest.raises(StoreError, match=match) as info:
        store.to_zarr(change(tiny(2)), str(path), block=32, mode="a")
    assert "holds masks made otherwise" in str(info.value) and "mode='w' (--overwrite)" in str(info.value)
    assert snapshot(path) == before


def test_masks_in_the_other_order_append_once_sorted_as_the_error_says(tmp_path):
    path = tmp_path / "m.zarr"
    store.to_zarr(tiny(1), str(path), block=32)
    upside_down = tiny(2).sortby("y")
    with pytest.raises(StoreError, match=r"e.g. ds.sortby\('y', ascending=False\)"):
        store.to_zarr(upside_down, str(path), block=32, mode="a")
    store.to_zarr(upside_down.sortby("y", ascending=False), str(path), block=32, mode="a")
    np.testing.assert_array_equal(xs2mask.open_masks(str(path)).mask.values, tiny(2).mask.values)


def _epsg_wkt(code: int) -> str:
    from pyproj import CRS

    return CRS.from_epsg(code).to_wkt()


def test_callers_provenance_is_compared_too(tmp_path):
    path = tmp_path / "m.zarr"
    store.MaskStore.open(str(path), tiny(1), provenance={"harmonize": "auto"}, block=32)
    with pytest.raises(StoreError, match=r"harmonize: stored 'auto', new False"):
        store.MaskStore.open(str(path), tiny(1), provenance={"harmonize": False}, block=32)


def test_sub_millimetre_float_noise_in_the_grid_is_accepted(tmp_path):
    path = tmp_path / "m.zarr"
    store.to_zarr(tiny(1), str(path), block=32)
    noisy = tiny(2).assign_coords(y=tiny(2).y + 1e-6)
    store.to_zarr(noisy, str(path), block=32, mode="a")
    assert xs2mask.open_masks(str(path)).sizes["time"] == 2


def test_writer_refuses_masks_of_another_date_or_place(tmp_path):
    writer = store.MaskStore.open(str(tmp_path / "m.zarr"), tiny(2), block=32)
    slab = writer.todo()[0]
    with pytest.raises(StoreError, match=r"masks are for 2020-05-04T00:00:00, not for 2020-04-29"):
        writer.write([(slab, writer.template.isel(time=[1], y=slab.y, x=slab.x))])
    with pytest.raises(StoreError, match="do not cover the slab's x pixels"):
        writer.write([(slab, writer.template.isel(time=[0], y=slab.y, x=slice(32, 64)))])
    with pytest.raises(StoreError, match="cannot be completed: 8 slab"):
        writer.complete()


def test_nodata_slab_is_recorded_then_retried(tmp_path):
    path = tmp_path / "m.zarr"
    writer = store.MaskStore.open(str(path), tiny(1), block=32)
    first, *rest = writer.todo()
    writer.write_nodata(first, {"item": "S2A_X", "asset": "B04", "error": "HTTP 503"})
    writer.write([(s, writer.template.isel(s.isel)) for s in rest])
    writer.complete()
    with pytest.warns(ReadWarning, match="1 slab"):
        masks = xs2mask.open_masks(str(path))
    assert np.all(masks.mask.values[0, :32, :32] == 255)
    assert masks.attrs["xs2mask_read_errors"][0]["item"] == "S2A_X"
    retry = store.MaskStore.open(str(path), tiny(1), block=32)
    assert [s.key for s in retry.todo()] == [first.key]


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_s3_store_is_interrupted_resumed_and_appended(s3_server, monkeypatch, zarr_format):
    url, options = s3_server.url(f"append{zarr_format}.zarr"), s3_server.storage_options
    write = {"storage_options": options, "block": 32, "zarr_format": zarr_format}
    with monkeypatch.context() as m:
        m.setattr(store, "_step", Steps(stop_at=4))  # among the first slab writes
        with pytest.raises(KeyboardInterrupt):
            store.to_zarr(tiny(1), url, batch=2, **write)
    store.to_zarr(tiny(1), url, **write)
    store.to_zarr(tiny(3), url, mode="a", **write)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = xr.open_zarr(url, storage_options=options)
    np.testing.assert_array_equal(plain.mask.values, tiny(3).mask.values)
    assert plain.attrs["xs2mask_status"] == "complete"


@pytest.mark.parametrize(("zarr_format", "chunk"), [(3, "mask/c/1/0/1"), (2, "mask/1.0.1")])
def test_damaged_chunk_is_a_store_error_naming_it(tmp_path, zarr_format, chunk):
    path = tmp_path / "m.zarr"
    store.to_zarr(tiny(2), str(path), block=32, zarr_format=zarr_format)
    (path / chunk).write_bytes(b"not a compressed chunk")
    masks = xs2mask.open_masks(str(path))
    np.testing.assert_array_equal(masks.mask.isel(time=0).values, tiny(1).mask.values[0])
    with pytest.raises(
        StoreError, match=rf"chunk {chunk} \(date 2020-05-04T00:00:00\).*damaged.*--overwrite"
    ):
        masks.mask.load()


# --------------------------------------------------------------------------- refusals, layout


def test_foreign_folder_is_never_overwritten(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    with pytest.raises(StoreError, match="not a Zarr store; refusing"):
        store.to_zarr(tiny(1), str(folder))
    foreign = tmp_path / "foreign.zarr"
    xr.Dataset({"a": ("x", np.arange(3))}).to_zarr(str(foreign), consolidated=False)
    with pytest.raises(StoreError, match="not written by xs2mask"):
        store.to_zarr(tiny(1), str(foreign), mode="a")
    assert (folder / "notes.txt").read_text() == "precious"
    # Only an explicit mode="w" replaces.
    store.to_zarr(tiny(1), str(foreign), mode="w", block=32)
    assert xs2mask.open_masks(str(foreign)).sizes["time"] == 1


def test_other_zarr_format_is_refused(tmp_path):
    path = tmp_path / "m.zarr"
    store.to_zarr(tiny(1), str(path), block=32, zarr_format=2)
    with pytest.raises(StoreError, match="format 2 store, not format 3"):
        store.to_zarr(tiny(1), str(path), block=32, zarr_format=3)
    store.to_zarr(tiny(2), str(path), block=32, mode="a")  # unsaid: the store's format
    assert xs2mask.open_masks(str(path)).sizes["time"] == 2


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
    assert set(ready.mask.encoding) <= {"dtype", "grid_mapping", "coordinates"}
    assert "missing_value" not in ready.mask.attrs and "_FillValue" not in ready.mask.attrs
    # The caller's object is not modified.
    assert ds.mask.encoding["compressor"] == "gone"
    assert ds.mask.attrs["flag_values"] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (lambda m: m.isel(time=0), "no `time` dimension"),
        (lambda m: m.rename(x="lon"), "lacks spatial dims"),
    ],
)
def test_bad_datasets_are_refused(tmp_path, bad, match):
    with pytest.raises(StoreError, match=match):
        store.to_zarr(bad(tiny(2)), str(tmp_path / "m.zarr"))
    assert not (tmp_path / "m.zarr").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(StoreError, match="append_dim"):
        store.to_zarr(tiny(1), str(tmp_path / "a.zarr"), append_dim="x")
    with pytest.raises(StoreError, match="mode"):
        store.to_zarr(tiny(1), str(tmp_path / "a.zarr"), mode="r")
    with pytest.raises(StoreError, match="shards need Zarr format 3"):
        store.to_zarr(tiny(1), str(tmp_path / "a.zarr"), zarr_format=2, shards={"y": 512, "x": 512})
    with pytest.raises(StoreError, match=r"not an xs2mask mask store|cannot open"):
        xs2mask.open_masks(str(tmp_path / "missing.zarr"))


if __name__ == "__main__":
    run_job(sys.argv[1], sys.argv[2], int(sys.argv[3]))


_AS_ANOTHER_USER = """
import sys
sys.path.insert(0, {tests!r})
from test_store import tiny
from xs2mask import store
from xs2mask.exceptions import StoreError
try:
    store.to_zarr(tiny(), sys.argv[1], block=32)
except StoreError as err:
    print("StoreError:", err)
"""


@pytest.mark.skipif(
    os.geteuid() == 0 and shutil.which("setpriv") is None,
    reason="root writes anywhere: needs setpriv to run the child without root's capabilities",
)
@pytest.mark.parametrize("case", ["read-only-folder", "read-only-store"])
def test_a_store_the_user_may_not_write_is_a_store_error(case):
    """The child runs without root's capabilities (root writes anywhere, so only then can permissions
    fail), still as this user: it imports xs2mask from wherever the checkout is, even a folder only its
    owner may read (a clone into ``mktemp -d``)."""
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="xs2mask-perm-"))
    try:
        top.chmod(0o755)
        path = top / "masks.zarr"
        if case == "read-only-store":
            # An interrupted store (no slab written) that belongs to someone else.
            writer = store.MaskStore.open(str(path), tiny(), block=32)
            assert writer.todo()
            subprocess.run(["chmod", "-R", "a-w,a+rX", str(path)], check=True)
        top.chmod(0o555)
        script = _AS_ANOTHER_USER.format(tests=str(Path(__file__).parent))
        as_user = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"] if os.geteuid() == 0 else []
        result = subprocess.run(
            [*as_user, sys.executable, "-c", script, str(path)],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "HOME": str(top), "MPLCONFIGDIR": str(top)},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("StoreError: cannot write the mask store"), result.stdout
        assert str(path) in result.stdout and "Permission denied" in result.stdout
        assert "Traceback" not in result.stderr
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(top)], check=True)
        shutil.rmtree(top)
