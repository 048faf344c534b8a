"""Benchmark xs2mask's own model against the peer models, side by side in one run, on real pixels.

The cube is ``bench_predict``'s 2048 x 2048 mosaic of real Sentinel-2 patches (6 bands B02 B03 B04 B08
B11 B12, reflectance, cached as ``.npy`` under the temp dir). The own 4-band model gets its 4 bands
(B02 B03 B04 B08); the ukis-csmask 6-band model gets all 6. Every case runs in its own fresh Python
process, so its peak resident memory (``ru_maxrss``) is its own and every run is cold (model loading
included in the timed section; imports -- ``distributed`` too, which computing a Dask collection
imports -- loading the cube and wrapping it in Dask excluded):

* ``own-numpy``: the own model (ONNX backend) through ``xs2mask.predict`` on the numpy cube;
* ``own-dask-2048`` / ``own-dask-1024``: the same on a Dask array chunked 2048 / 1024 px, computed with
  the threaded scheduler;
* ``own-20m``: ``own-dask-2048`` with ``processing_resolution=20`` (the model runs on 2 x 2 averaged
  pixels, the mask comes back on the 10 m grid);
* ``ukis-xs2mask``: ``ukis-csmask-6b-l2a`` through ``xs2mask.predict`` on the numpy cube (6 bands);
* ``csmask-t2``: ``ukis_csmask.mask.CSmask`` itself on the same pixels, ``intra_op_num_threads=2``;
* ``own-big``: one case per ``--sizes`` edge (default 4096): the 2048 mosaic mirror-tiled lazily (Dask,
  chunks 2048) to that edge, and the lazy mask computed with one ``.compute()``, which runs block by
  block; this is the peak-RSS case of the issue (target < 2 GB at 4096 x 4096).

Optional (``--cases``): ``csmask-t0`` (CSmask with onnxruntime's own thread choice), ``ukis-dask-2048``
(the ukis model through xs2mask on Dask chunks of 2048), ``own-20m-numpy``.

s2cloudless is not measured: it needs 10 bands (B01 ... B12 with B10) and this cube has 6; the report
says so.

The own model is ``--model-own`` (default ``xs2mask-4b``) when the package registers it; otherwise
``--own-folder`` names an exported run folder (``<name>.json`` + ``<name>.onnx``, as written by
``xs2mask train``), whose models are registered in every process with ``xs2mask.models.register``.

Usage::

    python benchmarks/bench_models.py [--model-own xs2mask-4b] [--own-folder runs/xs2mask-4b] \
        [--size 2048] [--sizes 4096] [--repeat 3] [--cases own-numpy ...] [--max-busy 0.3] \
        [--out-md results.md] [--json results.json]

Prints a markdown table (wall time, Mpx/s, CPU time, peak RSS, other load, throughput ratio to the
fastest ukis-csmask 6-band case, share of pixels equal to ``own-numpy``'s mask), the issue's targets
with met / missed, and the seconds per full 10980 x 10980 tile extrapolated from the measured Mpx/s.
Exits 0 with a message when ``../shared/data`` is absent.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import harness
import numpy as np
from inputs import CUBE_BANDS, cached_cube, csmask

OWN_BANDS = ("B02", "B03", "B04", "B08")
UKIS_MODEL = "ukis-csmask-6b-l2a"
CASES = ("own-numpy", "own-dask-2048", "own-dask-1024", "own-20m", "ukis-xs2mask", "csmask-t2", "own-big")
EXTRA_CASES = ("csmask-t0", "ukis-dask-2048", "own-20m-numpy")
DASK_CASES = ("own-dask-2048", "own-dask-1024", "own-20m", "ukis-dask-2048")  # Dask input, chunks as named
UKIS_CASES = ("ukis-xs2mask", "ukis-dask-2048", "csmask-t0", "csmask-t2")
TILE_EDGE = 10980  # a Sentinel-2 L1C/L2A tile at 10 m
# the targets
TARGET_MPX_S = 2.0
TARGET_RATIO = 6.0
TARGET_RSS_EDGE = 4096

DESCRIPTIONS = {
    "own-numpy": "own model, numpy input (one block)",
    "own-dask-2048": "own model, Dask chunks 2048",
    "own-dask-1024": "own model, Dask chunks 1024",
    "own-20m": "own model, Dask chunks 2048, `processing_resolution=20`",
    "own-20m-numpy": "own model, numpy input, `processing_resolution=20`",
    "ukis-xs2mask": f"`{UKIS_MODEL}` through xs2mask, numpy input",
    "ukis-dask-2048": f"`{UKIS_MODEL}` through xs2mask, Dask chunks 2048",
    "csmask-t0": "`CSmask` (ukis-csmask's own code), `intra_op_num_threads=0`",
    "csmask-t2": "`CSmask` (ukis-csmask's own code), `intra_op_num_threads=2`",
}


# --------------------------------------------------------------------------- the own model


def own_specs(folder: Path | None) -> list[Any]:
    """The ModelSpecs of an exported run folder (none without a folder)."""
    if folder is None:
        return []
    from xs2mask.models.registry import shipped

    return shipped(folder)


def register_own(folder: Path | None) -> None:
    """Register the folder's models in this process, unless the package already has them."""
    import xs2mask

    for spec in own_specs(folder):
        if spec.name not in xs2mask.models.registered():
            xs2mask.models.register(spec)


