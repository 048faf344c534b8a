"""Own models beside ukis-csmask on every human-labelled set, at 10, 20, 30 and 60 m pixels.

Run::

    python benchmarks/bench_human.py [--data ../shared/data] [--models xs2mask-4b ukis-csmask-4b-l2a ...]
                                     [--run runs/NAME ...] [--pixel-sizes 10 20 30 60] [--sim-samples 48]
                                     [--json human.json] [--out-md human.md]

The gate a candidate model passes before it ships (issue 19). Sets (the new chips are trained on since
xs2mask-4b v5; the others never):

1. ``trusted``: the six trusted On Cloud N chips (B02 B03 B04 B08, L2A; human labels cloud / not cloud).
   Cloud BOA pooled over the chips (confusion matrices summed).
2. ``new-chips``: five more On Cloud N chips from five other places (``cloud_cover_chips_more``), scored
   alike. Their labels outline the clouds generously and call cloud shadows "not cloud".
3. ``cs12-rgbn``: the two CloudSEN12 patches with B08 and dense 4-class human labels. On the cloudy one:
   BOA of cloud (thick and thin merged), thick, thin and shadow, and the shares of clear / thick / thin /
   shadow each model predicts beside the labels' shares. A model without a thin class (ukis-csmask) is
   scored on the same 4-class labels: its cloud counts as thick, and its thin BOA is "–". On the clear
   city: the share of pixels a model calls cloud or shadow (every one a false alarm).
4. ``clear-scenes``: the clear scenes the training pipeline holds out (under 2 % cloud and shadow for
   ukis-csmask-4b), real pixels as they are: the share of pixels called cloud or shadow. Bright
   cities and deserts are where a model's thin class strays.
5. ``sim-4b``: clouds and shadows simulated (fixed seeds, the same samples for every model) on the clear
   scenes the training pipeline holds out, with exact 4-class labels: ``bench_accuracy.py``'s samples
   (same scenes, crops and seeds), except that the clear background is coarsened to the pixel size
   *before* the clouds are simulated at that pixel size, so that clouds and shadows have their
   physical size. BOA of cloud, thick, thin and shadow, pooled over the samples.

Pixel sizes: a factor ``f = size / 10`` area-averages the reflectance over ``f`` x ``f`` blocks
(:func:`xs2mask.evaluation.coarsen`; a block with a no-data pixel is no data) and takes the majority
label (:func:`xs2mask.evaluation.coarsen_labels`). Every model gets the coarse pixels as they are: a
``(band, y, x)`` DataArray with band names and no x / y coordinates, so ``predict`` cannot know the
pixel size and never resamples it to the model's own (``inference._model_resolution`` returns None
without coordinates). That is what a user who brings a 20, 30 or 60 m cube gets. A model that refuses
an input (e.g. a 60 m chip of 85 px) is reported as refused, not skipped.

No-data: On Cloud N DN 0 is NaN; a CloudSEN12 pixel whose four bands are all 0 is no data, as the engine
treats it: the last 3 rows and columns of each patch (CloudSEN12 patches are 509 px, stored padded to
512 with zeros and labelled 0 there). Those pixels carry no label (255) and are not scored; counting them
as correctly found clear pixels adds about a point of cloud BOA on the cloudy patch.

BOA figures are percent (``evaluate`` reports fractions). ``--run DIR`` registers the models a
training run exported to ``DIR`` (its ``<name>.json``) and scores the ONNX one (its ``-torch`` twin is
registered too: name it in ``--models`` to score it).

Example::

    python benchmarks/bench_human.py --run runs/cand7 --json human.json --out-md human.md
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from harness import DEFAULT_DATA, markdown_table, source_version, write_json

import xs2mask
from xs2mask.classes import NODATA
from xs2mask.evaluation import Scores, coarsen, coarsen_labels, combine, evaluate
from xs2mask.exceptions import InputWarning, XS2MaskError
from xs2mask.training import data as tdata
from xs2mask.training import pseudo, sources

BANDS = ("B02", "B03", "B04", "B08")
DEFAULT_MODELS = ("xs2mask-4b", "ukis-csmask-4b-l2a", "ukis-csmask-4b-l1c")
BINARY = (0, 1)  # On Cloud N label codes: not cloud, cloud
FULL = (0, 1, 2, 3)  # clear, thick, thin, shadow
# The classes of the 4-class sets, in table order, with the evaluate() names they are scored under.
FOUR = {"cloud": "cloud", "thick": "thick_cloud", "thin": "thin_cloud", "shadow": "cloud_shadow"}
FRACTIONS = {"clear": 0, "thick": 1, "thin": 2, "shadow": 3}
SIM_PATCH = 256  # the 10 m edge of a simulated sample, as in bench_accuracy.py
SIM_SEED = 1234  # bench_accuracy.py's default seed
# All of sim-4b's pixels, those inside a class (all eight neighbours alike), those at an edge.
SIM_SETS = ("sim-4b", "sim-4b-interior", "sim-4b-edges")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True, eq=False)
class Chip:
    """Labelled pixels: ``(band, y, x)`` reflectance in :data:`BANDS` order (NaN no data) and ``(y, x)``
    uint8 labels (255 no data) whose codes are ``classes``."""

    name: str
    reflectance: np.ndarray
    labels: np.ndarray
    classes: tuple[int, ...]

    def at(self, factor: int) -> tuple[np.ndarray, np.ndarray]:
        """Reflectance and labels at ``factor`` times the pixel size."""
        return coarsen(self.reflectance, factor), coarsen_labels(self.labels, factor, self.classes)


def _chip(name: str, reflectance: np.ndarray, labels: np.ndarray, classes: tuple[int, ...]) -> Chip:
    # A pixel without data has no label either, so that a coarse block's majority counts measured pixels.
    labels = np.where(np.isnan(reflectance).any(axis=0), np.uint8(NODATA), labels).astype(np.uint8)
    return Chip(name, reflectance, labels, classes)


def trusted_chips(data: Path) -> list[Chip]:
    return [
        _chip(s.name, s.select(BANDS), s.labels, BINARY) for s in sources.scenes(data, split="validation")
    ]


def new_chips(data: Path) -> list[Chip]:
    return [_chip(s.name, s.select(BANDS), s.labels, BINARY) for s in sources.cloud_cover_chips_more(data)]


def cloudsen12_patches(data: Path) -> tuple[Chip, Chip]:
    """The cloudy CloudSEN12 patch and the clear one, told apart by their labels' cloud share."""
    npz = np.load(data / "cloudsen12_rgbn" / "patches.npz")
    order = [str(b) for b in npz["band_order"]]
    images = npz["images"][:, [order.index(b) for b in BANDS]]
    chips = []
    for image, labels, index in zip(images, npz["labels"], npz["cloudsen12_index"], strict=True):
        image = np.where((image == 0).all(axis=0), np.float32(np.nan), image)
        chips.append(_chip(f"cloudsen12/{int(index)}", image, labels, FULL))
    cloudy, clear = sorted(chips, key=lambda c: -np.isin(c.labels, (1, 2)).mean())
    return cloudy, clear


