"""Benchmark the whole STAC -> Zarr job beside ``xs2mask.predict`` on the same cube in memory.

The catalogue is the realistic Planetary Computer one of ``tests/support/catalogue.py``, built from
the demo scene shipped in the package (real Sentinel-2 L2A pixels, mirrored up to the area size) and
served by a real STAC API (``rustac serve`` on 127.0.0.1). The search covers its first three passes
(2020-04-29/2020-05-09): a mosaic of three overlapping tiles in two UTM zones, a pass whose swath
edge leaves a third of the scene without data, and a day with a reprocessed duplicate beside a
neighbouring tile; the area is the whole scene less 8 px on each side.

Each case runs in a fresh Python process (imports not timed; the model is loaded inside the timing in
both cases), which reports its wall time and its own peak RSS (``resource.getrusage(RUSAGE_SELF)``):

* ``job``: ``mask_stac(Job(..., predict=Predict(model="xs2mask-4b")))`` into a fresh local Zarr store, from
  the search to the finished store (Dask's threaded scheduler);
* ``predict``: the same items loaded with ``xs2mask.stac.load`` and computed into memory (not timed),
  then ``xs2mask.predict`` on that numpy cube (timed).

Throughput is time steps x height x width / wall time; overhead = job time / predict time - 1. The
masks of both cases are compared (share of equal pixels; 100 % expected).

Usage::

    PYTHONPATH=src python benchmarks/bench_job.py [--sizes 2048 4096 8192] [--model xs2mask-4b] \\
        [--repeat 1] [--out-md results.md] [--json results.json]

The children import the same xs2mask as the parent. Needs ``rustac`` and ``shapely`` (the ``test``
extra), not ``../shared/data``. Each size's catalogue is built in a temporary folder (its build time
is in the JSON rows) and removed afterwards: 8192 px takes a few GB of disk for a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATETIME = "2020-04-29/2020-05-09"
MARGIN = 8  # px left out on each side of the scene: the search stays on the generated pixels
CASES = ("job", "predict")


def _catalogue_module():
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from support import catalogue

    return catalogue


# --------------------------------------------------------------------------- child process


def run_case(case: str, url: str, collections: list[str], bbox: list[float], model: str, work: Path) -> dict:
    """Run one case in this (fresh) process; save its mask and return its timings."""
    import numpy as np

    import xs2mask
    from xs2mask import stac
    from xs2mask.pipeline import Job, Predict, Search, Store, mask_stac

    result: dict[str, Any] = {"case": case}
    if case == "job":
        store = work / "job.zarr"
        # Imported before the clock, as the predict case imports them with its (untimed) load.
        import rioxarray  # noqa: F401
        import stackstac  # noqa: F401
        import zarr  # noqa: F401

        t = time.perf_counter()
        search = Search(url, tuple(collections), tuple(bbox), DATETIME)
        masks = mask_stac(Job(search, Store(str(store)), predict=Predict(model=model)))
        result["seconds"] = time.perf_counter() - t
        mask = masks["mask"].values
    else:
        items = stac.search(url, collections=collections, bbox=bbox, datetime=DATETIME)
        cube = stac.load(items, bounds_latlon=bbox, model=model).compute()
        t = time.perf_counter()
        mask = xs2mask.predict(cube, model=model)["mask"].values
        result["seconds"] = time.perf_counter() - t
    np.save(work / f"{case}.npy", mask)
    result["shape"] = list(mask.shape)  # (time, y, x)
    # ru_maxrss is in KiB on Linux
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _child(args: argparse.Namespace) -> None:
    spec = json.loads(args.child)
    out = run_case(
        spec["case"], spec["url"], spec["collections"], spec["bbox"], spec["model"], Path(spec["work"])
    )
    print("RESULT " + json.dumps(out), flush=True)


def _spawn(spec: dict[str, Any]) -> dict[str, Any]:
    import xs2mask

    env = dict(os.environ)
    package_root = str(Path(xs2mask.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"case {spec['case']} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


# --------------------------------------------------------------------------- parent


def bench_size(size: int, model: str, repeat: int, folder: Path) -> list[dict[str, Any]]:
    """Build and serve the catalogue of ``size`` px under ``folder``; run each case ``repeat`` times."""
    import numpy as np

    catalogue = _catalogue_module()
    t = time.perf_counter()
    cat = catalogue.build_catalogue("pc", folder, size=size)
    built = time.perf_counter() - t
    bbox = list(cat.bbox_of(MARGIN, MARGIN, size - 2 * MARGIN, size - 2 * MARGIN))
    rows = []
    with catalogue.serve(cat) as served:
        for r in range(repeat):
            with tempfile.TemporaryDirectory(prefix="xs2mask-bench-job-") as tmp:
                results = {}
                for case in CASES:
                    spec = {"case": case, "url": served.url, "collections": list(served.collections),
                            "bbox": bbox, "model": model, "work": tmp}  # fmt: skip
                    results[case] = _spawn(spec)
                job, pred = np.load(Path(tmp) / "job.npy"), np.load(Path(tmp) / "predict.npy")
                same = float((job == pred).mean()) if job.shape == pred.shape else float("nan")
            steps, h, w = results["job"]["shape"]
            for case in CASES:
                res = results[case]
                rows.append({
                    "size": size, "repeat": r, "case": case, "time_steps": steps, "height": h, "width": w,
                    "seconds": res["seconds"], "mpx_per_s": steps * h * w / 1e6 / res["seconds"],
                    "peak_rss_mb": res["peak_rss_mb"], "same_as_predict": same, "catalogue_build_s": built,
                    "overhead": results["job"]["seconds"] / results["predict"]["seconds"] - 1,
                })  # fmt: skip
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| area (px) | time steps | case | wall (s) | Mpx/s | peak RSS (MB) | job overhead | masks equal |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        overhead = f"{100 * r['overhead']:+.0f} %" if r["case"] == "job" else ""
        lines.append(
            f"| {r['height']} x {r['width']} | {r['time_steps']} | {r['case']} | {r['seconds']:.2f} | "
            f"{r['mpx_per_s']:.2f} | {r['peak_rss_mb']:.0f} | {overhead} | "
            f"{100 * r['same_as_predict']:.2f} % |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--model", default="xs2mask-4b")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out-md", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return 0
    rows = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix=f"xs2mask-bench-job-{size}-") as folder:
            rows += bench_size(size, args.model, args.repeat, Path(folder))
    table = markdown(rows)
    note = (
        f"\n\n{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"model {args.model}, search {DATETIME} "
        "(3 passes: 3-tile mosaic over 2 UTM zones, swath edge, duplicate + neighbour)"
    )
    print(table + note)
    if args.out_md:
        args.out_md.write_text(table + note + "\n")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
