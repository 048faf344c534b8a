"""Frozen, hashable descriptions of models: what travels in a Dask graph."""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Literal

from ..classes import CLASS_NAMES
from ..exceptions import WeightsError
from . import hub

Normalisation = Literal["fixed", "patch"]


@dataclass(frozen=True)
class Weights:
    """Where a model's weights live and what they must hash to.

    Three kinds: a file shipped in a Python package (``package``), a file at a path, or a
    file in the model folders of :mod:`xs2mask.models.hub` (``hub=True``, or any file with a
    ``url``: downloaded there on first use; ``filename`` is then a bare file name).

    Attributes
    ----------
    filename : file name, or a path for files neither in a package nor in the model folders.
    sha256 : expected hex digest; the file is refused if it differs. None: nobody publishes
        one, so the digest recorded when the file was downloaded or converted is checked.
    package : importable package that ships the file (e.g. ``"ukis_csmask"``).
    install_hint : what to do when the file is missing.
    url : where to download the file from, pinned to a revision.
    model_dir : the only folder to look in (and download to), instead of
        ``$XS2MASK_MODEL_DIR`` and the user cache.
    hub : the file lives in the model folders even without a ``url`` (e.g. converted there).

    Examples
    --------
    >>> w = Weights("m.safetensors", None, url="https://example.org/m.safetensors")
    >>> w.with_model_dir("/opt/weights").model_dir
    '/opt/weights'
    """

    filename: str
    sha256: str | None
    package: str | None = None
    install_hint: str = ""
    url: str | None = None
    model_dir: str | None = None
    hub: bool = False

    @property
    def in_hub(self) -> bool:
        """Whether the file lives in the model folders (not in a package or at a fixed path)."""
        return self.package is None and (self.hub or self.url is not None)

    def with_model_dir(self, model_dir: str | os.PathLike[str] | None) -> Weights:
        """The same weights, looked for (and downloaded) only in ``model_dir``."""
        if not self.in_hub:
            return self
        return replace(self, model_dir=None if model_dir is None else str(model_dir))

    def path(self, model: str = "") -> Path:
        """Resolve the weights file, raising :class:`WeightsError` with the fix if absent."""
        if self.in_hub:
            found = hub.find(self.filename, self.model_dir)
            if found is None:
                message = hub.missing_message(
                    self.filename, model=model, url=self.url, sha256=self.sha256, model_dir=self.model_dir
                )
                raise WeightsError(f"{message} {self.install_hint}".strip())
            return found
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

    def fetch(self, model: str = "") -> Path:
        """Resolve the file, downloading it first if it has a URL and is not here yet."""
        if self.in_hub and self.url is not None:
            return hub.fetch(self.filename, self.url, self.sha256, model=model, model_dir=self.model_dir)
        return self.path(model)

    def is_available(self) -> bool:
        """Whether the weights file can be found (does not verify the checksum)."""
        try:
            self.path()
        except WeightsError:
            return False
        return True

    def verified_path(self) -> Path:
        """Resolve the file (downloading it if need be) and check its sha256, once per file and process.

        Each process hashes the file the first time it asks for it (a forked worker too, whatever
        its parent checked); later calls in that process hash it again only when it may have
        changed: another file (inode), size or mtime, or a newer ctime, which every write sets
        and which, unlike mtime, no one can set back. Workers of a Dask cluster on other machines
        fetch what is missing into their own folders.
        """
        path = self.fetch()
        expected = hub.expected_sha256(path, self.sha256)
        if expected is None:
            raise WeightsError(
                f"weights file {path} has no published sha256 and no record of one "
                f"({hub.record_path(path).name}, written when xs2mask downloads or converts it): "
                "download or convert it with xs2mask, or write its sha256 into that file yourself"
            )
        key = _stat_key(path, expected)
        with _verified_lock:
            if key in _verified:
                return path
        digest = sha256_file(path)
        if digest != expected:
            raise WeightsError(
                f"weights file {path} fails its checksum: sha256 {digest}, expected {expected}. "
                "The file is corrupt or not the one this model was registered with; "
                "reinstall the package that ships it or re-download it."
            )
        with _verified_lock:
            # Keyed by the state before hashing: a change during the hash is caught next time.
            _verified.add(key)
        return path


_verified: set[tuple[object, ...]] = set()
_verified_lock = threading.Lock()


