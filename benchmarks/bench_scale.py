"""Scale benchmarks: slab graph size and build time, 1 -> 2 worker speed-up, worker memory by area.

Three parts, each selectable with ``--parts``:

* ``graph``: ``mask_stac`` on catalogues of 1, 10 and 100 slabs (one 1024 x 1024 px slab per date, the
  dates cloned from one real-pixel date of ``bench_pipeline``'s catalogue and served by ``rustac``), plus
  a 4096 x 4096 px area (16 slabs per date) to show that a slab's cost does not grow with the area. Every
  ``dask.compute`` of the pipeline is replaced by a probe that records the optimised graph (tasks, and
  its size pickled with cloudpickle, as ``distributed`` ships it) and computes nothing; ``batch=1`` so
  each probe sees one slab. Build time = the job's wall time minus the probes, from the first slab on
  (the search and the template store are reported apart).
* ``speedup``: ``xs2mask.predict`` (ukis-csmask-6b-l2a) on ``bench_predict``'s 2048 x 2048 cube of real
  pixels chunked 512 x 512 (16 blocks, read from a ``.npy`` file on the workers), computed on a
  ``LocalCluster`` of 1 then 2 worker processes, one Dask thread and one model thread each
  (:func:`xs2mask.distributed.register` with ``threads=1``, the model loaded before timing); best of
  ``--repeat`` runs each, interleaved.
* ``memory``: ``bench_pipeline.py``'s ``e2e-cluster`` case (2 workers, default chunks and slab) at the
  ``--areas`` sizes, reporting each worker's peak RSS (``VmHWM``).

Usage::

    python benchmarks/bench_scale.py [--parts graph speedup memory] [--slabs 1 10 100] \
        [--repeat 3] [--areas 2048 4096] [--max-busy 0.3] [--json scale.json]

The machine's load average and the cores other processes used are printed with each figure: on a
shared machine the speed-up is only meaningful when they are low. Exits 0 with a message when
``../shared/data`` is absent.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from harness import (
    add_run_options,
    busy_cores,
    data_missing,
    interleave,
    source_version,
    tests_module,
    write_json,
)
from inputs import CATALOGUE_CACHE, CATALOGUE_MODEL, CUBE_BANDS, cached_catalogue, cached_cube

HERE = Path(__file__).resolve().parent
SPEEDUP_MODEL = "ukis-csmask-6b-l2a"
SPEEDUP_CHUNK = 512
SLAB = 1024


# --------------------------------------------------------------------------- graph


class GraphProbe:
    """Stand-in for ``dask.compute`` inside ``xs2mask.store``: measures each graph, computes nothing."""

    def __init__(self) -> None:
        import dask

        self.graphs: list[dict[str, float]] = []
        self.seconds = 0.0
        self._dask, self._real = dask, dask.compute
        dask.compute = self

    def __call__(self, writes: Any, lazies: Any) -> tuple[None, list[np.ndarray]]:
        import cloudpickle
        from dask._expr import FinalizeCompute
        from dask.base import collections_to_expr, unpack_collections

        start = time.perf_counter()
        # What dask.compute does before it schedules: optimise (cull, fuse), then materialise.
        collections, _ = unpack_collections(writes, lazies)
        graph = dict(FinalizeCompute(collections_to_expr(collections)).optimize().__dask_graph__())
        size = len(cloudpickle.dumps(graph))
        self.graphs.append({"tasks": len(graph), "pickled_mb": size / 2**20})
        self.seconds += time.perf_counter() - start
        # What the store's checks expect back: one negative-reflectance fraction per slab.
        return None, [np.zeros(1, np.float32) for _ in lazies]

    def close(self) -> None:
        self._dask.compute = self._real


def cloned_catalogue(base: dict[str, Any], dates: int) -> tuple[list[dict[str, Any]], str]:
    """``dates`` items of the base catalogue's first date, one day apart (same files: nothing is read)."""
    first = base["items"][0]
    when = dt.datetime.fromisoformat(first["properties"]["datetime"].replace("Z", "+00:00"))
    items = []
    for d in range(dates):
        item = copy.deepcopy(first)
        stamp = when + dt.timedelta(days=d)
        item["id"] = f"{first['id']}-{d:03d}"
        item["properties"]["datetime"] = stamp.isoformat().replace("+00:00", "Z")
        items.append(item)
    return items, f"{when:%Y-%m-%d}/{when + dt.timedelta(days=dates):%Y-%m-%d}"


