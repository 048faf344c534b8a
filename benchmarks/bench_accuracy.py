"""Accuracy of xs2mask's own models beside the peers, on the same pixels, in one run.

Run::

    python benchmarks/bench_accuracy.py --data ../shared/data [--models xs2mask-4b ukis-csmask-4b-l2a ...]
                                        [--out-md accuracy.md]

Evaluation sets, all never trained on (a model is scored on a set only when the set has its bands):

1. **Human labels**: the six ``trusted`` On Cloud N chips (B02 B03 B04 B08, L2A, cloud / not
   cloud). Scores are pooled over the chips (confusion matrices summed).
   Also scored there ("masked"): each model's cloud *or shadow* (every pixel a user drops; CloudSEN12's
   "invalid" superclass) against the human cloud label. The labels have no shadow class: dim land
   under an overcast deck is labelled cloud, and "not cloud" includes the shadows of broken clouds. So
   "masked" measures how well a model finds the unusable pixels, not how it names them, and it charges
   every model alike for the shadows it finds outside the labelled clouds.
2. **Shadow against ukis-csmask**: on the same chips, each model's clear / cloud / shadow map scored
   against ukis-csmask-4b-l2a's (no human shadow labels exist here): how far a model's shadows agree
   with the strongest shadow model that ships its weights.
3. **Simulated validation sets**: clouds and shadows simulated (fixed seeds) on the clear scenes the
   training pipeline holds out, with exact 4-class labels (thick, thin, shadow, clear): ``sim-4b`` on
   scenes with B02 B03 B04 B08 (every source), ``sim-13b`` on the 13-band L1C scenes (EuroSAT-MS,
   SEN12MS-CR, eo-learn), where the all-band models, the 6-band ukis-csmask models and s2cloudless run.

The CloudSEN12 RGB patches carry only B04 B03 B02: none of these models can run on them (all need
B08), so they are not scored.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import xarray as xr
from harness import DEFAULT_DATA, markdown_table

import xs2mask
from xs2mask.evaluation import combine, evaluate
from xs2mask.training import data as tdata
from xs2mask.training import pseudo, sources

SIM_SETS = {
    "sim-4b": ("B02", "B03", "B04", "B08"),
    "sim-13b": ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"),
}
SHADOW_REFERENCE = "ukis-csmask-4b-l2a"


def _fits(model: str, bands: tuple[str, ...]) -> bool:
    return set(xs2mask.models.get(model).bands) <= set(bands)


def _mask(model: str, refl: np.ndarray, bands: tuple[str, ...]) -> np.ndarray:
    cube = xr.DataArray(refl, dims=("band", "y", "x"), coords={"band": list(bands)})
    return xs2mask.predict(cube, model=model).mask.values


def human(models: list[str], data: Path) -> tuple[dict[str, object], dict[str, object], dict[str, object]]:
    """Cloud and masked (cloud or shadow) scores against the human cloud labels, and clear / cloud /
    shadow against ukis-csmask's map."""
    chips = sources.scenes(data, split="validation")
    masks = {m: [_mask(m, c.reflectance, c.bands) for c in chips] for m in models if _fits(m, chips[0].bands)}
    if SHADOW_REFERENCE not in masks:
        masks[SHADOW_REFERENCE] = [_mask(SHADOW_REFERENCE, c.reflectance, c.bands) for c in chips]
    labels = [c.labels for c in chips]
    cloud, masked, shadow = {}, {}, {}
    for model in models:
        if model not in masks:
            continue
        cloud[model] = _pooled(masks[model], labels, "cloud")
        masked[model] = _pooled([_as_cloud(p) for p in masks[model]], labels, "cloud")
        if model != SHADOW_REFERENCE:
            shadow[model] = _pooled(masks[model], masks[SHADOW_REFERENCE], "cloud/shadow/clear")
    return cloud, masked, shadow


def _pooled(predicted, references, scheme: str):
    return combine(
        [evaluate(p, r, reference_scheme=scheme) for p, r in zip(predicted, references, strict=True)]
    )


