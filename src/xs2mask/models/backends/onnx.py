"""ONNX models through onnxruntime (a dependency of xs2mask): the CPU path, and CUDA with onnxruntime-gpu."""

from __future__ import annotations

import numpy as np

from ...exceptions import WeightsError
from ..spec import ModelSpec
from .base import Backend, FunctionPredictor, Predictor, Runtime, process_cores, verified_weights


def load_onnx(spec: ModelSpec, runtime: Runtime) -> Predictor:
    """An onnxruntime session of the spec's verified weights, on the CPU or a CUDA device."""
    import onnxruntime

    path = verified_weights(spec)
    options = onnxruntime.SessionOptions()
    cpu = runtime.device == "cpu"
    # On the CPU, patches run side by side, one core each, rather than one after another
    # on all cores: a patch is too small for onnxruntime's threads to share well, and the
    # caller's per-patch numpy work (softmax, blending) runs in parallel too. With the threads left
    # to the library, the calls of all blocks share the process's cores (see Backend.pooled).
    concurrency = (runtime.threads or process_cores()) if cpu else 1
    options.intra_op_num_threads = 1 if cpu else runtime.threads
    options.inter_op_num_threads = 1
    providers: list[str | tuple[str, dict[str, int]]] = ["CPUExecutionProvider"]
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

    return FunctionPredictor(
        predict, batch_size=1 if cpu else 8, concurrency=concurrency, pooled=cpu and not runtime.threads
    )


def _accelerator(kind: str) -> bool:
    if kind != "cuda":
        return False
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


ONNX = Backend(name="onnx", load=load_onnx, accelerator=_accelerator, pooled=True)
