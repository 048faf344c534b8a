"""Turn CloudS2Mask's pickled fastai models into files that cannot run code: ONNX and safetensors.

CloudS2Mask publishes whole pickled ``DynamicUnet`` modules. Unpickling runs whatever the file
says, so xs2mask does it only here, once, when a user asks (``xs2mask models convert clouds2mask
PATH``), with fastai installed (``pip install 'xs2mask[convert]'``). Each pickle becomes:

* ``<name>.onnx``: the network with dynamic batch, height and width; this is what masking runs
  (onnxruntime, no fastai needed), its sha256 recorded in ``<name>.onnx.sha256``;
* ``<name>.safetensors``: the same weights as a plain state dict (no code);
* ``<name>.json``: the record: source pickle and its sha256, the sha256 of both outputs, the
  bands and normalisation, and the largest difference between torch and ONNX seen at conversion.

A pickle downloaded by xs2mask has its sha256 recorded beside it (``<pickle>.sha256``, see
:mod:`xs2mask.models.hub`): the bytes unpickled are hashed first and must match that record, so a
file changed since its download is refused before any of its code runs. A pickle without a record
(e.g. from an installed ``clouds2mask`` package) is converted as the user's explicit choice.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
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

    A folder without CloudS2Mask's pickles is refused before anything is read:

    >>> Path("empty").mkdir()
    >>> convert_clouds2mask("empty")
    Traceback (most recent call last):
    ...
    xs2mask.exceptions.XS2MaskError: no CloudS2Mask .pkl file at empty
    """
    source = Path(path)
    pickles = sorted(source.glob("*.pkl")) if source.is_dir() else [source]
    if not pickles or not all(p.is_file() for p in pickles):
        raise XS2MaskError(f"no CloudS2Mask .pkl file at {source}")
    names = [clouds2mask_name(p) for p in pickles]  # refuse unknown files before unpickling any
    for pickle in pickles:
        _checked_bytes(pickle)  # refuse changed files before needing fastai, let alone unpickling
    if importlib.util.find_spec("fastai") is None:
        raise XS2MaskError(
            "converting CloudS2Mask's pickles needs fastai (the pickles hold fastai classes): "
            "pip install 'xs2mask[convert]'"
        )
    out = Path(out_dir) if out_dir is not None else hub.search_dirs()[0]
    out.mkdir(parents=True, exist_ok=True)
    return [_convert_one(p, name, out) for p, name in zip(pickles, names, strict=True)]


def _checked_bytes(pickle: Path) -> bytes:
    """The bytes of ``pickle``, refused unless they hash to the sha256 recorded at its download."""
    data = pickle.read_bytes()
    expected = hub.expected_sha256(pickle, None)
    digest = hashlib.sha256(data).hexdigest()
    if expected is not None and digest != expected:
        raise WeightsError(
            f"{pickle} is not the file xs2mask downloaded: sha256 {digest}, recorded at download "
            f"{expected} ({hub.record_path(pickle).name}). Unpickling would run whatever it holds, so it "
            "is not converted: delete it and its record, then run "
            f"`xs2mask models download {clouds2mask_name(pickle)}` again."
        )
    return data


def _convert_one(pickle: Path, name: str, out: Path) -> Path:
    import torch

    # The one place xs2mask unpickles: on the user's explicit request, with torch's full loader, from
    # the very bytes whose sha256 was checked (the file could change between a check and a load).
    data = _checked_bytes(pickle)
    model = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    if not isinstance(model, torch.nn.Module):
        raise WeightsError(f"{pickle} holds a {type(model).__name__}, not a torch model")
    model = model.float().eval()
    return export_onnx(model, name, out, source=pickle, source_sha256=hashlib.sha256(data).hexdigest())


def export_onnx(model, name: str, out: Path, *, source: Path, source_sha256: str | None = None) -> Path:
    """Write ``<name>.onnx`` (+ its sha256 record), ``<name>.safetensors`` and ``<name>.json``.

    ``source_sha256``: the digest of the bytes the model was loaded from (default: hash ``source`` now).
    """
    import onnxruntime
    import torch
    from safetensors.torch import save_file

    from .published import C2M_BANDS, C2M_MEAN, C2M_STD

    onnx_path, weights_path = out / f"{name}.onnx", out / f"{name}.safetensors"
    # A multiple of 32 traces DynamicUnet's size-matching branches the way every engine patch takes them.
    dummy = torch.zeros(1, len(C2M_BANDS), 256, 256)
    torch.onnx.export(
        model, (dummy,), str(onnx_path), input_names=["x"], output_names=["logits"], opset_version=17,
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
        "source_sha256": source_sha256 or sha256_file(source),
        "bands": list(C2M_BANDS),
        "mean": list(C2M_MEAN),
        "std": list(C2M_STD),
        "classes": [0, 1, 2, 3],
        "sha256_of": {"onnx": digest, "safetensors": sha256_file(weights_path)},
        "max_abs_logit_difference_torch_onnx": diff,
    }
    (out / f"{name}.json").write_text(json.dumps(record, indent=1))
    return onnx_path