def graph_case(url: str, bbox: list[float], datetime: str, out: Path) -> dict[str, Any]:
    from xs2mask.pipeline import Job, Predict, Search, Store, mask_stac

    marks: list[float] = []

    def progress(iterator, total):
        for slab in iterator:
            marks.append(time.perf_counter())
            yield slab
        marks.append(time.perf_counter())

    job = Job(
        Search(url, ("sentinel-2-l2a",), tuple(bbox), datetime),
        Store(str(out), block=SLAB, batch=1),
        predict=Predict(model=CATALOGUE_MODEL),
    )
    probe = GraphProbe()
    start = time.perf_counter()
    try:
        mask_stac(job, sign=False, progress=progress)  # the store ends "complete" but holds no masks
    finally:
        probe.close()
    slabs = len(probe.graphs)
    build = marks[-1] - marks[0] - probe.seconds
    tasks = [g["tasks"] for g in probe.graphs]
    return {
        "slabs": slabs,
        "setup_s": marks[0] - start,
        "build_s": build,
        "build_ms_per_slab": 1e3 * build / slabs,
        "tasks_total": sum(tasks),
        "tasks_per_slab_max": max(tasks),
        "pickled_mb_total": sum(g["pickled_mb"] for g in probe.graphs),
        "pickled_kb_per_task": 1024 * sum(g["pickled_mb"] for g in probe.graphs) / sum(tasks),
    }


def run_graph(args: argparse.Namespace) -> list[dict[str, Any]]:
    servers = tests_module("servers")
    cases = [(SLAB, n) for n in args.slabs] + [(4096, 1), (4096, 7)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="xs2mask-bench-scale-") as tmp:
        for area, dates in cases:
            base = cached_catalogue(args.data, CATALOGUE_CACHE, area, 1)
            items, datetime = cloned_catalogue(base, dates)
            with servers.serve_items(
                items, base["collections"], workdir=Path(tmp) / f"api{area}-{dates}"
            ) as url:
                row = {
                    "area": area,
                    "dates": dates,
                    **graph_case(url, base["bbox"], datetime, Path(tmp) / f"m{area}-{dates}.zarr"),
                }
            rows.append(row)
            print(
                f"  {area} px x {dates} dates: {row['slabs']} slabs, {row['tasks_total']} tasks "
                f"({row['tasks_per_slab_max']} per slab at most), {row['pickled_mb_total']:.2f} MB pickled "
                f"({row['pickled_kb_per_task']:.2f} kB per task), build {row['build_s']:.2f} s "
                f"({row['build_ms_per_slab']:.0f} ms per slab), search + template {row['setup_s']:.2f} s",
                flush=True,
            )
    return rows


# --------------------------------------------------------------------------- speed-up


def _read_block(path: str, block_info: Any = None) -> np.ndarray:
    """One chunk of the cached ``(band, y, x)`` cube, read on the worker from the memory-mapped file."""
    (b0, b1), (y0, y1), (x0, x1) = block_info[None]["array-location"]
    return np.array(np.load(path, mmap_mode="r")[b0:b1, y0:y1, x0:x1])


