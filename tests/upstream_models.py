"""Upstream OmniCloudMask and CloudS2Mask networks with random weights, in the upstream file formats.

Used by ``test_published_models.py`` and ``benchmarks/bench_published.py`` (importable as
``import upstream_models`` once this folder is on ``sys.path``). Nothing here downloads anything: the
published weights cannot be fetched on this machine, so the architectures are built by the upstream
packages' own constructors with seeded random weights and saved the way the authors publish them:

* OmniCloudMask v4: ``smp.Unet(encoder_name="tu-<encoder>", encoder_weights=None, in_channels=3,
  classes=4)``, exactly as ``omnicloudmask.model_utils.load_model_from_weights`` builds it, saved as
  safetensors under the upstream file names (``omnicloudmask/model_download_links.csv``), so that
  ``omnicloudmask.predict_from_array(destination_model_dir=...)`` loads them through its own loader.
* CloudS2Mask: a fastai ``DynamicUnet`` over timm ``regnety_006`` with 13 input bands, built by the
  same authors' constructor (``omnicloudmask.model_utils.build_fastai_model``, which OmniCloudMask's
  v1-v3 models used), pickled whole with ``torch.save`` under CloudS2Mask's file names, as
  ``clouds2mask.model_helpers.load_models`` expects.

Random BatchNorm statistics are drawn too: with the default ones (mean 0, variance 1) a random
network's logits hardly depend on its input, and parity would be checked on near-constant output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Band order of the SEN12MS-CR GeoTIFFs and of CloudS2Mask's input (all 13 L1C bands).
L1C_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
OCM_BANDS = ["B04", "B03", "B8A"]
SCENE = "sen12ms_cr/cloudy_ROIs1868_summer_19_p30.tif"


def read_scene(shared_data: Path) -> np.ndarray:
    """The real cloudy SEN12MS-CR patch: (13, 256, 256) uint16 L1C DN, baseline < 04.00 (no offset)."""
    import rasterio

    with rasterio.open(shared_data / SCENE) as src:
        return src.read()


def _randomise_batchnorm(model, seed: int) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            if module.weight is not None:
                module.weight.data.copy_(torch.rand(n, generator=g) + 0.5)


def write_ocm_weights(folder: Path, seed: int = 0) -> list[Path]:
    """Random OmniCloudMask v4 members saved as upstream safetensors files in ``folder``."""
    import segmentation_models_pytorch as smp
    import torch
    from safetensors.torch import save_file

    from xs2mask.models.published import OCM_MEMBERS

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, member in enumerate(OCM_MEMBERS):
        torch.manual_seed(seed + i)
        # omnicloudmask.model_utils.load_model_from_weights, model_library "smp"
        model = smp.Unet(encoder_name=f"tu-{member.encoder}", encoder_weights=None, in_channels=3, classes=4)
        _randomise_batchnorm(model, seed + i)
        path = folder / member.filename
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
        paths.append(path)
    return paths


def write_c2m_pickles(folder: Path, resolution: int = 10, seed: int = 0) -> list[Path]:
    """Random CloudS2Mask networks 1 and 2 pickled whole (``torch.save``) in ``folder``."""
    import torch
    from omnicloudmask.model_utils import build_fastai_model

    from xs2mask.models.published import C2M_PICKLES

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for member in (1, 2):
        torch.manual_seed(seed + member)
        model = build_fastai_model(model_name="regnety_006", in_chans=len(L1C_BANDS), n_out=4).eval()
        _randomise_batchnorm(model, seed + member)
        path = folder / C2M_PICKLES[(resolution, member)][0]
        torch.save(model, path)
        paths.append(path)
    return paths


def ocm_reference(scene_dn: np.ndarray, model_dir: Path, **kwargs) -> np.ndarray:
    """``omnicloudmask.predict_from_array`` on B04 B03 B8A DN: blended logits (4, H, W)."""
    from omnicloudmask import predict_from_array

    rgn = scene_dn[[L1C_BANDS.index(b) for b in OCM_BANDS]]
    return predict_from_array(
        rgn,
        inference_device="cpu",
        export_confidence=True,
        softmax_output=False,  # raw blended logits: the softmax'ed output is clipped to [0.001, 0.999]
        destination_model_dir=model_dir,
        model_version=4.0,
        **kwargs,
    )


def c2m_settings(pickles: list[Path], tta: int = 0, batch_size: int = 1):
    """CloudS2Mask's ``Inf_Only_Settings`` for the pickled networks: fp32 on the CPU, L1C statistics."""
    import os

    import torch
    from clouds2mask.model_helpers import load_models
    from clouds2mask.model_settings import Inf_Only_Settings
    from clouds2mask.processing_settings import get_normalization_stats
    from clouds2mask.tta_helpers import get_tta_options
    from tqdm.auto import tqdm

    device = torch.device("cpu")
    # clouds2mask 1.1.3 calls torch.load without weights_only, which torch >= 2.6 refuses for
    # whole pickled models; this switch restores the old default for its loader (test files only).
    previous = os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        models = [m.float() for m in load_models(pickles, device)]
    finally:
        if previous is None:
            del os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = previous
    mean, std = get_normalization_stats(device, False, "L1C", L1C_BANDS)
    return Inf_Only_Settings(
        processing_res=10,
        processing_level="L1C",
        mean=mean,
        std=std,
        scene_progress_pbar=tqdm(disable=True),
        pytorch_device=device,
        batch_size=batch_size,
        tta_max_depth=tta,
        fp16_mode=False,
        models=models,
        ordered_augs=get_tta_options(tta),
    )


def c2m_reference(scene_dn: np.ndarray, pickles: list[Path], tta: int = 0) -> np.ndarray:
    """CloudS2Mask's inference path (``clouds2mask.inference.get_preds``) on one patch of 13-band DN.

    Returns its class probabilities as CloudS2Mask produces them: uint8, 255 x softmax, truncated.
    """
    import torch
    from clouds2mask.inference import get_preds

    batch = torch.from_numpy(scene_dn[None].astype(np.float32))
    return get_preds(batch, c2m_settings(pickles, tta))[0]


def c2m_patches(
    arrays: list[np.ndarray], meta: list[dict], pickles: list[Path], batch_size: int
) -> list[dict]:
    """CloudS2Mask's ``run_inference`` (its batching threads) over patches cut by ``make_patches``."""
    from clouds2mask.inference import run_inference

    return run_inference(arrays, meta, c2m_settings(pickles, batch_size=batch_size))
