"""What a backend is: how it loads a model, what it needs installed, what it runs on.

A :class:`Backend` knows how to load a model of its kind (a :class:`Predictor`), which
optional packages that needs, and what it can run on (devices, reduced precision).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ...exceptions import BackendError

if TYPE_CHECKING:
    from ..spec import ModelSpec


class Predictor(Protocol):
    """A loaded model: normalised ``(N, C, H, W) float32`` in, ``(N, K, H, W) float32`` out."""

    @property
    def batch_size(self) -> int:
        """Patches per call this model runs best at (1 on the CPU; fitted to free memory on a GPU)."""

    @property
    def concurrency(self) -> int:
        """Calls that may run at once, each on one core (the ONNX CPU path); 1: one at a time."""

    @property
    def pooled(self) -> bool:
        """Its calls take their core from one set of ``concurrency`` slots that the whole process
        shares, not from a set per block (the library chose the threads: every core Dask gives the
        process, whatever number of blocks runs at once)."""

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Runtime:
    """Where and how a model runs: hashable, part of the model cache key."""

    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 0  # 0: let the library choose
    compile: bool = False  # torch.compile the model (backends that compile)


@dataclass(frozen=True)
class FunctionPredictor:
    """A predictor from a plain function (CPU backends: one patch per call is fastest).

    Examples
    --------
    >>> double = FunctionPredictor(lambda batch: 2 * batch)
    >>> float(double(np.ones((1, 2, 4, 4), np.float32)).max()), double.batch_size
    (2.0, 1)
    """

    run: Callable[[np.ndarray], np.ndarray]
    batch_size: int = 1
    concurrency: int = 1
    pooled: bool = False

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.run(batch)


def verified_weights(spec: ModelSpec) -> Path:
    """The checked weights file of a one-file model, for a backend's ``load``.

    Examples
    --------
    >>> import xs2mask
    >>> verified_weights(xs2mask.models.get("omnicloudmask-v4"))
    Traceback (most recent call last):
    ...
    xs2mask.exceptions.BackendError: model 'omnicloudmask-v4' is an ensemble: ...
    """
    if spec.weights is None:
        raise BackendError(
            f"model {spec.name!r} is an ensemble: it has no weights file of its own. "
            "Load it with xs2mask.models.load, which loads each member with its own weights."
        )
    return spec.weights.verified_path()


def process_cores() -> int:
    """The CPU cores this process may use: a Dask worker's threads inside a distributed worker (several
    workers may share a machine), else the machine's cores.

    Examples
    --------
    >>> process_cores() >= 1
    True
    """
    if "distributed" in sys.modules:  # no worker without it; importing it costs half a second
        from distributed import get_worker

        try:
            return max(1, get_worker().state.nthreads)
        except ValueError:  # not in a worker
            pass
    return os.cpu_count() or 1


def runs_on_cpu(kind: str) -> bool | None:
    """The accelerator rule of a CPU-only backend: it leaves the device to the ensemble's others."""
    return None


@dataclass(frozen=True)
class Backend:
    """One kind of model file and the library that runs it.

    Attributes
    ----------
    name : what :attr:`ModelSpec.backend <xs2mask.models.ModelSpec>` says, e.g. ``"onnx"``.
    load : ``load(spec, runtime)`` returns the :class:`Predictor` of a spec's weights. Heavy
        imports belong inside it: listing or checking models imports nothing.
    modules : modules it imports beyond xs2mask's own dependencies, checked (not imported)
        before anything loads (:func:`require_backend`).
    extra : the pip extra that installs ``modules`` (``pip install 'xs2mask[extra]'``).
    install_hint : said after the pip command when ``modules`` are missing.
    per_pixel : the model classifies each pixel on its own: its patches need no overlap and
        a block no halo.
    accelerator : ``accelerator(kind)`` for ``kind`` ``"cuda"`` or ``"mps"``: whether this
        machine can run the backend there; None when it always runs on the CPU, leaving the
        choice to the other backends of an ensemble.
    precisions : dtypes it runs models in besides ``"float32"`` (on a GPU).
    gpu_dtype : ``gpu_dtype(device)``: what ``dtype="auto"`` picks on that GPU; None: float32.
    pooled : on the CPU, with the threads left to the library, its predictors' calls share one
        set of core slots per process (:attr:`Predictor.pooled`): blocks that run at once take
        cores as they need them, so :func:`~xs2mask.inference.share_cores` does not split the
        cores between them.

    Examples
    --------
    >>> import numpy as np
    >>> from xs2mask.models.backends import Backend, FunctionPredictor
    >>> def load_ndvi(spec, runtime):  # a per-pixel model that needs no weights file
    ...     return FunctionPredictor(lambda batch: np.repeat(batch[:, :1], 2, axis=1))
    >>> Backend("ndvi", load_ndvi, per_pixel=True).per_pixel
    True
    """

    name: str
    load: Callable[[ModelSpec, Runtime], Predictor]
    modules: tuple[str, ...] = ()
    extra: str = ""
    install_hint: str = ""
    per_pixel: bool = False
    accelerator: Callable[[str], bool | None] = runs_on_cpu
    precisions: tuple[str, ...] = ()
    gpu_dtype: Callable[[str], str] | None = None
    pooled: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise BackendError(f"a backend needs a non-empty name, got {self.name!r}")
        if not callable(self.load):
            raise BackendError(f"backend {self.name!r}: load must be a function (spec, runtime) -> Predictor")

    def missing_modules(self) -> list[str]:
        """The optional modules of this backend that are not installed (nothing is imported)."""
        return [m for m in self.modules if importlib.util.find_spec(m) is None]


def batch_size_for(free_bytes: int, patch_bytes: int, *, share: float = 0.5, limit: int = 64) -> int:
    """Patches per forward pass that fit in ``share`` of a device's free memory.

    ``patch_bytes`` is the peak memory one patch takes through the model (measured
    on the device at load time); the other half of the free memory is left to the
    next micro-batch's upload, the outputs and other processes.

    Examples
    --------
    >>> batch_size_for(free_bytes=80 * 2**30, patch_bytes=600 * 2**20)
    64
    >>> batch_size_for(free_bytes=4 * 2**30, patch_bytes=600 * 2**20)
    3
    >>> batch_size_for(free_bytes=2**20, patch_bytes=600 * 2**20)
    1
    """
    if patch_bytes <= 0:
        return limit
    return int(max(1, min(limit, share * free_bytes // patch_bytes)))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 1 of ``(N, K, H, W)``, in a new array.

    Examples
    --------
    >>> softmax(np.zeros((1, 2, 1, 1), np.float32)).ravel().tolist()
    [0.5, 0.5]
    """
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z
