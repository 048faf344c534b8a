"""Benchmark the STAC -> Zarr pipeline end to end beside the model alone, on the same real pixels.

A Planetary-Computer-style catalogue is built per area size (2048 x 2048 and 4096 x 4096 px at 10 m by
default, 2 dates each) and served by a real STAC API (``rustac serve`` on 127.0.0.1, through
``tests/servers.py``). Its pixels are real: each date is a mosaic of the 512 x 512 "On Cloud N" chips of
``../shared/data/cloud_cover_chips`` (B02 B03 B04 B08, L2A DN; 27 chips in a seeded random order per
date, repeated where the area needs more), so the seams between chips are abrupt but every pixel is a
real Sentinel-2 L2A value. Each band of a date is one single-band COG (GDAL "COG" driver, uint16,
nodata 0) on a 10 m grid in UTM 36S (EPSG:32736) centred on the zone's central meridian at 2.5 S, near
the chip adwp, so that the lon/lat search bbox maps back onto the grid almost exactly. The items are
rewritten from the real Planetary Computer item JSON (asset keys ``B02`` ...; ``proj:*``, bbox, geometry
and dates of the mosaic; ``eo:cloud_cover`` from the chips' human labels; other scene statistics stay
the template's) with ``s2:processing_baseline`` "05.11", so the files hold DN + 1000 (0 stays no data)
and the loader's baseline-04.00 offset path runs. The catalogue is cached under
``/tmp/xs2mask-bench-pipeline`` and rebuilt when missing (``inputs.cached_catalogue``).

Every case runs in its own fresh Python process (imports excluded from the timing, model loading
included), so its peak resident memory is its own:

* ``e2e-threads``: ``mask_stac(Job(...))`` with Dask's threaded scheduler into a local Zarr store, timed
  from the STAC search to the completed store;
* ``e2e-cluster``: the same with a ``distributed.LocalCluster(n_workers=2, threads_per_worker=1)`` and
  its ``Client`` as the default (what ``xs2mask mask-stac --workers 2`` starts); cluster start-up is not
  timed. The peak RSS of each worker process is read from ``/proc/PID/status`` (``VmHWM``) at the end
  and, as a cross-check, sampled every 0.2 s from a thread of the client process;
* ``model-only``: the same cube loaded with ``xs2mask.stac.load`` and computed into memory (not timed),
  then ``xs2mask.predict`` on the numpy cube (one block, every core).

Usage::

    python benchmarks/bench_pipeline.py [--sizes 2048 4096] [--dates 2] [--repeat 1] \
        [--cases e2e-threads e2e-cluster model-only] [--model-only-sizes 2048] [--max-busy 0.3] \
        [--block 1024 --batch 2] [--out-md results.md] [--json results.json]

``--block`` and ``--batch`` are passed to ``Store``: with the default block (about 4096 px) every area up
to 4096 x 4096 px is one slab per date, so to see whether memory stays flat as the area grows, fix the
slab (e.g. ``--block 1024 --batch 2``) and compare areas that split into more slabs.

Prints a markdown table per run: wall time, throughput (dates x H x W / wall time), CPU time, peak RSS
of the process and of each worker, the time spent outside ``dask.compute`` (search, graph building,
Zarr metadata), the CPU other processes used meanwhile, and the share of pixels on which each
end-to-end mask equals the model-only mask of the same area. Exits 0 with a message when
``../shared/data`` is absent.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import harness
import numpy as np
from inputs import CATALOGUE_CACHE, CATALOGUE_MODEL, CHIP, COLLECTION, RES, cached_catalogue

CHUNK = 1024  # Job's default: the pipeline's chunks, so model-only runs on the same chunked loads
CASES = ("e2e-threads", "e2e-cluster", "model-only")
N_WORKERS = 2


# --------------------------------------------------------------------------- child process


def _vm_hwm_mb(pid: int) -> float | None:
    """Peak resident memory of a living process in MB (``VmHWM``, Linux only)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


class RssSampler(threading.Thread):
    """Largest RSS of each process seen every ``interval`` seconds (a cross-check of ``VmHWM``)."""

    def __init__(self, pids: list[int], interval: float = 0.2) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        import psutil

        self.procs = {pid: psutil.Process(pid) for pid in pids}
        self.peak = dict.fromkeys(pids, 0.0)
        self.interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            for pid, proc in self.procs.items():
                with contextlib.suppress(Exception):  # a worker may be restarting
                    self.peak[pid] = max(self.peak[pid], proc.memory_info().rss / 2**20)
            self._stop_event.wait(self.interval)

    def stop(self) -> dict[int, float]:
        self._stop_event.set()
        self.join()
        return self.peak


