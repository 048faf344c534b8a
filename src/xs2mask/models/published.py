"""The strongest published models, run by xs2mask's engine: OmniCloudMask v4 and CloudS2Mask.

OmniCloudMask (Wright et al. 2025, MIT): two segmentation-models-pytorch U-Nets (timm
``regnety_004`` and ``edgenext_small`` encoders) on B04 B03 B8A, each patch z-scored per band
over its valid pixels, logits averaged. Weights: safetensors on Hugging Face, pinned to one
revision and checked against their sha256; downloaded on first use.

CloudS2Mask (Wright et al. 2024, Apache-2.0): fastai DynamicUnet models (timm ``regnety_006``) on
all 13 L1C bands with fixed statistics, two per processing resolution (10 m, 20 m). Its weights
are whole pickled models on Google Drive: unpickling runs code, so xs2mask never does it while
masking. ``xs2mask models download clouds2mask-10m`` fetches the pickle and ``xs2mask models
convert clouds2mask PATH`` (extra ``xs2mask[convert]``) turns it, once and on request, into
ONNX (what runs) + safetensors + a JSON record (:mod:`xs2mask.models.convert`).

Examples
--------
>>> import xs2mask
>>> spec = xs2mask.models.get("omnicloudmask-v4")
>>> spec.bands, spec.normalisation, [m.name for m in spec.members]
(('B04', 'B03', 'B8A'), 'patch', ['omnicloudmask-v4-regnety_004', 'omnicloudmask-v4-edgenext_small'])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from ..classes import CLEAR, CLOUD_SHADOW, THICK_CLOUD, THIN_CLOUD
from .spec import ModelSpec, Weights

# Both peers use the CloudSEN12 codes, which are xs2mask's: 0 clear, 1 thick, 2 thin, 3 shadow
# (omnicloudmask/constants.py CLASS_NAMES; CloudS2Mask's README and QML styles).
CLOUDSEN12_CLASSES = (CLEAR, THICK_CLOUD, THIN_CLOUD, CLOUD_SHADOW)

# ------------------------------------------------------------------------------ OmniCloudMask v4

OCM_REPO = "NickWright/OmniCloudMask"
# The Hugging Face commit the v4 files are pinned to, and their sha256 (the LFS object ids):
# omnicloudmask 1.8.1 downloads the same files from the repository's main branch unpinned.
OCM_REVISION = "c9a4fb88188709127aa25cfe51ae7fd41b0132f8"
OCM_LICENCE = "MIT (OmniCloudMask weights, Nick Wright / DPIRD)"


@dataclass(frozen=True)
class _OCMMember:
    encoder: str
    filename: str
    sha256: str


OCM_MEMBERS = (
    _OCMMember(
        "regnety_004",
        "PM_model_OCM_7.97_R_G_NIR_3_smp_regnety_004.pycls_in1k_PT_state.safetensors",
        "7f6e4202e17ee73efa4aba7abb5c34f4f90a9f7eb42480820714994dff2db660",
    ),
    _OCMMember(
        "edgenext_small",
        "PM_model_OCM_7.97_R_G_NIR_3_smp_edgenext_small.usi_in1k_PT_state.safetensors",
        "d5fe67ad00f6fdb73eb8382ad925849e97fb82cedb46225344afff1a734a9c1d",
    ),
)


class _Tiling(TypedDict):
    patch_size: int
    overlap: int


# OmniCloudMask runs patches of 1000 px with 300 px overlap; the engine needs multiples of 32.
_OCM_TILING: _Tiling = {"patch_size": 1024, "overlap": 320}


def ocm_url(filename: str, revision: str = OCM_REVISION) -> str:
    """Download URL of an OmniCloudMask file at a pinned Hugging Face revision.

    Examples
    --------
    >>> ocm_url("a.safetensors", "abc")
    'https://huggingface.co/NickWright/OmniCloudMask/resolve/abc/a.safetensors'
    """
    return f"https://huggingface.co/{OCM_REPO}/resolve/{revision}/{filename}"


def _ocm_member(member: _OCMMember) -> ModelSpec:
    return ModelSpec(
        name=f"omnicloudmask-v4-{member.encoder}",
        bands=("B04", "B03", "B8A"),
        classes=CLOUDSEN12_CLASSES,
        backend="torch",
        weights=Weights(member.filename, member.sha256, url=ocm_url(member.filename)),
        normalisation="patch",
        architecture=(("arch", "unet"), ("encoder_name", f"tu-{member.encoder}")),
        resolution_m=10,
        licence=OCM_LICENCE,
        description=f"OmniCloudMask v4 member: smp U-Net, timm {member.encoder}; B04 B03 B8A, any level",
        **_OCM_TILING,
    )


OCM_MEMBER_SPECS = tuple(_ocm_member(m) for m in OCM_MEMBERS)

OMNICLOUDMASK_V4 = ModelSpec(
    name="omnicloudmask-v4",
    bands=("B04", "B03", "B8A"),
    classes=CLOUDSEN12_CLASSES,
    backend="torch",
    weights=None,
    normalisation="patch",
    members=OCM_MEMBER_SPECS,
    outputs="logits",
    resolution_m=10,
    licence=OCM_LICENCE,
    description="OmniCloudMask v4: 2 smp U-Nets (regnety_004, edgenext_small), logits averaged; "
    "B04 B03 B8A, any level, per-patch z-score",
    **_OCM_TILING,
)

# ------------------------------------------------------------------------------ CloudS2Mask

C2M_LICENCE = "Apache-2.0 (CloudS2Mask weights, Nick Wright / DPIRD)"
C2M_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
# clouds2mask 1.1.3 processing_settings.get_normalization_stats: the network sees
# ((DN / 32767) - mean) / std. With reflectance = DN / 10000 that is
# (reflectance - 3.2767 mean) / (3.2767 std): the same numbers, fed harmonised reflectance.
_C2M_MEAN_DN32767 = (
    0.072623697227855, 0.06608867585127501, 0.061940767467830685, 0.06330473795822207,
    0.06858655023065205, 0.08539433443008514, 0.09401670610922229, 0.09006412206990828,
    0.09915093732164396, 0.035429756513690985, 0.003632839439909688, 0.06855744750648961,
    0.0486043830034996,
)  # fmt: skip
_C2M_STD_DN32767 = (
    0.020152047138155018, 0.022698212883948143, 0.023073879486441455, 0.02668270641026416,
    0.0263763340626224, 0.027439342904551974, 0.02896087163616576, 0.028661147214616267,
    0.0301365958005653, 0.013482676031864258, 0.0019204000834290252, 0.023938917594669776,
    0.020069414811037536,
)  # fmt: skip
C2M_SCALE = 32767 / 10_000
C2M_MEAN = tuple(m * C2M_SCALE for m in _C2M_MEAN_DN32767)
C2M_STD = tuple(s * C2M_SCALE for s in _C2M_STD_DN32767)

# clouds2mask 1.1.3 model_download_links.csv: (resolution, member) -> (pickle, Google Drive id).
# Nobody publishes their sha256: the first download records it (see xs2mask.models.hub).
C2M_PICKLES = {
    (10, 1): ("v3.44_regnety_006_4C_Dice_1_10m.pkl", "1CSsyZz3AMqdNnDwSZ_HCJVp1lBSk9gzN"),
    (10, 2): ("v3.45_regnety_006_4C_Dice_2_10m.pkl", "1SN10QAWjMvosrtz4L9room9BuXb8gJt4"),
    (20, 1): ("v3.44_regnety_006_4C_Dice_1_20m.pkl", "1kOh0DT3JdtyFHxB6EW68EWiEQHm458_W"),
    (20, 2): ("v3.45_regnety_006_4C_Dice_2_20m.pkl", "1kTvJ_Z0dmSSY-RiSkMRA1EV9Tr4hMY7e"),
}


def gdrive_url(file_id: str) -> str:
    """Direct download URL of a public Google Drive file (skipping the virus-scan page).

    Examples
    --------
    >>> gdrive_url("abc")
    'https://drive.usercontent.google.com/download?id=abc&export=download&confirm=t'
    """
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


def c2m_name(resolution: int, member: int) -> str:
    """Registry name of one CloudS2Mask network: ``clouds2mask-10m``, ``clouds2mask-20m-2``."""
    return f"clouds2mask-{resolution}m" + ("" if member == 1 else f"-{member}")


def conversion_sources(spec: ModelSpec) -> dict[str, Weights]:
    """The CloudS2Mask pickles a model is converted from, by network name; empty for other models.

    They are downloaded by ``xs2mask models download``, never loaded by xs2mask.

    Examples
    --------
    >>> sorted(conversion_sources(CLOUDS2MASK_SPECS[2]))
    ['clouds2mask-10m', 'clouds2mask-10m-2']
    """
    pickles = {
        c2m_name(resolution, member): Weights(filename, None, url=gdrive_url(file_id))
        for (resolution, member), (filename, file_id) in C2M_PICKLES.items()
    }
    names = [m.name for m in spec.members] or [spec.name]
    return {name: pickles[name] for name in names if name in pickles}


def _c2m_member(resolution: int, member: int) -> ModelSpec:
    name = c2m_name(resolution, member)
    return ModelSpec(
        name=name,
        bands=C2M_BANDS,
        classes=CLOUDSEN12_CLASSES,
        backend="onnx",
        # Written by the converter, which records its sha256 beside it.
        weights=Weights(
            f"{name}.onnx",
            None,
            hub=True,
            install_hint=f"made from CloudS2Mask's pickle: `xs2mask models download {name}`, then "
            "`xs2mask models convert clouds2mask DIR` (needs xs2mask[convert])",
        ),
        mean=C2M_MEAN,
        std=C2M_STD,
        resolution_m=resolution,
        processing_resolution=resolution,
        # CloudS2Mask runs patches of 500 px with 128 px overlap; the engine needs multiples of 32.
        patch_size=512,
        overlap=128,
        levels=("L1C",),
        licence=C2M_LICENCE,
        description=f"CloudS2Mask network {member} at {resolution} m: fastai DynamicUnet (timm regnety_006), "
        "13 L1C bands",
    )


def _c2m_ensemble(resolution: int) -> ModelSpec:
    members = (_c2m_member(resolution, 1), _c2m_member(resolution, 2))
    first = members[0]
    return ModelSpec(
        name=f"clouds2mask-{resolution}m-ensemble",
        bands=first.bands,
        classes=first.classes,
        backend="onnx",
        weights=None,
        mean=first.mean,
        std=first.std,
        members=members,
        # CloudS2Mask's model_ensembling averages the networks' softmax
        outputs="probabilities",
        resolution_m=resolution,
        processing_resolution=resolution,
        patch_size=first.patch_size,
        overlap=first.overlap,
        levels=first.levels,
        licence=C2M_LICENCE,
        description=f"CloudS2Mask at {resolution} m, both networks, probabilities averaged; 13 L1C bands",
    )


CLOUDS2MASK_SPECS = tuple(
    spec
    for resolution in (10, 20)
    for spec in (_c2m_member(resolution, 1), _c2m_member(resolution, 2), _c2m_ensemble(resolution))
)

PUBLISHED = (OMNICLOUDMASK_V4, *OCM_MEMBER_SPECS, *CLOUDS2MASK_SPECS)
