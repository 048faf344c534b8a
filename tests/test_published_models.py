"""OmniCloudMask v4 and CloudS2Mask through xs2mask's engine, against the upstream code itself.

The published weights cannot be downloaded here, so both sides get the same seeded random
networks, built by the upstream constructors and saved in the upstream file formats
(``upstream_models.py``): safetensors for OmniCloudMask, whole pickles for CloudS2Mask, which
xs2mask converts once (``xs2mask models convert clouds2mask``) and then runs from ONNX.

The scene is the real cloudy SEN12MS-CR patch (256 x 256 px, 13 L1C bands, DN of a baseline
before 04.00, so CloudS2Mask's own reader, which ignores the offset, reads it right). Both peers
run it as a single patch (OmniCloudMask shrinks its 1000 px patch to the image, CloudS2Mask's
network gets the whole patch), and xs2mask is asked for the same (``patch_size=256, overlap=0``):
the comparison is of band order, normalisation, networks, ensembling and class codes, not of the
tilings, which differ by design (xs2mask's grid is global so that Dask chunks are seamless).

Measured when written (2 CPU cores): OmniCloudMask max |dp| 2.5e-4 (the float16 output's
rounding; 2.6e-4 for the regnety_004 member alone), 100 % of pixels the same class;
CloudS2Mask dp within [-2.4e-4, 4.2e-3] (it truncates 255 x p to uint8), 100 % the same class
where its top two probabilities differ by more than 2/255, 99.98 % over all pixels (single
network and ensemble). About 2.5 min on an idle 2-core machine, most of it building, pickling
and converting the CloudS2Mask networks: marked slow.

Needs ``pip install 'xs2mask[parity]'`` and ``clouds2mask`` (``pip install --no-deps clouds2mask``:
it pins an old timm); skipped otherwise, and without ``../shared/data``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import xs2mask
from xs2mask.cli import main
from xs2mask.models import ModelSpec, sha256_file
from xs2mask.models.backends import softmax

pytest.importorskip("omnicloudmask", reason="omnicloudmask is not installed (xs2mask[parity])")
pytest.importorskip("fastai", reason="fastai is not installed (xs2mask[convert])")
pytest.importorskip("clouds2mask", reason="clouds2mask is not installed (pip install --no-deps clouds2mask)")

import upstream_models as up  # tests/ is on sys.path through conftest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scene(shared_data: Path) -> xr.DataArray:
    dn = up.read_scene(shared_data)
    n = dn.shape[-1]
    coords = {"band": up.L1C_BANDS, "y": np.arange(n) * -10.0, "x": np.arange(n) * 10.0}
    return xr.DataArray(dn, dims=("band", "y", "x"), coords=coords)


@pytest.fixture(scope="module")
def ocm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ocm")
    up.write_ocm_weights(folder)
    return folder


@pytest.fixture(scope="module")
def c2m(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    """(the upstream pickles, the folder xs2mask converted them into, through its CLI)."""
    pickles = up.write_c2m_pickles(tmp_path_factory.mktemp("c2m_pickles"))
    out = tmp_path_factory.mktemp("c2m_converted")
    assert main(["models", "convert", "clouds2mask", str(pickles[0].parent), "--out", str(out)]) == 0
    return pickles, out


def _random_ocm(folder: Path) -> ModelSpec:
    """omnicloudmask-v4 pointed at ``folder``, pinned to the random files' sha256 instead of the real ones."""
    spec = xs2mask.models.get("omnicloudmask-v4").with_model_dir(folder)
    members = tuple(
        replace(m, weights=replace(m.weights, sha256=sha256_file(folder / m.weights.filename)))
        for m in spec.members
    )
    return replace(spec, members=members)


def _probabilities(cube: xr.DataArray, **kwargs) -> xr.Dataset:
    return xs2mask.predict(cube, output="both", probability_dtype="float16", device="cpu", **kwargs)


