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
import sys
import tempfile
from pathlib import Path
from typing import Any

import harness
import numpy as np
from inputs import cached_npy

up = harness.tests_module("upstream_models")  # the random upstream networks, shared with the tests

CASES = ("ocm-upstream", "ocm-xs2mask", "c2m-upstream", "c2m-xs2mask")
CUBE_VERSION = 1
THREADS = 2


def cached_cube(data: Path, cache: Path, size: int) -> Path:
    """The mirror-tiled real scene (13, size, size) uint16 DN, built on first use."""

    def build() -> np.ndarray:
        dn = up.read_scene(data)
        n = dn.shape[-1]
        reps = -(-size // n)
        tiled = np.pad(dn, ((0, 0), (0, reps * n - n), (0, reps * n - n)), mode="symmetric")[:, :size, :size]
        return np.ascontiguousarray(tiled)

    return cached_npy(cache / f"published_cube_v{CUBE_VERSION}_{size}.npy", build)


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


def run_case(case: str, cube: str, mask: str, weights: str) -> dict[str, Any]:
    """Run one case in this (fresh) process; save its mask and return its timings."""
    import torch
    import xarray as xr

    import xs2mask

    torch.set_num_threads(THREADS)
    folder = Path(weights)
    dn = np.load(cube)
    coords = {"band": up.L1C_BANDS, "y": np.arange(dn.shape[1]) * -10.0, "x": np.arange(dn.shape[2]) * 10.0}
    pixels = xr.DataArray(dn, dims=("band", "y", "x"), coords=coords)
    if case not in CASES:
        raise ValueError(f"unknown case {case!r}; choose from {', '.join(CASES)}")
    with harness.Stopwatch() as watch:
        if case == "ocm-upstream":
            out = np.argmax(up.ocm_reference(dn, folder / "ocm"), axis=0).astype(np.uint8)
        elif case == "ocm-xs2mask":
            out = xs2mask.predict(pixels, model=_random_ocm(folder / "ocm"), device="cpu").mask.values
        elif case == "c2m-upstream":
            out = _c2m_upstream(dn, next((folder / "c2m_pickles").glob("*_1_10m.pkl")))
        else:
            out = xs2mask.predict(
                pixels, model="clouds2mask-10m", model_dir=folder / "c2m", device="cpu"
            ).mask.values
    np.save(mask, out)
    return {"case": case, "megapixels": dn.shape[1] * dn.shape[2] / 1e6, **watch.figures()}


# --------------------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="cube edge in pixels (default 1024)")
    harness.add_run_options(
        parser, cases=CASES, cache_help="where the cube and the random weights are cached"
    )
    args = harness.parse_args(parser, argv, run_case, needs=up.SCENE)
    if args is None:
        return 0
    missing = [m for m in ("omnicloudmask", "clouds2mask", "fastai") if importlib.util.find_spec(m) is None]
    if missing:
        print(
            f"not installed: {', '.join(missing)} (pip install 'xs2mask[parity]'; clouds2mask with --no-deps)"
        )
        return 0

    cube_path = cached_cube(args.data, args.cache, args.size)
    weights = prepare_weights(args.cache)
    print(f"cube {cube_path} (13 x {args.size} x {args.size} DN); CPU: {harness.cpu_name()}", flush=True)
    print(f"xs2mask source: {harness.source_version()}", flush=True)
    runs: list[dict[str, Any]] = []
    masks: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="xs2mask-bench-published-") as tmp:
        for turn in harness.interleave(args.cases, args.repeat, args):
            mask_path = Path(tmp) / f"{turn.case}.npy"
            spec = {"case": turn.case, "cube": cube_path, "mask": mask_path, "weights": weights}
            result = harness.spawn(__file__, spec, args.timeout)
            runs.append(result)
            harness.print_run(turn, args.repeat, result)
            masks.setdefault(turn.case, np.load(mask_path))

    rows = []
    best = {r["case"]: r for r in harness.summarise(runs)}
    for case in args.cases:
        r = best[case]
        model, side = case.split("-", 1)
        other = best.get(f"{model}-upstream")
        ratio = other["seconds"] / r["seconds"] if side == "xs2mask" and other else None
        agree = None
        if side == "xs2mask" and f"{model}-upstream" in masks:
            agree = float((masks[case] == masks[f"{model}-upstream"]).mean())
        rows.append({**r, "speedup": ratio, "agreement": agree})
    columns = ["case", "seconds", "Mpx/s", "CPU s", "peak RSS MB", "other cores", "xs2mask / upstream"]
    cells = [
        [
            r["case"],
            *harness.figure_cells(r),
            harness.fmt(r["other_cores"], "{:.2f}", "?"),
            harness.fmt(r["speedup"], "{:.2f}x"),
            harness.fmt(r["agreement"], "{:.1%}"),
        ]
        for r in rows
    ]
    print()
    print(harness.markdown_table([*columns, "agreement"], cells))
    harness.write_json(args.json, {"size": args.size, "cpu": harness.cpu_name(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
