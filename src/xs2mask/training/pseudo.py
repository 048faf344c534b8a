"""Pseudo-labels: what a strong model that ships its weights says about real scenes.

The teacher is ukis-csmask (U-Nets trained on CloudSEN12+ and SPARCS), run through
xs2mask's own engine with the variant matching the scene's level, or an ensemble of
ukis-csmask variants named by the caller (their probabilities averaged). On L1C scenes with the
ten bands s2cloudless needs, s2cloudless (Sinergise's per-pixel LightGBM) is a second
teacher of the cloud class: the two cloud probabilities are averaged, and the rest of the
probability is split between clear and shadow as ukis-csmask splits it. Where the two
disagree the target's confidence drops, and such pixels weigh less or are ignored.
The answer becomes a training target with three kinds of pixel:

* ``0`` clear and ``3`` shadow, where the teacher says so confidently;
* ``4`` "cloud, thick or thin": the teacher has one cloud class, so the student is
  not told which of its two cloud classes is right (the loss accepts either);
* ``255`` ignored: the teacher's top probability is below ``min_confidence``, or
  the pixel has no data.

The teacher's probabilities are kept too: :func:`draw_targets` draws a target per
pixel from them, so that the cross-entropy averaged over epochs is the cross-entropy
against the teacher's soft labels (distillation) -- hazy pixels, where the teacher
hesitates between cloud and clear or shadow, then teach the student that hesitation
instead of being ignored.

The teacher's cloud + shadow fraction also sorts the training scenes: nearly clear
ones become backgrounds for simulated clouds (:mod:`xs2mask.training.simulate`).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .shadow_stats import dilate
from .sources import Scene

CLOUD_ANY = 4
IGNORE = 255


@dataclass(frozen=True, eq=False)
class PseudoLabels:
    """Teacher targets for one scene: codes 0, 3, 4 (cloud, thick or thin) and 255 (ignored).

    ``probability`` ``(len(codes), y, x)`` float16 is the teacher's probability of each
    target code in ``codes`` (all zero where there is no data); None where only hard
    targets were kept.
    """

    scene: str
    teacher: str
    target: np.ndarray
    confidence: np.ndarray
    probability: np.ndarray | None = None
    codes: tuple[int, ...] = ()

    @property
    def cloud_fraction(self) -> float:
        valid = self.target != IGNORE
        return float(np.isin(self.target, (CLOUD_ANY, 3)).sum() / max(int(valid.sum()), 1))


S2CLOUDLESS_BANDS = ("B01", "B02", "B04", "B05", "B08", "B8A", "B09", "B10", "B11", "B12")


def teacher_for(scene: Scene) -> str:
    """The ukis-csmask variant trained on the scene's product level (4-band: runs on every source)."""
    return f"ukis-csmask-4b-{scene.level.lower()}"