def _as_cloud(mask: np.ndarray) -> np.ndarray:
    """The mask with shadow (3) counted as cloud (1): cloud or shadow against the rest."""
    return np.where(mask == 3, np.uint8(1), mask)


def simulated(models: list[str], data: Path, bands, n: int, seed: int, cache: Path) -> dict[str, object]:
    train = sources.scenes(data, split="train", bands=bands)
    labels = [pseudo.pseudo_label(s, cache=cache) for s in train]
    pools = tdata.make_pools(train, labels)
    ones = np.ones(len(bands))
    maker = tdata.SampleMaker(pools, bands, 0 * ones, ones, patch=256, simulated_fraction=1.0, seed=seed)
    samples = []
    for i in range(n):
        rng = np.random.default_rng((seed, 2**31, i))
        refl, target, _ = maker.simulated(rng, 256, pools.clear_validation)
        samples.append((refl, target))
    return {
        model: combine([evaluate(_mask(model, r, bands), t, reference_scheme="full") for r, t in samples])
        for model in models
        if _fits(model, bands)
    }


def _f(v) -> str:
    return "–" if v is None or v != v else f"{100 * v:.1f}"


def real_table(cloud, masked, shadow) -> str:
    columns = ["model", "human: cloud BOA", "human: cloud F1", "human: OA", "human: masked BOA"]
    columns += ["human: masked F1", "shadow vs ukis: BOA", "shadow vs ukis: F1"]
    rows = []
    for model, h in cloud.items():
        m, s = masked[model], shadow.get(model)
        human_cells = [_f(h["cloud"].boa), _f(h["cloud"].f1), _f(h.overall_accuracy)]
        masked_cells = [_f(m["cloud"].boa), _f(m["cloud"].f1)]
        shadow_cells = [_f(s["cloud_shadow"].boa), _f(s["cloud_shadow"].f1)] if s else ["reference", ""]
        rows.append([f"`{model}`", *human_cells, *masked_cells, *shadow_cells])
    return markdown_table(columns, rows)


def sim_table(name: str, scores) -> str:
    columns = ["model", f"{name}: cloud BOA", "thick BOA", "thin BOA", "shadow BOA", "clear BOA", "OA"]
    classes = ("cloud", "thick_cloud", "thin_cloud", "cloud_shadow", "clear")
    rows = [
        [f"`{model}`", *(_f(s[c].boa) for c in classes), _f(s.overall_accuracy)]
        for model, s in scores.items()
    ]
    return markdown_table(columns, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument(
        "--models",
        nargs="+",
        default=["xs2mask-4b", "xs2mask-13b", "xs2mask-12b", "ukis-csmask-4b-l2a", "ukis-csmask-4b-l1c",
                 "ukis-csmask-6b-l1c", "s2cloudless"],
    )  # fmt: skip
    parser.add_argument("--simulated", type=int, default=96, help="samples per simulated set (256 px)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--cache", default=str(Path("~/.cache/xs2mask/pseudo").expanduser()))
    parser.add_argument("--out-md", default=None)
    args = parser.parse_args()
    models = [m for m in args.models if m in xs2mask.models.available()]
    start = time.perf_counter()
    data = Path(args.data)
    cloud, masked, shadow = human(models, data)
    parts = [real_table(cloud, masked, shadow)]
    for name, bands in SIM_SETS.items():
        scores = simulated(models, data, bands, args.simulated, args.seed, Path(args.cache))
        parts.append(sim_table(name, scores))
    md = "\n\n".join(parts)
    print(md)
    print(f"\n({time.perf_counter() - start:.0f} s; models not installed: "
          f"{sorted(set(args.models) - set(models)) or 'none'}; human = 6 trusted On Cloud N chips, "
          f"1.57 Mpx pooled; sim = {args.simulated} simulated 256 px samples per set)")  # fmt: skip
    if args.out_md:
        Path(args.out_md).write_text(md + "\n")


if __name__ == "__main__":
    main()