def resolve_own(name: str, folder: Path | None) -> str:
    """The own model's registered name: ``name`` if known, else the folder's only ONNX model."""
    import xs2mask
    from xs2mask.models.backends import get_backend

    register_own(folder)
    if name in xs2mask.models.registered():
        if not xs2mask.models.get(name).weights.is_available():
            raise SystemExit(f"model {name!r} is registered but its weights are not installed")
        return name
    # the ONNX file of each model: the one that runs without an extra (its torch twin needs one)
    onnx = [s.name for s in own_specs(folder) if not get_backend(s.backend).extra]
    if len(onnx) == 1:
        # a smoke-test run folder has its own name (e.g. smoke-4b): use it, but say so
        print(f"model {name!r} is not registered; using {onnx[0]!r} from {folder}", flush=True)
        return onnx[0]
    hint = f" (the folder {folder} has: {', '.join(onnx) or 'none'})" if folder else " (pass --own-folder)"
    raise SystemExit(f"model {name!r} is not registered{hint}")


# --------------------------------------------------------------------------- child process


def _load_bands(cube_path: Path, bands: tuple[str, ...]) -> np.ndarray:
    """The cube's ``bands`` as a contiguous array; the memory map keeps the other bands out of RSS."""
    full = np.load(cube_path, mmap_mode="r")
    cube = np.ascontiguousarray(full[[CUBE_BANDS.index(b) for b in bands]], np.float32)
    del full
    return cube


def _mirror_tiled(lazy: Any, edge: int) -> Any:
    """``lazy`` (band, n, n) mirror-tiled to (band, edge, edge), still lazy, chunks kept.

    Mirroring (not repeating) keeps the scene seamless, as ``inputs.build_cube`` does for the mosaic.
    """
    import dask.array as dsa

    n = lazy.shape[-1]
    reps = math.ceil(edge / n)
    flips = {
        (r % 2, c % 2): lazy[:, :: (-1 if r % 2 else 1), :: (-1 if c % 2 else 1)]
        for r in range(2)
        for c in range(2)
    }
    rows = [[flips[(r % 2, c % 2)] for c in range(reps)] for r in range(reps)]
    return dsa.block(rows)[:, :edge, :edge]