def simulation(data: Path, cache: Path) -> tdata.SampleMaker:
    """The sample maker ``bench_accuracy.simulated`` draws its samples with (the same pools of clear
    validation backgrounds, from the pseudo-labels of the same cache)."""
    train = sources.scenes(data, split="train", bands=BANDS)
    labels = [pseudo.pseudo_label(s, cache=cache) for s in train]
    pools = tdata.make_pools(train, labels)
    ones = np.ones(len(BANDS))
    maker = tdata.SampleMaker(
        pools, BANDS, 0 * ones, ones, patch=SIM_PATCH, simulated_fraction=1.0, seed=SIM_SEED
    )
    log(f"sim-4b: {len(pools.clear_validation)} clear validation scenes")
    return maker


def simulated_chip(maker: tdata.SampleMaker, index: int, size: int) -> Chip:
    """Sample ``index`` of ``bench_accuracy.simulated``'s draws with the same 256 px of ground coarsened
    to ``size`` m before the clouds are simulated at that size; at 10 m the very same sample."""
    rng = np.random.default_rng((SIM_SEED, 2**31, index))  # bench_accuracy.py's seed of sample `index`
    cloudy, labels, _ = maker.simulated(rng, SIM_PATCH, maker.pools.clear_validation, size // 10)
    return Chip(f"sim/{index}", cloudy, labels, FULL)


def edge_pixels(labels: np.ndarray) -> np.ndarray:
    """Pixels with a neighbour (of eight, the image's border extended) of another label.

    Examples
    --------
    >>> edge_pixels(np.array([[0, 0, 0, 0], [0, 0, 0, 1]])).astype(int).tolist()
    [[0, 0, 1, 1], [0, 0, 1, 1]]
    """
    padded = np.pad(labels, 1, mode="edge")
    h, w = labels.shape
    edge = np.zeros(labels.shape, bool)
    for dy in range(3):
        for dx in range(3):
            edge |= padded[dy : dy + h, dx : dx + w] != labels
    return edge


def predict(model: str, reflectance: np.ndarray) -> np.ndarray:
    """The model's mask of coordinate-less pixels (never resampled: see the module docstring)."""
    cube = xr.DataArray(reflectance, dims=("band", "y", "x"), coords={"band": list(BANDS)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)  # "no CRS": these pixels have no place on purpose
        return xs2mask.predict(cube, model=model).mask.values


@dataclass(frozen=True)
class Refused:
    """A model that would not run on an input: the error it raised."""

    error: str


def masks(models: Sequence[str], inputs: Sequence[np.ndarray], what: str) -> dict[str, list | Refused]:
    """Each model's masks of ``inputs``, or what it refused."""
    out: dict[str, list | Refused] = {}
    for model in models:
        start = time.perf_counter()
        try:
            out[model] = [predict(model, refl) for refl in inputs]
        except XS2MaskError as err:
            out[model] = Refused(f"{type(err).__name__}: {err}")
            log(f"  {what} {model}: REFUSED {out[model].error}")
            continue
        log(f"  {what} {model}: {time.perf_counter() - start:.1f} s")
    return out


def _pct(value: float) -> float | None:
    return None if value != value else 100 * value


def _pooled(predicted: Sequence[np.ndarray], labels: Sequence[np.ndarray], scheme: str) -> Scores:
    return combine([evaluate(p, r, reference_scheme=scheme) for p, r in zip(predicted, labels, strict=True)])


def _has_thin(model: str) -> bool:
    return 2 in xs2mask.models.get(model).classes


def binary_scores(predicted: list[np.ndarray], labels: list[np.ndarray]) -> dict[str, Any]:
    pooled = _pooled(predicted, labels, "cloud")
    return {"cloud": _pct(pooled["cloud"].boa), "scores": pooled.as_dict()}


def four_class_scores(model: str, predicted: list[np.ndarray], labels: list[np.ndarray]) -> dict[str, Any]:
    pooled = _pooled(predicted, labels, "full")
    boa = {key: _pct(pooled[name].boa) for key, name in FOUR.items()}
    if not _has_thin(model):
        boa["thin"] = None  # a model without a thin class is not scored on it
    return {**boa, "scores": pooled.as_dict()}


def fractions(mask: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Percent of the pixels (valid on both sides) of each class in ``mask``."""
    valid = (mask != NODATA) & (labels != NODATA)
    return {key: 100 * float((mask[valid] == code).mean()) for key, code in FRACTIONS.items()}


def score_sets(
    models: Sequence[str], sizes: Sequence[int], data: Path, n_sim: int, cache: Path
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, str]]:
    """``{set: {model: {size: figures}}}`` (sizes as strings, JSON keys; a refusal as
    ``{"refused": error}``) and the names of the cloudy and clear CloudSEN12 patches.

    The ``cs12-fractions`` entry holds the cloudy patch's shares, with the labels' under ``"labels"``.
    """
    log("reading the human-labelled sets")
    binary = {"trusted": trusted_chips(data), "new-chips": new_chips(data)}
    cloudy, clear = cloudsen12_patches(data)
    maker = simulation(data, cache)
    results: dict[str, dict[str, dict[str, Any]]] = {
        k: {m: {} for m in models}
        for k in ("trusted", "new-chips", "cs12-rgbn", "cs12-clear", "clear-scenes", *SIM_SETS)
    }
    results["cs12-fractions"] = {m: {} for m in ("labels", *models)}

    def record(name: str, size: int, found: dict[str, list | Refused], score: Callable[[str, list], dict]):
        for model, got in found.items():
            key = str(size)
            results[name][model][key] = (
                {"refused": got.error} if isinstance(got, Refused) else score(model, got)
            )

    for size in sizes:
        f = size // 10
        log(f"{size} m (factor {f})")
        for name, chips in binary.items():
            coarse = [c.at(f) for c in chips]
            labels = [lab for _, lab in coarse]
            found = masks(models, [r for r, _ in coarse], f"{name} {size} m")
            record(name, size, found, lambda m, p, labels=labels: binary_scores(p, labels))
        (c_refl, c_lab), (k_refl, k_lab) = cloudy.at(f), clear.at(f)
        found = masks(models, [c_refl, k_refl], f"cs12-rgbn {size} m")
        record("cs12-rgbn", size, found, lambda m, p, lab=c_lab: four_class_scores(m, p[:1], [lab]))
        record("cs12-fractions", size, found, lambda m, p, lab=c_lab: fractions(p[0], lab))
        results["cs12-fractions"]["labels"][str(size)] = fractions(c_lab, c_lab)
        record(
            "cs12-clear",
            size,
            found,
            lambda m, p, lab=k_lab: {"false_alarm": 100 - fractions(p[1], lab)["clear"]},
        )
        clear_scenes = [coarsen(s.select(BANDS), f) for s in maker.pools.clear_validation]
        found = masks(models, clear_scenes, f"clear scenes {size} m")
        record("clear-scenes", size, found, lambda m, p, r=clear_scenes: {"false_alarm": false_alarm(p, r)})
        chips = [simulated_chip(maker, i, size) for i in range(n_sim)]
        found = masks(models, [c.reflectance for c in chips], f"sim-4b {size} m")
        edges = [edge_pixels(c.labels) for c in chips]
        for name, keep in zip(SIM_SETS, (None, False, True), strict=True):
            # Labels of the other kind of pixel are no data: only this kind is scored.
            labels = [
                c.labels if keep is None else np.where(e == keep, c.labels, NODATA)
                for c, e in zip(chips, edges, strict=True)
            ]
            record(name, size, found, lambda m, p, labels=labels: four_class_scores(m, p, labels))
        log(f"sim-4b {size} m: {100 * np.mean([e.mean() for e in edges]):.1f} % of the pixels are edges")
    return results, {"cloudy": cloudy.name, "clear": clear.name}


# --------------------------------------------------------------------------- report


def false_alarm(predicted: Sequence[np.ndarray], reflectance: Sequence[np.ndarray]) -> float:
    """Percent of the pixels with data that are called cloud or shadow, pooled over clear scenes."""
    valid = [~np.isnan(r).any(axis=0) for r in reflectance]
    called = sum(int((np.isin(p, (1, 2, 3)) & v).sum()) for p, v in zip(predicted, valid, strict=True))
    return 100.0 * called / max(sum(int(v.sum()) for v in valid), 1)


def _f(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _cell(figures: dict[str, Any] | None, keys: Sequence[str]) -> str:
    if figures is None:
        return ""
    if "refused" in figures:
        return "refused"
    return " / ".join(_f(figures[k]) for k in keys)


def table(
    results: dict[str, dict[str, Any]], models: Sequence[str], sizes: Sequence[int], keys, title
) -> str:
    columns = [title, *(f"{s} m" for s in sizes)]
    rows = [[f"`{m}`", *(_cell(results[m].get(str(s)), keys) for s in sizes)] for m in models]
    return markdown_table(columns, rows)


def fractions_table(results: dict[str, dict[str, Any]], models: Sequence[str], sizes: Sequence[int]) -> str:
    columns = ["cs12 cloudy patch: % of pixels", *(f"{s} m" for s in sizes)]
    rows = [
        [f"`{m}`" if m != "labels" else "labels", *(_cell(results[m].get(str(s)), FRACTIONS) for s in sizes)]
        for m in ("labels", *models)
    ]
    return markdown_table(columns, rows)


def report(
    results: dict[str, Any], patches: dict[str, str], models: Sequence[str], sizes: Sequence[int]
) -> str:
    four = " / ".join(FOUR)
    parts = [
        "**trusted** (6 On Cloud N chips): pooled cloud BOA\n\n"
        + table(results["trusted"], models, sizes, ["cloud"], "model"),
        "**new-chips** (5 On Cloud N chips, `cloud_cover_chips_more`): pooled cloud BOA\n\n"
        + table(results["new-chips"], models, sizes, ["cloud"], "model"),
        f"**cs12-rgbn**, cloudy patch ({patches['cloudy']}): BOA {four} ('–': no thin class)\n\n"
        + table(results["cs12-rgbn"], models, sizes, list(FOUR), "model"),
        f"**cs12-rgbn**, cloudy patch: predicted {' / '.join(FRACTIONS)} %\n\n"
        + fractions_table(results["cs12-fractions"], models, sizes),
        f"**cs12-rgbn**, clear city patch ({patches['clear']}): % of pixels called cloud or shadow\n\n"
        + table(results["cs12-clear"], models, sizes, ["false_alarm"], "model"),
        "**clear-scenes** (the clear scenes held out of training, real pixels as they are; clear for "
        "ukis-csmask-4b, under 2 % cloud and shadow): % of pixels called cloud or shadow\n\n"
        + table(results["clear-scenes"], models, sizes, ["false_alarm"], "model"),
        f"**sim-4b** (simulated at each pixel size): pooled BOA {four}\n\n"
        + table(results["sim-4b"], models, sizes, list(FOUR), "model"),
        f"**sim-4b-interior** (its pixels whose eight neighbours share their label): pooled BOA {four}\n\n"
        + table(results["sim-4b-interior"], models, sizes, list(FOUR), "model"),
        f"**sim-4b-edges** (its pixels next to another label; their share grows with the pixel size): "
        f"pooled BOA {four}\n\n" + table(results["sim-4b-edges"], models, sizes, list(FOUR), "model"),
    ]
    return "\n\n".join(parts)


def differences(results: dict[str, Any], models: Sequence[str], coarse: int = 30, fine: int = 10) -> str:
    """Each model's BOA at ``coarse`` m minus at ``fine`` m, in points (the issue's target: within 2)."""
    checks = [("trusted", "cloud"), ("new-chips", "cloud"), ("cs12-rgbn", "cloud"), ("sim-4b", "cloud")]
    checks += [("sim-4b", "shadow"), ("sim-4b-interior", "cloud"), ("sim-4b-interior", "shadow")]
    lines = []
    for model in models:
        cells = []
        for name, key in checks:
            a, b = (results[name][model].get(str(s), {}) for s in (coarse, fine))
            if a.get(key) is None or b.get(key) is None:
                cells.append(f"{name} {key} ?")
                continue
            cells.append(f"{name} {key} {a[key] - b[key]:+.1f}")
        lines.append(f"`{model}` {coarse} m minus {fine} m (points): " + ", ".join(cells))
    return "\n".join(lines)


def refusals(results: dict[str, Any]) -> list[str]:
    return [
        f"{name} {model} {size} m: {figures['refused']}"
        for name, per_model in results.items()
        for model, per_size in per_model.items()
        for size, figures in per_size.items()
        if "refused" in figures
    ]


def register_runs(runs: Sequence[Path]) -> list[str]:
    """Register every model a training run exported to each folder; the names of the ONNX ones."""
    names = []
    for folder in runs:
        specs = xs2mask.models.registry.shipped(folder=folder)
        if not specs:
            raise SystemExit(f"{folder} holds no exported model (<name>.json with sha256): pass a run folder")
        for spec in specs:
            xs2mask.models.register(spec, overwrite=True)
        names += [s.name for s in specs if s.backend == "onnx"]
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--run", type=Path, action="append", default=[], help="a training run folder")
    parser.add_argument("--pixel-sizes", type=int, nargs="+", default=[10, 20, 30, 60])
    parser.add_argument("--sim-samples", type=int, default=48, help="simulated samples (256 px at 10 m)")
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/xs2mask/pseudo").expanduser(),
                        help="pseudo-label cache (bench_accuracy.py's)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--out-md", type=Path, help="write the tables to this markdown file")
    args = parser.parse_args(argv)
    bad = [s for s in args.pixel_sizes if s < 10 or s % 10]
    if bad:
        parser.error(f"--pixel-sizes must be multiples of 10 m (the data's pixel size), got {bad}")
    models = list(dict.fromkeys([*args.models, *register_runs(args.run)]))
    missing = [m for m in models if m not in xs2mask.models.available()]
    if missing:
        parser.error(f"models not installed here: {missing} (see 'xs2mask models')")
    unfit = [m for m in models if not set(xs2mask.models.get(m).bands) <= set(BANDS)]
    if unfit:
        parser.error(
            f"models needing bands other than {' '.join(BANDS)}: {unfit}; the human sets have no more"
        )

    start = time.perf_counter()
    results, patches = score_sets(models, args.pixel_sizes, args.data, args.sim_samples, args.cache)
    wall = time.perf_counter() - start
    md = report(results, patches, models, args.pixel_sizes)
    notes = [differences(results, models)] if {10, 30} <= set(args.pixel_sizes) else []
    notes += refusals(results)
    print(md + "\n\n" + "\n".join(notes))
    print(
        f"\n({wall:.0f} s, {source_version()}; sim-4b: {args.sim_samples} samples of {SIM_PATCH} px at 10 m)"
    )
    if args.out_md:
        args.out_md.write_text(md + "\n")
    doc = {
        "setup": {
            "models": models,
            "pixel_sizes": args.pixel_sizes,
            "sim_samples": args.sim_samples,
            "sim_seed": SIM_SEED,
            "cs12_patches": patches,
            "source": source_version(),
            "wall_s": wall,
            "boa_unit": "percent (the 'scores' entries: evaluate's fractions)",
        },
        "sets": results,
    }
    write_json(args.json, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
