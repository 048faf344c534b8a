"""Backends as objects: a third-party one runs through predict; unknown or duplicate names are refused."""

from __future__ import annotations

import ast
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import xs2mask
from xs2mask.classes import CLEAR, NODATA, THICK_CLOUD
from xs2mask.exceptions import BackendError, DependencyError, DeviceError
from xs2mask.models import ModelSpec, Weights, sha256_file
from xs2mask.models.backends import (
    Backend,
    FunctionPredictor,
    get_backend,
    load,
    register_backend,
    registered_backends,
    resolve_device,
    resolve_dtype,
)

SRC = Path(xs2mask.__file__).parent


def _load_threshold(spec: ModelSpec, runtime) -> FunctionPredictor:
    """A per-pixel "model" in numpy: cloud probability rising through a blue threshold read from its file."""
    threshold = np.float32(json.loads(spec.weights.verified_path().read_text())["threshold"])

    def predict(batch: np.ndarray) -> np.ndarray:
        p = np.clip((batch[:, :1] - threshold) * np.float32(10) + np.float32(0.5), 0, 1)
        return np.concatenate([1 - p, p], axis=1)

    return FunctionPredictor(predict)


THRESHOLD = Backend("test-blue-threshold", _load_threshold, per_pixel=True)


@pytest.fixture
def threshold_spec(tmp_path: Path) -> ModelSpec:
    register_backend(THRESHOLD, overwrite=True)
    weights = tmp_path / "threshold.json"
    weights.write_text(json.dumps({"threshold": 0.2}))
    yield ModelSpec(
        name="test-blue-threshold",
        bands=("B02",),
        classes=(CLEAR, THICK_CLOUD),
        backend=THRESHOLD.name,
        weights=Weights(str(weights), sha256_file(weights)),
        mean=(0.0,),
        std=(1.0,),
        outputs="probabilities",
        overlap=64,  # per-pixel: predict runs it without
    )
    xs2mask.models.clear_cache()


def test_a_registered_backend_runs_through_predict(threshold_spec: ModelSpec) -> None:
    cube = xs2mask.data.demo_scene()
    ds = xs2mask.predict(cube, model=threshold_spec, output="both")
    dn = cube.sel(band="B02").values
    p = np.clip((dn.astype(np.float32) / np.float32(10_000) - np.float32(0.2)) * 10 + np.float32(0.5), 0, 1)
    expected = np.where(p > 0.5, THICK_CLOUD, CLEAR).astype(np.uint8)
    expected[dn == 0] = NODATA
    np.testing.assert_array_equal(ds.mask.values, expected)
    assert 0.05 < (expected == THICK_CLOUD).mean() < 0.95  # the threshold splits the scene
    np.testing.assert_array_equal(ds.probability.sel({"class": THICK_CLOUD}).values[dn != 0],
                                  np.rint(p * 255).astype(np.uint8)[dn != 0])  # fmt: skip
    assert ds.attrs["xs2mask_overlap"] == "0"  # per-pixel: no overlap, no halo
    chunked = xs2mask.predict(cube.chunk(x=128, y=96), model=threshold_spec, output="both")
    assert not any("overlap" in name for name in chunked.mask.data.dask.layers)
    np.testing.assert_array_equal(chunked.mask.values, ds.mask.values)


def test_an_unknown_backend_is_refused_naming_the_registered_ones(threshold_spec: ModelSpec) -> None:
    spec = replace(threshold_spec, backend="openvino")  # a spec may name a backend not registered yet
    with pytest.raises(BackendError) as caught:
        xs2mask.predict(xs2mask.data.demo_scene(), model=spec)
    message = str(caught.value)
    assert "unknown model backend 'openvino'" in message and "register_backend" in message
    assert all(name in message for name in ("lightgbm", "onnx", "torch"))
    with pytest.raises(BackendError, match="'openvino'"):
        load(spec)
    with pytest.raises(ValueError, match="backend must be the name of a backend"):
        replace(threshold_spec, backend="")


def test_a_name_is_registered_once_unless_overwritten(threshold_spec: ModelSpec) -> None:
    with pytest.raises(BackendError, match=r"'onnx' is already registered.*overwrite=True"):
        register_backend(Backend("onnx", _load_threshold))
    assert get_backend("onnx").load.__name__ == "load_onnx"
    with pytest.raises(BackendError, match="takes a Backend"):
        register_backend(_load_threshold)  # type: ignore[arg-type]
    batch = np.full((1, 1, 2, 2), 0.5, np.float32)
    assert load(threshold_spec)(batch)[0, 1, 0, 0] == 1.0
    # replacing a backend forgets the models it loaded: the next call loads them with the new one
    always_clear = Backend(
        THRESHOLD.name, lambda spec, runtime: FunctionPredictor(lambda b: 0 * b[:, [0, 0]])
    )
    register_backend(always_clear, overwrite=True)
    assert load(threshold_spec)(batch)[0, 1, 0, 0] == 0.0
    assert registered_backends().count(THRESHOLD.name) == 1