class SlabClock:
    """``progress`` hook of ``mask_stac``: when the first slab starts and how many there are."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.first: float | None = None
        self.slabs = 0

    def __call__(self, iterator, total: int):
        self.slabs = total
        for slab in iterator:
            if self.first is None:
                self.first = time.perf_counter() - self.start
            yield slab


class ComputeClock:
    """Time spent inside ``dask.compute``: the pipeline's slab batches (reads, model, writes).

    ``xs2mask.store`` calls ``dask.compute`` through the module at run time, so wrapping the module
    attribute here measures it without touching the package. The rest of the wall time is the search,
    graph building and Zarr metadata.
    """

    def __init__(self) -> None:
        import dask

        self.seconds = 0.0
        self.calls = 0
        self._dask = dask
        self._real = dask.compute

        def timed(*args: Any, **kwargs: Any):
            t = time.perf_counter()
            try:
                return self._real(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t
                self.calls += 1

        dask.compute = timed

    def close(self) -> None:
        self._dask.compute = self._real


def run_case(
    case: str,
    url: str,
    bbox: list[float],
    datetime: str,
    store: str,
    mask: str,
    block: int | None = None,
    batch: int | None = None,
) -> dict[str, Any]:
    """Run one case in this (fresh) process; save its mask (uint8) and return timings and memory."""
    # imported before the clock starts: imports are not timed
    import dask
    import distributed
    import onnxruntime  # noqa: F401
    import psutil
    import rioxarray  # noqa: F401
    import stackstac  # noqa: F401
    import zarr  # noqa: F401

    import xs2mask
    from xs2mask.pipeline import Job, Load, Predict, Search, Store, mask_stac
    from xs2mask.stac import load, search

    if case not in CASES:
        raise ValueError(f"unknown case {case!r}; choose from {', '.join(CASES)}")
    result: dict[str, Any] = {"case": case}
    cluster = client = None
    workers: dict[int, dict[str, Any]] = {}
    if case == "e2e-cluster":
        t = time.perf_counter()
        # What `xs2mask mask-stac --workers 2` starts: one Dask thread per worker process.
        cluster = distributed.LocalCluster(n_workers=N_WORKERS, threads_per_worker=1)
        client = distributed.Client(cluster)  # the default client from here on
        result["cluster_start_s"] = time.perf_counter() - t
        pids = sorted(client.run(os.getpid).values())
        workers = {pid: {"rss_before_mb": harness.rss_mb(pid)} for pid in pids}
        worker_cpu = {pid: sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids}
        sampler = RssSampler([*pids, os.getpid()])
        sampler.start()

    if case == "model-only":
        items = search(url, collections=COLLECTION, bbox=bbox, datetime=datetime, sign=False)
        t = time.perf_counter()
        lazy = load(items, bounds_latlon=bbox, resolution=RES, chunks=CHUNK, model=CATALOGUE_MODEL)
        with dask.config.set(scheduler="threads"):
            cube = lazy.compute()  # not timed: the model alone is measured
        result["load_s"] = time.perf_counter() - t
        with harness.Stopwatch() as watch:
            ds = xs2mask.predict(cube, model=CATALOGUE_MODEL)  # numpy in: computed now, one block, every core
    else:
        job = Job(
            Search(url, (COLLECTION,), tuple(bbox), datetime),
            Store(store, block=block, batch=batch),
            load=Load(chunks=CHUNK),
            predict=Predict(model=CATALOGUE_MODEL),
        )
        compute = ComputeClock()
        ctx = dask.config.set(scheduler="threads") if case == "e2e-threads" else contextlib.nullcontext()
        with ctx, harness.Stopwatch() as watch:
            clock = SlabClock(watch.start)
            ds = mask_stac(job, sign=False, progress=clock)
        compute.close()
        result.update(setup_s=clock.first, slabs=clock.slabs, compute_s=compute.seconds)
        result["compute_calls"] = compute.calls
    result.update(watch.figures())

    if client is not None:
        sampled = sampler.stop()
        for pid in workers:
            proc = psutil.Process(pid)
            result["cpu_seconds"] += sum(proc.cpu_times()[:2]) - worker_cpu[pid]
            workers[pid].update(peak_rss_mb=_vm_hwm_mb(pid), sampled_peak_mb=sampled[pid])
        # A worker that was restarted (e.g. over its memory limit) has another pid: say so.
        result["workers_restarted"] = sorted(client.run(os.getpid).values()) != sorted(workers)
        result["client_sampled_peak_mb"] = sampled[os.getpid()]
        client.close()
        cluster.close()

    out = np.asarray(ds["mask"].values, np.uint8)  # read back from the store (not timed)
    np.save(mask, out)
    result.update(
        shape=list(out.shape),
        megapixels=out.size / 1e6,
        # the child's whole peak, the read-back from the store included
        peak_rss_mb=harness.peak_rss_mb(),
        workers=[{"pid": pid, **w} for pid, w in workers.items()],
        versions=harness.versions("onnxruntime", "dask", "distributed", "zarr", "xs2mask"),
    )
    return result


# --------------------------------------------------------------------------- report


def worker_figures(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per worker: the largest peak RSS over the runs; RSS after start and sampled peak of the fastest."""
    best = min(runs, key=lambda r: r["seconds"])
    return {
        "worker_peak_rss_mb": [
            max((r["workers"][i]["peak_rss_mb"] or 0.0) for r in runs) for i in range(len(best["workers"]))
        ],
        "worker_rss_before_mb": [w["rss_before_mb"] for w in best["workers"]],
        "worker_sampled_peak_mb": [w["sampled_peak_mb"] for w in best["workers"]],
    }