@pytest.mark.parametrize("member", [None, 0])
def test_omnicloudmask_v4_matches_predict_from_array(
    member: int | None, scene: xr.DataArray, ocm_dir: Path
) -> None:
    """The ensemble against its default models; a member against the same network as a custom model."""
    spec = _random_ocm(ocm_dir)
    options = {}
    if member is not None:
        import torch
        from omnicloudmask.model_utils import load_model_from_weights

        spec = spec.members[member]
        network = load_model_from_weights(
            model_name=dict(spec.architecture)["encoder_name"],
            weights_path=ocm_dir / spec.weights.filename,
            model_library="smp",
            device=torch.device("cpu"),
        )
        options = {"custom_models": [network]}
    logits = up.ocm_reference(scene.values, ocm_dir, **options)
    expected = softmax(logits[None].astype(np.float32))[0]
    ds = _probabilities(scene, model=spec, patch_size=256, overlap=0)
    got = ds.probability.values.astype(np.float32)
    assert np.abs(got - expected).max() < 1e-3  # float16 output: 2.5e-4 measured
    classes = np.argmax(logits, axis=0)
    assert len(np.unique(classes)) > 1  # the random networks do depend on their input
    np.testing.assert_array_equal(ds.mask.values, classes)


def test_omnicloudmask_ignores_the_baseline_offset(scene: xr.DataArray, ocm_dir: Path) -> None:
    """Per-patch z-scores cancel any offset: DN of a baseline-04.00 product give the same mask."""
    spec = _random_ocm(ocm_dir).members[0]
    plain = _probabilities(scene, model=spec, patch_size=256, overlap=0)
    shifted = _probabilities(scene + np.uint16(1000), model=spec, patch_size=256, overlap=0, offset=-1000)
    np.testing.assert_array_equal(plain.mask.values, shifted.mask.values)
    unharmonised = _probabilities(scene + np.uint16(1000), model=spec, patch_size=256, overlap=0)
    assert (unharmonised.mask.values == plain.mask.values).mean() > 0.999


@pytest.mark.parametrize("name", ["clouds2mask-10m", "clouds2mask-10m-ensemble"])
def test_clouds2mask_matches_its_inference_path(
    name: str, scene: xr.DataArray, c2m: tuple[list[Path], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    pickles, converted = c2m
    used = pickles[:1] if name == "clouds2mask-10m" else pickles
    expected = up.c2m_reference(scene.values, used).astype(np.float32) / 255

    import torch

    def no_unpickling(*args, **kwargs):
        raise AssertionError("inference must not unpickle anything")

    monkeypatch.setattr(torch, "load", no_unpickling)
    ds = _probabilities(scene, model=name, model_dir=converted, patch_size=256, overlap=0)
    got = ds.probability.values.astype(np.float32)
    diff = got - expected
    # CloudS2Mask floors 255 p to uint8 (up to 1/255 below), plus float16 rounding here
    assert diff.min() > -1e-3 and diff.max() < 1 / 255 + 1e-3
    top2 = np.sort(got, axis=0)[-2:]
    clear_cut = top2[1] - top2[0] > 2 / 255
    assert clear_cut.mean() > 0.99
    agree = ds.mask.values == np.argmax(expected, axis=0)
    assert agree[clear_cut].all()
    assert agree.mean() > 0.999


def test_conversion_record(c2m: tuple[list[Path], Path]) -> None:
    import json

    pickles, converted = c2m
    record = json.loads((converted / "clouds2mask-10m.json").read_text())
    assert record["source"] == pickles[0].name
    assert record["source_sha256"] == sha256_file(pickles[0])
    assert record["sha256_of"]["onnx"] == sha256_file(converted / "clouds2mask-10m.onnx")
    assert record["sha256_of"]["safetensors"] == sha256_file(converted / "clouds2mask-10m.safetensors")
    assert record["max_abs_logit_difference_torch_onnx"] < 1e-3
    assert (converted / "clouds2mask-10m.onnx.sha256").read_text().split()[0] == record["sha256_of"]["onnx"]
    assert sorted(p.name for p in converted.glob("*.onnx")) == [
        "clouds2mask-10m-2.onnx",
        "clouds2mask-10m.onnx",
    ]
