"""Benchmark ``xs2mask.predict`` against ukis-csmask on a 2048 x 2048 cube of real Sentinel-2 pixels.

The cube is a mosaic of real 6-band patches (B02 B03 B04 B08 B11 B12) from ``../shared/data``:
the cloudy and three clear SEN12MS-CR patches (L1C, 256 x 256) and four BigEarthNet patches (L2A,
120 x 120: clouds, fields, snow). The 512 x 512 mosaic is mirror-tiled (``np.pad(mode="symmetric")``)
to the requested size, so the scene is seamless and keeps the clouds, snow, land and sea of the real
patches. It is cached as a ``.npy`` file (reflectance, float32, ``(band, y, x)``) under the temp dir,
never in the repository.

Every case runs in its own fresh Python process, so its peak resident memory (``ru_maxrss``) is its
own and every run is cold (model loading included in the timed section, imports excluded):

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

import numpy as np

BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")
CSMASK_BANDS = ["blue", "green", "red", "nir", "swir16", "swir22"]
MODEL = "ukis-csmask-6b-l2a"
CHUNK = 1024
CASES = ("xs2mask-dask", "xs2mask-numpy", "csmask-t0", "csmask-t2")
# Optional: the Dask case with one onnxruntime thread per task (the scheduler's 2 threads give parallelism)
EXTRA_CASES = ("xs2mask-dask-t1",)
# CSmask classes 0 clear, 1 cloud, 2 shadow -> xs2mask codes 0 clear, 1 thick cloud, 3 cloud shadow
CSMASK_TO_XS2MASK = np.array([0, 1, 3], np.uint8)
CUBE_VERSION = 2  # bump when the mosaic recipe changes, to invalidate cached cubes

# SEN12MS-CR stores all 13 bands: B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12
SEN12MS_INDEX = (1, 2, 3, 7, 11, 12)
SEN12MS_PATCHES = (
    "cloudy_ROIs1868_summer_19_p30.tif",  # land, partly cloudy
    "clear_ROIs1158_spring_15_p30.tif",  # land, clear
    "clear_ROIs1158_spring_101_31.tif",  # open sea
    "clear_ROIs1158_spring_101_32.tif",  # open sea, near coast
)
# BigEarthNet patches (120 x 120, L2A): two cloudy (bright, high SWIR), fields under a cumulus,
# snow-covered mountains (bright, low SWIR: a classic cloud look-alike)
BIGEARTHNET_PATCHES = (45, 50, 46, 18)

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "xs2mask-bench"


# --------------------------------------------------------------------------- cube


def _sen12ms(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        dn = src.read([i + 1 for i in SEN12MS_INDEX])
    return dn.astype(np.float32) / 10_000


def _bigearthnet(path: Path) -> np.ndarray:
    """Four 120 x 120 patches as one 256 x 256 block (2 x 2, mirrored at the edges)."""
    with np.load(path) as npz:
        order = [str(b) for b in npz["band_order"]]
        s2 = npz["s2"][list(BIGEARTHNET_PATCHES)][:, [order.index(b) for b in BANDS]]
    refl = s2.astype(np.float32) / 10_000
    block = np.concatenate(
        [np.concatenate([refl[0], refl[1]], axis=2), np.concatenate([refl[2], refl[3]], axis=2)], axis=1
    )
    pad = (256 - block.shape[1]) // 2
    return np.pad(block, ((0, 0), (pad, pad), (pad, pad)), mode="symmetric")


def build_cube(data: Path, size: int) -> np.ndarray:
    """Reflectance ``(6, size, size)`` float32: a 512 x 512 mosaic of real patches, mirror-tiled."""
    cloudy, land, sea, coast = (_sen12ms(data / "sen12ms_cr" / name) for name in SEN12MS_PATCHES)
    ben = _bigearthnet(data / "bigearthnet" / "configilm_patches.npz")
    # sea and coast share a quarter, split in halves, so the mosaic has land, sea, clouds and a shore
    water = np.concatenate([sea[:, :, :128], coast[:, :, 128:]], axis=2)
    base = np.concatenate(
        [np.concatenate([cloudy, land], axis=2), np.concatenate([water, ben], axis=2)], axis=1
    )
    reps = max(0, size - base.shape[1])
    cube = np.pad(base, ((0, 0), (0, reps), (0, reps)), mode="symmetric")[:, :size, :size]
    return np.ascontiguousarray(cube, np.float32)


def cached_cube(data: Path, cache: Path, size: int) -> Path:
    """Path of the cached cube, building it on first use."""
    path = cache / f"cube_v{CUBE_VERSION}_{size}.npy"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, build_cube(data, size))
        tmp.replace(path)
    return path


# --------------------------------------------------------------------------- child process


def _rss_mb() -> float:
    """Current resident memory of this process in MB (0 when unknown)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return 0.0


