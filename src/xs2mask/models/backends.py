"""Load a model from its spec, once per process, for one of the backends.

A loaded model is a :class:`Predictor`: a callable from a normalised batch
``(N, C, H, W) float32`` to ``(N, K, H, W) float32`` logits or probabilities
(as the spec says), with the ``batch_size`` it runs best at. Heavy imports
happen here, inside the loaders.

A process may pin one :class:`Runtime` for every model it loads
(:func:`pin_runtime`): a Dask worker with a GPU then runs every model on its
GPU, whatever device the graph was built for, and the model cache key stays
the same for every task, so each model is loaded once per worker.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..exceptions import DependencyError, DeviceError, WeightsError
from .spec import ModelSpec


class Predictor(Protocol):
    #: patches per call this model runs best at (1 on the CPU; fitted to free memory on a GPU)
    batch_size: int
    #: calls that may run at once, each on one core (the ONNX CPU path); 1: one at a time
    concurrency: int

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Runtime:
    """Where and how a model runs: hashable, part of the model cache key."""

    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 0  # 0: let the library choose
    compile: bool = False  # torch.compile the model (torch backend only)


@dataclass(frozen=True)
class _Function:
    """A predictor from a plain function (CPU backends: one patch per call is fastest)."""

    run: Callable[[np.ndarray], np.ndarray]
    batch_size: int = 1
    concurrency: int = 1

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.run(batch)


#: the modules a backend imports beyond xs2mask's own dependencies, and the extra that installs them
_OPTIONAL: dict[str, tuple[tuple[str, ...], str]] = {
    "torch": (("torch", "safetensors", "segmentation_models_pytorch"), "torch"),
    "lightgbm": (("lightgbm",), "s2cloudless"),
}
_CPU_TORCH = "pip install torch --index-url https://download.pytorch.org/whl/cpu"


def require_backend(backend: str, purpose: str) -> None:
    """Raise :class:`DependencyError` naming the pip extra when ``backend``'s modules are not installed.

    Checked before anything is built or loaded, so a missing package is one clear error rather
    than an ``ImportError`` from a Dask worker. Nothing is imported: the check only looks.

    Examples
    --------
    >>> require_backend("onnx", "model 'xs2mask-4b'")  # onnxruntime is always installed
    """
    modules, extra = _OPTIONAL.get(backend, ((), ""))
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return
    hint = f" (CPU-only machines: first {_CPU_TORCH}, a far smaller download)" if backend == "torch" else ""
    raise DependencyError(
        f"{purpose} needs the {backend} backend, but {', '.join(missing)} "
        f"{'is' if len(missing) == 1 else 'are'} not installed: pip install 'xs2mask[{extra}]'{hint}"
    )


_cache: dict[tuple[ModelSpec, Runtime], Predictor] = {}
_load_counts: Counter[str] = Counter()
_cache_lock = threading.Lock()
_pinned: Runtime | None = None


def load(spec: ModelSpec, runtime: Runtime = Runtime()) -> Predictor:
    """Return the loaded model for ``spec``, loading it on first use in this process.

    Thread-safe: concurrent tasks in one worker share one instance.

    Examples
    --------
    >>> from xs2mask.models import get, load
    >>> predictor = load(get("ukis-csmask-4b-l2a"))  # doctest: +SKIP
    """
    runtime = _pinned or runtime
    key = (spec, runtime)
    with _cache_lock:
        if key not in _cache:
            require_backend(spec.backend, f"model {spec.name!r}")
            loader = _load_members if spec.members else _LOADERS[spec.backend]
            _cache[key] = loader(spec, runtime)
            _load_counts[spec.name] += 1
        return _cache[key]


def pin_runtime(runtime: Runtime | None) -> None:
    """Run every model this process loads with ``runtime``, whatever the caller asks (None: unpin).

    The distributed :class:`~xs2mask.distributed.ModelPlugin` pins each worker's
    device, precision and thread count, so the runtime a graph was built with on
    the client (whose cores and devices differ) does not matter on the workers.

    Examples
    --------
    >>> pin_runtime(Runtime(device="cpu", threads=1))
    >>> pinned()
    Runtime(device='cpu', dtype='float32', threads=1, compile=False)
    >>> pin_runtime(None)
    """
    global _pinned
    with _cache_lock:
        _pinned = runtime


def pinned() -> Runtime | None:
    """The runtime pinned in this process, if any (see :func:`pin_runtime`)."""
    return _pinned


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
    DependencyError
        If a model's backend is not installed (e.g. torch for the ``-torch`` models).
    DeviceError
        If the device is unknown or not present on this machine.
    """
    for spec in specs:
        require_backend(spec.backend, f"model {spec.name!r}")
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


