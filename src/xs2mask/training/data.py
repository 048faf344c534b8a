"""Training samples: simulated clouds on clear scenes, pseudo-labelled cloudy scenes, augmentation.

A sample is a deterministic function of ``(seed, epoch, index)``, so a run is
reproducible from its config, any sample can be rebuilt later (hard-example mining
stores only keys), and data loader workers need no shared state.

Targets use the codes of :mod:`xs2mask.classes` plus ``4`` ("cloud, thick or thin",
from a teacher that has one cloud class) and ``255`` (ignored). :func:`partial_ce`
is the loss that accepts either cloud class for code 4.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..evaluation import coarsen, coarsen_labels
from .pseudo import CLOUD_ANY, IGNORE, PseudoLabels, draw_targets
from .sources import Scene

# Which model output classes a target code allows (rows: codes 0-4).
ALLOWED = np.array(
    [
        [1, 0, 0, 0],  # clear
        [0, 1, 0, 0],  # thick cloud
        [0, 0, 1, 0],  # thin cloud
        [0, 0, 0, 1],  # shadow
        [0, 1, 1, 0],  # cloud, thick or thin
    ],
    dtype=bool,
)


@dataclass(frozen=True)
class Augment:
    """Augmentation ranges (all drawn per sample)."""

    flips: bool = True
    scale: tuple[float, float] = (0.75, 1.33)
    gain: float = 0.08  # per-band multiplicative jitter, +-
    offset: float = 0.01  # per-band additive jitter, +- reflectance
    noise: float = 0.004  # Gaussian band noise (reflectance)
    illumination: float = 0.0  # one multiplicative gain for all bands, +-: sun and terrain (off: 0)
    # Coarser pixels: with this probability a sample is area-averaged by an integer factor drawn
    # log-uniformly from ``coarsen`` (1-6: 10-60 m from 10 m data), clouds simulated at that pixel size.
    coarsen: tuple[float, float] = (1.0, 1.0)
    coarsen_probability: float = 0.0

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ValueError(f"Augment.scale must be (lo, hi) with 0 < lo <= hi, got {self.scale}")
        for name in ("gain", "illumination"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"Augment.{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.offset < 0 or self.noise < 0:
            raise ValueError("Augment.offset and Augment.noise must be >= 0")
        if not 1 <= self.coarsen[0] <= self.coarsen[1]:
            raise ValueError(f"Augment.coarsen must be (lo, hi) with 1 <= lo <= hi, got {self.coarsen}")
        if not 0 <= self.coarsen_probability <= 1:
            raise ValueError(f"Augment.coarsen_probability must be in [0, 1]: {self.coarsen_probability}")


def stable_fraction(name: str) -> float:
    """A number in [0, 1) fixed by the scene name: splits that never change between runs."""
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 2**32


@dataclass(frozen=True, eq=False)
class Pools:
    """Scenes sorted for training: clear backgrounds and pseudo-labelled cloudy scenes."""

    clear: tuple[Scene, ...]
    cloudy: tuple[tuple[Scene, PseudoLabels], ...]
    clear_validation: tuple[Scene, ...]


def make_pools(
    scenes: Sequence[Scene],
    labels: Sequence[PseudoLabels],
    *,
    clear_below: float = 0.02,
    validation_fraction: float = 0.1,
) -> Pools:
    """Sort training scenes by the teacher's cloud fraction; hold out some clear ones for validation.

    Examples
    --------
    >>> make_pools([], []).clear
    ()
    """
    clear: list[Scene] = []
    held: list[Scene] = []
    cloudy: list[tuple[Scene, PseudoLabels]] = []
    for scene, pl in zip(scenes, labels, strict=True):
        if scene.split != "train":
            continue
        if pl.cloud_fraction < clear_below:
            (held if stable_fraction(scene.name) < validation_fraction else clear).append(scene)
        else:
            cloudy.append((scene, pl))
    return Pools(tuple(clear), tuple(cloudy), tuple(held))


class SampleMaker:
    """Builds sample ``(x, target, weight)`` for ``(epoch, index)``; picklable, stateless.

    Parameters
    ----------
    pools
        Where samples come from.
    bands, mean, std
        Model input bands and their normalisation.
    patch
        Edge of the square sample in pixels.
    simulated_fraction
        Share of samples that are simulated clouds (the rest: pseudo-labelled scenes).
    scene_sampling
        ``"area"``: scenes picked in proportion to their area (capped at 512² px);
        ``"uniform"``: every scene alike, whatever its size.
    teacher_targets
        ``"confident"``: the teacher's top class where its probability reaches the
        run's ``min_confidence``, weighted by that probability;
        ``"sampled"``: every pixel's target drawn from the teacher's probabilities
        (distillation of its soft labels; see :func:`~xs2mask.training.pseudo.draw_targets`).
    class_weights
        Loss weight of each target code 0-4 (clear, thick, thin, shadow, cloud of either
        kind) in simulated samples, multiplied into the returned weight; None: all 1.
    teacher_class_weights
        The same for the teacher's targets; None: ``class_weights``. Weights other than 1
        skew what the student learns from a teacher's soft labels: a shadow weight of 2
        doubles the odds of shadow against cloud wherever the teacher hesitates.
    seed
        Base seed of the run.
    """

    def __init__(
        self,
        pools: Pools,
        bands: tuple[str, ...],
        mean: np.ndarray,
        std: np.ndarray,
        *,
        patch: int,
        simulated_fraction: float,
        seed: int,
        augment: Augment = Augment(),
        cloud_config=None,
        scene_sampling: str = "area",
        teacher_targets: str = "confident",
        class_weights: tuple[float, ...] | None = None,
        teacher_class_weights: tuple[float, ...] | None = None,
    ) -> None:
        self.pools, self.bands, self.patch = pools, bands, patch
        self.mean = np.asarray(mean, np.float32)[:, None, None]
        self.std = np.asarray(std, np.float32)[:, None, None]
        self.simulated_fraction, self.seed, self.augment = simulated_fraction, seed, augment
        self.cloud_config = cloud_config
        check_options(scene_sampling, teacher_targets, class_weights, teacher_class_weights)
        self.scene_sampling, self.teacher_targets = scene_sampling, teacher_targets
        self._simulated_weights = _code_weights(class_weights)
        self._teacher_weights = _code_weights(teacher_class_weights or class_weights)
        self._odds = {id(p): _area_odds([s for s in p]) for p in (pools.clear, pools.clear_validation)}
        self._odds[id(pools.cloudy)] = _area_odds([s for s, _ in pools.cloudy])

    def _pick(self, rng: np.random.Generator, pool) -> int:
        if self.scene_sampling == "uniform":
            return int(rng.integers(len(pool)))
        return int(rng.choice(len(pool), p=self._odds[id(pool)]))

    def __call__(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng((self.seed, epoch, index))
        size = self._window_size(rng)
        factor = self._coarsening(rng)
        if not self.pools.cloudy or rng.random() < self.simulated_fraction:
            refl, target, weight = self.simulated(rng, size * factor, self.pools.clear, factor)
            per_code = self._simulated_weights
        else:
            refl, target, weight = self._pseudo(rng, size, factor)
            per_code = self._teacher_weights
        refl, target, weight = self._resize(refl, target, weight)
        refl, target, weight = self._geometry(rng, refl, target, weight)
        refl = self._radiometry(rng, refl)
        return self.normalise(refl), target, weight * per_code[target]

    def validation_sample(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A fixed simulated sample on held-out clear scenes (no augmentation)."""
        rng = np.random.default_rng((self.seed, 2**31, index))  # an epoch no training run reaches
        refl, target, weight = self.simulated(rng, self.patch, self.pools.clear_validation)
        return self.normalise(refl), target, weight * self._simulated_weights[target]

    def normalise(self, refl: np.ndarray) -> np.ndarray:
        x = (refl - self.mean) / self.std
        # No-data becomes the normalised mean, as the inference engine feeds it.
        return np.nan_to_num(x, nan=0.0).astype(np.float32)

    # ------------------------------------------------------------------ parts

    def _window_size(self, rng: np.random.Generator) -> int:
        lo, hi = self.augment.scale
        return max(8, round(self.patch / rng.uniform(lo, hi)))

    def _coarsening(self, rng: np.random.Generator) -> int:
        """The factor by which this sample's pixels are coarser than the data's (1: as they are)."""
        a = self.augment
        if a.coarsen_probability <= 0:  # drawn only when asked for: other configs keep their sequence
            return 1
        # Integers lo..hi, each about as likely as its share of a log scale.
        lo, hi = a.coarsen
        factor = min(int(math.exp(rng.uniform(math.log(lo), math.log(hi + 1)))), int(hi))
        return factor if rng.random() < a.coarsen_probability else 1

    def _crop(self, rng: np.random.Generator, arrays: list[np.ndarray], size: int) -> list[np.ndarray]:
        h, w = arrays[0].shape[-2:]
        pad_y, pad_x = max(0, size - h), max(0, size - w)
        if pad_y or pad_x:
            # Small patches (EuroSAT's 64 px) are mirrored up to size: plausible imagery, consistent labels.
            widths = ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2))
            arrays = [np.pad(a, ((0, 0),) * (a.ndim - 2) + widths, mode="symmetric") for a in arrays]
            h, w = arrays[0].shape[-2:]
        y0, x0 = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
        return [a[..., y0 : y0 + size, x0 : x0 + size] for a in arrays]

    def simulated(
        self, rng: np.random.Generator, extent: int, pool: Sequence[Scene], factor: int = 1
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A simulated sample: reflectance, exact 4-class labels and unit weights.

        A window of ``extent`` pixels of a clear scene drawn from ``pool``, area-averaged by ``factor``
        (``extent // factor`` pixels of ``10 * factor`` m), then clouds and shadows drawn at that pixel
        size. The draws come from ``rng`` in a fixed order (scene, window, clouds): the same generator
        state gives the same sample, which is how the benchmarks draw theirs.

        Examples
        --------
        >>> rng = np.random.default_rng(0)
        >>> refl, labels, weight = maker.simulated(rng, 256, maker.pools.clear, 3)  # doctest: +SKIP
        >>> labels.shape  # doctest: +SKIP
        (85, 85)
        """
        from .simulate import CloudConfig, simulate

        scene = pool[self._pick(rng, pool)]
        # The clear ground is coarsened first, so that clouds and shadows are drawn at the coarse
        # pixel size with their physical extent and exact labels.
        (refl,) = self._crop(rng, [scene.select(self.bands)], extent)
        refl = coarsen(refl, factor)
        config = self.cloud_config or CloudConfig()
        cloudy, labels = simulate(
            np.ascontiguousarray(refl),
            self.bands,
            rng=rng,
            config=config,
            resolution_m=10.0 * factor,
            level=scene.level,
        )
        return cloudy, labels, np.ones(labels.shape, np.float32)

    def _pseudo(self, rng, size, factor: int = 1):
        scene, pl = self.pools.cloudy[self._pick(rng, self.pools.cloudy)]
        # Real clouds are not mirrored into a window larger than the scene: the factor shrinks to fit.
        factor = max(1, min(factor, min(scene.reflectance.shape[-2:]) // size))
        if self.teacher_targets == "sampled":
            if pl.probability is None:
                raise ValueError(
                    f"teacher_targets='sampled' needs the teacher's probabilities; {pl.scene} has none"
                )
            refl, probability = self._crop(rng, [scene.select(self.bands), pl.probability], size * factor)
            if factor > 1:
                # Averaged probabilities of the fine pixels: the chance that a coarse pixel is each class.
                refl, probability = coarsen(refl, factor), coarsen(probability.astype(np.float32), factor)
            target = draw_targets(probability, pl.codes, rng)
            return refl, target, np.ones(target.shape, np.float32)
        refl, target, confidence = self._crop(
            rng, [scene.select(self.bands), pl.target, pl.confidence], size * factor
        )
        if factor > 1:
            refl, confidence = coarsen(refl, factor), coarsen(confidence, factor)
            # Blocks without a confident pixel come out as 255, ignored.
            target = coarsen_labels(target, factor, (0, 1, 2, 3, CLOUD_ANY))
        return refl, target, confidence.astype(np.float32)

    def _resize(self, refl, target, weight):
        size = refl.shape[-1]
        if size == self.patch:
            return refl, target, weight
        # Nearest for every array: labels stay labels, and reflectance keeps real pixel values.
        idx = np.minimum((np.arange(self.patch) * size / self.patch).astype(int), size - 1)
        return refl[:, idx][:, :, idx], target[idx][:, idx], weight[idx][:, idx]

    def _geometry(self, rng, refl, target, weight):
        if not self.augment.flips:
            return refl, target, weight
        k = int(rng.integers(4))
        refl, target, weight = (np.rot90(a, k, axes=(-2, -1)) for a in (refl, target, weight))
        if rng.random() < 0.5:
            refl, target, weight = (a[..., ::-1] for a in (refl, target, weight))
        return np.ascontiguousarray(refl), np.ascontiguousarray(target), np.ascontiguousarray(weight)

    def _radiometry(self, rng, refl):
        a = self.augment
        n = refl.shape[0]
        gain = rng.uniform(1 - a.gain, 1 + a.gain, n).astype(np.float32)[:, None, None]
        offset = rng.uniform(-a.offset, a.offset, n).astype(np.float32)[:, None, None]
        noise = rng.normal(0, a.noise, refl.shape).astype(np.float32)
        if a.illumination > 0:  # drawn only when asked for: other configs keep their random sequence
            gain *= np.float32(rng.uniform(1 - a.illumination, 1 + a.illumination))
        return refl * gain + offset + noise


def _area_odds(scenes: Sequence[Scene], cap: int = 512 * 512) -> np.ndarray | None:
    """Pick scenes in proportion to their area (capped): a 512 px chip holds 64 EuroSAT patches' pixels."""
    if not scenes:
        return None
    area = np.array([min(s.reflectance.shape[-1] * s.reflectance.shape[-2], cap) for s in scenes], float)
    return area / area.sum()


def band_statistics(scenes: Sequence[Scene], bands: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation of reflectance over the training scenes (NaN ignored)."""
    values = np.concatenate(
        [s.select(bands).reshape(len(bands), -1) for s in scenes if s.split == "train"], axis=1
    )
    return np.nanmean(values, axis=1), np.nanstd(values, axis=1)


def check_options(
    scene_sampling: str = "area",
    teacher_targets: str = "confident",
    class_weights: tuple[float, ...] | None = None,
    teacher_class_weights: tuple[float, ...] | None = None,
) -> None:
    """Raise ``ValueError`` naming the first of :class:`SampleMaker`'s options that is not allowed.

    Examples
    --------
    >>> check_options("area", "sampled", (1, 1, 1.5, 2, 1))
    >>> check_options("by-area")
    Traceback (most recent call last):
    ...
    ValueError: scene_sampling must be 'area' or 'uniform', got 'by-area'
    """
    if scene_sampling not in ("area", "uniform"):
        raise ValueError(f"scene_sampling must be 'area' or 'uniform', got {scene_sampling!r}")
    if teacher_targets not in ("confident", "sampled"):
        raise ValueError(f"teacher_targets must be 'confident' or 'sampled', got {teacher_targets!r}")
    _code_weights(class_weights)
    _code_weights(teacher_class_weights)


def _code_weights(class_weights: tuple[float, ...] | None) -> np.ndarray:
    """A lookup of the loss weight of every uint8 target code (ignored ones: 1, unused)."""
    table = np.ones(256, np.float32)
    if class_weights is not None:
        if len(class_weights) != CLOUD_ANY + 1 or min(class_weights) < 0:
            raise ValueError(
                f"class weights must be {CLOUD_ANY + 1} non-negative numbers (codes 0 clear, 1 thick, "
                f"2 thin, 3 shadow, 4 cloud of either kind), got {class_weights!r}"
            )
        table[: CLOUD_ANY + 1] = class_weights
    return table


def partial_ce(logits, target, weight):
    """Cross-entropy that accepts any allowed class: ``-log sum_{k allowed} p_k``, per pixel, weighted.

    ``target`` codes 0-3 allow one class, 4 allows thick or thin cloud, 255 nothing (ignored).

    Examples
    --------
    >>> import torch
    >>> logits = torch.zeros(1, 4, 1, 2)
    >>> round(float(partial_ce(logits, torch.tensor([[[4, 0]]]), torch.ones(1, 1, 2))), 4)  # log 2, log 4
    1.0397
    """
    import torch

    allowed = torch.as_tensor(ALLOWED, device=logits.device)
    valid = target != IGNORE
    codes = torch.where(valid, target, torch.zeros_like(target)).long()
    mask = allowed[codes].permute(0, 3, 1, 2)  # (N, K, H, W)
    logp = torch.log_softmax(logits.float(), dim=1)
    picked = torch.logsumexp(logp.masked_fill(~mask, float("-inf")), dim=1)
    w = weight * valid
    return -(picked * w).sum() / w.sum().clamp(min=1.0)
