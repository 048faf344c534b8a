"""Turn CloudS2Mask's pickled fastai models into files that cannot run code: ONNX and safetensors.

CloudS2Mask publishes whole pickled ``DynamicUnet`` modules. Unpickling runs whatever the file
says, so xs2mask does it only here, once, when a user asks (``xs2mask models convert clouds2mask
PATH``), with fastai installed (``pip install 'xs2mask[convert]'``). Each pickle becomes:

* ``<name>.onnx``: the network with dynamic batch, height and width; this is what masking runs
  (onnxruntime, no fastai needed), its sha256 recorded in ``<name>.onnx.sha256``;
* ``<name>.safetensors``: the same weights as a plain state dict (no code);
* ``<name>.json``: the record: source pickle and its sha256, the sha256 of both outputs, the
  bands and normalisation, and the largest difference between torch and ONNX seen at conversion.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np

from ..exceptions import WeightsError, XS2MaskError
from . import hub
from .published import C2M_PICKLES, c2m_name
from .spec import sha256_file

#: Largest |torch - ONNX| logit difference accepted on the conversion check.
TOLERANCE = 1e-3
_PICKLE_NAME = re.compile(r"_(?P<member>[12])_(?P<res>10|20)m\.pkl$")


def clouds2mask_name(pickle: Path) -> str:
    """The xs2mask model name of a CloudS2Mask pickle, from its file name.

    Examples
    --------
    >>> clouds2mask_name(Path("v3.45_regnety_006_4C_Dice_2_20m.pkl"))
    'clouds2mask-20m-2'
    """
    match = _PICKLE_NAME.search(pickle.name)
    if match is None:
        known = ", ".join(f for f, _ in C2M_PICKLES.values())
        raise XS2MaskError(f"{pickle.name} is not a CloudS2Mask model file (expected one of {known})")
    return c2m_name(int(match["res"]), int(match["member"]))


def convert_clouds2mask(
    path: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None
) -> list[Path]:
    """Convert CloudS2Mask pickles (a ``.pkl`` file or a folder of them) for xs2mask.

    Parameters
    ----------
    path
        One of CloudS2Mask's ``*.pkl`` files, or a folder holding them (e.g. the ``models``
        folder of an installed ``clouds2mask`` package).
    out_dir
        Where to write; default: where xs2mask looks for downloaded weights
        (``$XS2MASK_MODEL_DIR``, else the user cache).

    Returns
    -------
    list of Path
        The ONNX files written, one per pickle.

    Examples
    --------
    >>> convert_clouds2mask("clouds2mask/models")  # doctest: +SKIP
    [PosixPath('/home/me/.cache/xs2mask/models/clouds2mask-10m.onnx'), ...]
    """
    source = Path(path)
    pickles = sorted(source.glob("*.pkl")) if source.is_dir() else [source]
    if not pickles or not all(p.is_file() for p in pickles):
        raise XS2MaskError(f"no CloudS2Mask .pkl file at {source}")
    names = [clouds2mask_name(p) for p in pickles]  # refuse unknown files before unpickling any
    if importlib.util.find_spec("fastai") is None:
        raise XS2MaskError(
            "converting CloudS2Mask's pickles needs fastai (the pickles hold fastai classes): "
            "pip install 'xs2mask[convert]'"
        )
    out = Path(out_dir) if out_dir is not None else hub.search_dirs()[0]
    out.mkdir(parents=True, exist_ok=True)
    return [_convert_one(p, name, out) for p, name in zip(pickles, names, strict=True)]


def _convert_one(pickle: Path, name: str, out: Path) -> Path:
    import torch

    # The one place xs2mask unpickles: on the user's explicit request, with torch's full loader.
    model = torch.load(pickle, map_location="cpu", weights_only=False)
    if not isinstance(model, torch.nn.Module):
        raise WeightsError(f"{pickle} holds a {type(model).__name__}, not a torch model")
    model = model.float().eval()
    return export_onnx(model, name, out, source=pickle)


def export_onnx(model, name: str, out: Path, *, source: Path) -> Path:
    """Write ``<name>.onnx`` (+ its sha256 record), ``<name>.safetensors`` and ``<name>.json``."""
    import onnxruntime
    import torch
    from safetensors.torch import save_file

    from .published import C2M_BANDS, C2M_MEAN, C2M_STD

    onnx_path, weights_path = out / f"{name}.onnx", out / f"{name}.safetensors"
    # A multiple of 32 traces DynamicUnet's size-matching branches the way every engine patch takes them.
    dummy = torch.zeros(1, len(C2M_BANDS), 256, 256)
    torch.onnx.export(
        model, dummy, str(onnx_path), input_names=["x"], output_names=["logits"], opset_version=17,
        dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}}, dynamo=False,
    )  # fmt: skip
    # clone: safetensors refuses tensors that share memory
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(weights_path))

    # The export must reproduce the network: compare on a batch of another size than traced.
    x = torch.randn(2, len(C2M_BANDS), 320, 192, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(x).numpy()
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x.numpy()})[0]
    diff = float(np.max(np.abs(got - expected)))
    if not diff <= TOLERANCE:
        onnx_path.unlink()
        raise WeightsError(f"ONNX export of {source.name} differs from the model by {diff:.2g} logits")

    digest = sha256_file(onnx_path)
    hub.record_path(onnx_path).write_text(f"{digest}  {onnx_path.name}\n")
    record = {
        "name": name,
        "source": source.name,
        "source_sha256": sha256_file(source),
        "bands": list(C2M_BANDS),
        "mean": list(C2M_MEAN),
        "std": list(C2M_STD),
        "classes": [0, 1, 2, 3],
        "sha256_of": {"onnx": digest, "safetensors": sha256_file(weights_path)},
        "max_abs_logit_difference_torch_onnx": diff,
    }
    (out / f"{name}.json").write_text(json.dumps(record, indent=1))
    return onnx_path
