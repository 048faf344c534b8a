"""Real cloud shadows and clouds against the simulator's: darkening, penumbra, displacement, thick/thin.

Real: the human 4-class labels of CloudSEN12 — the cloudy RGB+NIR patch of
``cloudsen12_rgbn/patches.npz`` (L2A) and the dense ``manual_hq.tif`` patches of
``cloudsen12_rgb/figures`` that hold clouds or shadows (RGB only, L1C). Simulated:
:func:`xs2mask.training.simulate.simulate` with a thick layer in every sample (``p_thick=1``, the
rest of ``CloudConfig`` at its defaults or a training config's ``[clouds]``), sun drawn by
``sun_geometry``, on real clear backgrounds
(Wright et al.'s clear scene, CloudSEN12's clear city patch, two clear On Cloud N chips: land, city,
water). Both are measured by the same functions of :mod:`xs2mask.training.shadow_stats`.

CloudSEN12 is CC BY-NC 4.0: it is read from ``--data`` for this measurement only, never shipped.

Usage::

    python benchmarks/shadow_stats.py [--samples 32] [--json shadow_stats.json] [--config CONFIG.toml]

Prints markdown tables; exits 0 with a message when the shared data is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

from xs2mask.training import shadow_stats as ss
from xs2mask.training.simulate import CloudConfig, simulate, sun_geometry
from xs2mask.training.train import TrainConfig

RGBN = ("B02", "B03", "B04", "B08")
RGB_TIF = ("B04", "B03", "B02")  # band order of CloudSEN12's S2L1C.tif
RESOLUTION_M = 10.0
MAX_SHIFT_PX = 256  # half a patch: farther cloud and shadow are rarely both inside it
ELEVATIONS = (40.0, 50.0, 60.0)


def read_tif(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        return src.read()


def real_scenes(data: Path) -> list[tuple[str, np.ndarray, np.ndarray, tuple[str, ...]]]:
    """(name, reflectance, labels, bands) of the labelled CloudSEN12 patches with clouds or shadows."""
    npz = np.load(data / "cloudsen12_rgbn" / "patches.npz")
    scenes = [("cs12-rgbn-3014 (L2A)", npz["images"][0], npz["labels"][0], RGBN)]
    for hq in sorted((data / "cloudsen12_rgb" / "figures").rglob("manual_hq.tif")):
        labels = read_tif(hq)[0].astype(np.uint8)
        if not np.isin(labels, (1, 2, 3)).any():
            continue
        refl = read_tif(hq.with_name("S2L1C.tif")).astype(np.float32) / 10_000.0
        name = f"cs12-rgb {hq.parent.relative_to(data / 'cloudsen12_rgb' / 'figures')} (L1C)"
        scenes.append((name, refl, labels, RGB_TIF))
    return scenes


def clear_backgrounds(data: Path) -> list[tuple[str, np.ndarray, tuple[str, ...]]]:
    """(name, reflectance, bands) of real clear scenes: L2A RGBN and CloudSEN12's clear L1C RGB."""
    wright = np.load(data / "wright_time_series" / "clear_20160101.npz")
    order = list(wright["band_order"])
    scene = np.moveaxis(wright["reflectance"], -1, 0)[[order.index(b) for b in RGBN]]
    backgrounds = [("L2A wright clear (land)", scene[:, :, :512].astype(np.float32), RGBN)]
    npz = np.load(data / "cloudsen12_rgbn" / "patches.npz")
    backgrounds.append(("L2A cs12 clear city", npz["images"][1].astype(np.float32), RGBN))
    for chip, what in (("iacc", "land"), ("kguj", "water")):
        bands = [read_tif(data / "cloud_cover_chips" / chip / f"{b}.tif")[0] for b in RGBN]
        backgrounds.append(
            (f"L2A On Cloud N {chip} ({what})", np.stack(bands).astype(np.float32) / 10_000.0, RGBN)
        )
    for roi in ("ROI_1746/high", "ROI_4683"):
        refl = read_tif(data / "cloudsen12_rgb" / "figures" / roi / "clear" / "S2L1C.tif").astype(np.float32)
        backgrounds.append((f"L1C cs12 {roi} clear", refl / 10_000.0, RGB_TIF))
    return backgrounds


