"""Regenerate docs/img/simulated_examples.png: simulated clouds and shadows on real clear scenes.

    .venv/bin/python docs/make_simulated_figure.py

Needs the real scenes of ../shared/data (see its README). Three clear scenes, each before and after
:func:`xs2mask.training.simulate.simulate`, with the exact labels and one more band that shows the
spectral model (SWIR, cirrus B10, NIR).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from xs2mask.bands import BAND_NAMES
from xs2mask.training.simulate import CloudConfig, simulate

OUT = Path(__file__).parent / "img" / "simulated_examples.png"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GAIN = 3.0
# 0 clear (black), 1 thick (white), 2 thin (light blue), 3 shadow (dark purple).
LABEL_CMAP = ListedColormap(["black", "white", "#9fd3ff", "#3b0a57"])


def _scenes() -> list[tuple[str, np.ndarray, tuple[str, ...]]]:
    """(title, (band, y, x) reflectance, bands) of three real clear scenes."""
    z = np.load(SHARED / "wright_time_series" / "clear_20160101.npz")
    wright = np.moveaxis(z["reflectance"], -1, 0)
    with rasterio.open(SHARED / "sen12ms_cr" / "clear_ROIs1158_spring_15_p30.tif") as src:
        sen12 = src.read().astype(np.float32) / 10_000  # L1C DN of 2018 (no offset), all 13 bands
    ben = np.load(SHARED / "bigearthnet" / "configilm_patches.npz")
    fields = ben["s2"][10].astype(np.float32) / 10_000  # L2A DN, 120 x 120 at 10 m
    return [
        ("Wright, Australia (L2A, 10 bands)", np.ascontiguousarray(wright), tuple(map(str, z["band_order"]))),
        ("SEN12MS-CR spring (L1C, 13 bands)", sen12, BAND_NAMES),
        ("BigEarthNet fields (L2A, 12 bands)", fields, tuple(map(str, ben["band_order"]))),
    ]


def _rgb(refl: np.ndarray, bands: tuple[str, ...]) -> np.ndarray:
    rgb = refl[[bands.index(b) for b in ("B04", "B03", "B02")]].transpose(1, 2, 0)
    return np.clip(np.nan_to_num(rgb) * GAIN, 0, 1)


def main() -> None:
    if not SHARED.is_dir():
        raise SystemExit(f"needs the real scenes in {SHARED}")
    # One look per scene: thick cumulus with shadows and a little cirrus; high thin cirrus; a mix.
    setups = [
        (CloudConfig(p_thick=1.0, p_thin=0.0, p_thin_over_thick=1.0), 1, {"sun_elevation": 35.0}, "B12"),
        (
            CloudConfig(p_thick=0.0, p_thin=1.0),
            2,
            {"cloud_height_m": (9_000.0, 11_000.0)},
            "B10",
        ),
        (CloudConfig(p_thick=1.0, p_thin=0.0, p_thin_over_thick=0.0), 7, {}, "B08"),
    ]
    scenes = _scenes()
    fig = Figure(figsize=(16, 4.2 * len(scenes)))  # no pyplot: no GUI backend needed
    axes = fig.subplots(len(scenes), 4)
    for row, (scene, setup) in enumerate(zip(scenes, setups, strict=True)):
        (title, refl, bands), (config, seed, kwargs, extra) = scene, setup
        cloudy, labels = simulate(refl, bands, rng=np.random.default_rng(seed), config=config, **kwargs)
        shown = np.where(labels == 255, 0, labels)
        band = bands.index(extra)
        vmax = max(0.05, float(np.nanpercentile(cloudy[band], 99)))
        panels = [
            (_rgb(refl, bands), {}, f"{title}\nclear input (B04 B03 B02 x{GAIN:g})"),
            (_rgb(cloudy, bands), {}, f"simulated (seed {seed})"),
            (shown, {"cmap": LABEL_CMAP, "vmin": -0.5, "vmax": 3.5, "interpolation": "nearest"}, "labels"),
            (cloudy[band], {"cmap": "gray", "vmin": 0, "vmax": vmax}, f"simulated {extra} (0 - {vmax:.2f})"),
        ]
        for ax, (image, style, label) in zip(axes[row], panels, strict=True):
            ax.imshow(image, **style)
            ax.set_title(label, fontsize=10)
            ax.set_axis_off()
    names = ("clear", "thick cloud", "thin cloud", "cloud shadow")
    colours = LABEL_CMAP.colors
    handles = [Patch(facecolor=c, edgecolor="grey", label=n) for c, n in zip(colours, names, strict=True)]
    fig.legend(handles=handles, loc="lower center", ncol=4, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    OUT.parent.mkdir(exist_ok=True)
    fig.savefig(OUT, dpi=80)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
