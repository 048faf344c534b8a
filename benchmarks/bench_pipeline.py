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
``/tmp/xs2mask-bench-pipeline`` and rebuilt when missing.

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
import copy
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

# Shared with the model-only benchmark: outside-load accounting, idle wait, machine and source names.
from bench_predict import _cpu_jiffies, _fmt, add_run_options, cpu_name, source_version, wait_for_idle

MODEL = "ukis-csmask-4b-l2a"
BANDS = ("B02", "B03", "B04", "B08")
COLLECTION = "sentinel-2-l2a"
CHUNK = 1024  # Job's default: the pipeline's chunks, so model-only runs on the same chunked loads
CHIP = 512
CASES = ("e2e-threads", "e2e-cluster", "model-only")
N_WORKERS = 2
CATALOGUE_VERSION = 1  # bump when the catalogue recipe changes, to invalidate cached catalogues

# UTM 36S on its central meridian near chip adwp (Tanzania, 2.5 S): grid north is true north there, so
# the lon/lat bbox of the grid transforms back onto the grid with almost no margin.
EPSG = 32736
CENTRE_X, CENTRE_Y = 500_000.0, 9_720_000.0
TILE = "36MWC"  # MGRS square of the centre, used as a tile name only
LATTICE = 60.0  # Sentinel-2 tile origins are multiples of 60 m
RES = 10.0
INSET = 3e-5  # degrees, about 3.3 m: the search bbox lies this far inside the grid
BASELINE = "05.11"
OFFSET_DN = 1000  # files of baseline >= 04.00 hold DN + 1000 (BOA_ADD_OFFSET -1000)
FIRST_DAY = dt.datetime(2024, 5, 3, 8, 20, 47, tzinfo=dt.timezone.utc)
REVISIT = dt.timedelta(days=10)
TEMPLATE = "stac_items/api_responses/planetarycomputer_microsoft_com__sentinel-2-l2a.json"
PC_COLLECTION = "stac_items/odc_stac/sentinel-2-l2a.collection.json"

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "xs2mask-bench-pipeline"


