"""Benchmark ``xs2mask.predict`` against ukis-csmask on a 2048 x 2048 cube of real Sentinel-2 pixels.

The cube is a mosaic of real 6-band patches (B02 B03 B04 B08 B11 B12) from ``../shared/data``:
the cloudy and three clear SEN12MS-CR patches (L1C, 256 x 256) and four BigEarthNet patches (L2A,
120 x 120: clouds, fields, snow). The 512 x 512 mosaic is mirror-tiled (``np.pad(mode="symmetric")``)
to the requested size, so the scene is seamless and keeps the clouds, snow, land and sea of the real
patches. It is cached as a ``.npy`` file (reflectance, float32, ``(band, y, x)``) under the temp dir,
never in the repository (``inputs.cached_cube``).

Every case runs in its own fresh Python process (``harness.spawn``), so its peak resident memory
(``ru_maxrss``) is its own and every run is cold (model loading included in the timed section,
imports excluded):

* ``xs2mask-dask``: ``xs2mask.predict`` on the cube as a Dask array chunked 1024 x 1024, computed with
  the threaded scheduler;
* ``xs2mask-numpy``: ``xs2mask.predict`` on the numpy cube (one block);
* ``csmask-t0`` / ``csmask-t2``: ``ukis_csmask.mask.CSmask`` on the same pixels, with
  ``intra_op_num_threads`` 0 (onnxruntime's choice) and 2;
* ``xs2mask-dask-t1`` (only when named in ``--cases``): the Dask case with ``threads=1``, one
  onnxruntime thread per task, so the scheduler's threads do not oversubscribe the cores.

Usage::

    python benchmarks/bench_predict.py [--size 2048] [--repeat 1] [--json results.json]

Prints a markdown table of wall time, throughput, CPU time and peak RSS per case, the throughput
ratio xs2mask / CSmask (the faster CSmask setting) and the share of pixels on which each xs2mask run
agrees with CSmask (CSmask classes 0, 1, 2 mapped to the xs2mask codes 0, 1, 3). Exits 0 with a
message when ``../shared/data`` is absent.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import harness
import numpy as np
from inputs import CUBE_BANDS, cached_cube, csmask

MODEL = "ukis-csmask-6b-l2a"
CHUNK = 1024
CASES = ("xs2mask-dask", "xs2mask-numpy", "csmask-t0", "csmask-t2")
# Optional: the Dask case with one onnxruntime thread per task (the scheduler's 2 threads give parallelism)
EXTRA_CASES = ("xs2mask-dask-t1",)


# --------------------------------------------------------------------------- child process


def run_case(case: str, cube: str, mask: str) -> dict[str, Any]:
    """Run one case in this (fresh) process; save its mask (uint8, xs2mask codes) and return timings."""
    # imported before the clock starts: imports are not timed
    import dask
    import dask.array as dsa
    import onnxruntime  # noqa: F401
    import ukis_csmask.mask  # noqa: F401
    import xarray as xr

    import xs2mask

    pixels = np.load(cube)
    _, h, w = pixels.shape
    coords = {"band": list(CUBE_BANDS), "y": np.arange(h) * -10.0, "x": np.arange(w) * 10.0}
    if case not in CASES + EXTRA_CASES:
        raise ValueError(f"unknown case {case!r}; choose from {', '.join(CASES + EXTRA_CASES)}")
    with harness.Stopwatch() as watch:
        if case in ("xs2mask-dask", "xs2mask-dask-t1"):
            lazy = dsa.from_array(pixels, chunks=(len(CUBE_BANDS), CHUNK, CHUNK))
            threads = 1 if case.endswith("-t1") else 0
            ds = xs2mask.predict(
                xr.DataArray(lazy, dims=("band", "y", "x"), coords=coords), model=MODEL, threads=threads
            )
            with dask.config.set(scheduler="threads"):
                out = ds["mask"].compute().values
        elif case == "xs2mask-numpy":
            ds = xs2mask.predict(xr.DataArray(pixels, dims=("band", "y", "x"), coords=coords), model=MODEL)
            out = ds["mask"].values
        else:
            out = csmask(pixels, int(case.removeprefix("csmask-t")))
    np.save(mask, np.asarray(out, np.uint8))
    return {
        "case": case,
        "megapixels": h * w / 1e6,
        **watch.figures(),
        "versions": harness.versions("onnxruntime", "dask", "xs2mask"),
    }


# --------------------------------------------------------------------------- report


def markdown(rows: list[dict[str, Any]], agreement: dict[str, float]) -> str:
    """The results as a markdown table."""
    columns = ["case", "wall s", "Mpx/s", "CPU s", "peak RSS MB", "RSS before MB", "other load (cores)"]
    cells = [
        [
            r["case"],
            *harness.figure_cells(r),
            f"{r['rss_before_mb']:.0f}",
            harness.fmt(r["other_cores"], "{:.2f}"),
            harness.fmt(agreement.get(r["case"]), "{:.2f} %"),
        ]
        for r in rows
    ]
    return harness.markdown_table([*columns, "agrees with CSmask"], cells)


def class_table(masks: dict[str, np.ndarray]) -> tuple[str, dict[str, dict[str, float]]]:
    """Share of each class in each case's mask, as a markdown table and as numbers."""
    names = {0: "clear", 1: "cloud", 2: "thin cloud", 3: "shadow", 255: "no-data"}
    shares = {
        case: {
            names.get(int(c), str(c)): 100.0 * n / mask.size
            for c, n in zip(*np.unique(mask, return_counts=True), strict=True)
        }
        for case, mask in masks.items()
    }
    columns = [n for n in names.values() if any(n in s for s in shares.values())]
    cells = [[case, *(f"{share.get(c, 0.0):.2f}" for c in columns)] for case, share in shares.items()]
    return harness.markdown_table(["case", *(f"{c} %" for c in columns)], cells), shares


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="cube edge in pixels (default 2048)")
    harness.add_run_options(
        parser, cases=CASES, extra_cases=EXTRA_CASES, cache_help="where the cube is cached"
    )
    args = harness.parse_args(parser, argv, run_case, needs="sen12ms_cr")
    if args is None:
        return 0
    if args.size < 256:
        parser.error("--size must be at least 256 (the models' patch size)")

    cube_path = cached_cube(args.data, args.cache, args.size)
    print(
        f"cube {cube_path} ({args.size} x {args.size} x {len(CUBE_BANDS)}); CPU: {harness.cpu_name()}",
        flush=True,
    )
    print(f"xs2mask source: {harness.source_version()}", flush=True)

    runs: list[dict[str, Any]] = []
    masks: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="xs2mask-bench-") as tmp:
        for turn in harness.interleave(args.cases, args.repeat, args):
            mask_path = Path(tmp) / f"{turn.case}.npy"
            spec = {"case": turn.case, "cube": cube_path, "mask": mask_path}
            result = harness.spawn(__file__, spec, args.timeout)
            runs.append(result)
            harness.print_run(turn, args.repeat, result)
            if turn.case not in masks:
                masks[turn.case] = np.load(mask_path)

    rows = harness.summarise(runs)
    csmask_rows = [r for r in rows if r["case"].startswith("csmask")]
    reference = max(csmask_rows, key=lambda r: r["mpx_per_s"]) if csmask_rows else None
    agreement: dict[str, float] = {}
    if reference is not None:
        ref_mask = masks[reference["case"]]
        for case, mask in masks.items():
            agreement[case] = 100.0 * float(np.mean(mask == ref_mask))

    print()
    print(markdown(rows, agreement))
    print()
    classes, shares = class_table(masks)
    print(classes)
    print()
    ratios: dict[str, float] = {}
    if reference is not None:
        print(f"reference: {reference['case']} (the faster CSmask setting); agreement is with its mask")
        for r in rows:
            if r["case"].startswith("xs2mask"):
                ratios[r["case"]] = r["mpx_per_s"] / reference["mpx_per_s"]
                verdict = "meets" if ratios[r["case"]] >= 1.0 else "misses"
                print(
                    f"{r['case']} / {reference['case']} Mpx/s ratio: {ratios[r['case']]:.3f} "
                    f"({verdict} the >= 1.0 target)"
                )
    warning = harness.source_warning(runs)
    if warning:
        print(warning)
    if {"xs2mask-dask", "xs2mask-numpy"} <= masks.keys():
        same = 100.0 * float(np.mean(masks["xs2mask-dask"] == masks["xs2mask-numpy"]))
        print(f"xs2mask dask vs numpy masks identical on {same:.4f} % of pixels")

    harness.write_json(
        args.json,
        {
            "size": args.size,
            "megapixels": args.size**2 / 1e6,
            "repeat": args.repeat,
            **harness.environment(runs),
            "model": MODEL,
            "chunk": CHUNK,
            "rows": rows,
            "runs": runs,
            "agreement_percent": agreement,
            "class_percent": shares,
            "reference": None if reference is None else reference["case"],
            "ratio_vs_csmask": ratios,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