def measure(refl: np.ndarray, labels: np.ndarray, bands: Sequence[str]) -> dict[str, Any]:
    """Every statistic of one labelled scene; RGB-only scenes get no land cover split."""
    # No data (every band 0, as in a corner of CloudSEN12's patch) is no class at all.
    labels = np.where(refl.any(axis=0) & np.isfinite(refl).all(axis=0), labels, 255).astype(np.uint8)
    index = {b: i for i, b in enumerate(bands)}
    has_nir = "B08" in index
    land = ss.land_cover(refl[index["B04"]], refl[index["B08"]]) if has_nir else None
    order = [index[b] for b in RGBN if b in index]
    signal = refl[index["B08"]] if has_nir else refl[[index[b] for b in ("B02", "B03", "B04")]].mean(axis=0)
    dark = ss.shadow_darkening(refl[order], labels, land=land)
    pen = ss.penumbra(signal, labels)
    disp = ss.displacement(labels == 1, labels == 3, max_shift=MAX_SHIFT_PX)
    return {
        "bands": [b for b in RGBN if b in index],
        "darkening": {k: [vars(q) for q in v] for k, v in dark.items()},
        "penumbra": {
            "width_px": pen.width_px,
            "offset_px": pen.offset_px,
            "per_profile": vars(pen.per_profile),
        },
        "displacement": None if disp is None else disp.to_dict(),
        "classes": {
            c: {k: vars(q) for k, q in v.items()}
            for c, v in ss.class_reflectance(refl, labels, bands).items()
        },
        "shadow_share": float((labels == 3).mean()),
    }


def simulated(
    backgrounds: list[tuple[str, np.ndarray, tuple[str, ...]]],
    samples: int,
    base: CloudConfig | None = None,
) -> list[dict[str, Any]]:
    config = dataclasses.replace(base or CloudConfig(), p_thick=1.0, p_thin=0.0)
    runs = []
    for seed in range(samples):
        name, clear, bands = backgrounds[seed % len(backgrounds)]
        rng = np.random.default_rng(seed)
        azimuth, elevation = sun_geometry(rng, config)
        cloudy, labels = simulate(
            clear,
            bands,
            rng=rng,
            config=config,
            sun_azimuth=azimuth,
            sun_elevation=elevation,
            level=name[:3],
        )
        result = measure(cloudy, labels, bands)
        runs.append(
            {"name": f"sim seed {seed} on {name}", "level": name[:3], "sun_elevation": elevation, **result}
        )
    return runs


def _q(q: dict[str, Any] | None, digits: int = 2) -> str:
    if not q or not q["n"]:
        return "-"
    return f"{q['median']:.{digits}f} [{q['q25']:.{digits}f}-{q['q75']:.{digits}f}]"


def _pooled(runs: list[dict[str, Any]], get: Callable[[dict[str, Any]], Any]) -> dict[str, Any] | None:
    """Quartiles over the runs of a per-run figure: ``get`` returns a Quartiles dict (its median is
    taken), a number, or None (left out)."""
    values = []
    for run in runs:
        v = get(run)
        if isinstance(v, dict):
            v = v["median"] if v["n"] else None
        if v is not None and np.isfinite(v):
            values.append(v)
    return vars(ss.Quartiles.of(np.array(values))) if values else None


def _band(run: dict[str, Any], land: str, band: str) -> dict[str, Any] | None:
    per_band = run["darkening"].get(land)
    return per_band[run["bands"].index(band)] if per_band and band in run["bands"] else None