def markdown(rows: list[dict[str, Any]], agreement: dict[tuple[int, str], float]) -> str:
    """The results as a markdown table."""
    columns = ["area (px)", "case", "Mpx (dates x H x W)", "wall s", "Mpx/s", "setup s", "outside compute s"]
    columns += ["CPU s", "peak RSS MB (process)", "peak RSS MB per worker", "other load (cores)"]
    cells = []
    for r in rows:
        t, h, w = r["shape"]
        outside = r["seconds"] - r["compute_s"] if "compute_s" in r else None
        cells.append(
            [
                str(r["size"]),
                r["case"],
                f"{r['megapixels']:.1f} ({t} x {h} x {w})",
                f"{r['seconds']:.1f}",
                f"{r['mpx_per_s']:.3f}",
                harness.fmt(r.get("setup_s"), "{:.1f}"),
                harness.fmt(outside, "{:.1f}"),
                f"{r['cpu_seconds']:.1f}",
                f"{r['peak_rss_mb']:.0f}",
                " / ".join(f"{m:.0f}" for m in r["worker_peak_rss_mb"]),
                harness.fmt(r["other_cores"], "{:.2f}"),
                harness.fmt(agreement.get((r["size"], r["case"])), "{:.4f} %"),
            ]
        )
    return harness.markdown_table([*columns, "same mask as model-only"], cells, left=2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096], help="area edges in px")
    parser.add_argument("--dates", type=int, default=2, help="dates (items) per area (default 2)")
    parser.add_argument(
        "--model-only-sizes",
        type=int,
        nargs="+",
        help="sizes at which model-only runs (default: the smallest of --sizes)",
    )
    parser.add_argument("--out-md", type=Path, help="also write the markdown table to this file")
    harness.add_run_options(parser, CATALOGUE_CACHE, "where catalogues are cached", cases=CASES)
    parser.add_argument(
        "--block", type=int, help="slab edge in px for the e2e cases (Store.block; default: about 4096)"
    )
    parser.add_argument(
        "--batch", type=int, help="slabs computed together in the e2e cases (Job.batch; default: auto)"
    )
    args = harness.parse_args(parser, argv, run_case, needs="cloud_cover_chips")
    if args is None:
        return 0
    if any(s < CHIP or s % CHIP for s in args.sizes):
        parser.error(f"--sizes must be multiples of the {CHIP} px chips")
    model_only_sizes = set(args.model_only_sizes or [min(args.sizes)])

    total = time.perf_counter()
    print(f"CPU: {harness.cpu_name()}; xs2mask source: {harness.source_version()}", flush=True)
    if args.block or args.batch:
        print(f"e2e cases with block={args.block} batch={args.batch} (None: the pipeline's default)")
    catalogues = {}
    for size in args.sizes:
        t = time.perf_counter()
        catalogues[size] = cached_catalogue(args.data, args.cache, size, args.dates)
        print(
            f"catalogue {size} x {size} px, {args.dates} dates: {time.perf_counter() - t:.1f} s "
            f"({args.cache})",
            flush=True,
        )

    runs: list[dict[str, Any]] = []
    masks: dict[tuple[int, str], np.ndarray] = {}
    servers = harness.tests_module("servers")
    with (
        tempfile.TemporaryDirectory(prefix="xs2mask-bench-pipeline-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        urls = {
            size: stack.enter_context(
                servers.serve_items(cat["items"], cat["collections"], workdir=Path(tmp) / f"api{size}")
            )
            for size, cat in catalogues.items()
        }
        keys = [
            (size, case)
            for size in args.sizes
            for case in args.cases
            if case != "model-only" or size in model_only_sizes
        ]
        for turn in harness.interleave(keys, args.repeat, args):
            size, case = turn.case
            store = Path(tmp) / f"{case}-{size}-{turn.round}.zarr"
            mask_path = Path(tmp) / f"{case}-{size}.npy"
            cat = catalogues[size]
            spec = {"case": case, "url": urls[size], "bbox": cat["bbox"], "datetime": cat["datetime"]}
            spec.update(store=store, mask=mask_path, block=args.block, batch=args.batch)
            result = harness.spawn(__file__, spec, args.timeout)
            result["size"] = size
            runs.append(result)
            workers = " / ".join(f"{w['peak_rss_mb']:.0f}" for w in result["workers"])
            harness.print_run(
                turn,
                args.repeat,
                result,
                f"{size} px {case}",
                after_seconds=f" ({result['megapixels'] / result['seconds']:.3f} Mpx/s; process "
                f"{result['process_wall_s']:.1f} s)",
                after_rss=f", workers {workers} MB" if workers else "",
            )
            if (size, case) not in masks:
                masks[size, case] = np.load(mask_path)
            shutil.rmtree(store, ignore_errors=True)  # only the mask is kept

    agreement: dict[tuple[int, str], float] = {}
    for (size, case), mask in masks.items():
        ref = masks.get((size, "model-only"))
        if ref is not None and ref.shape == mask.shape:
            agreement[size, case] = 100.0 * float(np.mean(mask == ref))

    rows = harness.summarise(runs, key=lambda r: (r["size"], r["case"]), extra=worker_figures)
    table = markdown(rows, agreement)
    notes = []
    for r in rows:
        if r["case"] == "e2e-cluster":
            before = " / ".join(f"{m:.0f}" for m in r["worker_rss_before_mb"])
            sampled = " / ".join(f"{m:.0f}" for m in r["worker_sampled_peak_mb"])
            notes.append(
                f"{r['size']} px e2e-cluster: cluster start {r['cluster_start_s']:.1f} s (not timed); worker "
                f"RSS after start {before} MB, sampled peak {sampled} MB; client process (scheduler "
                f"included) sampled peak {r['client_sampled_peak_mb']:.0f} MB"
                + ("; A WORKER WAS RESTARTED" if r["workers_restarted"] else "")
            )
        if r["case"].startswith("e2e"):
            notes.append(
                f"{r['size']} px {r['case']}: {r['slabs']} slabs, {r['compute_calls']} dask.compute calls "
                f"({r['compute_s']:.1f} s); all runs {', '.join(f'{s:.1f}' for s in r['all_seconds'])} s"
            )
        if r["case"] == "model-only":
            notes.append(
                f"{r['size']} px model-only: load into memory {r['load_s']:.1f} s (not timed); all runs "
                f"{', '.join(f'{s:.1f}' for s in r['all_seconds'])} s"
            )
    print()
    print(table)
    print()
    print("\n".join(notes))
    warning = harness.source_warning(runs)
    if warning:
        print(warning)
    print(f"total {time.perf_counter() - total:.0f} s")
    if args.out_md:
        args.out_md.write_text(table + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
        print(f"wrote {args.out_md}")
    harness.write_json(
        args.json,
        {
            "sizes": args.sizes,
            "dates": args.dates,
            "repeat": args.repeat,
            **harness.environment(runs),
            "model": CATALOGUE_MODEL,
            "chunk": CHUNK,
            "workers": N_WORKERS,
            "block": args.block,
            "batch": args.batch,
            "rows": rows,
            "runs": runs,
            "same_mask_as_model_only_percent": {f"{s} {c}": v for (s, c), v in agreement.items()},
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
