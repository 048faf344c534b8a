"""Benchmark the whole STAC -> Zarr job beside ``xs2mask.predict`` on the same cube in memory.

The catalogue is the realistic Planetary Computer one of ``tests/support/catalogue.py``, built from
the demo scene shipped in the package (real Sentinel-2 L2A pixels, mirrored up to the area size) and
served by a real STAC API (``rustac serve`` on 127.0.0.1). The search covers its first three passes
(2020-04-29/2020-05-09): a mosaic of three overlapping tiles in two UTM zones, a pass whose swath
edge leaves a third of the scene without data, and a day with a reprocessed duplicate beside a
neighbouring tile; the area is the whole scene less 8 px on each side.

The catalogue's files are written out to disk (``os.sync``) and read once before the first case, so
every case finds them on disk and in the page cache alike, and 8 GiB of memory are touched once (see
``_settle``). Each case runs in a fresh Python process
(imports not timed; the model is loaded inside the timing in both cases), which reports its wall
time and its own peak RSS (``resource.getrusage(RUSAGE_SELF)``; the job's taken when it returns, before
the benchmark reads the whole mask back to compare it):

* ``job``: ``mask_stac(Job(..., predict=Predict(model="xs2mask-4b")))`` into a fresh local Zarr store, from
  the search to the finished store (Dask's threaded scheduler);
* ``predict``: the same items loaded with ``xs2mask.stac.load`` and computed into memory (not timed),
  then ``xs2mask.predict`` on that numpy cube (timed).

Throughput is time steps x height x width / wall time; overhead = job time / predict time - 1. The
masks of both cases are compared (share of equal pixels; 100 % expected). ``--cases job`` runs the
job alone: at areas whose cube does not fit in memory, for the job's peak memory at a fixed slab.

Usage::

    PYTHONPATH=src python benchmarks/bench_job.py [--sizes 2048 4096 8192] [--model xs2mask-4b] \\
        [--block 2048] [--cases job predict] [--repeat 1] [--out-md results.md] [--json results.json]

The children import the same xs2mask as the parent. Needs ``rustac`` and ``shapely`` (the ``test``
extra), not ``../shared/data``. Each size's catalogue is built in a temporary folder (its build time
is in the JSON rows) and removed afterwards: 8192 px takes a few GB of disk for a minute.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
import numpy as np

DATETIME = "2020-04-29/2020-05-09"
MARGIN = 8  # px left out on each side of the scene: the search stays on the generated pixels
CASES = ("job", "predict")
WARM_GIB = 8  # above the largest case's peak RSS (4 GB at 8192 px)


# --------------------------------------------------------------------------- child process


def run_case(
    case: str,
    url: str,
    collections: list[str],
    bbox: list[float],
    model: str,
    work: str,
    block: int | None = None,
) -> dict:
    """Run one case in this (fresh) process; save its mask and return its timings."""
    import xs2mask
    from xs2mask import stac
    from xs2mask.pipeline import Job, Predict, Search, Store, mask_stac

    if case == "job":
        store = Path(work) / "job.zarr"
        # Imported before the clock, as the predict case imports them with its (untimed) load; the job
        # also imports distributed (Dask looks for a client) and planetary_computer (re-signing).
        import contextlib

        import distributed  # noqa: F401
        import rioxarray  # noqa: F401
        import stackstac  # noqa: F401
        import zarr  # noqa: F401

        with contextlib.suppress(ImportError):
            import planetary_computer  # noqa: F401

        with harness.Stopwatch() as watch:
            search = Search(url, tuple(collections), tuple(bbox), DATETIME)
            masks = mask_stac(Job(search, Store(str(store), block=block), predict=Predict(model=model)))
        peak = harness.peak_rss_mb()  # the job's own, before the benchmark reads the whole mask back
        mask = masks["mask"].values
    else:
        items = stac.search(url, collections=collections, bbox=bbox, datetime=DATETIME)
        cube = stac.load(items, bounds_latlon=bbox, model=model).compute()
        with harness.Stopwatch() as watch:
            mask = xs2mask.predict(cube, model=model)["mask"].values
        peak = harness.peak_rss_mb()  # the untimed load included: predict needs the cube in memory
    np.save(Path(work) / f"{case}.npy", mask)
    return {"case": case, **watch.figures(), "peak_rss_mb": peak, "shape": list(mask.shape)}


# --------------------------------------------------------------------------- parent


def bench_size(size: int, args: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    """Build and serve the catalogue of ``size`` px under ``folder``; run each case ``args.repeat`` times."""
    catalogue = harness.tests_module("support.catalogue")
    t = time.perf_counter()
    cat = catalogue.build_catalogue("pc", folder, size=size)
    built = time.perf_counter() - t
    _settle(folder)
    bbox = list(cat.bbox_of(MARGIN, MARGIN, size - 2 * MARGIN, size - 2 * MARGIN))
    rows = []
    results: dict[str, dict[str, Any]] = {}
    with catalogue.serve(cat) as served, tempfile.TemporaryDirectory(prefix="xs2mask-bench-job-") as tmp:
        for turn in harness.interleave(args.cases, args.repeat, args):
            work = Path(tmp) / f"round{turn.round}"
            work.mkdir(exist_ok=True)
            spec = {"case": turn.case, "url": served.url, "collections": list(served.collections),
                    "bbox": bbox, "model": args.model, "work": work, "block": args.block}  # fmt: skip
            results[turn.case] = harness.spawn(__file__, spec, args.timeout)
            if turn.case != args.cases[-1]:
                continue
            same = overhead = float("nan")
            if set(args.cases) == set(CASES):
                job, pred = np.load(work / "job.npy"), np.load(work / "predict.npy")
                same = float((job == pred).mean()) if job.shape == pred.shape else same
                overhead = results["job"]["seconds"] / results["predict"]["seconds"] - 1
            shutil.rmtree(work)  # the round's store and masks: GBs at 8192 px
            steps, h, w = results[args.cases[0]]["shape"]
            for case in args.cases:
                res = results[case]
                rows.append({
                    "size": size, "repeat": turn.round, "case": case, "time_steps": steps, "height": h,
                    "width": w, "seconds": res["seconds"], "mpx_per_s": steps * h * w / 1e6 / res["seconds"],
                    "cpu_seconds": res["cpu_seconds"], "peak_rss_mb": res["peak_rss_mb"],
                    "other_cores": res["other_cores"], "same_as_predict": same, "catalogue_build_s": built,
                    "overhead": overhead,
                })  # fmt: skip
    return rows


def _settle(folder: Path) -> None:
    """Write the freshly built files out and read them once, so both cases find them alike.

    Without this the first case ran while the kernel was still writing the catalogue's GBs back
    to disk, and it alone paid for that: the job of the first round was 10-30 % slower than the
    same job a round later. Then memory is warmed (:func:`harness.warm_memory`): on this VM the first
    process to allocate GBs again was slowed by the host's page faults, and only the job allocates its
    reads inside the timing (predict's untimed load had warmed its pages), so without it the job of
    the first round ran 25-35 % slower than the same job a round later.
    """
    os.sync()
    for path in folder.rglob("*.tif"):
        with path.open("rb") as f:
            while f.read(1 << 24):
                pass
    harness.warm_memory(WARM_GIB)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The results as a markdown table."""
    columns = ["area (px)", "time steps", "case", "wall (s)", "Mpx/s", "peak RSS (MB)", "job overhead"]
    cells = [
        [
            f"{r['height']} x {r['width']}",
            str(r["time_steps"]),
            r["case"],
            f"{r['seconds']:.2f}",
            f"{r['mpx_per_s']:.2f}",
            f"{r['peak_rss_mb']:.0f}",
            f"{100 * r['overhead']:+.0f} %" if r["case"] == "job" and not math.isnan(r["overhead"]) else "",
            f"{100 * r['same_as_predict']:.2f} %" if not math.isnan(r["same_as_predict"]) else "",
        ]
        for r in rows
    ]
    return harness.markdown_table([*columns, "masks equal"], cells, left=len(columns) + 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--model", default="xs2mask-4b")
    parser.add_argument(
        "--block",
        type=int,
        help="the job's slab edge in px (default: the store's); fixed, peak RSS stays flat",
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        choices=CASES,
        default=list(CASES),
        help="the job alone measures its memory at areas whose cube would not fit in memory for predict",
    )
    parser.add_argument("--out-md", type=Path)
    harness.add_run_options(
        parser, cache=None, repeat_help="runs per case, a row each", data=False, timeout=None
    )
    args = harness.parse_args(parser, argv, run_case)
    if args is None:
        return 0
    rows = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix=f"xs2mask-bench-job-{size}-") as folder:
            rows += bench_size(size, args, Path(folder))
    table = markdown(rows)
    note = (
        f"\n\n{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"model {args.model}, slab {args.block or 'default'} px, search {DATETIME} "
        "(3 passes: 3-tile mosaic over 2 UTM zones, swath edge, duplicate + neighbour)"
    )
    print(table + note)
    if args.out_md:
        args.out_md.write_text(table + note + "\n")
    harness.write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