def tables(real: list[dict[str, Any]], sim: list[dict[str, Any]]) -> str:
    """The four markdown tables: real scenes one row each, simulated samples pooled by level."""
    groups = [
        (f"simulator, {level} {what} ({len(runs)} samples)", runs)
        for level, what in (("L2A", "RGBN"), ("L1C", "RGB"))
        if (runs := [r for r in sim if r["level"] == level])
    ]
    out = ["Shadow / nearby clear reflectance, median [q25-q75]:\n"]
    rows = []
    for r in real:
        for land, per_band in r["darkening"].items():
            rows.append([r["name"], land, str(per_band[0]["n"]), *(_q(_band(r, land, b)) for b in RGBN)])
    for label, runs in groups:
        for land in (*ss.LAND_COVERS, "all"):
            count = sum(1 for r in runs if land in r["darkening"])
            if count:
                cells = [_q(_pooled(runs, lambda r, land=land, b=b: _band(r, land, b))) for b in RGBN]
                rows.append([label, land, f"{count} samples", *cells])
    out.append(harness.markdown_table(["scene", "land", "pixels", *RGBN], rows, left=2))

    out.append("\nPenumbra (B08, or the B02-B04 mean without it), 10-90 % of the median edge profile:\n")
    rows = []
    for r in real:
        p = r["penumbra"]
        rows.append(
            [
                r["name"],
                f"{p['width_px']:.1f}",
                f"{p['width_px'] * RESOLUTION_M:.0f}",
                f"{p['offset_px']:+.1f}",
                _q(p["per_profile"], 1),
                str(p["per_profile"]["n"]),
            ]
        )
    for label, runs in groups:
        width = _pooled(runs, lambda r: r["penumbra"]["width_px"])
        rows.append(
            [
                label,
                _q(width, 1),
                f"{width['median'] * RESOLUTION_M:.0f}" if width else "-",
                _q(_pooled(runs, lambda r: r["penumbra"]["offset_px"]), 1),
                _q(_pooled(runs, lambda r: r["penumbra"]["per_profile"]), 1),
                "per sample",
            ]
        )
    columns = ["scene", "width px", "width m", "50 % offset px", "per profile px", "profiles"]
    out.append(harness.markdown_table(columns, rows))

    out.append("\nCloud-to-shadow displacement (thick cloud mask onto shadow mask):\n")
    rows = []
    for r in real:
        d = r["displacement"]
        if d is None:
            continue
        length_m = d["length_px"] * RESOLUTION_M
        heights = " / ".join(f"{ss.cloud_height(length_m, e):.0f}" for e in ELEVATIONS)
        rows.append(
            [
                r["name"],
                f"({d['dy']}, {d['dx']})",
                f"{length_m:.0f}",
                f"{d['azimuth_deg']:.0f}",
                f"{d['overlap']:.2f}",
                heights,
            ]
        )
    for label, runs in groups:
        runs = [r for r in runs if r["displacement"]]
        length = _pooled(runs, lambda r: r["displacement"]["length_px"] * RESOLUTION_M)
        height = _pooled(
            runs, lambda r: ss.cloud_height(r["displacement"]["length_px"] * RESOLUTION_M, r["sun_elevation"])
        )
        overlap = _pooled(runs, lambda r: r["displacement"]["overlap"])
        rows.append([label, "-", _q(length, 0), "any", _q(overlap), f"{_q(height, 0)} (its own elevation)"])
    columns = ["scene", "(dy, dx) px", "length m", "azimuth", "shadow covered", "height m, 40/50/60 deg"]
    out.append(harness.markdown_table(columns, rows))

    out.append("\nReflectance by label class, median [q25-q75]:\n")
    features = ("visible", "B08", "whiteness", "nir_over_visible")
    rows = []
    for r in real:
        for c in ("thick", "thin", "shadow", "clear"):
            if c in r["classes"]:
                rows.append([r["name"], c, *(_q(r["classes"][c].get(f)) for f in features)])
    for label, runs in groups:
        for c in ("thick", "thin", "shadow", "clear"):
            cells = [_q(_pooled(runs, lambda r, c=c, f=f: r["classes"].get(c, {}).get(f))) for f in features]
            rows.append([label, c, *cells])
    columns = ["scene", "class", "B02-B04 mean", "B08", "whiteness", "B08 / visible"]
    out.append(harness.markdown_table(columns, rows, left=2))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=harness.DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--samples", type=int, default=32, help="simulated samples (seeds 0..n-1)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument(
        "--config", type=Path, help="a training config whose [clouds] table the simulator uses"
    )
    args = parser.parse_args(argv)
    if harness.data_missing(args.data, "cloudsen12_rgbn"):
        return 0
    real = [
        {"name": name, **measure(refl, labels, bands)} for name, refl, labels, bands in real_scenes(args.data)
    ]
    base = TrainConfig.from_toml(args.config).cloud_config if args.config else CloudConfig()
    sim = simulated(clear_backgrounds(args.data), args.samples, base)
    print(tables(real, sim))
    harness.write_json(args.json, {"real": real, "simulated": sim})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
