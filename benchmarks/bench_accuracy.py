"""Accuracy of xs2mask's own models beside the peers, on the same pixels, in one run.

Run::

    python benchmarks/bench_accuracy.py --data ../shared/data [--models xs2mask-4b ukis-csmask-4b-l2a ...]
                                        [--out-md accuracy.md]

Two evaluation sets, both never trained on:

1. **Human labels**: the six ``trusted`` On Cloud N chips (B02 B03 B04 B08, L2A, cloud / not
   cloud). Scores are pooled over the chips (confusion matrices summed).
2. **Simulated validation set**: clouds and shadows simulated (fixed seeds) on the clear scenes
   the training pipeline holds out, with exact 4-class labels: thick, thin, shadow, clear.

The CloudSEN12 RGB patches carry only B04 B03 B02: none of these models can run on them (all need
B08), so they are not scored. s2cloudless needs 10 L1C bands that the chips lack.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import xarray as xr

import xs2mask
from xs2mask.evaluation import combine, evaluate
from xs2mask.training import data as tdata
from xs2mask.training import pseudo, sources

BANDS = ("B02", "B03", "B04", "B08")


def _mask(model: str, refl: np.ndarray, bands: tuple[str, ...]) -> np.ndarray:
    cube = xr.DataArray(refl, dims=("band", "y", "x"), coords={"band": list(bands)})
    return xs2mask.predict(cube, model=model).mask.values


def human(models: list[str], data: Path) -> dict[str, object]:
    chips = sources.scenes(data, split="validation")
    out = {}
    for model in models:
        out[model] = combine(
            [
                evaluate(_mask(model, c.reflectance, c.bands), c.labels, reference_scheme="cloud")
                for c in chips
            ]
        )
    return out


def simulated(models: list[str], data: Path, n: int, seed: int, cache: Path) -> dict[str, object]:
    train = sources.scenes(data, split="train", bands=BANDS)
    labels = [pseudo.pseudo_label(s, cache=cache) for s in train]
    pools = tdata.make_pools(train, labels)
    maker = tdata.SampleMaker(
        pools, BANDS, np.zeros(4), np.ones(4), patch=256, simulated_fraction=1.0, seed=seed
    )
    samples = []
    for i in range(n):
        rng = np.random.default_rng((seed, 2**31, i))
        refl, target, _ = maker._simulated(rng, 256, pools.clear_validation)
        samples.append((refl, target))
    out = {}
    for model in models:
        out[model] = combine(
            [evaluate(_mask(model, r, BANDS), t, reference_scheme="full") for r, t in samples]
        )
    return out


def table(human_scores, sim_scores) -> str:
    def f(v):
        return "–" if v is None or v != v else f"{100 * v:.1f}"

    rows = [
        "| model | human: cloud BOA | human: cloud F1 | human: OA | sim: cloud BOA | sim: thick BOA "
        "| sim: thin BOA | sim: shadow BOA | sim: clear BOA |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model in human_scores:
        h, s = human_scores[model], sim_scores[model]
        rows.append(
            f"| `{model}` | {f(h['cloud'].boa)} | {f(h['cloud'].f1)} | {f(h.overall_accuracy)} | "
            f"{f(s['cloud'].boa)} | {f(s['thick_cloud'].boa)} | {f(s['thin_cloud'].boa)} | "
            f"{f(s['cloud_shadow'].boa)} | {f(s['clear'].boa)} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument(
        "--models", nargs="+", default=["xs2mask-4b", "ukis-csmask-4b-l2a", "ukis-csmask-4b-l1c"]
    )
    parser.add_argument("--simulated", type=int, default=96, help="simulated validation samples (256 px)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--cache", default=str(Path("~/.cache/xs2mask/pseudo").expanduser()))
    parser.add_argument("--out-md", default=None)
    args = parser.parse_args()
    start = time.perf_counter()
    data = Path(args.data)
    h = human(args.models, data)
    s = simulated(args.models, data, args.simulated, args.seed, Path(args.cache))
    md = table(h, s)
    print(md)
    print(f"\n({time.perf_counter() - start:.0f} s; human = 6 trusted On Cloud N chips, 1.57 Mpx pooled; "
          f"sim = {args.simulated} simulated 256 px samples on held-out clear scenes)")  # fmt: skip
    if args.out_md:
        Path(args.out_md).write_text(md + "\n")


if __name__ == "__main__":
    main()
