"""Frozen, hashable descriptions of models: what travels in a Dask graph."""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from ..classes import CLASS_NAMES
from ..exceptions import WeightsError

Backend = Literal["onnx", "torch", "lightgbm"]


@dataclass(frozen=True)
class Weights:
    """Where a model's weights live and what they must hash to.

    Attributes
    ----------
    filename : file name, or an absolute path when ``package`` is None.
    sha256 : expected hex digest; the file is refused if it differs.
    package : importable package that ships the file (e.g. ``"ukis_csmask"``).
    install_hint : what to install when ``package`` is missing.
    """

    filename: str
    sha256: str
    package: str | None = None
    install_hint: str = ""

    def path(self) -> Path:
        """Resolve the weights file, raising :class:`WeightsError` with the fix if absent."""
        if self.package is None:
            path = Path(self.filename)
        else:
            try:
                path = Path(str(resources.files(self.package).joinpath(self.filename)))
            except ModuleNotFoundError:
                raise WeightsError(
                    f"weights {self.filename!r} come with the Python package {self.package!r}, "
                    f"which is not installed: {self.install_hint or 'pip install ' + self.package}"
                ) from None
        if not path.is_file():
            raise WeightsError(f"weights file {path} does not exist")
        return path

    def is_available(self) -> bool:
        """Whether the weights file can be found (does not verify the checksum)."""
        try:
            self.path()
        except WeightsError:
            return False
        return True

    def verified_path(self) -> Path:
        """Resolve the file and check its sha256 (once per file version and process)."""
        path = self.path()
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns, self.sha256)
        with _verified_lock:
            if key in _verified:
                return path
        digest = sha256_file(path)
        if digest != self.sha256.lower():
            raise WeightsError(
                f"weights file {path} fails its checksum: sha256 {digest}, expected {self.sha256}. "
                "The file is corrupt or not the one this model was registered with; "
                "reinstall the package that ships it or re-download it."
            )
        with _verified_lock:
            _verified.add(key)
        return path


_verified: set[tuple[str, int, int, str]] = set()
_verified_lock = threading.Lock()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to run one model, and nothing heavy.

    A spec is small, frozen and hashable, so it can sit in a Dask graph; the
    model itself is loaded from it once per worker process.

    Attributes
    ----------
    name : registry name, e.g. ``"ukis-csmask-6b-l2a"``.
    bands : ESA band names, in the order the model expects them.
    classes : xs2mask class code of each model output channel.
    backend : ``"onnx"``, ``"torch"`` (safetensors + segmentation-models-pytorch)
        or ``"lightgbm"`` (per-pixel classifier).
    weights : the weights file and its checksum.
    mean, std : per-band normalisation applied to reflectance, ``(x - mean) / std``.
    outputs : whether the model returns ``"logits"`` or ``"probabilities"``.
    resolution_m : ground sampling distance the model was trained at.
    patch_size : default patch edge in pixels; ``fixed_patch_size`` if the
        model accepts no other.
    overlap : default overlap between patches in pixels (0 for per-pixel models).
    architecture : keyword arguments of ``segmentation_models_pytorch.create_model``
        (torch backend only), as a tuple of pairs to stay hashable.
    levels : product levels the model was trained on (``"L1C"``, ``"L2A"``).
    licence : licence of the weights.
    description : one line for listings.
    """

    name: str
    bands: tuple[str, ...]
    classes: tuple[int, ...]
    backend: Backend
    weights: Weights
    mean: tuple[float, ...]
    std: tuple[float, ...]
    outputs: Literal["logits", "probabilities"] = "logits"
    resolution_m: int = 10
    patch_size: int = 512
    fixed_patch_size: bool = False
    overlap: int = 64
    architecture: tuple[tuple[str, object], ...] = ()
    levels: tuple[str, ...] = ("L1C", "L2A")
    licence: str = ""
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not (len(self.bands) == len(self.mean) == len(self.std)):
            raise ValueError(f"{self.name}: bands, mean and std must have the same length")
        unknown = set(self.classes) - set(CLASS_NAMES)
        if unknown:
            raise ValueError(f"{self.name}: unknown class codes {sorted(unknown)}")
