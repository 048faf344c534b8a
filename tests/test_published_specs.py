"""The published models' specs and the engine features they need, without the upstream packages.

Parity with the upstream code itself is in ``test_published_models.py`` (needs xs2mask[parity]).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import xs2mask
from xs2mask.kernel import _zscore
from xs2mask.models import backends, hub
from xs2mask.models.published import C2M_MEAN, C2M_STD, OCM_REVISION


def test_registered_specs_reproduce_the_peers_preprocessing() -> None:
    ocm = xs2mask.models.get("omnicloudmask-v4")
    assert ocm.bands == ("B04", "B03", "B8A") and ocm.normalisation == "patch"
    assert ocm.classes == (0, 1, 2, 3) and ocm.outputs == "logits"
    assert [m.architecture for m in ocm.members] == [
        (("arch", "unet"), ("encoder_name", "tu-regnety_004")),
        (("arch", "unet"), ("encoder_name", "tu-edgenext_small")),
    ]
    for member in ocm.members:
        assert f"/resolve/{OCM_REVISION}/" in member.weights.url and len(member.weights.sha256) == 64
    c2m = xs2mask.models.get("clouds2mask-20m-ensemble")
    assert len(c2m.bands) == 13 and c2m.bands[8:11] == ("B8A", "B09", "B10")
    assert c2m.outputs == "probabilities" and c2m.processing_resolution == 20
    # CloudS2Mask: ((DN / 32767) - mean) / std == (DN / 10000 - 3.2767 mean) / (3.2767 std)
    dn = np.float32(1234.0)
    upstream = (dn / 32767 - np.float32(0.06330473795822207)) / np.float32(0.02668270641026416)
    assert np.isclose((dn / 10000 - C2M_MEAN[3]) / C2M_STD[3], upstream, rtol=1e-5)


def test_zscore_is_omnicloudmasks_channel_norm() -> None:
    """Per band: mean and population std of the valid pixels; invalid pixels 0; std 0 -> 1."""
    rng = np.random.default_rng(0)
    patch = rng.uniform(0, 0.5, (3, 40, 40)).astype(np.float32)
    ok = rng.uniform(size=patch.shape) > 0.2
    ok[2] = False  # a band with nothing valid
    patch[1] = 0.25  # constant band (exact in float32, so its std is exactly 0)
    out = _zscore(patch, ok)
    v = patch[0][ok[0]]
    np.testing.assert_allclose(out[0][ok[0]], (v - v.mean()) / v.std(), rtol=1e-5)
    assert (out[0][~ok[0]] == 0).all() and (out[1] == 0).all() and (out[2] == 0).all()
    # scale and offset cancel: DN, reflectance and un-harmonised DN give the same input
    np.testing.assert_allclose(_zscore(patch * 10_000 + 1000, ok), out, atol=1e-4)


@pytest.fixture
def fake_backend():
    """Register a backend whose models are the function a test gives; forget its models afterwards.

    ``fake_backend(make)`` registers ``make(spec) -> function(batch) -> output`` under a name of its
    own and returns that name, for specs to name in place of ``onnx``.
    """
    name = "test-fake"

    def register(make):
        backends.register_backend(
            backends.Backend(name, lambda spec, runtime: backends.FunctionPredictor(make(spec))),
            overwrite=True,  # replacing forgets the models the last test's fake loaded
        )
        return name

    yield register
    backends.clear_cache()


@pytest.mark.parametrize("outputs", ["logits", "probabilities"])
def test_member_ensembles_average_logits_or_probabilities(outputs: str, fake_backend) -> None:
    onnx = xs2mask.models.get("clouds2mask-10m-ensemble")
    logits = {
        onnx.members[0].name: np.array([2.0, 0.0, 0.0, 0.0], np.float32),
        onnx.members[1].name: np.array([0.0, 3.0, 0.0, 0.0], np.float32),
    }

    def member(spec):
        return lambda batch: np.broadcast_to(logits[spec.name][None, :, None, None], (1, 4, 2, 2)).copy()

    fake = fake_backend(member)
    members = tuple(replace(m, backend=fake) for m in onnx.members)
    ensemble = replace(onnx, backend=fake, outputs=outputs, members=members)
    out = backends.load(ensemble)(np.zeros((1, 13, 2, 2), np.float32))[0, :, 0, 0]
    a, b = (logits[m.name][None, :, None, None] for m in members)
    expected = (a + b) / 2 if outputs == "logits" else (backends.softmax(a) + backends.softmax(b)) / 2
    np.testing.assert_allclose(out, expected[0, :, 0, 0], rtol=1e-6)


def test_model_resolution_is_the_default_processing_resolution(tmp_path: Path, fake_backend) -> None:
    """clouds2mask-20m runs at 20 m on 10 m input unless told otherwise, as CloudS2Mask does."""
    for name in ("clouds2mask-20m.onnx", "clouds2mask-10m.onnx"):
        (tmp_path / name).write_bytes(b"converted")
    seen = []

    def predict(batch):
        seen.append(batch.shape[-1])
        return np.zeros((batch.shape[0], 4, *batch.shape[2:]), np.float32)

    fake = fake_backend(lambda spec: predict)
    c2m20, c2m10 = (replace(xs2mask.models.get(f"clouds2mask-{r}"), backend=fake) for r in ("20m", "10m"))
    n = 128
    cube = xr.DataArray(
        np.full((13, n, n), 1500, np.uint16),
        dims=("band", "y", "x"),
        coords={"band": list(c2m20.bands), "x": np.arange(n) * 10.0},
    )
    ds = xs2mask.predict(cube, model=c2m20, model_dir=tmp_path, overlap=0, patch_size=128)
    assert ds.attrs["xs2mask_processing_resolution"] == 20 and seen == [64]
    ds = xs2mask.predict(cube, model=c2m10, model_dir=tmp_path, overlap=0, patch_size=128)
    assert ds.attrs["xs2mask_processing_resolution"] == "input" and seen == [64, 128]


def test_missing_converted_model_says_how_to_make_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(hub.OFFLINE_ENV, "1")
    cube = xr.DataArray(np.ones((13, 64, 64), np.uint16), dims=("band", "y", "x"),
                        coords={"band": list(xs2mask.models.get("clouds2mask-10m").bands)})  # fmt: skip
    with pytest.raises(xs2mask.exceptions.WeightsError) as err:
        xs2mask.predict(cube, model="clouds2mask-10m", model_dir=tmp_path)
    message = str(err.value)
    assert "clouds2mask-10m.onnx" in message and str(tmp_path) in message
    assert (
        "xs2mask models download clouds2mask-10m" in message
        and "xs2mask models convert clouds2mask" in message
    )
