"""Speed of OmniCloudMask v4 and CloudS2Mask through xs2mask's engine beside their own code.

The cube is the real cloudy SEN12MS-CR patch (256 x 256 px, 13 L1C bands, DN) mirror-tiled to
``--size`` (default 1024), cached as ``.npy`` under ``--cache``. The published weights cannot be
downloaded on this machine, so both sides run the same seeded random networks, built by the
upstream constructors and saved in the upstream formats (``tests/upstream_models.py``); the
CloudS2Mask pickles are converted once with ``xs2mask models convert clouds2mask``. Random weights
cost the same time as the real ones.

Every case runs in a fresh process (cold: model loading and, for xs2mask, the sha256 check inside
the timed section; imports and reading the cube outside), with 2 torch threads:

* ``ocm-upstream``: ``omnicloudmask.predict_from_array`` on B04 B03 B8A, its defaults (patch 1000,
  overlap 300, batch 1, fp32 on the CPU), the v4 ensemble;
* ``ocm-xs2mask``: ``xs2mask.predict(model="omnicloudmask-v4")``, its defaults (patch 1024, overlap 320);
* ``c2m-upstream``: CloudS2Mask's own patch layout for the cube (``create_patch_metadata``: 500 px,
  overlap 128, odd rows offset), ``make_patches`` and ``run_inference`` (its batching threads, batch
  10 as ``create_settings`` defaults, fp32), network 1 at 10 m; its final blending into a GeoTIFF is
  not timed (it needs a .SAFE folder);
* ``c2m-xs2mask``: ``xs2mask.predict(model="clouds2mask-10m")`` (ONNX, patch 512, overlap 128).

Agreement: share of pixels where xs2mask's mask equals the upstream one (``ocm``; for CloudS2Mask
its argmax of the uint8 probabilities, unblended where patches overlap, so only a rough figure).
The tilings differ by design, so this is not the parity check (``tests/test_published_models.py``).

Usage::

    python benchmarks/bench_published.py [--size 1024] [--repeat 1] [--cases ...] [--max-busy 0.5]

Needs ``xs2mask[parity]`` and ``clouds2mask`` (``pip install --no-deps clouds2mask``). Exits 0 with
a message when ``../shared/data`` or those packages are absent.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_predict import DEFAULT_CACHE, _fmt, add_run_options, cpu_name, source_version, spawn, wait_for_idle

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import upstream_models as up  # the random upstream networks, shared with the tests

CASES = ("ocm-upstream", "ocm-xs2mask", "c2m-upstream", "c2m-xs2mask")
CUBE_VERSION = 1
THREADS = 2


def cached_cube(data: Path, cache: Path, size: int) -> Path:
    """The mirror-tiled real scene (13, size, size) uint16 DN, built on first use."""
    path = cache / f"published_cube_v{CUBE_VERSION}_{size}.npy"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        dn = up.read_scene(data)
        n = dn.shape[-1]
        reps = -(-size // n)
        tiled = np.pad(dn, ((0, 0), (0, reps * n - n), (0, reps * n - n)), mode="symmetric")[:, :size, :size]
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, np.ascontiguousarray(tiled))
        tmp.replace(path)
    return path


def prepare_weights(cache: Path) -> Path:
    """Random upstream networks (OCM safetensors, CloudS2Mask pickles converted by xs2mask), once."""
    folder = cache / f"published_weights_v{CUBE_VERSION}"
    done = folder / "ready"
    if not done.exists():
        from xs2mask.models.convert import convert_clouds2mask

        up.write_ocm_weights(folder / "ocm")
        pickles = up.write_c2m_pickles(folder / "c2m_pickles")
        convert_clouds2mask(pickles[0], folder / "c2m")
        done.write_text("ok\n")
    return folder


# --------------------------------------------------------------------------- child process


def _random_ocm(folder: Path):
    from dataclasses import replace

    import xs2mask
    from xs2mask.models import sha256_file

    spec = xs2mask.models.get("omnicloudmask-v4").with_model_dir(folder)
    members = tuple(
        replace(m, weights=replace(m.weights, sha256=sha256_file(folder / m.weights.filename)))
        for m in spec.members
    )
    return replace(spec, members=members)


def _c2m_upstream(dn: np.ndarray, pickle: Path) -> np.ndarray:
    from types import SimpleNamespace

    from clouds2mask.patch_generator import create_patch_metadata, make_patches

    size = dn.shape[-1]
    # create_patch_metadata lays patches over int(scale_factor * 10980) px
    layout = SimpleNamespace(scale_factor=(size + 0.5) / 10980, patch_size=500, patch_overlap_px=128)
    arrays, meta = make_patches(dn, create_patch_metadata(layout))
    preds = up.c2m_patches(arrays, meta, [pickle], batch_size=10)
    out = np.zeros((4, size, size), np.uint16)
    for p in preds:  # keep the last prediction where patches overlap: enough for a rough agreement
        out[:, p["top"] : p["bottom"], p["left"] : p["right"]] = p["patch_pred"]
    return np.argmax(out, axis=0).astype(np.uint8)


def run_case(case: str, cube_path: Path, mask_path: Path, weights: Path) -> dict[str, Any]:
    """Run one case in this (fresh) process; save its mask and return its timings."""
    import torch
    import xarray as xr

    import xs2mask

    torch.set_num_threads(THREADS)
    dn = np.load(cube_path)
    coords = {"band": up.L1C_BANDS, "y": np.arange(dn.shape[1]) * -10.0, "x": np.arange(dn.shape[2]) * 10.0}
    cube = xr.DataArray(dn, dims=("band", "y", "x"), coords=coords)
    start, cpu0 = time.perf_counter(), time.process_time()
    if case == "ocm-upstream":
        mask = np.argmax(up.ocm_reference(dn, weights / "ocm"), axis=0).astype(np.uint8)
    elif case == "ocm-xs2mask":
        mask = xs2mask.predict(cube, model=_random_ocm(weights / "ocm"), device="cpu").mask.values
    elif case == "c2m-upstream":
        mask = _c2m_upstream(dn, next((weights / "c2m_pickles").glob("*_1_10m.pkl")))
    elif case == "c2m-xs2mask":
        mask = xs2mask.predict(
            cube, model="clouds2mask-10m", model_dir=weights / "c2m", device="cpu"
        ).mask.values
    else:
        raise ValueError(case)
    seconds = time.perf_counter() - start
    np.save(mask_path, mask)
    return {
        "case": case,
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# --------------------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="cube edge in pixels (default 1024)")
    parser.add_argument("--repeat", type=int, default=1, help="fresh-process runs per case; best is kept")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    add_run_options(parser, DEFAULT_CACHE, "where the cube and the random weights are cached")
    parser.add_argument("--cube", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mask", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(run_case(args.child, args.cube, args.mask, args.weights)))
        return 0
    if not (args.data / up.SCENE).is_file():
        print(f"shared data not found at {args.data}: nothing to benchmark (pass --data)")
        return 0
    missing = [m for m in ("omnicloudmask", "clouds2mask", "fastai") if importlib.util.find_spec(m) is None]
    if missing:
        print(
            f"not installed: {', '.join(missing)} (pip install 'xs2mask[parity]'; clouds2mask with --no-deps)"
        )
        return 0

    cube_path = cached_cube(args.data, args.cache, args.size)
    weights = prepare_weights(args.cache)
    megapixels = args.size**2 / 1e6
    print(f"cube {cube_path} (13 x {args.size} x {args.size} DN); CPU: {cpu_name()}", flush=True)
    print(f"xs2mask source: {source_version()}", flush=True)
    best: dict[str, dict[str, Any]] = {}
    masks: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="xs2mask-bench-published-") as tmp:
        for i in range(args.repeat):
            for case in args.cases:
                if args.max_busy is not None:
                    wait_for_idle(args.max_busy, args.idle_timeout)
                mask_path = Path(tmp) / f"{case}.npy"
                extra = ("--weights", str(weights))
                result = spawn(case, cube_path, mask_path, args.timeout, script=__file__, extra=extra)
                print(
                    f"  run {i + 1}/{args.repeat} {case}: {result['seconds']:.1f} s, peak RSS "
                    f"{result['peak_rss_mb']:.0f} MB, other processes "
                    f"{_fmt(result['other_cores'], '{:.2f}', '?')} cores",
                    flush=True,
                )
                if case not in best or result["seconds"] < best[case]["seconds"]:
                    best[case] = result
                masks.setdefault(case, np.load(mask_path))

    rows = []
    print("\n| case | seconds | Mpx/s | CPU s | peak RSS MB | other cores | xs2mask / upstream | agreement |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for case in args.cases:
        r = best[case]
        model, side = case.split("-", 1)
        mpx_s = megapixels / r["seconds"]
        other = best.get(f"{model}-upstream")
        ratio = other["seconds"] / r["seconds"] if side == "xs2mask" and other else None
        agree = None
        if side == "xs2mask" and f"{model}-upstream" in masks:
            agree = float((masks[case] == masks[f"{model}-upstream"]).mean())
        rows.append({**r, "mpx_s": mpx_s, "speedup": ratio, "agreement": agree})
        cells = [f"{r['seconds']:.1f}", f"{mpx_s:.3f}", f"{r['cpu_seconds']:.1f}", f"{r['peak_rss_mb']:.0f}"]
        cells += [_fmt(r["other_cores"], "{:.2f}", "?"), _fmt(ratio, "{:.2f}x"), _fmt(agree, "{:.1%}")]
        print(f"| {case} | {' | '.join(cells)} |")
    if args.json:
        args.json.write_text(json.dumps({"size": args.size, "cpu": cpu_name(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
