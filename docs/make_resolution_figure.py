"""Regenerate docs/img/resolution_quicklooks.png: models at 10 m and 30 m pixels on real scenes.

    .venv/bin/python docs/make_resolution_figure.py [--models xs2mask-4b ukis-csmask-4b-l2a] [--run runs/NAME]

Rows: the demo scene (an On Cloud N chip), CloudSEN12's cloudy RGB+NIR patch (dataset index 3014,
four-class human labels; CC BY-NC 4.0, read from ../shared/data and shown here for research only)
and an On Cloud N chip with cloud shadows (``cloud_cover_chips_more/chip_3``). Columns: true colour,
the human labels, then each model on the 10 m pixels and on the same scene area-averaged to 30 m
(:func:`xs2mask.evaluation.coarsen`), fed as they are, as a user's 30 m cube would be.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

import xs2mask
from xs2mask.classes import CLASS_NAMES
from xs2mask.evaluation import coarsen
from xs2mask.export import colour_mask, rgb_image
from xs2mask.models import register, registry
from xs2mask.plotting import legend_handles
from xs2mask.training import sources

OUT = Path(__file__).parent / "img" / "resolution_quicklooks.png"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BANDS = ("B02", "B03", "B04", "B08")
SHADOW_CHIP = "cloud_cover_chips_more/chip_3"


def _scenes(data: Path) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """(title, (4, y, x) reflectance in BANDS order, labels or None)."""
    demo = xs2mask.data.demo_scene()
    demo_refl = demo.sel(band=list(BANDS)).values.astype(np.float32) / 10_000
    z = np.load(data / "cloudsen12_rgbn" / "patches.npz")
    order = [str(b) for b in z["band_order"]]
    cs12 = z["images"][0][[order.index(b) for b in BANDS]]
    chip = next(c for c in sources.cloud_cover_chips_more(data) if c.name == SHADOW_CHIP)
    return [
        ("demo scene (On Cloud N adwp, L2A)", demo_refl, None),
        ("CloudSEN12 3014 (L2A; CC BY-NC)", cs12, z["labels"][0]),
        (f"{SHADOW_CHIP} (L2A)", chip.select(BANDS), None),
    ]


def _mask(model: str, refl: np.ndarray) -> np.ndarray:
    cube = xr.DataArray(refl, dims=("band", "y", "x"), coords={"band": list(BANDS)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bare arrays: no CRS, as intended
        return xs2mask.predict(cube, model=model).mask.values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["xs2mask-4b", "ukis-csmask-4b-l2a"])
    parser.add_argument(
        "--run", action="append", default=[], type=Path, help="register a training run's model"
    )
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    models = list(args.models)
    for run in args.run:
        specs = registry.shipped(folder=run)
        if not specs:
            raise SystemExit(f"{run} holds no exported model (<name>.json with sha256): pass a run folder")
        for spec in specs:
            if not spec.name.endswith("-torch"):
                register(spec, overwrite=True)
                models.append(spec.name)
    scenes = _scenes(args.data)
    columns = 2 + 2 * len(models)
    fig = Figure(figsize=(2.6 * columns, 2.9 * len(scenes) + 0.6), layout="constrained")
    axes = fig.subplots(len(scenes), columns, squeeze=False)
    for row, (title, refl, labels) in enumerate(scenes):
        panels = [(rgb_image(refl[[2, 1, 0]]), f"{title}\ntrue colour")]
        panels.append((colour_mask(labels) if labels is not None else None, "human labels"))
        for model in models:
            for factor in (1, 3):
                mask = _mask(model, coarsen(refl, factor))
                panels.append((colour_mask(mask), f"{model}\n{10 * factor} m pixels"))
        for ax, (image, label) in zip(axes[row], panels, strict=True):
            ax.set_axis_off()
            ax.set_title(label, fontsize=8)
            if image is None:
                ax.text(0.5, 0.5, "no 4-class labels", ha="center", va="center", fontsize=8)
            else:
                ax.imshow(image, interpolation="nearest")
    fig.legend(handles=legend_handles(dict(CLASS_NAMES)), loc="outside lower center", ncol=4, frameon=False)
    fig.savefig(args.out, dpi=80)
    print(args.out)


if __name__ == "__main__":
    main()
