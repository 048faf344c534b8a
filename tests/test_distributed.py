"""xs2mask on real ``distributed`` clusters: models loaded once per worker, routing, a killed worker."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest
import xarray as xr

import xs2mask
from xs2mask import store
from xs2mask.distributed import ModelPlugin, register

distributed = pytest.importorskip("distributed")

MODEL = "ukis-csmask-4b-l2a"
DATES = np.array(["2020-04-29", "2020-05-04", "2020-05-09"], "datetime64[ns]")


def _cube(n_times: int = 2, chunks: int = 256) -> xr.DataArray:
    """The shipped real scene on several dates (mirrored copies, so each date differs), chunked."""
    scene = xs2mask.data.demo_scene().load()
    frames = [scene, scene[:, ::-1, :], scene[:, :, ::-1]][:n_times]
    frames = [f.assign_coords(y=scene.y, x=scene.x) for f in frames]
    cube = xr.concat(frames, dim="time").assign_coords(time=DATES[:n_times])
    return cube.chunk({"time": 1, "band": -1, "y": chunks, "x": chunks})


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """Masks of the 2-date cube computed here, with the threaded scheduler."""
    return xs2mask.predict(_cube(2).compute(), model=MODEL).mask.values


def _cluster(n_workers: int = 2):
    return distributed.LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
    )


def test_plugin_loads_each_model_once_per_worker_and_pins_threads(reference):
    with _cluster() as cluster, distributed.Client(cluster) as client:
        plugin = register(client, MODEL, device="cpu")
        before = client.run(xs2mask.models.load_counts)
        out = xs2mask.predict(_cube(2), model=MODEL).mask.compute()  # 2 dates x 4 chunks
        again = xs2mask.predict(_cube(2), model=MODEL).mask.compute()
        counts = client.run(xs2mask.models.load_counts)
        runtimes = client.run(xs2mask.models.backends.pinned)
    assert isinstance(plugin, ModelPlugin)
    # Loaded in setup, before any task: every worker, exactly once, however many tasks followed.
    assert before == counts == {addr: {MODEL: 1} for addr in counts}
    assert len(counts) == 2
    # 2 workers x 1 Dask thread on one host: each model call gets its share of the host's cores.
    share = max(1, (os.cpu_count() or 1) // 2)
    assert set(runtimes.values()) == {xs2mask.models.Runtime("cpu", "float32", share)}
    np.testing.assert_array_equal(out.values, reference)
    np.testing.assert_array_equal(again.values, reference)


def test_inference_workers_run_every_model_call(reference):
    with _cluster() as cluster, distributed.Client(cluster) as client:
        names = {addr: str(info["name"]) for addr, info in client.scheduler_info()["workers"].items()}
        gpu_addr, gpu_name = sorted(names.items())[0]
        register(client, MODEL, device="cpu", inference_workers=[gpu_name])
        # Reading on every worker, models on one: the routing must not depend on where blocks land.
        out = xs2mask.predict(_cube(2), model=MODEL).mask.compute()
        counts = client.run(xs2mask.models.load_counts)
        with pytest.raises(ValueError, match="no worker named"):
            register(client, MODEL, inference_workers=["no-such-worker"])
    assert counts[gpu_addr] == {MODEL: 1}
    assert all(c == {} for addr, c in counts.items() if addr != gpu_addr), counts
    np.testing.assert_array_equal(out.values, reference)


def test_killed_worker_job_completes_with_identical_masks(tmp_path, reference):
    masks = xs2mask.predict(_cube(2), model=MODEL)  # 2 dates x 4 blocks: 8 slabs
    killed: list[int] = []
    timers: list[threading.Timer] = []
    with _cluster() as cluster, distributed.Client(cluster) as client:
        register(client, MODEL, device="cpu")
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]

        def kill() -> None:
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

        def progress(iterator, total):
            for i, slab in enumerate(iterator):
                if i == 2:  # the first batch is written: kill a worker while the next one runs
                    timers.append(threading.Timer(0.5, kill))
                    timers[0].start()
                yield slab

        xs2mask.to_zarr(masks, str(tmp_path / "m.zarr"), block=256, batch=2, progress=progress)
        timers[0].join()
        after = client.run(os.getpid)
        loads = client.run(xs2mask.models.load_counts)
    assert killed == [victim]
    assert victim not in after.values() and len(after) == 2  # the nanny restarted it
    assert all(c == {MODEL: 1} for c in loads.values()), loads  # the plugin ran on the new worker too
    written = store.open_masks(str(tmp_path / "m.zarr"))
    np.testing.assert_array_equal(written.mask.values, reference)


def _lose_chunk(key: str) -> None:
    """In a worker: the storage drops every write of chunk ``key`` (on its way, without an error)."""
    import zarr

    store_class = zarr.storage.LocalStore
    original = getattr(store_class, "_xs2mask_original_set", store_class.set)

    async def losing(self, k, value, *args, **kwargs):
        if k == key:
            return None
        return await original(self, k, value, *args, **kwargs)

    store_class._xs2mask_original_set = original
    store_class.set = losing


def _keep_chunks() -> None:
    import zarr

    store_class = zarr.storage.LocalStore
    store_class.set = getattr(store_class, "_xs2mask_original_set", store_class.set)


def test_a_write_a_worker_loses_is_an_error_and_the_rerun_writes_it(tmp_path, reference):
    """Each worker writes the blocks it computed and reads them back: a chunk the storage loses on a
    worker is a StoreError naming its slab, nothing of that batch is recorded, and the rerun writes it."""
    masks = xs2mask.predict(_cube(2), model=MODEL)
    path = str(tmp_path / "m.zarr")
    with _cluster() as cluster, distributed.Client(cluster) as client:
        register(client, MODEL, device="cpu")
        client.run(_lose_chunk, "mask/c/1/1/0")  # second date, lower left block
        with pytest.raises(store.StoreError, match=r"slab 2020-05-04T00:00:00/y1/x0 .* does not read back"):
            xs2mask.to_zarr(masks, path, block=256, batch=4, progress=False)
        done = store._open_group(path, None).attrs["xs2mask_done"]
        assert len(done) == 4 and all(key.startswith("2020-04-29") for key in done)  # the first batch only
        client.run(_keep_chunks)
        xs2mask.to_zarr(masks, path, block=256, batch=4, progress=False)
    np.testing.assert_array_equal(store.open_masks(path).mask.values, reference)