def run_case(case: str, cube_path: Path, mask_path: Path) -> dict[str, Any]:
    """Run one case in this (fresh) process; save its mask (uint8, xs2mask codes) and return timings."""
    import dask
    import dask.array as dsa
    import onnxruntime
    import xarray as xr
    from ukis_csmask.mask import CSmask

    import xs2mask

    cube = np.load(cube_path)
    _, h, w = cube.shape
    coords = {"band": list(BANDS), "y": np.arange(h) * -10.0, "x": np.arange(w) * 10.0}
    rss_before = _rss_mb()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)

    start = time.perf_counter()
    if case in ("xs2mask-dask", "xs2mask-dask-t1"):
        lazy = dsa.from_array(cube, chunks=(len(BANDS), CHUNK, CHUNK))
        threads = 1 if case.endswith("-t1") else 0
        ds = xs2mask.predict(
            xr.DataArray(lazy, dims=("band", "y", "x"), coords=coords), model=MODEL, threads=threads
        )
        with dask.config.set(scheduler="threads"):
            mask = ds["mask"].compute().values
    elif case == "xs2mask-numpy":
        ds = xs2mask.predict(xr.DataArray(cube, dims=("band", "y", "x"), coords=coords), model=MODEL)
        mask = ds["mask"].values
    elif case.startswith("csmask-t"):
        threads = int(case.removeprefix("csmask-t"))
        # (rows, cols, bands) view; CSmask copies it when it reorders the bands
        img = np.moveaxis(cube, 0, -1)
        csm = CSmask(img, band_order=CSMASK_BANDS, product_level="l2a", intra_op_num_threads=threads).csm
        mask = CSMASK_TO_XS2MASK[csm[..., 0]]
    else:
        raise ValueError(f"unknown case {case!r}; choose from {', '.join(CASES + EXTRA_CASES)}")
    seconds = time.perf_counter() - start

    cpu = resource.getrusage(resource.RUSAGE_SELF)
    np.save(mask_path, np.asarray(mask, np.uint8))
    return {
        "case": case,
        "seconds": seconds,
        "cpu_seconds": (cpu.ru_utime + cpu.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime),
        "peak_rss_mb": cpu.ru_maxrss / 1024,  # Linux reports KiB
        "rss_before_mb": rss_before,
        "onnxruntime": onnxruntime.__version__,
        "dask": dask.__version__,
        "xs2mask": xs2mask.__version__,
    }


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU jiffies of the whole machine since boot, from ``/proc/stat`` (Linux only)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def busy_cores(seconds: float = 2.0) -> float | None:
    """How many cores the machine keeps busy over the next ``seconds`` (None where unknown)."""
    before = _cpu_jiffies()
    time.sleep(seconds)
    after = _cpu_jiffies()
    if before is None or after is None or after[1] == before[1]:
        return None
    return (os.cpu_count() or 1) * (after[0] - before[0]) / (after[1] - before[1])