def _load_onnx(spec: ModelSpec, runtime: Runtime) -> Predictor:
    import onnxruntime

    path = spec.weights.verified_path()
    options = onnxruntime.SessionOptions()
    cpu = runtime.device == "cpu"
    # On the CPU, patches run side by side, one core each, rather than one after another
    # on all cores: a patch is too small for onnxruntime's threads to share well, and the
    # caller's per-patch numpy work (softmax, blending) runs in parallel too.
    concurrency = (runtime.threads or os.cpu_count() or 1) if cpu else 1
    options.intra_op_num_threads = 1 if cpu else runtime.threads
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

    return _Function(predict, batch_size=1 if cpu else 8, concurrency=concurrency)


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
    if runtime.compile:
        # One static shape: the predictor pads the last micro-batch, so nothing recompiles.
        model = torch.compile(model, dynamic=False)
    predictor = TorchPredictor(model, device, getattr(torch, runtime.dtype))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        micro = batch_size_for(free, predictor.patch_bytes(len(spec.bands), spec.patch_size))
        predictor.micro_batch = micro
        predictor.batch_size = 4 * micro  # four micro-batches per call: uploads overlap compute
    return predictor


class TorchPredictor:
    """A torch model on one device, with reduced-precision autocast off the CPU.

    On CUDA a call is split into micro-batches of ``micro_batch`` patches: each
    is copied from pinned host memory on a side stream while the model runs the
    previous one, and results come back to pinned memory without blocking, so
    transfers overlap compute. On the CPU a call is one plain forward pass.

    Examples
    --------
    >>> import torch
    >>> p = TorchPredictor(torch.nn.Conv2d(4, 2, 1), torch.device("cpu"), torch.float32)
    >>> p(np.zeros((3, 4, 8, 8), np.float32)).shape
    (3, 2, 8, 8)
    """

    def __init__(self, module: Any, device: Any, dtype: Any) -> None:
        import torch

        self.module = module
        self.device = device
        self.dtype = dtype
        self.batch_size = 1
        self.concurrency = 1
        self.micro_batch = 1
        self._autocast = dtype != torch.float32
        self._copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch, np.float32))
        with torch.inference_mode():
            if self._copy_stream is None:
                return self._forward(x.to(self.device)).float().cpu().numpy()
            return self._overlapped(x)

    def _forward(self, x: Any) -> Any:
        import torch

        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self._autocast):
            return self.module(x)

    def _overlapped(self, x: Any) -> np.ndarray:
        import torch

        n, step = len(x), self.micro_batch
        if n % step:  # a static shape per call (torch.compile): pad the last micro-batch
            x = torch.cat([x, x.new_zeros((step - n % step, *x.shape[1:]))])
        host = x.pin_memory()
        compute, copy = torch.cuda.current_stream(self.device), self._copy_stream
        with torch.cuda.stream(copy):
            upload = host[:step].to(self.device, non_blocking=True)
        outputs = []
        for start in range(0, len(host), step):
            compute.wait_stream(copy)
            current = upload
            current.record_stream(compute)  # allocated on the copy stream, used on this one
            if start + step < len(host):
                with torch.cuda.stream(copy):
                    upload = host[start + step : start + 2 * step].to(self.device, non_blocking=True)
            y = self._forward(current).float()
            out = torch.empty(y.shape, dtype=torch.float32, pin_memory=True)
            outputs.append(out.copy_(y, non_blocking=True))
        compute.synchronize()
        return torch.cat(outputs)[:n].numpy()

    def patch_bytes(self, channels: int, patch: int) -> int:
        """Peak device memory of one patch through the model, measured with a batch of two."""
        import torch

        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        with torch.inference_mode():
            self._forward(torch.zeros((2, channels, patch, patch), device=self.device))
        torch.cuda.synchronize(self.device)
        return int((torch.cuda.max_memory_allocated(self.device) - before) // 2)


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

    return _Function(predict)


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

    return _Function(
        predict,
        batch_size=min(m.batch_size for m in members),
        concurrency=min(m.concurrency for m in members),
    )


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 1 of ``(N, K, H, W)``, in a new array."""
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z
