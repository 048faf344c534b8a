"""GPU-side logic: batch sizing, the torch predictor, torch.compile plumbing, pinned runtimes.

What needs no GPU runs on the CPU; the CUDA tests skip cleanly without one.
"""

from __future__ import annotations

import numpy as np
import pytest

import xs2mask
from xs2mask.cli import build_parser
from xs2mask.models import Runtime, get, load
from xs2mask.models.backends import TorchPredictor, batch_size_for, clear_cache, pin_runtime, pinned
from xs2mask.pipeline import Load

torch = pytest.importorskip("torch")
TORCH_MODEL = "xs2mask-4b-torch"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def fresh_cache():
    clear_cache()
    yield
    pin_runtime(None)
    clear_cache()


def test_batch_size_fits_half_the_free_memory():
    gib, mib = 2**30, 2**20
    assert batch_size_for(80 * gib, 600 * mib) == 64  # capped: more buys no speed, costs host memory
    assert batch_size_for(8 * gib, 600 * mib) == 6  # 4 GiB / 600 MiB
    assert batch_size_for(100 * mib, 600 * mib) == 1  # never 0: one patch always runs
    assert batch_size_for(8 * gib, 0) == 64


def test_torch_predictor_on_cpu_is_the_module(fresh_cache):
    module = torch.nn.Conv2d(4, 3, 3, padding=1).eval()
    batch = np.random.default_rng(0).normal(size=(5, 4, 16, 16)).astype(np.float32)
    got = TorchPredictor(module, torch.device("cpu"), torch.float32)(batch)
    with torch.inference_mode():
        want = module(torch.from_numpy(batch)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_compile_flag_reaches_the_loaded_model(fresh_cache):
    spec = get(TORCH_MODEL)
    plain = load(spec, Runtime("cpu", "float32", 1))
    compiled = load(spec, Runtime("cpu", "float32", 1, compile=True))
    # torch.compile wraps lazily: the wrapper is there, nothing is compiled until the first call.
    assert isinstance(compiled.module, torch._dynamo.eval_frame.OptimizedModule)
    assert not isinstance(plain.module, torch._dynamo.eval_frame.OptimizedModule)
    assert plain.batch_size == compiled.batch_size == 1  # the CPU runs one patch per call fastest
    assert xs2mask.models.load_counts() == {TORCH_MODEL: 2}


def test_pinned_runtime_wins_over_the_graphs(fresh_cache):
    spec = get("ukis-csmask-4b-l2a")
    pin_runtime(Runtime("cpu", "float32", 1))
    first = load(spec, Runtime("cpu", "float32", 7))
    second = load(spec, Runtime("cpu", "float32", 3))
    assert first is second and pinned() == Runtime("cpu", "float32", 1)
    assert xs2mask.models.load_counts() == {"ukis-csmask-4b-l2a": 1}


def test_cli_and_job_carry_the_scale_options():
    args = build_parser().parse_args(
        ["predict", "--stac-url", "http://x", "--collection", "c", "--bbox", "0", "0", "1", "1",
         "--datetime", "2024-06", "--out", "m.zarr", "--compile", "--read-retries", "5",
         "--read-timeout", "12", "--on-read-error", "nodata"]
    )  # fmt: skip
    assert (args.compile, args.read_retries, args.read_timeout, args.on_read_error) == (
        True,
        5,
        12.0,
        "nodata",
    )
    with pytest.raises(xs2mask.InputError, match="on_read_error"):
        Load(on_read_error="skip")


@cuda
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_predictor_matches_cpu_and_overlaps_micro_batches(fresh_cache, dtype):
    if dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bfloat16 on this GPU")
    spec = get(TORCH_MODEL)
    gpu = load(spec, Runtime("cuda", dtype))
    cpu = load(spec, Runtime("cpu", "float32"))
    assert gpu.batch_size == 4 * gpu.micro_batch and gpu.micro_batch >= 1
    n = 2 * gpu.micro_batch + 1  # not a whole number of micro-batches: the last is padded
    batch = np.random.default_rng(1).normal(size=(n, len(spec.bands), 256, 256)).astype(np.float32)
    got, want = gpu(batch), cpu(batch)
    assert got.shape == want.shape and got.dtype == np.float32
    # Reduced precision: the classes agree nearly everywhere, the logits closely.
    assert np.mean(got.argmax(1) == want.argmax(1)) > 0.99


@cuda
def test_cuda_predict_equals_cpu_masks(fresh_cache):
    cube = xs2mask.data.demo_scene().load()
    on_gpu = xs2mask.predict(cube, model=TORCH_MODEL, device="cuda").mask.values
    on_cpu = xs2mask.predict(cube, model=TORCH_MODEL, device="cpu").mask.values
    assert np.mean(on_gpu == on_cpu) > 0.99
