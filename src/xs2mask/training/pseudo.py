"""Pseudo-labels: what a strong model that ships its weights says about real scenes.

The teacher is ukis-csmask (U-Nets trained on CloudSEN12+ and SPARCS), run through
xs2mask's own engine with the variant matching the scene's level. Its answer becomes
a training target with three kinds of pixel:

* ``0`` clear and ``3`` shadow, where the teacher says so confidently;
* ``4`` "cloud, thick or thin": the teacher has one cloud class, so the student is
  not told which of its two cloud classes is right (the loss accepts either);
* ``255`` ignored: the teacher's top probability is below ``min_confidence``, or
  the pixel has no data.

The teacher's cloud + shadow fraction also sorts the training scenes: nearly clear
ones become backgrounds for simulated clouds (:mod:`xs2mask.training.simulate`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .sources import Scene

CLOUD_ANY = 4
IGNORE = 255


@dataclass(frozen=True, eq=False)
class PseudoLabels:
    """Teacher targets for one scene: codes 0, 3, 4 (cloud, thick or thin) and 255 (ignored)."""

    scene: str
    teacher: str
    target: np.ndarray
    confidence: np.ndarray

    @property
    def cloud_fraction(self) -> float:
        valid = self.target != IGNORE
        return float(np.isin(self.target, (CLOUD_ANY, 3)).sum() / max(int(valid.sum()), 1))


def teacher_for(scene: Scene) -> str:
    """The ukis-csmask variant trained on the scene's product level (4-band: runs on every source)."""
    return f"ukis-csmask-4b-{scene.level.lower()}"


def pseudo_label(scene: Scene, *, min_confidence: float = 0.7, cache: Path | None = None) -> PseudoLabels:
    """Label ``scene`` with its teacher.

    Parameters
    ----------
    scene
        A real scene with B02 B03 B04 B08.
    min_confidence
        Pixels whose top teacher probability is lower are ignored (255).
    cache
        Folder for the teacher's outputs (keyed by scene and teacher), so that
        repeated training runs do not rerun the teacher.

    Examples
    --------
    >>> from xs2mask.training.sources import cloud_cover_chips
    >>> chip = next(cloud_cover_chips(Path("../shared/data")))  # doctest: +SKIP
    >>> pseudo_label(chip).cloud_fraction  # doctest: +SKIP
    0.47
    """
    import xarray as xr

    from ..inference import predict

    teacher = teacher_for(scene)
    key = hashlib.sha1(f"{scene.name}|{teacher}|{scene.reflectance.shape}".encode()).hexdigest()[:16]
    path = cache / f"{key}.npz" if cache is not None else None
    if path is not None and path.exists():
        saved = np.load(path)
        probs, classes = saved["probability"].astype(np.float32), tuple(saved["classes"])
    else:
        bands = ("B02", "B03", "B04", "B08")
        cube = xr.DataArray(scene.select(bands), dims=("band", "y", "x"), coords={"band": list(bands)})
        out = predict(cube, model=teacher, output="probability", probability_dtype="float16")
        probs = out["probability"].values.astype(np.float32)
        classes = tuple(int(c) for c in out["class"].values)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(path, probability=probs.astype(np.float16), classes=np.asarray(classes))
    nodata = np.isnan(probs).any(axis=0) | np.all(np.isnan(scene.reflectance), axis=0)
    probs = np.nan_to_num(probs)
    top = probs.argmax(axis=0)
    confidence = probs.max(axis=0)
    # ukis' cloud (mapped to 1) cannot say thick or thin: the target accepts both.
    codes = np.asarray([{1: CLOUD_ANY}.get(c, c) for c in classes], np.uint8)[top]
    codes[(confidence < min_confidence) | nodata] = IGNORE
    return PseudoLabels(scene.name, teacher, codes, confidence.astype(np.float32))