def _stat_key(path: Path, expected: str) -> tuple[object, ...]:
    st = path.stat()
    state = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return (os.getpid(), str(path), *state, expected)


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
    backend : name of the registered backend that loads the weights (see
        :mod:`xs2mask.models.backends`): ``"onnx"``, ``"torch"`` (safetensors +
        segmentation-models-pytorch), ``"lightgbm"`` (per-pixel classifier), or one added
        with ``register_backend``. Checked when the model is used, not when the spec is
        made, so a spec can be written before its backend's package registers it.
    weights : the weights file and its checksum; None for an ensemble of ``members``.
    mean, std : per-band normalisation applied to reflectance, ``(x - mean) / std``
        (``normalisation="fixed"``); empty for ``"patch"``.
    normalisation : ``"fixed"`` (``mean``/``std`` above) or ``"patch"``: each patch
        z-scored per band over its valid pixels, as OmniCloudMask does.
    members : models run on the same patches whose outputs are averaged into this
        model's output: logits when ``outputs="logits"`` (OmniCloudMask), softmax
        probabilities when ``outputs="probabilities"`` (CloudS2Mask).
    outputs : whether the model returns ``"logits"`` or ``"probabilities"``.
    resolution_m : ground sampling distance the model was trained at.
    processing_resolution : resolution ``predict`` runs the model at by default (input
        finer than this is averaged down to it); None: the input's.
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
    backend: str
    weights: Weights | None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    normalisation: Normalisation = "fixed"
    members: tuple[ModelSpec, ...] = ()
    outputs: Literal["logits", "probabilities"] = "logits"
    resolution_m: int = 10
    processing_resolution: float | None = None
    patch_size: int = 512
    fixed_patch_size: bool = False
    overlap: int = 64
    architecture: tuple[tuple[str, object], ...] = ()
    levels: tuple[str, ...] = ("L1C", "L2A")
    licence: str = ""
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.backend, str) or not self.backend:
            raise ValueError(f"{self.name}: backend must be the name of a backend, got {self.backend!r}")
        if self.normalisation == "fixed" and not (len(self.bands) == len(self.mean) == len(self.std)):
            raise ValueError(f"{self.name}: bands, mean and std must have the same length")
        if self.normalisation == "patch" and (self.mean or self.std):
            raise ValueError(f"{self.name}: normalisation='patch' takes no mean and std")
        if self.normalisation not in ("fixed", "patch"):
            raise ValueError(f"{self.name}: normalisation must be 'fixed' or 'patch'")
        unknown = set(self.classes) - set(CLASS_NAMES)
        if unknown:
            raise ValueError(f"{self.name}: unknown class codes {sorted(unknown)}")
        if (self.weights is None) == (not self.members):
            raise ValueError(f"{self.name}: give either weights or members, not both or neither")
        same = ("bands", "classes", "normalisation", "mean", "std")
        for member in self.members:
            if (
                member.members
                or member.outputs != "logits"
                or any(getattr(member, a) != getattr(self, a) for a in same)
            ):
                raise ValueError(
                    f"{self.name}: members must be single models returning logits, with the "
                    "ensemble's bands, classes and normalisation"
                )

    def with_model_dir(self, model_dir: str | os.PathLike[str] | None) -> ModelSpec:
        """The same model, with downloaded weights looked for (and fetched to) ``model_dir`` only.

        Examples
        --------
        >>> import xs2mask
        >>> spec = xs2mask.models.get("omnicloudmask-v4").with_model_dir("/opt/weights")
        >>> {m.weights.model_dir for m in spec.members}
        {'/opt/weights'}
        """
        return replace(
            self,
            weights=None if self.weights is None else self.weights.with_model_dir(model_dir),
            members=tuple(m.with_model_dir(model_dir) for m in self.members),
        )

    def all_weights(self) -> tuple[Weights, ...]:
        """Every weights file the model needs (its own, or its members')."""
        if self.weights is not None:
            return (self.weights,)
        return tuple(w for m in self.members for w in m.all_weights())

    def is_available(self) -> bool:
        """Whether every weights file is here (without downloading or verifying anything)."""
        return all(w.is_available() for w in self.all_weights())

    def fetch(self) -> ModelSpec:
        """Make sure every weights file is here, downloading what has a URL; return ``self``.

        Raises
        ------
        WeightsError
            With the file name, URL, sha256 and folder when a file cannot be had.

        Examples
        --------
        >>> import xs2mask
        >>> xs2mask.models.get("xs2mask-4b").fetch().name
        'xs2mask-4b'
        """
        for weights in self.all_weights():
            weights.fetch(self.name)
        return self