def wait_for_idle(max_busy: float, timeout: float) -> float | None:
    """Wait until other processes keep fewer than ``max_busy`` cores busy; return the last reading."""
    deadline = time.monotonic() + timeout
    busy = busy_cores()
    while busy is not None and busy > max_busy and time.monotonic() < deadline:
        busy = busy_cores(5.0)
    if busy is not None and busy > max_busy:
        print(f"  machine still busy ({busy:.2f} cores) after {timeout:.0f} s; running anyway", flush=True)
    return busy


def spawn(
    case: str,
    cube_path: Path,
    mask_path: Path,
    timeout: float,
    script: str = __file__,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run ``case`` of ``script`` in a fresh interpreter; add the cores other processes used meanwhile."""
    cmd = [
        sys.executable,
        script,
        "--child",
        case,
        "--cube",
        str(cube_path),
        "--mask",
        str(mask_path),
        *extra,
    ]
    jiffies = _cpu_jiffies()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    after = _cpu_jiffies()
    result["other_cores"] = None
    if jiffies is not None and after is not None and after[1] > jiffies[1]:
        child = resource.getrusage(resource.RUSAGE_CHILDREN)
        child_cpu = (child.ru_utime + child.ru_stime) - (children.ru_utime + children.ru_stime)
        machine_cpu = (os.cpu_count() or 1) * wall * (after[0] - jiffies[0]) / (after[1] - jiffies[1])
        result["other_cores"] = max(0.0, (machine_cpu - child_cpu) / wall)
    return result


# --------------------------------------------------------------------------- report


def cpu_name() -> str:
    """CPU model and logical core count."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} logical cores"


def summarise(runs: list[dict[str, Any]], megapixels: float) -> list[dict[str, Any]]:
    """One row per case: best wall time over the repeats, the largest peak RSS."""
    rows = []
    for case in dict.fromkeys(r["case"] for r in runs):
        mine = [r for r in runs if r["case"] == case]
        best = min(mine, key=lambda r: r["seconds"])
        rows.append(
            {
                "case": case,
                "seconds": best["seconds"],
                "all_seconds": [r["seconds"] for r in mine],
                "mpx_per_s": megapixels / best["seconds"],
                "cpu_seconds": best["cpu_seconds"],
                "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
                "rss_before_mb": best["rss_before_mb"],
                "other_cores": best.get("other_cores"),
            }
        )
    return rows


def _git(*args: str) -> str:
    root = Path(__file__).resolve().parents[1]
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def source_version() -> str:
    """The measured code: ``src`` tree hash (``-dirty`` with local changes) and the commit it is at.

    The tree hash changes only when the package source does, not with commits to tests or docs.
    """
    try:
        tree = _git("rev-parse", "--short", "HEAD:src")
        dirty = _git("status", "--porcelain", "src")
        commit = _git("rev-parse", "--short", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"src {tree}{'-dirty' if dirty else ''} (commit {commit})"


def _fmt(value: float | None, spec: str, missing: str = "") -> str:
    return missing if value is None else spec.format(value)


def markdown(rows: list[dict[str, Any]], agreement: dict[str, float]) -> str:
    """The results as a markdown table."""
    lines = [
        "| case | wall s | Mpx/s | CPU s | peak RSS MB | RSS before MB | other load (cores) "
        "| agrees with CSmask |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        agree = _fmt(agreement.get(r["case"]), "{:.2f} %")
        lines.append(
            f"| {r['case']} | {r['seconds']:.1f} | {r['mpx_per_s']:.3f} | {r['cpu_seconds']:.1f} "
            f"| {r['peak_rss_mb']:.0f} | {r['rss_before_mb']:.0f} | {_fmt(r['other_cores'], '{:.2f}')} "
            f"| {agree} |"
        )
    return "\n".join(lines)


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
    lines = ["| case | " + " | ".join(f"{c} %" for c in columns) + " |", "|---|" + "---:|" * len(columns)]
    for case, share in shares.items():
        lines.append(f"| {case} | " + " | ".join(f"{share.get(c, 0.0):.2f}" for c in columns) + " |")
    return "\n".join(lines), shares


def add_run_options(parser: argparse.ArgumentParser, cache: Path, cache_help: str) -> None:
    """The options every benchmark here shares: output, data, cache, time limits, waiting for idle."""
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--cache", type=Path, default=cache, help=cache_help)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per case")
    parser.add_argument(
        "--max-busy",
        type=float,
        help="before each case, wait until other processes use fewer than this many cores",
    )
    parser.add_argument("--idle-timeout", type=float, default=300, help="longest wait for --max-busy")
    parser.add_argument("--child", help=argparse.SUPPRESS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048, help="cube edge in pixels (default 2048)")
    parser.add_argument("--repeat", type=int, default=1, help="fresh-process runs per case; best is kept")
    parser.add_argument("--cases", nargs="+", choices=CASES + EXTRA_CASES, default=list(CASES))
    add_run_options(parser, DEFAULT_CACHE, "where the cube is cached")
    parser.add_argument("--cube", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mask", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(run_case(args.child, args.cube, args.mask)))
        return 0
    if not (args.data / "sen12ms_cr").is_dir():
        print(f"shared data not found at {args.data}: nothing to benchmark (pass --data)")
        return 0
    if args.size < 256:
        parser.error("--size must be at least 256 (the models' patch size)")

    cube_path = cached_cube(args.data, args.cache, args.size)
    megapixels = args.size**2 / 1e6
    print(f"cube {cube_path} ({args.size} x {args.size} x {len(BANDS)}); CPU: {cpu_name()}", flush=True)
    print(f"xs2mask source: {source_version()}", flush=True)

    runs: list[dict[str, Any]] = []
    masks: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="xs2mask-bench-") as tmp:
        for i in range(args.repeat):
            for case in args.cases:  # interleaved, so drift hits every case alike
                mask_path = Path(tmp) / f"{case}.npy"
                if args.max_busy is not None:
                    wait_for_idle(args.max_busy, args.idle_timeout)
                source = source_version()
                result = spawn(case, cube_path, mask_path, args.timeout)
                result["source"] = source
                runs.append(result)
                print(
                    f"  run {i + 1}/{args.repeat} {case}: {result['seconds']:.1f} s, "
                    f"peak RSS {result['peak_rss_mb']:.0f} MB, other processes "
                    f"{_fmt(result['other_cores'], '{:.2f}', '?')} cores",
                    flush=True,
                )
                if case not in masks:
                    masks[case] = np.load(mask_path)

    rows = summarise(runs, megapixels)
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
    sources = sorted({r["source"] for r in runs})
    if len({src.split(" (commit")[0] for src in sources}) > 1:
        print(f"WARNING: the xs2mask source changed during the benchmark: {', '.join(sources)}")
    if {"xs2mask-dask", "xs2mask-numpy"} <= masks.keys():
        same = 100.0 * float(np.mean(masks["xs2mask-dask"] == masks["xs2mask-numpy"]))
        print(f"xs2mask dask vs numpy masks identical on {same:.4f} % of pixels")

    if args.json:
        meta = {k: runs[0][k] for k in ("onnxruntime", "dask", "xs2mask")} if runs else {}
        args.json.write_text(
            json.dumps(
                {
                    "size": args.size,
                    "megapixels": megapixels,
                    "repeat": args.repeat,
                    "cpu": cpu_name(),
                    "source": sources,
                    "python": platform.python_version(),
                    "numpy": np.__version__,
                    **meta,
                    "model": MODEL,
                    "chunk": CHUNK,
                    "rows": rows,
                    "runs": runs,
                    "agreement_percent": agreement,
                    "class_percent": shares,
                    "reference": None if reference is None else reference["case"],
                    "ratio_vs_csmask": ratios,
                },
                indent=2,
            )
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
