"""The backends by name, and each process's loaded models.

Everything in xs2mask asks a spec's backend (:func:`get_backend`) what it needs and
supports rather than comparing backend names, so a new backend (OpenVINO, TensorRT,
CoreML) is one module and one :func:`register_backend` call.

A process may pin one :class:`Runtime` for every model it loads
(:func:`pin_runtime`): a Dask worker with a GPU then runs every model on its
GPU, whatever device the graph was built for, and the model cache key stays
the same for every task, so each model is loaded once per worker.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable

import numpy as np

from ...exceptions import BackendError, DependencyError, DeviceError
from ..spec import ModelSpec
from .base import Backend, FunctionPredictor, Predictor, Runtime, softmax

_BACKENDS: dict[str, Backend] = {}
_cache: dict[tuple[ModelSpec, Runtime], Predictor] = {}
_load_counts: Counter[str] = Counter()
# One lock for the backends and the models (reentrant: loading checks the backend): replacing a
# backend and loading a model of it exclude each other, so no model of the old one stays cached.
_lock = threading.RLock()
_pinned: Runtime | None = None


def register_backend(backend: Backend, *, overwrite: bool = False) -> None:
    """Make models whose spec names ``backend.name`` loadable in this process.

    A name is registered once: registering it again is refused unless ``overwrite=True``,
    which replaces the backend and forgets the models loaded with the old one (the next
    call loads them with the new one). On a Dask cluster each worker process must register
    it too (import the module that does, e.g. in a worker plugin), as it must have the
    library installed.

    Raises
    ------
    BackendError
        If ``backend`` is not a :class:`Backend`, or one of that name is registered and
        ``overwrite`` is False.

    Examples
    --------
    >>> import numpy as np
    >>> from xs2mask.models.backends import Backend, FunctionPredictor, get_backend, register_backend
    >>> def load_first_band(spec, runtime):  # a per-pixel "model": band 1 as class 1's logit
    ...     return FunctionPredictor(lambda batch: np.concatenate([0 * batch[:, :1], batch[:, :1]], 1))
    >>> register_backend(Backend("first-band-doc", load_first_band, per_pixel=True))
    >>> get_backend("first-band-doc").per_pixel
    True
    """
    if not isinstance(backend, Backend):
        raise BackendError(
            f"register_backend takes a Backend, got {type(backend).__name__}: "
            "describe yours as Backend(name, load, ...)"
        )
    with _lock:
        if backend.name in _BACKENDS and not overwrite:
            raise BackendError(
                f"a backend named {backend.name!r} is already registered; pass overwrite=True to "
                "replace it, or give yours another name"
            )
        _BACKENDS[backend.name] = backend
        stale = [key for key in _cache if backend.name in _backends_of(key[0])]
        for key in stale:
            del _cache[key]


def _backends_of(spec: ModelSpec) -> set[str]:
    return {spec.backend, *(m.backend for m in spec.members)}


def get_backend(name: str) -> Backend:
    """The backend registered under ``name``.

    Raises
    ------
    BackendError
        If none is, naming the registered ones and how to add one.

    Examples
    --------
    >>> get_backend("onnx").per_pixel
    False
    """
    with _lock:
        found = _BACKENDS.get(name)
        known = sorted(_BACKENDS)
    if found is None:
        raise BackendError(
            f"unknown model backend {name!r}; registered backends: {', '.join(known)}. Name one of "
            "them in the ModelSpec, or register yours first with "
            "xs2mask.models.backends.register_backend(Backend(...))"
        )
    return found


def registered_backends() -> list[str]:
    """Names of the registered backends.

    Examples
    --------
    >>> {"lightgbm", "onnx", "torch"} <= set(registered_backends())
    True
    """
    with _lock:
        return sorted(_BACKENDS)


def require_backend(backend: str, purpose: str) -> None:
    """Raise :class:`DependencyError` naming the pip extra when ``backend``'s modules are not installed.

    Checked before anything is built or loaded, so a missing package is one clear error rather
    than an ``ImportError`` from a Dask worker. Nothing is imported: the check only looks.

    Raises
    ------
    BackendError
        If no backend of that name is registered.
    DependencyError
        If a module it needs is not installed.

    Examples
    --------
    >>> require_backend("onnx", "model 'xs2mask-4b'")  # onnxruntime is always installed
    """
    found = get_backend(backend)
    missing = found.missing_modules()
    if not missing:
        return
    hint = f" ({found.install_hint})" if found.install_hint else ""
    raise DependencyError(
        f"{purpose} needs the {backend} backend, but {', '.join(missing)} "
        f"{'is' if len(missing) == 1 else 'are'} not installed: pip install 'xs2mask[{found.extra}]'{hint}"
    )


def load(spec: ModelSpec, runtime: Runtime = Runtime()) -> Predictor:  # noqa: B008 (frozen: immutable)
    """Return the loaded model for ``spec``, loading it on first use in this process.

    Thread-safe: concurrent tasks in one worker share one instance.

    Raises
    ------
    BackendError
        If the spec's backend is not registered in this process.
    DependencyError
        If the backend's modules are not installed.

    Examples
    --------
    >>> from xs2mask.models import get, load
    >>> predictor = load(get("ukis-csmask-4b-l2a"))  # doctest: +SKIP
    """
    runtime = _pinned or runtime
    key = (spec, runtime)
    with _lock:
        if key not in _cache:
            require_backend(spec.backend, f"model {spec.name!r}")
            if spec.members:
                _cache[key] = _load_members(spec, runtime)
            else:
                _cache[key] = _BACKENDS[spec.backend].load(spec, runtime)
            _load_counts[spec.name] += 1
        return _cache[key]


def _load_members(spec: ModelSpec, runtime: Runtime) -> Predictor:
    """One predictor averaging the members' logits, or their softmax (``spec.outputs``)."""
    for member in spec.members:
        require_backend(member.backend, f"model {member.name!r}")
    members = [_BACKENDS[m.backend].load(m, runtime) for m in spec.members]
    as_probabilities = spec.outputs == "probabilities"

    def predict(batch: np.ndarray) -> np.ndarray:
        total = None
        for member in members:
            out = member(batch)
            if as_probabilities:
                out = softmax(out)
            total = out if total is None else total + out
        assert total is not None  # ModelSpec refuses an ensemble without members
        return total / np.float32(len(members))

    return FunctionPredictor(
        predict,
        batch_size=min(m.batch_size for m in members),
        concurrency=min(m.concurrency for m in members),
        pooled=all(getattr(m, "pooled", False) for m in members),
    )


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
    with _lock:
        _pinned = runtime