def test_a_backend_missing_its_modules_names_its_extra(threshold_spec: ModelSpec) -> None:
    needy = Backend("test-needy", _load_threshold, modules=("no_such_module_xs2mask",), extra="needy")
    register_backend(needy, overwrite=True)
    with pytest.raises(
        DependencyError, match=r"needs the test-needy backend.*pip install 'xs2mask\[needy\]'"
    ):
        xs2mask.predict(xs2mask.data.demo_scene(), model=replace(threshold_spec, backend="test-needy"))


def test_device_and_precision_rules_come_from_the_backends(threshold_spec: ModelSpec) -> None:
    specs = (threshold_spec,)
    assert resolve_device("auto", specs) == "cpu"  # a CPU-only backend: no accelerator to pick
    with pytest.raises(
        DeviceError, match=r"not available on this machine for backends \['test-blue-threshold'\]"
    ):
        resolve_device("cuda", specs)
    assert resolve_dtype("auto", "cuda", specs) == "float32"  # no reduced precision: float32 on a GPU
    with pytest.raises(DeviceError, match=r"only supported for models of the backends \['torch'\]"):
        resolve_dtype("float16", "cuda", specs)


def test_only_the_backends_compare_backend_names() -> None:
    """No module outside models/backends decides anything by ``<spec>.backend ==`` / ``in``: it asks
    the backend (get_backend(...).per_pixel, .extra, ...)."""
    offenders = []
    for path in SRC.rglob("*.py"):
        if "backends" in path.relative_to(SRC).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Compare) and any(
                isinstance(side, ast.Attribute) and side.attr == "backend"
                for side in (node.left, *node.comparators)
            ):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not offenders, f"backend names compared outside models/backends: {offenders}"


def test_a_model_whose_backend_is_missing_is_not_listed_as_installed(
    threshold_spec: ModelSpec, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Weights on disk are not enough: `available()`, "default" and `xs2mask models` know what the model
    lacks to run."""
    from xs2mask import cli
    from xs2mask.models import available, missing_modules, registry

    needs = Backend("test-needy", _load_threshold, modules=("no_such_module_xs2mask",), extra="needy")
    register_backend(needs, overwrite=True)
    needy = replace(threshold_spec, name="test-needy-model", backend="test-needy")
    monkeypatch.setitem(registry._REGISTRY, needy.name, needy)  # undone after the test
    monkeypatch.setattr(registry, "_DEFAULT_ORDER", [needy.name, *registry._DEFAULT_ORDER])
    assert needy.is_available() and missing_modules(needy) == ["no_such_module_xs2mask"]
    assert "test-needy-model" not in available() and "xs2mask-4b" in available()
    assert registry.resolve_default(["B02", "B03", "B04", "B08"]) != needy.name
    assert cli.main(["models"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("test-needy-model"))
    assert "[not runnable: no_such_module_xs2mask missing: pip install 'xs2mask[needy]']" in line


def test_blocks_running_at_once_share_the_cores_of_the_process(tmp_path: Path) -> None:
    """A pooled predictor's calls from every block take one of `concurrency` slots the process shares:
    four Dask threads running blocks at once never make more than two calls at a time, the blocks
    are not given a core each in advance, and the masks are those of the model run on the whole
    scene."""
    import threading
    import time

    import dask

    from xs2mask.inference import prepare, share_cores

    active, peak = [0], [0]
    guard = threading.Lock()

    def load_slow_threshold(spec: ModelSpec, runtime) -> FunctionPredictor:
        def predict(batch: np.ndarray) -> np.ndarray:
            with guard:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.002)  # long enough for the blocks' calls to overlap
            p = np.clip(batch[:, :1] * np.float32(0.25) + np.float32(0.5), 0, 1)
            with guard:
                active[0] -= 1
            return np.concatenate([1 - p, p], axis=1)

        return FunctionPredictor(predict, concurrency=2, pooled=True)

    backend = Backend("test-pooled", load_slow_threshold, pooled=True)
    register_backend(backend, overwrite=True)
    weights = tmp_path / "none.json"
    weights.write_text("{}")
    spec = ModelSpec(name="test-pooled", bands=("B02",), classes=(CLEAR, THICK_CLOUD), backend=backend.name,
                     weights=Weights(str(weights), sha256_file(weights)), mean=(0.1,), std=(0.1,),
                     outputs="probabilities", patch_size=64, overlap=16)  # fmt: skip
    xs2mask.models.clear_cache()
    cube = xs2mask.data.demo_scene()
    alone = xs2mask.predict(cube, model=spec).mask.values
    assert peak[0] == 2
    peak[0] = 0
    with dask.config.set(scheduler="threads", num_workers=4):
        blocks = xs2mask.predict(cube.chunk(x=128, y=128), model=spec).mask.values  # 16 blocks
    np.testing.assert_array_equal(blocks, alone)
    assert peak[0] == 2, peak[0]  # four blocks at a time, two calls at a time
    # so the cores are not split between the blocks in advance either
    plan = prepare(cube.chunk(x=128, y=128), model=spec).plan
    assert share_cores(plan, 16).runtime.threads == 0
    xs2mask.models.clear_cache()