def speedup_case(cube_path: Path, n_workers: int, repeat: int) -> list[float]:
    import dask.array as da
    import distributed
    import xarray as xr

    import xs2mask
    from xs2mask.distributed import register

    shape = np.load(cube_path, mmap_mode="r").shape
    chunks = (shape[0], SPEEDUP_CHUNK, SPEEDUP_CHUNK)
    data = da.map_blocks(
        _read_block, str(cube_path), chunks=da.core.normalize_chunks(chunks, shape), dtype=np.float32,
        meta=np.empty((0, 0, 0), np.float32),
    )  # fmt: skip
    cube = xr.DataArray(data, dims=("band", "y", "x"), coords={"band": list(CUBE_BANDS)})
    seconds = []
    with (
        distributed.LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        register(client, SPEEDUP_MODEL, device="cpu", threads=1)
        for _ in range(repeat):
            lazy = xs2mask.predict(cube, model=SPEEDUP_MODEL).mask
            start = time.perf_counter()
            lazy.compute()
            seconds.append(time.perf_counter() - start)
    return seconds


def run_speedup(args: argparse.Namespace) -> dict[str, Any]:
    cube_path = cached_cube(args.data, args.cache, 2048)
    best: dict[int, float] = {}
    runs: list[dict[str, Any]] = []
    for turn in interleave((1, 2), args.repeat, args):
        n = turn.case
        load = os.getloadavg()[0]
        seconds = speedup_case(cube_path, n, 1)[0]
        busy = busy_cores(1.0)
        runs.append({"workers": n, "seconds": seconds, "loadavg_1min_before": load, "busy_after": busy})
        best[n] = min(best.get(n, np.inf), seconds)
        print(f"  {n} worker(s): {seconds:.1f} s (load average before {load:.2f})", flush=True)
    ratio = best[1] / best[2]
    print(f"  speed-up 1 -> 2 workers: {ratio:.2f}x (best {best[1]:.1f} s / {best[2]:.1f} s)", flush=True)
    return {"runs": runs, "best_s": best, "speedup": ratio}


# --------------------------------------------------------------------------- memory


def run_memory(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``bench_pipeline.py``'s e2e-cluster case at each area: per-worker peak RSS."""
    with tempfile.TemporaryDirectory(prefix="xs2mask-bench-scale-") as tmp:
        out = Path(tmp) / "pipeline.json"
        cmd = [sys.executable, str(HERE / "bench_pipeline.py"), "--cases", "e2e-cluster", "--json", str(out)]
        cmd += ["--sizes", *map(str, args.areas), "--data", str(args.data), "--timeout", str(args.timeout)]
        if args.max_busy is not None:
            cmd += ["--max-busy", str(args.max_busy), "--idle-timeout", str(args.idle_timeout)]
        subprocess.run(cmd, check=True)
        result = json.loads(out.read_text())
    rows = []
    for run in result["runs"]:
        peaks = [w["peak_rss_mb"] for w in run["workers"]]
        rows.append({"area": run["size"], "worker_peak_rss_mb": peaks, "seconds": run["seconds"]})
        print(f"  {run['size']} px: worker peak RSS {' / '.join(f'{p:.0f}' for p in peaks)} MB", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--parts", nargs="+", choices=("graph", "speedup", "memory"), default=["graph", "speedup"]
    )
    parser.add_argument("--slabs", type=int, nargs="+", default=[1, 10, 100], help="slabs of the graph part")
    parser.add_argument("--areas", type=int, nargs="+", default=[2048, 4096], help="areas of the memory part")
    add_run_options(
        parser,
        cache_help="where the speed-up cube is cached",
        repeat=3,
        repeat_help="runs per worker count (best is kept)",
    )
    args = parser.parse_args(argv)
    if data_missing(args.data, "cloud_cover_chips"):
        return 0
    print(f"xs2mask source: {source_version()}; load average {os.getloadavg()}", flush=True)
    results: dict[str, Any] = {"source": source_version()}
    if "graph" in args.parts:
        print("graph size and build time per slab count:", flush=True)
        results["graph"] = run_graph(args)
    if "speedup" in args.parts:
        print(f"1 -> 2 worker speed-up ({SPEEDUP_MODEL}, 2048 px, {SPEEDUP_CHUNK} px chunks):", flush=True)
        results["speedup"] = run_speedup(args)
    if "memory" in args.parts:
        print("peak RSS per worker by area (bench_pipeline e2e-cluster):", flush=True)
        results["memory"] = run_memory(args)
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