def pinned() -> Runtime | None:
    """The runtime pinned in this process, if any (see :func:`pin_runtime`)."""
    return _pinned


def load_counts() -> dict[str, int]:
    """How many times each model was loaded in this process (for tests and diagnostics)."""
    with _lock:
        return dict(_load_counts)


def clear_cache() -> None:
    """Forget every loaded model of this process."""
    with _lock:
        _cache.clear()
        _load_counts.clear()


def resolve_device(device: str, specs: tuple[ModelSpec, ...]) -> str:
    """Turn ``"auto"`` into cuda > mps > cpu and check an explicit device exists.

    An accelerator is available when every backend of ``specs`` that can use one
    can use it here, and at least one can (CPU-only backends leave it to the others).

    Raises
    ------
    BackendError
        If a model's backend is not registered.
    DependencyError
        If a model's backend is not installed (e.g. torch for the ``-torch`` models).
    DeviceError
        If the device is unknown or not present on this machine.

    Examples
    --------
    >>> from xs2mask.models import get
    >>> resolve_device("cpu", (get("xs2mask-4b"),))
    'cpu'
    """
    for spec in specs:
        require_backend(spec.backend, f"model {spec.name!r}")
    backends = _distinct(specs)
    wanted = device.split(":")[0]
    if wanted not in {"auto", "cpu", "cuda", "mps"}:
        raise DeviceError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    has = {"cpu": True, "cuda": _has(backends, "cuda"), "mps": _has(backends, "mps")}
    if wanted == "auto":
        return next(d for d in ("cuda", "mps", "cpu") if has[d])
    if not has[wanted]:
        raise DeviceError(
            f"device {device!r} is not available on this machine for backends "
            f"{sorted(b.name for b in backends)}; use device='cpu' (or 'auto'), or install a GPU build "
            "(torch with CUDA, onnxruntime-gpu)"
        )
    return device


def _distinct(specs: Iterable[ModelSpec]) -> list[Backend]:
    return [get_backend(name) for name in dict.fromkeys(s.backend for s in specs)]


def _has(backends: list[Backend], kind: str) -> bool:
    answers = [a for a in (b.accelerator(kind) for b in backends) if a is not None]
    return bool(answers) and all(answers)


def resolve_dtype(dtype: str, device: str, specs: tuple[ModelSpec, ...]) -> str:
    """``"auto"``: float32 on the CPU; on a GPU the backends' reduced precision when they all have one.

    Examples
    --------
    >>> from xs2mask.models import get
    >>> resolve_dtype("auto", "cpu", (get("xs2mask-4b"),))
    'float32'
    """
    if dtype not in {"auto", "float32", "float16", "bfloat16"}:
        raise DeviceError(f"unknown dtype {dtype!r}: use 'auto', 'float32', 'float16' or 'bfloat16'")
    on_gpu = not device.startswith("cpu")
    backends = _distinct(specs)
    if dtype == "auto":
        if on_gpu and all(b.gpu_dtype is not None for b in backends):
            chosen = {b.gpu_dtype(device) for b in backends}  # type: ignore[misc]
            return chosen.pop() if len(chosen) == 1 else "float32"
        return "float32"
    if dtype != "float32" and not on_gpu:
        # Measured on AVX2 CPUs: bf16 autocast 10-14x and fp16 ~100x slower than fp32.
        raise DeviceError(
            f"dtype={dtype!r} on the CPU is many times slower than float32; "
            "use dtype='float32' (or 'auto') on the CPU, reduced precision on a GPU"
        )
    if dtype != "float32" and any(dtype not in b.precisions for b in backends):
        able = [name for name in registered_backends() if dtype in get_backend(name).precisions]
        raise DeviceError(
            f"dtype={dtype!r} is only supported for models of the backends {able}; use dtype='float32'"
        )
    return dtype
