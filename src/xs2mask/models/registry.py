"""The models xs2mask knows about, and how ``"default"`` is resolved."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

from ..classes import CLEAR, CLOUD_SHADOW, THICK_CLOUD
from ..exceptions import ModelNotFoundError, WeightsError
from . import hub
from .backends import get_backend
from .published import PUBLISHED
from .spec import ModelSpec, Weights

_UKIS_HINT = "pip install 'xs2mask[ukis]'  (ships ukis-csmask's ONNX weights, Apache-2.0)"
_UKIS_STATS = {
    # mean / std of reflectance per band, from the model_*.json files in ukis-csmask 1.0.0
    "l1c": (
        (0.27552253007888794, 0.2556644380092621, 0.269801527261734, 0.33431220054626465,
         0.20851291716098785, 0.15826508402824402),
        (0.24488002061843872, 0.22757470607757568, 0.2537152171134949, 0.23213787376880646,
         0.148738831281662, 0.12604215741157532),
    ),
    "l2a": (
        (0.26681777834892273, 0.27799084782600403, 0.28811994194984436, 0.36494743824005127,
         0.2225709855556488, 0.17859040200710297),
        (0.33637598156929016, 0.3125455975532532, 0.311148464679718, 0.27260705828666687,
         0.16653667390346527, 0.14328984916210175),
    ),
}  # fmt: skip
_UKIS_SHA256 = {
    "4b_l1c": "81611f290adc315b86bb7e7c69b0f2496b3abe0390c2a5c8e9e9da9622e8a0c8",
    "4b_l2a": "3884d75ca497ec59d8335973477bd31eb038857007bbb36fb2aba1ad375ee043",
    "6b_l1c": "aa79e9a0f02ff8e0243d93771d1daf6a8d1166b7ac06c3771560b83367c6c573",
    "6b_l2a": "d11c530978637ca420eedc40791c62bf78997dd39e1201777e2527e4bd94904e",
}


def _ukis(nbands: int, level: str) -> ModelSpec:
    bands = ("B02", "B03", "B04", "B08", "B11", "B12")[:nbands]
    mean, std = (s[:nbands] for s in _UKIS_STATS[level])
    key = f"{nbands}b_{level}"
    return ModelSpec(
        name=f"ukis-csmask-{nbands}b-{level}",
        bands=bands,
        classes=(CLEAR, THICK_CLOUD, CLOUD_SHADOW),
        backend="onnx",
        weights=Weights(f"model_{key}.onnx", _UKIS_SHA256[key], "ukis_csmask", _UKIS_HINT),
        mean=mean,
        std=std,
        resolution_m=30,
        patch_size=256,
        fixed_patch_size=True,
        overlap=32,
        levels=(level.upper(),),
        licence="Apache-2.0 (DLR ukis-csmask 1.0.0)",
        description=f"DLR ukis-csmask U-Net (EfficientNet-B4), {nbands} bands, {level.upper()}; "
        "3 classes: clear, cloud (reported as thick cloud), shadow",
    )


S2CLOUDLESS = ModelSpec(
    name="s2cloudless",
    bands=("B01", "B02", "B04", "B05", "B08", "B8A", "B09", "B10", "B11", "B12"),
    classes=(CLEAR, THICK_CLOUD),
    backend="lightgbm",
    weights=Weights(
        "models/pixel_s2_cloud_detector_lightGBM_v0.1.txt",
        "0f92b6822cc0ad42982f55bab9b1688329e119451ad9a9e0a56384b9f37bc61d",
        "s2cloudless",
        "pip install 'xs2mask[s2cloudless]'  (Sinergise s2cloudless, CC BY-SA 4.0)",
    ),
    mean=(0.0,) * 10,
    std=(1.0,) * 10,
    outputs="probabilities",
    resolution_m=10,
    patch_size=1024,
    overlap=0,
    levels=("L1C",),
    licence="CC BY-SA 4.0 (Sinergise s2cloudless)",
    description="Sinergise s2cloudless per-pixel LightGBM, 10 L1C bands; cloud probability only",
)

_REGISTRY: dict[str, ModelSpec] = {}
_lock = threading.Lock()
# Most preferred first; "default" takes the first installed one the input's bands allow.
_DEFAULT_ORDER: list[str] = []


def register(spec: ModelSpec, *, default_rank: int | None = None, overwrite: bool = False) -> None:
    """Register a model so that ``predict(model=spec.name)`` finds it.

    Parameters
    ----------
    spec
        The model description.
    default_rank
        Position in the list ``model="default"`` chooses from (0 = most preferred);
        None keeps it out of that list.
    overwrite
        Replace an existing model of the same name.

    Examples
    --------
    >>> from xs2mask.models import ModelSpec, Weights, register
    >>> spec = ModelSpec(name="my-unet", bands=("B02", "B03", "B04", "B08"),
    ...                  classes=(0, 1, 2, 3), backend="torch",
    ...                  weights=Weights("/path/my-unet.safetensors", "<sha256>"),
    ...                  mean=(0.1,) * 4, std=(0.1,) * 4,
    ...                  architecture=(("arch", "unet"), ("encoder_name", "resnet18")))
    >>> register(spec)  # doctest: +SKIP
    """
    with _lock:
        if spec.name in _REGISTRY and not overwrite:
            raise ValueError(f"a model named {spec.name!r} is already registered (pass overwrite=True)")
        _REGISTRY[spec.name] = spec
        if spec.name in _DEFAULT_ORDER:
            _DEFAULT_ORDER.remove(spec.name)
        if default_rank is not None:
            _DEFAULT_ORDER.insert(default_rank, spec.name)


def shipped(folder=None) -> list[ModelSpec]:
    """xs2mask's own models, whose weights ship inside the package (``models/weights/<name>.json``).

    Each JSON file is written by :func:`xs2mask.training.train.export` and names the
    bands, normalisation, architecture and the sha256 of the ONNX and safetensors files.
    The ONNX file is the CPU path (``<name>``); the safetensors one runs through torch
    (``<name>-torch``), for GPUs. JSON files without ``sha256`` (a run's ``config.json``)
    are not model descriptions and are skipped.

    Raises
    ------
    WeightsError
        If a model description is not valid JSON or lacks a field, naming the file and the fix.
    """
    from importlib import resources

    specs = []
    package = folder is None
    folder = resources.files("xs2mask.models").joinpath("weights") if package else Path(folder)
    for entry in sorted(folder.iterdir(), key=lambda e: e.name) if folder.is_dir() else ():
        if not entry.name.endswith(".json"):
            continue
        meta, problem = _description(entry)
        if meta is None and problem is None:
            continue
        if meta is not None:
            try:
                specs += _shipped_specs(meta, folder, package)
            except ValueError as err:  # ModelSpec refuses inconsistent fields
                problem = str(err)
        if problem is not None:
            raise WeightsError(
                f"model description {entry} is malformed: {problem}. It is written by "
                "xs2mask.training.train.export: export the model again, or remove the file from that folder."
            )
    return specs


_LIST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "bands": str,
    "classes": int,
    "mean": (int, float),
    "std": (int, float),
}


def _description(entry) -> tuple[dict | None, str | None]:
    """The model description in a JSON file and None, or (None, what is wrong); (None, None): not one."""
    import json

    try:
        meta = json.loads(entry.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return None, f"not readable JSON ({type(err).__name__}: {err})"
    if not isinstance(meta, dict):
        return None, f"a JSON {type(meta).__name__}, not an object"
    if "sha256" not in meta:  # not a model description (e.g. a run's config.json)
        return None, None
    if not isinstance(meta.get("name"), str) or not meta["name"]:
        return None, "no name"
    for key, kind in _LIST_FIELDS.items():
        value = meta.get(key)
        if not isinstance(value, list) or not all(
            isinstance(v, kind) and not isinstance(v, bool) for v in value
        ):
            return None, f"{key} is not a list of {getattr(kind, '__name__', 'number')}s"
    optional = {"patch_size": int, "overlap": int, "levels": list, "description": str}
    wrong = [key for key, kind in optional.items() if key in meta and not isinstance(meta[key], kind)]
    if wrong:
        return None, f"invalid {', '.join(wrong)} (patch_size, overlap: integers; levels: a list)"
    checks = {
        "resolution_m": isinstance(meta.get("resolution_m"), (int, float)),
        "licence": isinstance(meta.get("licence"), str),
        "architecture": isinstance(meta.get("architecture"), dict),
        "sha256": isinstance(meta["sha256"], dict)
        and all(hub.is_sha256(meta["sha256"].get(k)) for k in ("onnx", "safetensors")),
    }
    missing = [key for key, ok in checks.items() if not ok]
    if missing:
        return (
            None,
            f"missing or invalid {', '.join(missing)} (sha256: onnx and safetensors, 64 hex digits each)",
        )
    return meta, None


def _shipped_specs(meta: dict, folder, package: bool) -> list[ModelSpec]:
    common = {
        "bands": tuple(meta["bands"]),
        "classes": tuple(meta["classes"]),
        "mean": tuple(meta["mean"]),
        "std": tuple(meta["std"]),
        "resolution_m": meta["resolution_m"],
        "patch_size": meta.get("patch_size", 512),
        "overlap": meta.get("overlap", 64),
        "levels": tuple(meta.get("levels", ("L1C", "L2A"))),
        "licence": meta["licence"],
        "description": meta.get("description", ""),
    }
    name = meta["name"]
    onnx = ModelSpec(
        name=name,
        backend="onnx",
        weights=_weights(folder, package, f"{name}.onnx", meta["sha256"]["onnx"]),
        **common,
    )
    torch = ModelSpec(
        name=f"{name}-torch",
        backend="torch",
        weights=_weights(folder, package, f"{name}.safetensors", meta["sha256"]["safetensors"]),
        architecture=tuple(
            (k, tuple(v) if isinstance(v, list) else v) for k, v in meta["architecture"].items()
        ),
        **common,
    )
    return [onnx, torch]


def _weights(folder, package: bool, filename: str, sha256: str) -> Weights:
    if package:
        return Weights(f"weights/{filename}", sha256, "xs2mask.models")
    return Weights(str(Path(folder) / filename), sha256)


_OWN = shipped()
# The own models in default order: xs2mask-4b is the one measured on human labels; the all-band models
# (validated on simulated clouds only) come after it, so "default" never trades it for them silently.
_OWN_ORDER = ("xs2mask-4b", "xs2mask-12b", "xs2mask-13b")
# Ranked by cloud BOA on the human-labelled validation chips (docs/models.md): ukis-csmask, when its
# extra is installed, still beats xs2mask-4b there; xs2mask-4b (always installed) comes next. Of each
# own model, "default" ranks the file that runs with xs2mask's own dependencies (the ONNX one); its
# twin that needs an extra (torch, for GPUs) is only run when named.
_OWN_RANKED = sorted(
    (s for s in _OWN if not get_backend(s.backend).extra),
    key=lambda s: _OWN_ORDER.index(s.name) if s.name in _OWN_ORDER else len(_OWN_ORDER),
)
for _rank, _spec in enumerate(
    [_ukis(6, "l2a"), _ukis(6, "l1c"), _ukis(4, "l2a"), _ukis(4, "l1c"), *_OWN_RANKED, S2CLOUDLESS]
):
    register(_spec, default_rank=_rank)
for _spec in _OWN:
    if _spec.name not in _REGISTRY:
        register(_spec)
# Downloaded (or converted) on request, so never picked by "default": naming one is a choice.
for _spec in PUBLISHED:
    register(_spec)


def registered() -> list[str]:
    """Names of every registered model, installed or not."""
    return sorted(_REGISTRY)


def available() -> list[str]:
    """Names of the models whose weights are installed and can run here.

    Examples
    --------
    >>> import xs2mask
    >>> "ukis-csmask-6b-l2a" in xs2mask.models.available()  # with xs2mask[ukis]
    True
    """
    return sorted(name for name, spec in _REGISTRY.items() if _runnable(spec))


def _runnable(spec: ModelSpec) -> bool:
    """Weights on disk and the modules of its backends installed."""
    return spec.is_available() and not missing_modules(spec)


def missing_modules(spec: ModelSpec) -> list[str]:
    """The modules the model's backends (an ensemble's members' too) need and this machine lacks.

    Nothing is imported: a torch model whose weights are here still cannot run without torch.

    Examples
    --------
    >>> missing_modules(get("xs2mask-4b"))  # onnxruntime comes with xs2mask
    []
    """
    parts = spec.members or (spec,)
    found = (m for part in parts for m in get_backend(part.backend).missing_modules())
    return list(dict.fromkeys(found))


def get(name: str | ModelSpec) -> ModelSpec:
    """Return the spec of a registered model (installed or not).

    Raises
    ------
    ModelNotFoundError
        If no model of that name is registered; the message lists the available ones.

    Examples
    --------
    >>> import xs2mask
    >>> xs2mask.models.get("ukis-csmask-4b-l2a").bands
    ('B02', 'B03', 'B04', 'B08')
    """
    if isinstance(name, ModelSpec):
        return name
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelNotFoundError(
            f"unknown model {name!r}; available here: {', '.join(available()) or 'none'} "
            f"(registered: {', '.join(registered())}). Models list: `xs2mask models`."
        ) from None


def resolve_default(bands: Iterable[str]) -> ModelSpec:
    """The most preferred installed model that the given bands can feed.

    Data that carry B10 (cirrus) are L1C, so L1C variants are preferred for them;
    otherwise L2A variants are.
    """
    bands = set(bands)
    level = "L1C" if "B10" in bands else "L2A"
    candidates = [_REGISTRY[n] for n in _DEFAULT_ORDER if _runnable(_REGISTRY[n])]
    fitting = [s for s in candidates if set(s.bands) <= bands]
    # Stable sort: keep the ranking, but put models trained on this level first.
    fitting.sort(key=lambda s: level not in s.levels)
    if not fitting:
        raise ModelNotFoundError(
            "no installed model can run on bands "
            f"{sorted(bands) or 'none'}: installed models and the bands they need: "
            + "; ".join(f"{s.name} {'/'.join(s.bands)}" for s in candidates)
            + ". Install one with `pip install 'xs2mask[ukis]'`."
        )
    return fitting[0]