def _servers():
    """``tests/servers.py``: the rustac STAC API and the COG writer the pipeline tests use."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import servers

    return servers


# --------------------------------------------------------------------------- catalogue


def _chips(data: Path) -> list[Path]:
    folder = data / "cloud_cover_chips"
    return sorted(p for p in folder.iterdir() if p.is_dir() and all((p / f"{b}.tif").exists() for b in BANDS))


def _read(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        return src.read(1)


def mosaic(chips: list[Path], size: int, date: int) -> tuple[dict[str, np.ndarray], float]:
    """DN ``(size, size)`` per band (uint16, 0 = no data) and the labelled cloud fraction of one date."""
    n = size // CHIP
    # A seeded order per date, so the dates differ; chips repeat where the area needs more than there are.
    order = np.random.default_rng(date).permutation(len(chips))
    cells = [chips[order[k % len(chips)]] for k in range(n * n)]
    out = {b: np.zeros((size, size), np.uint16) for b in BANDS}
    cloud = 0.0
    for k, chip in enumerate(cells):
        rows, cols = slice(k // n * CHIP, (k // n + 1) * CHIP), slice(k % n * CHIP, (k % n + 1) * CHIP)
        for b in BANDS:
            out[b][rows, cols] = _read(chip / f"{b}.tif")
        label = chip / "label.tif"
        cloud += float(_read(label).mean()) if label.exists() else 0.0
    return out, cloud / len(cells)


def _grid(size: int):
    """10 m affine transform of the area, its origin on the 60 m lattice."""
    from affine import Affine

    x0 = round((CENTRE_X - size * RES / 2) / LATTICE) * LATTICE
    y1 = round((CENTRE_Y + size * RES / 2) / LATTICE) * LATTICE
    return Affine(RES, 0.0, x0, 0.0, -RES, y1)


def _lonlat(transform, size: int) -> tuple[dict[str, Any], tuple[float, ...], tuple[float, ...]]:
    """Footprint polygon, its outer bbox and the inner bbox (inside the grid) in lon/lat."""
    from rasterio.warp import transform as warp

    corners = [(0, 0), (size, 0), (size, size), (0, size)]
    xs, ys = zip(*(transform * c for c in corners), strict=True)
    lons, lats = warp(f"EPSG:{EPSG}", "EPSG:4326", list(xs), list(ys))
    ring = [[round(lo, 7), round(la, 7)] for lo, la in zip(lons, lats, strict=True)]
    geometry = {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}
    outer = (min(lons), min(lats), max(lons), max(lats))
    # corners: 0 top-left, 1 top-right, 2 bottom-right, 3 bottom-left. The inner box is moved in by
    # INSET, more than the bulge of its edges in UTM (1.4 m at 4096 px), so that the loader, which snaps
    # the box outwards to whole pixels, lands on the grid's own edges.
    inner = (
        max(lons[0], lons[3]) + INSET,
        max(lats[2], lats[3]) + INSET,
        min(lons[1], lons[2]) - INSET,
        min(lats[0], lats[1]) - INSET,
    )
    return geometry, outer, inner


def _item(
    template: dict[str, Any],
    when: dt.datetime,
    size: int,
    paths: dict[str, Path],
    cloud: float,
    nodata: float,
) -> dict[str, Any]:
    """A Planetary Computer item for one date of the mosaic, rewritten from a real PC item."""
    transform = _grid(size)
    geometry, outer, _ = _lonlat(transform, size)
    props_t = template["properties"]
    t_when = dt.datetime.fromisoformat(props_t["datetime"].replace("Z", "+00:00"))
    old_major, old_minor = props_t["s2:processing_baseline"].split(".")
    major, minor = BASELINE.split(".")
    text = json.dumps(template)
    for old, new in (
        (props_t["s2:mgrs_tile"], TILE),
        (t_when.strftime("%Y%m%d"), when.strftime("%Y%m%d")),
        (f"N{old_major}{old_minor}", f"N{major}{minor}"),
        (f"N{old_major}.{old_minor}", f"N{major}.{minor}"),
    ):
        text = text.replace(old, new)
    item = json.loads(text)
    item["id"] = f"S2A_MSIL2A_{when:%Y%m%dT%H%M%S}_R021_T{TILE}_bench{size}"
    props = item["properties"]
    props["datetime"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    props["s2:processing_baseline"] = BASELINE
    props["s2:mgrs_tile"] = TILE
    props["proj:epsg"] = EPSG
    props["eo:cloud_cover"] = round(100 * cloud, 4)
    props["s2:nodata_pixel_percentage"] = round(100 * nodata, 6)
    item["geometry"] = geometry
    item["bbox"] = list(outer)
    item["links"] = [lk for lk in item.get("links", []) if lk.get("rel") == "license"]
    left, top = transform * (0, 0)
    right, bottom = transform * (size, size)
    assets = {}
    for band in BANDS:  # only the assets backed by real pixels
        asset = copy.deepcopy(template["assets"][band])
        asset["href"] = str(paths[band])
        asset["proj:shape"] = [size, size]
        asset["proj:transform"] = list(transform)[:6]
        asset["proj:bbox"] = [left, bottom, right, top]
        assets[band] = asset
    item["assets"] = assets
    return item


def build_catalogue(data: Path, folder: Path, size: int, dates: int) -> dict[str, Any]:
    """Write the COGs and items of one area size under ``folder``; return the catalogue description."""
    servers = _servers()
    features = json.loads((data / TEMPLATE).read_text())["features"]
    template = next(f for f in features if "assets" in f)  # some responses hold field-restricted items
    collection = json.loads((data / PC_COLLECTION).read_text())
    collection["links"] = [
        lk for lk in collection["links"] if lk.get("rel") not in ("self", "root", "parent", "items")
    ]
    chips = _chips(data)
    transform = _grid(size)
    items = []
    for d in range(dates):
        when = FIRST_DAY + d * REVISIT
        dn, cloud = mosaic(chips, size, d)
        paths = {}
        for band in BANDS:
            if int(dn[band].max()) + OFFSET_DN > np.iinfo(np.uint16).max:
                raise ValueError(f"{band}: DN + {OFFSET_DN} overflows uint16")
            written = np.where(dn[band] == 0, 0, dn[band].astype(np.uint32) + OFFSET_DN).astype(np.uint16)
            path = folder / f"{when:%Y%m%d}" / f"{band}.tif"
            paths[band] = servers.write_raster(path, written, f"EPSG:{EPSG}", transform)
        nodata = float(np.mean(dn[BANDS[0]] == 0))
        items.append(_item(template, when, size, paths, cloud, nodata))
    _, _, inner = _lonlat(transform, size)
    last = FIRST_DAY + (dates - 1) * REVISIT
    return {
        "size": size,
        "dates": dates,
        "chips": [c.name for c in chips],
        "items": items,
        "collections": [collection],
        # Inside the grid, so the search area does not reach past the mosaic into no data.
        "bbox": [round(v, 7) for v in inner],
        "datetime": f"{FIRST_DAY:%Y-%m-%d}/{last:%Y-%m-%d}",
    }


def cached_catalogue(data: Path, cache: Path, size: int, dates: int) -> dict[str, Any]:
    """The catalogue of one area size, built on first use."""
    folder = cache / f"v{CATALOGUE_VERSION}_{size}px_{dates}d"
    doc = folder / "catalogue.json"
    if not doc.exists():
        tmp = cache / f".{folder.name}.{os.getpid()}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        cat = build_catalogue(data, tmp, size, dates)
        # hrefs point into the final folder: the temporary one is renamed in one step
        text = json.dumps(cat, indent=1).replace(str(tmp), str(folder))
        (tmp / "catalogue.json").write_text(text)
        if folder.exists():  # a half-built folder of an interrupted run
            shutil.rmtree(folder)
        tmp.replace(folder)
    return json.loads(doc.read_text())


# --------------------------------------------------------------------------- child process


def _rss_mb(pid: int | None = None) -> float:
    """Current resident memory of a process in MB."""
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


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


def _cpu_s(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def run_case(
    case: str,
    url: str,
    bbox: list[float],
    datetime: str,
    out: Path,
    mask_path: Path,
    block: int | None = None,
    batch: int | None = None,
):
    """Run one case in this (fresh) process; save its mask (uint8) and return timings and memory."""
    import dask
    import distributed
    import onnxruntime
    import psutil
    import rioxarray  # noqa: F401
    import stackstac  # noqa: F401
    import zarr

    import xs2mask
    from xs2mask.pipeline import Job, Load, Predict, Search, Store, mask_stac
    from xs2mask.stac import load, search

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
        workers = {pid: {"rss_before_mb": _rss_mb(pid)} for pid in pids}
        worker_cpu = {pid: sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids}
        sampler = RssSampler([*pids, os.getpid()])
        sampler.start()

    rss_before = _rss_mb()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    job = Job(
        Search(url, (COLLECTION,), tuple(bbox), datetime),
        Store(str(out), block=block, batch=batch),
        load=Load(chunks=CHUNK),
        predict=Predict(model=MODEL),
    )
    if case in ("e2e-threads", "e2e-cluster"):
        compute = ComputeClock()
        start = time.perf_counter()
        clock = SlabClock(start)
        ctx = dask.config.set(scheduler="threads") if case == "e2e-threads" else contextlib.nullcontext()
        with ctx:
            ds = mask_stac(job, sign=False, progress=clock)
        seconds = time.perf_counter() - start
        compute.close()
        result.update(setup_s=clock.first, slabs=clock.slabs, compute_s=compute.seconds)
        result["compute_calls"] = compute.calls
    elif case == "model-only":
        items = search(url, collections=COLLECTION, bbox=bbox, datetime=datetime, sign=False)
        t = time.perf_counter()
        lazy = load(items, bounds_latlon=bbox, resolution=RES, chunks=CHUNK, model=MODEL)
        with dask.config.set(scheduler="threads"):
            cube = lazy.compute()  # not timed: the model alone is measured
        result["load_s"] = time.perf_counter() - t
        rss_before = _rss_mb()
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        ds = xs2mask.predict(cube, model=MODEL)  # numpy in: computed now, one block, every core
        seconds = time.perf_counter() - start
    else:
        raise ValueError(f"unknown case {case!r}; choose from {', '.join(CASES)}")
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_seconds"] = _cpu_s(cpu) - _cpu_s(cpu_before)

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

    mask = np.asarray(ds["mask"].values, np.uint8)  # read back from the store (not timed)
    np.save(mask_path, mask)
    result.update(
        seconds=seconds,
        shape=list(mask.shape),
        megapixels=mask.size / 1e6,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        rss_before_mb=rss_before,
        workers=[{"pid": pid, **w} for pid, w in workers.items()],
        onnxruntime=onnxruntime.__version__,
        dask=dask.__version__,
        distributed=distributed.__version__,
        zarr=zarr.__version__,
        xs2mask=xs2mask.__version__,
    )
    return result


def spawn(
    case: str,
    cat: dict[str, Any],
    url: str,
    out: Path,
    mask_path: Path,
    timeout: float,
    slabs: list[str] | tuple[str, ...] = (),
):
    """Run ``case`` in a fresh interpreter; add how many cores other processes used meanwhile."""
    cmd = [
        sys.executable,
        __file__,
        "--child",
        case,
        "--url",
        url,
        "--bbox",
        *(repr(v) for v in cat["bbox"]),
        "--datetime",
        cat["datetime"],
        "--store",
        str(out),
        "--mask",
        str(mask_path),
        *slabs,
    ]
    jiffies = _cpu_jiffies()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_wall_s"] = wall
    after = _cpu_jiffies()
    result["other_cores"] = None
    if jiffies is not None and after is not None and after[1] > jiffies[1]:
        # The child's workers are reaped by the child, so their CPU is in RUSAGE_CHILDREN too.
        child = resource.getrusage(resource.RUSAGE_CHILDREN)
        child_cpu = _cpu_s(child) - _cpu_s(children)
        machine_cpu = (os.cpu_count() or 1) * wall * (after[0] - jiffies[0]) / (after[1] - jiffies[1])
        result["other_cores"] = max(0.0, (machine_cpu - child_cpu) / wall)
    return result


# --------------------------------------------------------------------------- report


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (size, case): the fastest run, the largest peak RSS of the process and per worker."""
    rows = []
    for key in dict.fromkeys((r["size"], r["case"]) for r in runs):
        mine = [r for r in runs if (r["size"], r["case"]) == key]
        best = min(mine, key=lambda r: r["seconds"])
        worker_peaks = [
            max((r["workers"][i]["peak_rss_mb"] or 0.0) for r in mine) for i in range(len(best["workers"]))
        ]
        rows.append(
            {
                **{k: v for k, v in best.items() if k != "workers"},
                "all_seconds": [r["seconds"] for r in mine],
                "mpx_per_s": best["megapixels"] / best["seconds"],
                "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
                "worker_peak_rss_mb": worker_peaks,
                "worker_rss_before_mb": [w["rss_before_mb"] for w in best["workers"]],
                "worker_sampled_peak_mb": [w["sampled_peak_mb"] for w in best["workers"]],
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], agreement: dict[tuple[int, str], float]) -> str:
    """The results as a markdown table."""
    lines = [
        "| area (px) | case | Mpx (dates x H x W) | wall s | Mpx/s | setup s | outside compute s | CPU s "
        "| peak RSS MB (process) | peak RSS MB per worker | other load (cores) | same mask as model-only |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        t, h, w = r["shape"]
        outside = r["seconds"] - r["compute_s"] if "compute_s" in r else None
        workers = " / ".join(f"{m:.0f}" for m in r["worker_peak_rss_mb"])
        agree = _fmt(agreement.get((r["size"], r["case"])), "{:.4f} %")
        lines.append(
            f"| {r['size']} | {r['case']} | {r['megapixels']:.1f} ({t} x {h} x {w}) | {r['seconds']:.1f} "
            f"| {r['mpx_per_s']:.3f} | {_fmt(r.get('setup_s'), '{:.1f}')} | {_fmt(outside, '{:.1f}')} "
            f"| {r['cpu_seconds']:.1f} | {r['peak_rss_mb']:.0f} | {workers} "
            f"| {_fmt(r['other_cores'], '{:.2f}')} | {agree} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096], help="area edges in px")
    parser.add_argument("--dates", type=int, default=2, help="dates (items) per area (default 2)")
    parser.add_argument("--repeat", type=int, default=1, help="fresh-process runs per case; best is kept")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument(
        "--model-only-sizes",
        type=int,
        nargs="+",
        help="sizes at which model-only runs (default: the smallest of --sizes)",
    )
    parser.add_argument("--out-md", type=Path, help="also write the markdown table to this file")
    add_run_options(parser, DEFAULT_CACHE, "where catalogues are cached")
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--bbox", type=float, nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--datetime", help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mask", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--block", type=int, help="slab edge in px for the e2e cases (Store.block; default: about 4096)"
    )
    parser.add_argument(
        "--batch", type=int, help="slabs computed together in the e2e cases (Job.batch; default: auto)"
    )
    args = parser.parse_args(argv)

    if args.child:
        result = run_case(
            args.child, args.url, args.bbox, args.datetime, args.store, args.mask, args.block, args.batch
        )
        print(json.dumps(result))
        return 0
    if not (args.data / "cloud_cover_chips").is_dir():
        print(f"shared data not found at {args.data}: nothing to benchmark (pass --data)")
        return 0
    if any(s < CHIP or s % CHIP for s in args.sizes):
        parser.error(f"--sizes must be multiples of the {CHIP} px chips")
    model_only_sizes = set(args.model_only_sizes or [min(args.sizes)])

    total = time.perf_counter()
    print(f"CPU: {cpu_name()}; xs2mask source: {source_version()}", flush=True)
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
    servers = _servers()
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
        for i in range(args.repeat):
            for size in args.sizes:
                for case in args.cases:  # interleaved, so drift hits every case alike
                    if case == "model-only" and size not in model_only_sizes:
                        continue
                    store = Path(tmp) / f"{case}-{size}-{i}.zarr"
                    mask_path = Path(tmp) / f"{case}-{size}.npy"
                    if args.max_busy is not None:
                        wait_for_idle(args.max_busy, args.idle_timeout)
                    source = source_version()
                    slabs = [f"--{k}={v}" for k, v in (("block", args.block), ("batch", args.batch)) if v]
                    result = spawn(case, catalogues[size], urls[size], store, mask_path, args.timeout, slabs)
                    result.update(size=size, source=source)
                    runs.append(result)
                    workers = " / ".join(f"{w['peak_rss_mb']:.0f}" for w in result["workers"])
                    print(
                        f"  run {i + 1}/{args.repeat} {size} px {case}: {result['seconds']:.1f} s "
                        f"({result['megapixels'] / result['seconds']:.3f} Mpx/s; process "
                        f"{result['process_wall_s']:.1f} s), peak RSS {result['peak_rss_mb']:.0f} MB"
                        + (f", workers {workers} MB" if workers else "")
                        + f", other processes {_fmt(result['other_cores'], '{:.2f}', '?')} cores",
                        flush=True,
                    )
                    if (size, case) not in masks:
                        masks[size, case] = np.load(mask_path)
                    shutil.rmtree(store, ignore_errors=True)  # only the mask is kept

    agreement: dict[tuple[int, str], float] = {}
    for (size, case), mask in masks.items():
        ref = masks.get((size, "model-only"))
        if ref is not None and ref.shape == mask.shape:
            agreement[size, case] = 100.0 * float(np.mean(mask == ref))

    rows = summarise(runs)
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
    sources = sorted({r["source"] for r in runs})
    if len({src.split(" (commit")[0] for src in sources}) > 1:
        print(f"WARNING: the xs2mask source changed during the benchmark: {', '.join(sources)}")
    print(f"total {time.perf_counter() - total:.0f} s")
    if args.out_md:
        args.out_md.write_text(table + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
        print(f"wrote {args.out_md}")
    if args.json:
        meta = (
            {k: runs[0][k] for k in ("onnxruntime", "dask", "distributed", "zarr", "xs2mask")} if runs else {}
        )
        args.json.write_text(
            json.dumps(
                {
                    "sizes": args.sizes,
                    "dates": args.dates,
                    "repeat": args.repeat,
                    "cpu": cpu_name(),
                    "source": sources,
                    "python": platform.python_version(),
                    "numpy": np.__version__,
                    **meta,
                    "model": MODEL,
                    "chunk": CHUNK,
                    "workers": N_WORKERS,
                    "block": args.block,
                    "batch": args.batch,
                    "rows": rows,
                    "runs": runs,
                    "same_mask_as_model_only_percent": {f"{s} {c}": v for (s, c), v in agreement.items()},
                },
                indent=2,
            )
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
