"""Safetensors weights in a segmentation-models-pytorch network: the GPU path, reduced precision."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ...exceptions import WeightsError
from ..spec import ModelSpec
from .base import Backend, Predictor, Runtime, batch_size_for, verified_weights

if TYPE_CHECKING:
    import torch

_CPU_TORCH = "pip install torch --index-url https://download.pytorch.org/whl/cpu"


def load_torch(spec: ModelSpec, runtime: Runtime) -> Predictor:
    """A segmentation-models-pytorch network with the spec's safetensors weights, on ``runtime.device``."""
    import segmentation_models_pytorch as smp
    import torch
    from safetensors.torch import load_file

    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    path = verified_weights(spec)
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
        self.pooled = False
        self.micro_batch = 1
        self._autocast = dtype != torch.float32
        self._copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch, np.float32))
        with torch.inference_mode():
            if self._copy_stream is None:
                return self._forward(x.to(self.device)).float().cpu().numpy()
            return self._overlapped(x, self._copy_stream)

    def _forward(self, x: Any) -> Any:
        import torch

        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self._autocast):
            return self.module(x)

    def _overlapped(self, x: Any, copy: torch.cuda.Stream) -> np.ndarray:
        import torch

        n, step = len(x), self.micro_batch
        if n % step:  # a static shape per call (torch.compile): pad the last micro-batch
            x = torch.cat([x, x.new_zeros((step - n % step, *x.shape[1:]))])
        host = x.pin_memory()
        compute = torch.cuda.current_stream(self.device)
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


def _accelerator(kind: str) -> bool:
    import torch

    if kind == "cuda":
        return torch.cuda.is_available()
    return kind == "mps" and bool(torch.backends.mps.is_available())


def _gpu_dtype(device: str) -> str:
    import torch

    return "bfloat16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "float16"


TORCH = Backend(
    name="torch",
    load=load_torch,
    modules=("torch", "safetensors", "segmentation_models_pytorch"),
    extra="torch",
    install_hint=f"CPU-only machines: first {_CPU_TORCH}, a far smaller download",
    accelerator=_accelerator,
    precisions=("float16", "bfloat16"),
    gpu_dtype=_gpu_dtype,
)
