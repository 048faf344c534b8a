"""Load a model from its spec, once per process, with the backend the spec names.

A loaded model is a :class:`Predictor`: a callable from a normalised batch
``(N, C, H, W) float32`` to ``(N, K, H, W) float32`` logits or probabilities
(as the spec says), with the ``batch_size`` it runs best at. Heavy imports
happen inside the backends' loaders.

A backend (:class:`Backend`) is one object per kind of model file: how to load
it, the optional packages and pip extra it needs, whether it classifies single
pixels, the devices and precisions it runs on. ``onnx``, ``torch`` and
``lightgbm`` are registered here; :func:`register_backend` adds another.

Examples
--------
>>> import numpy as np
>>> from xs2mask.models.backends import Backend, FunctionPredictor, get_backend, register_backend
>>> def load_ratio(spec, runtime):  # a per-pixel rule as a "model": band 1 / band 2 as a logit
...     return FunctionPredictor(lambda b: np.concatenate([0 * b[:, :1], b[:, :1] / b[:, 1:2]], 1))
>>> register_backend(Backend("band-ratio-doc", load_ratio, per_pixel=True), overwrite=True)
>>> get_backend("band-ratio-doc").per_pixel
True
"""

from .base import Backend, FunctionPredictor, Predictor, Runtime, batch_size_for, runs_on_cpu, softmax
from .lightgbm import LIGHTGBM
from .loading import (
    clear_cache,
    get_backend,
    load,
    load_counts,
    pin_runtime,
    pinned,
    register_backend,
    registered_backends,
    require_backend,
    resolve_device,
    resolve_dtype,
)
from .onnx import ONNX
from .torch import TORCH, TorchPredictor

for _backend in (ONNX, TORCH, LIGHTGBM):
    register_backend(_backend)

__all__ = [
    "LIGHTGBM",
    "ONNX",
    "TORCH",
    "Backend",
    "FunctionPredictor",
    "Predictor",
    "Runtime",
    "TorchPredictor",
    "batch_size_for",
    "clear_cache",
    "get_backend",
    "load",
    "load_counts",
    "pin_runtime",
    "pinned",
    "register_backend",
    "registered_backends",
    "require_backend",
    "resolve_device",
    "resolve_dtype",
    "runs_on_cpu",
    "softmax",
]