def run_case(case: str, cube: str, mask: str, model: str, folder: str | None) -> dict[str, Any]:
    """Run one case in this (fresh) process; save its mask (uint8, xs2mask codes) and return timings."""
    # imported before the clock starts: imports are not timed
    import dask
    import dask.array as dsa
    import onnxruntime  # noqa: F401
    import xarray as xr

    import xs2mask

    register_own(None if folder is None else Path(folder))
    own = not (case.startswith("ukis") or case.startswith("csmask"))
    bands = OWN_BANDS if own else CUBE_BANDS
    pixels = _load_bands(Path(cube), bands)
    edge = int(case.rsplit("-", 1)[1]) if case.startswith("own-big-") else pixels.shape[-1]

    def array(data: Any) -> xr.DataArray:
        coords = {"band": list(bands), "y": np.arange(edge) * -10.0, "x": np.arange(edge) * 10.0}
        return xr.DataArray(data, dims=("band", "y", "x"), coords=coords)

    def dask_mask(data: Any, **kwargs: Any) -> np.ndarray:
        ds = xs2mask.predict(array(data), **kwargs)
        with dask.config.set(scheduler="threads"):
            return ds["mask"].compute().values

    if case.startswith("csmask"):
        import ukis_csmask.mask  # noqa: F401
    lazy = None
    if case in DASK_CASES or case.startswith("own-big-"):
        # Imports are not timed, and computing any Dask collection imports ``distributed``
        # when it is installed (dask looks for a default client): 0.3-0.4 s here.
        import distributed  # noqa: F401

        # The input, made before the clock starts like loading the cube: wrapping an in-memory
        # array in Dask hashes all of it (0.1 s per 100 MB), which a cube read lazily never does.
        chunk = 1024 if case == "own-dask-1024" else 2048
        lazy = dsa.from_array(pixels, chunks=(len(bands), chunk, chunk))
        if case.startswith("own-big-"):
            lazy = _mirror_tiled(lazy, edge)

    def once() -> np.ndarray:
        if case in ("own-numpy", "own-20m-numpy", "ukis-xs2mask"):
            resolution = 20 if case == "own-20m-numpy" else None
            name = model if own else UKIS_MODEL
            return xs2mask.predict(array(pixels), model=name, processing_resolution=resolution)["mask"].values
        if case in DASK_CASES:
            resolution = 20 if case == "own-20m" else None
            return dask_mask(lazy, model=model if own else UKIS_MODEL, processing_resolution=resolution)
        if case.startswith("own-big-"):
            return dask_mask(lazy, model=model)
        if case.startswith("csmask-t"):
            return csmask(pixels, int(case.removeprefix("csmask-t")))
        raise ValueError(f"unknown case {case!r}")

    with harness.Stopwatch() as cold:
        out = once()
    np.save(mask, np.asarray(out, np.uint8))
    del out

    # A second, warm call: xs2mask keeps the loaded model per process, so this is the steady-state speed
    # that a whole tile (many blocks, one load) sees. CSmask builds a new onnxruntime session per call,
    # so for it a second call would be cold again; the memory case only needs its cold peak.
    warm = None
    if not (case.startswith("csmask") or case.startswith("own-big-")):
        with harness.Stopwatch() as watch:
            once()
        warm = watch.seconds
    return {
        "case": case,
        "edge": edge,
        "megapixels": edge**2 / 1e6,
        **cold.figures(),
        "warm_seconds": warm,
        "model": model if own else UKIS_MODEL,
        "versions": harness.versions("onnxruntime", "dask", "xs2mask"),
    }


# --------------------------------------------------------------------------- report


def warm_figures(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    """The fastest warm call of a case's runs, as seconds and Mpx/s (None for the cases without one)."""
    warm = [r["warm_seconds"] for r in runs if r.get("warm_seconds")]
    return {
        "warm_seconds": min(warm) if warm else None,
        "warm_mpx_per_s": runs[0]["megapixels"] / min(warm) if warm else None,
    }


def describe(case: str) -> str:
    if case.startswith("own-big-"):
        edge = case.rsplit("-", 1)[1]
        return f"own model, {edge}² mirror-tiled lazily, Dask chunks 2048, one `.compute()`"
    return DESCRIPTIONS.get(case, case)


def markdown(rows: list[dict[str, Any]], ratios: dict[str, float], same: dict[str, float]) -> str:
    """The results as a markdown table."""
    columns = ["case", "what", "cube", "wall s", "Mpx/s", "warm Mpx/s", "CPU s", "peak RSS MiB"]
    columns += ["RSS before MiB", "other load (cores)", "× fastest ukis-6b", "= own-numpy mask"]
    cells = [
        [
            r["case"],
            describe(r["case"]),
            f"{r['edge']}²",
            f"{r['seconds']:.2f}",
            f"{r['mpx_per_s']:.3f}",
            harness.fmt(r["warm_mpx_per_s"], "{:.3f}"),
            f"{r['cpu_seconds']:.1f}",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['rss_before_mb']:.0f}",
            harness.fmt(r["other_cores"], "{:.2f}"),
            harness.fmt(ratios.get(r["case"]), "{:.2f}"),
            harness.fmt(same.get(r["case"]), "{:.2f} %"),
        ]
        for r in rows
    ]
    return harness.markdown_table(columns, cells, left=3)


