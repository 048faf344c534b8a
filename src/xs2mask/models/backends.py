"""Load a model from its spec, once per process, for one of the backends.

A loaded model is a :class:`Predictor`: a callable from a normalised batch
``(N, C, H, W) float32`` to ``(N, K, H, W) float32`` logits or probabilities
(as the spec says). Heavy imports happen here, inside the loaders.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..exceptions import DeviceError, WeightsError
from .spec import ModelSpec


class Predictor(Protocol):
    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Runtime:
    """Where and how a model runs: hashable, part of the model cache key."""

    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 0  # 0: let the library choose


_cache: dict[tuple[ModelSpec, Runtime], Predictor] = {}
_load_counts: Counter[str] = Counter()
_cache_lock = threading.Lock()


def load(spec: ModelSpec, runtime: Runtime = Runtime()) -> Predictor:
    """Return the loaded model for ``spec``, loading it on first use in this process.

    Thread-safe: concurrent tasks in one worker share one instance.

    Examples
    --------
    >>> from xs2mask.models import get, load
    >>> predictor = load(get("ukis-csmask-4b-l2a"))  # doctest: +SKIP
    """
    key = (spec, runtime)
    with _cache_lock:
        if key not in _cache:
            loader = _load_members if spec.members else _LOADERS[spec.backend]
            _cache[key] = loader(spec, runtime)
            _load_counts[spec.name] += 1
        return _cache[key]


def load_counts() -> dict[str, int]:
    """How many times each model was loaded in this process (for tests and diagnostics)."""
    with _cache_lock:
        return dict(_load_counts)


def clear_cache() -> None:
    """Forget every loaded model of this process."""
    with _cache_lock:
        _cache.clear()
        _load_counts.clear()


def resolve_device(device: str, specs: tuple[ModelSpec, ...]) -> str:
    """Turn ``"auto"`` into cuda > mps > cpu and check an explicit device exists.

    Raises
    ------
    DeviceError
        If the device is unknown or not present on this machine.
    """
    backends = {s.backend for s in specs}
    wanted = device.split(":")[0]
    if wanted not in {"auto", "cpu", "cuda", "mps"}:
        raise DeviceError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    has = {"cpu": True, "cuda": _has_cuda(backends), "mps": _has_mps(backends)}
    if wanted == "auto":
        return next(d for d in ("cuda", "mps", "cpu") if has[d])
    if not has[wanted]:
        raise DeviceError(
            f"device {device!r} is not available on this machine for backends {sorted(backends)}; "
            "use device='cpu' (or 'auto'), or install a GPU build "
            "(torch with CUDA, onnxruntime-gpu)"
        )
    return device


def _has_cuda(backends: set[str]) -> bool:
    ok = True
    if "torch" in backends:
        import torch

        ok &= torch.cuda.is_available()
    if "onnx" in backends:
        import onnxruntime

        ok &= "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    if backends <= {"lightgbm"}:
        return False
    return ok


def _has_mps(backends: set[str]) -> bool:
    if backends != {"torch"}:
        return False
    import torch

    return bool(torch.backends.mps.is_available())


def resolve_dtype(dtype: str, device: str, specs: tuple[ModelSpec, ...]) -> str:
    """``"auto"``: float32 on CPU, bfloat16 (else float16) for torch models on a GPU."""
    if dtype not in {"auto", "float32", "float16", "bfloat16"}:
        raise DeviceError(f"unknown dtype {dtype!r}: use 'auto', 'float32', 'float16' or 'bfloat16'")
    on_gpu = not device.startswith("cpu")
    if dtype == "auto":
        if on_gpu and all(s.backend == "torch" for s in specs):
            import torch

            bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
            return "bfloat16" if bf16 else "float16"
        return "float32"
    if dtype != "float32" and not on_gpu:
        # Measured on AVX2 CPUs: bf16 autocast 10-14x and fp16 ~100x slower than fp32.
        raise DeviceError(
            f"dtype={dtype!r} on the CPU is many times slower than float32; "
            "use dtype='float32' (or 'auto') on the CPU, reduced precision on a GPU"
        )
    if dtype != "float32" and any(s.backend != "torch" for s in specs):
        raise DeviceError(f"dtype={dtype!r} is only supported for torch models; use dtype='float32'")
    return dtype


def _load_onnx(spec: ModelSpec, runtime: Runtime) -> Predictor:
    import onnxruntime

    path = spec.weights.verified_path()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = runtime.threads
    options.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if runtime.device.startswith("cuda"):
        index = int(runtime.device.split(":")[1]) if ":" in runtime.device else 0
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
    try:
        session = onnxruntime.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # onnxruntime raises its own untyped errors
        raise WeightsError(f"{spec.name}: cannot load ONNX weights {path}: {err}") from err
    input_name = session.get_inputs()[0].name

    def predict(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: np.ascontiguousarray(batch, np.float32)})[0]

    return predict


def _load_torch(spec: ModelSpec, runtime: Runtime) -> Predictor:
    import segmentation_models_pytorch as smp
    import torch
    from safetensors.torch import load_file

    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    path = spec.weights.verified_path()
    arch = dict(spec.architecture)
    model = smp.create_model(
        **arch, encoder_weights=None, in_channels=len(spec.bands), classes=len(spec.classes)
    )
    try:
        state = load_file(str(path))
        model.load_state_dict(state)
    except Exception as err:  # safetensors / torch raise several error types
        raise WeightsError(f"{spec.name}: weights {path} do not fit architecture {arch}: {err}") from err
    device = torch.device(runtime.device)
    model = model.eval().to(device, memory_format=torch.channels_last)
    dtype = getattr(torch, runtime.dtype)
    autocast = dtype != torch.float32

    @torch.inference_mode()
    def predict(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, np.float32))
        # pinned host memory lets the copy overlap the previous batch's compute
        x = x.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else x.to(device)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            out = model(x)
        return out.float().cpu().numpy()

    return predict


def _load_lightgbm(spec: ModelSpec, runtime: Runtime) -> Predictor:
    from lightgbm import Booster

    path = spec.weights.verified_path()
    try:
        booster = Booster(model_file=str(path))
    except Exception as err:  # lightgbm raises LightGBMError for any parse failure
        raise WeightsError(f"{spec.name}: cannot load LightGBM model {path}: {err}") from err
    threads = runtime.threads or os.cpu_count() or 1

    def predict(batch: np.ndarray) -> np.ndarray:
        n, c, h, w = batch.shape
        pixels = np.moveaxis(batch, 1, -1).reshape(-1, c)
        p = booster.predict(pixels, num_threads=threads).astype(np.float32)
        p = np.moveaxis(p.reshape(n, h, w, 1), -1, 1)
        return np.concatenate([1.0 - p, p], axis=1)

    return predict


_LOADERS = {"onnx": _load_onnx, "torch": _load_torch, "lightgbm": _load_lightgbm}


def _load_members(spec: ModelSpec, runtime: Runtime) -> Predictor:
    """One predictor averaging the members' logits, or their softmax (``spec.outputs``)."""
    members = [_LOADERS[m.backend](m, runtime) for m in spec.members]
    as_probabilities = spec.outputs == "probabilities"

    def predict(batch: np.ndarray) -> np.ndarray:
        total = None
        for member in members:
            out = member(batch)
            if as_probabilities:
                out = softmax(out)
            total = out if total is None else total + out
        return total / np.float32(len(members))

    return predict


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 1 of ``(N, K, H, W)``, in a new array."""
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z
