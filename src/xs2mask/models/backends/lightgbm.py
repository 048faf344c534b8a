"""Per-pixel LightGBM classifiers (s2cloudless): a cloud probability per pixel, on the CPU."""

from __future__ import annotations

import os

import numpy as np

from ...exceptions import WeightsError
from ..spec import ModelSpec
from .base import Backend, FunctionPredictor, Predictor, Runtime, verified_weights


def load_lightgbm(spec: ModelSpec, runtime: Runtime) -> Predictor:
    """A LightGBM booster whose probability of class 1 becomes two channels: ``1 - p`` and ``p``."""
    from lightgbm import Booster

    path = verified_weights(spec)
    try:
        booster = Booster(model_file=str(path))
    except Exception as err:  # lightgbm raises LightGBMError for any parse failure
        raise WeightsError(f"{spec.name}: cannot load LightGBM model {path}: {err}") from err
    threads = runtime.threads or os.cpu_count() or 1

    def predict(batch: np.ndarray) -> np.ndarray:
        n, c, h, w = batch.shape
        pixels = np.moveaxis(batch, 1, -1).reshape(-1, c)
        p = np.asarray(booster.predict(pixels, num_threads=threads), dtype=np.float32)
        p = np.moveaxis(p.reshape(n, h, w, 1), -1, 1)
        return np.concatenate([1.0 - p, p], axis=1)

    return FunctionPredictor(predict)


LIGHTGBM = Backend(
    name="lightgbm", load=load_lightgbm, modules=("lightgbm",), extra="s2cloudless", per_pixel=True
)