def verdicts(rows: list[dict[str, Any]], ratios: dict[str, float], model: str) -> tuple[str, dict[str, Any]]:
    """The issue's targets, met or missed, as markdown lines and as numbers."""
    by = {r["case"]: r for r in rows}
    lines: list[str] = []
    out: dict[str, Any] = {}

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**missed**"

    own10 = [c for c in ("own-dask-2048", "own-numpy", "own-dask-1024") if c in by]
    if own10:
        main = own10[
            0
        ]  # the Dask chunks-2048 case is how a tile is masked, and the tile extrapolation's base
        mpx = by[main]["mpx_per_s"]
        others = ", ".join(f"{c} {by[c]['mpx_per_s']:.2f}" for c in own10[1:])
        lines.append(
            f"- `{model}` ≥ {TARGET_MPX_S:g} Mpx/s: {main} {mpx:.2f} Mpx/s"
            + (f" ({others})" if others else "")
            + f": {verdict(mpx >= TARGET_MPX_S)}"
        )
        out["mpx_per_s"] = {c: by[c]["mpx_per_s"] for c in own10}
        out["mpx_target_met"] = mpx >= TARGET_MPX_S
        if main in ratios:
            ukis = min((by[c] for c in UKIS_CASES if c in by), key=lambda r: r["seconds"] / r["megapixels"])
            lines.append(
                f"- ≥ {TARGET_RATIO:g}× ukis-csmask 6-band (its fastest case here, {ukis['case']}, "
                f"{ukis['mpx_per_s']:.3f} Mpx/s): {main} {ratios[main]:.2f}×: "
                f"{verdict(ratios[main] >= TARGET_RATIO)}"
            )
            out["ratio"] = {c: ratios[c] for c in own10 if c in ratios}
            out["ratio_reference"] = ukis["case"]
            out["ratio_target_met"] = ratios[main] >= TARGET_RATIO
    big = by.get(f"own-big-{TARGET_RSS_EDGE}")
    if big is not None:
        # ru_maxrss is in KiB, so the figures are MiB; "2 GB" read as 2 GiB (2048 MiB) or as 2e9 bytes
        gib_ok = big["peak_rss_mb"] < 2048
        gb_ok = big["peak_rss_mb"] * 2**20 < 2e9
        word = (
            verdict(True)
            if gb_ok
            else (verdict(False) if not gib_ok else "**met as 2 GiB, missed as 2e9 B**")
        )
        lines.append(
            f"- peak RSS < 2 GB masking {TARGET_RSS_EDGE}²: {big['peak_rss_mb']:.0f} MiB = "
            f"{big['peak_rss_mb'] * 2**20 / 1e9:.2f} GB ({big['mpx_per_s']:.2f} Mpx/s): {word}"
        )
        out["rss_4096_mib"] = big["peak_rss_mb"]
        out["rss_target_met"] = {"2 GiB": gib_ok, "2e9 B": gb_ok}
    tile_mpx = TILE_EDGE**2 / 1e6
    for label, case in (("10 m", "own-dask-2048"), ("20 m processing", "own-20m")):
        if case in by:
            r = by[case]
            secs = tile_mpx / r["mpx_per_s"]
            line = f"- s/scene, {TILE_EDGE}² tile at {label} (from {case}, cold Mpx/s): {secs:.0f} s"
            if r["warm_mpx_per_s"]:
                # a tile loads the model once: the cold run's extra time, then the warm rate
                loaded_once = max(0.0, r["seconds"] - r["warm_seconds"]) + tile_mpx / r["warm_mpx_per_s"]
                line += f"; model loaded once, then the warm Mpx/s: {loaded_once:.0f} s"
                out[f"s_per_scene_{label.split()[0]}_warm"] = loaded_once
            lines.append(line)
            out[f"s_per_scene_{label.split()[0]}"] = secs
    for r in rows:
        if r["case"].startswith("own-big-"):
            secs = tile_mpx / r["mpx_per_s"]
            lines.append(f"- s/scene, {TILE_EDGE}² tile at 10 m (cross-check from {r['case']}): {secs:.0f} s")
    lines.append(
        "- s2cloudless: not measured; it needs 10 bands (B01 B02 B04 B05 B08 B8A B09 B10 B11 B12) "
        "and this cube has 6 (B02 B03 B04 B08 B11 B12)"
    )
    return "\n".join(lines), out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-own", default="xs2mask-4b", help="the own model's name (ONNX backend)")
    parser.add_argument("--own-folder", type=Path, help="exported run folder to register the own model from")
    parser.add_argument("--size", type=int, default=2048, help="edge of the real-pixel cube (default 2048)")
    parser.add_argument(
        "--sizes", type=int, nargs="*", default=[TARGET_RSS_EDGE], help="edges of the tiled own-big cubes"
    )
    parser.add_argument("--out-md", type=Path, help="also write the report (markdown) to this file")
    harness.add_run_options(
        parser, cases=CASES, extra_cases=EXTRA_CASES, cache_help="where the cube is cached"
    )
    args = harness.parse_args(parser, argv, run_case, needs="sen12ms_cr")
    if args is None:
        return 0
    if args.size < 512:
        parser.error("--size must be at least 512 (the own model's patch size)")
    if args.own_folder is not None:
        args.own_folder = args.own_folder.resolve()  # the children may not share our working directory
    args.model_own = resolve_own(args.model_own, args.own_folder)

    cases = [c for c in args.cases if c != "own-big"]
    if "own-big" in args.cases:
        cases += [f"own-big-{edge}" for edge in args.sizes]
    cube_path = cached_cube(args.data, args.cache, args.size)
    header = [
        f"cube {cube_path} ({args.size} x {args.size} x {len(CUBE_BANDS)}); CPU: {harness.cpu_name()}",
        f"own model: {args.model_own}" + (f" (from {args.own_folder})" if args.own_folder else ""),
        f"xs2mask source: {harness.source_version()}",
    ]
    print("\n".join(header), flush=True)

    runs: list[dict[str, Any]] = []
    masks: dict[str, np.ndarray] = {}
    busy_readings: list[float] = []
    with tempfile.TemporaryDirectory(prefix="xs2mask-bench-models-") as tmp:
        for turn in harness.interleave(cases, args.repeat, args):
            if turn.busy is not None:
                busy_readings.append(turn.busy)
            mask_path = Path(tmp) / f"{turn.case}.npy"
            spec = {"case": turn.case, "cube": cube_path, "mask": mask_path}
            spec.update(model=args.model_own, folder=args.own_folder)
            result = harness.spawn(__file__, spec, args.timeout)
            runs.append(result)
            harness.print_run(turn, args.repeat, result, seconds="{:.2f}", unit="MiB")
            if turn.case not in masks and not turn.case.startswith("own-big-"):
                masks[turn.case] = np.load(mask_path)

    rows = harness.summarise(runs, extra=warm_figures)
    ukis_rows = [r for r in rows if r["case"] in UKIS_CASES]
    ratios: dict[str, float] = {}
    if ukis_rows:
        # against the peer's fastest case, the strictest reading of "N x ukis-csmask"
        reference = max(r["mpx_per_s"] for r in ukis_rows)
        ratios = {r["case"]: r["mpx_per_s"] / reference for r in rows if r["case"].startswith("own-")}
    same: dict[str, float] = {}
    if "own-numpy" in masks:
        same = {c: 100.0 * float(np.mean(m == masks["own-numpy"])) for c, m in masks.items()}
    table = markdown(rows, ratios, same)
    targets, numbers = verdicts(rows, ratios, args.model_own)
    all_runs = "; ".join(f"{r['case']} " + " / ".join(f"{s:.2f}" for s in r["all_seconds"]) for r in rows)
    report = "\n\n".join([table, f"All runs (wall s): {all_runs}.", targets])
    warning = harness.source_warning(runs)
    if warning:
        report += f"\n\n{warning}"
    print()
    print(report)
    if args.out_md:
        args.out_md.write_text("\n".join(header) + "\n\n" + report + "\n")
        print(f"wrote {args.out_md}")
    harness.write_json(
        args.json,
        {
            "size": args.size,
            "sizes": args.sizes,
            "repeat": args.repeat,
            **harness.environment(runs),
            "model_own": args.model_own,
            "own_folder": None if args.own_folder is None else str(args.own_folder),
            "rows": rows,
            "runs": runs,
            "ratio_vs_fastest_ukis": ratios,
            "same_as_own_numpy_percent": same,
            "targets": numbers,
            "busy_before_cases": busy_readings,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