def teachers_for(scene: Scene, ensemble: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The ukis-csmask ``ensemble`` (default: the variant of the scene's level), plus
    s2cloudless for L1C scenes that carry its ten bands.

    Examples
    --------
    >>> from xs2mask.training.sources import Scene
    >>> scene = Scene("s", np.zeros((4, 2, 2), np.float32), ("B02", "B03", "B04", "B08"), "L2A", "train")
    >>> teachers_for(scene)
    ('ukis-csmask-4b-l2a',)
    >>> teachers_for(scene, ("ukis-csmask-4b-l2a", "ukis-csmask-4b-l1c"))
    ('ukis-csmask-4b-l2a', 'ukis-csmask-4b-l1c')
    """
    own = tuple(ensemble) or (teacher_for(scene),)
    if scene.level == "L1C" and scene.has(S2CLOUDLESS_BANDS):
        return (*own, "s2cloudless")
    return own


def check_teachers(names: tuple[str, ...]) -> None:
    """Raise :class:`~xs2mask.InputError` unless every name is a registered model whose
    classes are ukis-csmask's (clear, cloud, shadow), so that their probabilities average."""
    from ..exceptions import InputError
    from ..models import available, get

    for name in names:
        if name not in available():
            raise InputError(f"teacher {name!r} is not a registered model; available: {sorted(available())}")
        if tuple(get(name).classes) != (0, 1, 3):
            raise InputError(
                f"teacher {name!r} has classes {tuple(get(name).classes)}; an ensemble of teachers needs "
                "ukis-csmask's (0 clear, 1 cloud, 3 shadow), e.g. ukis-csmask-4b-l2a and ukis-csmask-4b-l1c"
            )


def pseudo_label(
    scene: Scene,
    *,
    min_confidence: float = 0.7,
    cache: Path | None = None,
    teachers: tuple[str, ...] = (),
) -> PseudoLabels:
    """Label ``scene`` with its teachers.

    Parameters
    ----------
    scene
        A real scene with B02 B03 B04 B08.
    min_confidence
        Pixels whose top teacher probability is lower are ignored (255).
    cache
        Folder for the teachers' outputs (keyed by scene and teacher), so that
        repeated training runs do not rerun the teachers.
    teachers
        ukis-csmask variants whose probabilities are averaged (see :func:`check_teachers`);
        default: the variant of the scene's product level.

    Examples
    --------
    >>> from xs2mask.training.sources import cloud_cover_chips
    >>> chip = next(cloud_cover_chips(Path("../shared/data")))  # doctest: +SKIP
    >>> pseudo_label(chip).cloud_fraction  # doctest: +SKIP
    0.47
    """
    teachers = teachers_for(scene, teachers)
    own = [_teacher_probability(scene, t, cache) for t in teachers if t != "s2cloudless"]
    classes = own[0][1]
    probs = np.mean([p for p, _ in own], axis=0)
    if "s2cloudless" in teachers:
        s2c, _ = _teacher_probability(scene, "s2cloudless", cache)
        probs = _with_cloud_probability(probs, classes, s2c[1])
    nodata = np.isnan(probs).any(axis=0) | np.all(np.isnan(scene.reflectance), axis=0)
    probs = np.nan_to_num(probs)
    top = probs.argmax(axis=0)
    confidence = probs.max(axis=0)
    # ukis' cloud (mapped to 1) cannot say thick or thin: the target accepts both.
    target_codes = tuple({1: CLOUD_ANY}.get(c, c) for c in classes)
    codes = np.asarray(target_codes, np.uint8)[top]
    codes[(confidence < min_confidence) | nodata] = IGNORE
    probs[:, nodata] = 0.0
    return PseudoLabels(
        scene.name,
        "+".join(teachers),
        codes,
        confidence.astype(np.float32),
        probs.astype(np.float16),
        target_codes,
    )


def with_human_labels(labels: PseudoLabels, human: np.ndarray, erode: int = 0) -> PseudoLabels:
    """The teacher's targets with the cloud taken from human labels (0 not cloud, 1 cloud).

    Where a person drew cloud the target is cloud (either kind) with probability 1; elsewhere the
    teacher's clear and shadow probabilities are scaled up to fill the pixel, so the teacher still
    says which of the not-cloud pixels are shadow. No-data pixels stay no data. ``erode`` takes
    that many pixels off the inside of the person's cloud outline (labels that follow clouds
    generously): there the teacher's targets stay as they are.

    Examples
    --------
    >>> p = np.array([[[0.2, 0.6]], [[0.6, 0.2]], [[0.2, 0.2]]], np.float16)  # codes 0, 4, 3
    >>> pl = PseudoLabels("s", "t", np.zeros((1, 2), np.uint8), np.ones((1, 2)), p, (0, 4, 3))
    >>> out = with_human_labels(pl, np.array([[0, 1]], np.uint8))
    >>> out.probability.astype(float).round(2).tolist(), out.target.tolist()
    ([[[0.5, 0.0]], [[0.0, 1.0]], [[0.5, 0.0]]], [[0, 4]])
    """
    if labels.probability is None or CLOUD_ANY not in labels.codes:
        raise ValueError(f"{labels.scene}: human labels need the teacher's probabilities of a cloud class")
    probs = labels.probability.astype(np.float32)
    cloud = labels.codes.index(CLOUD_ANY)
    valid = probs.sum(axis=0) > 0
    drawn = (human == 1) & valid
    # the outline's inner ring, Chebyshev distance <= erode from a pixel not drawn as cloud
    is_cloud = drawn & ~dilate(~drawn, erode)  # erode 0: dilate returns ~drawn as it is
    ring = drawn & ~is_cloud
    rest = 1.0 - probs[cloud]
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(ring, 1.0, np.where(rest > 1e-3, (~is_cloud) / rest, 0.0))
    probs *= scale
    # Not cloud for the person, cloud for the teacher throughout: clear.
    unsure = valid & ~drawn & (rest <= 1e-3)
    probs[labels.codes.index(0), unsure] = 1.0
    probs[cloud] = np.where(ring, probs[cloud], is_cloud)  # the ring kept its scale of 1
    top = probs.argmax(axis=0)
    codes = np.asarray(labels.codes, np.uint8)[top]
    codes[~valid] = IGNORE
    return PseudoLabels(
        labels.scene,
        f"{labels.teacher}+human",
        codes,
        probs.max(axis=0),
        probs.astype(np.float16),
        labels.codes,
    )


def draw_targets(probability: np.ndarray, codes: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """One target code per pixel drawn from the teacher's ``probability`` ``(len(codes), y, x)``.

    Pixels whose probabilities are all zero (no data) become ``255``. The expected
    cross-entropy of the drawn targets equals the cross-entropy against ``probability``.

    Examples
    --------
    >>> p = np.zeros((2, 1, 1000), np.float32); p[0] = 0.25; p[1] = 0.75
    >>> t = draw_targets(p, (0, 4), np.random.default_rng(0))
    >>> round(float((t == 4).mean()), 1)
    0.8
    """
    cumulative = np.cumsum(probability.astype(np.float32), axis=0)
    total = cumulative[-1]
    u = rng.random(total.shape, dtype=np.float32) * total
    index = np.minimum((u[None] >= cumulative).sum(axis=0), len(codes) - 1)
    out = np.asarray(codes, np.uint8)[index]
    out[total <= 0] = IGNORE
    return out


def _teacher_probability(
    scene: Scene, teacher: str, cache: Path | None
) -> tuple[np.ndarray, tuple[int, ...]]:
    """One teacher's class probabilities ``(class, y, x)`` (float32, NaN no-data) and class codes."""
    import xarray as xr

    from ..exceptions import InputWarning
    from ..inference import predict
    from ..models import get

    key = hashlib.sha1(f"{scene.name}|{teacher}|{scene.reflectance.shape}".encode()).hexdigest()[:16]
    path = cache / f"{key}.npz" if cache is not None else None
    if path is not None and path.exists():
        saved = np.load(path)
        return saved["probability"].astype(np.float32), tuple(int(c) for c in saved["classes"])
    bands = get(teacher).bands
    cube = xr.DataArray(scene.select(bands), dims=("band", "y", "x"), coords={"band": list(bands)})
    with warnings.catch_warnings():
        # Training scenes are bare arrays: a mask without a CRS is what is wanted here.
        warnings.filterwarnings("ignore", "the input has no CRS", InputWarning)
        out = predict(cube, model=teacher, output="probability", probability_dtype="float16")
    probs = out["probability"].values.astype(np.float32)
    classes = tuple(int(c) for c in out["class"].values)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, probability=probs.astype(np.float16), classes=np.asarray(classes))
    return probs, classes


def _with_cloud_probability(probs: np.ndarray, classes: tuple[int, ...], other: np.ndarray) -> np.ndarray:
    """Average the cloud channel with ``other``; rescale the remaining classes to fill the rest."""
    cloud = classes.index(1)
    mixed = 0.5 * (probs[cloud] + other)
    rest = 1.0 - probs[cloud]
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(rest > 0, (1.0 - mixed) / rest, 0.0)
    out = probs * scale
    out[cloud] = mixed
    return out.astype(np.float32)
