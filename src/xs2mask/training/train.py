"""Training xs2mask's own U-Nets: config, stages, validation, hard examples, export.

``xs2mask train --config FILE`` runs :func:`train` on a TOML config
(:class:`TrainConfig`, example in ``configs/``). A run is a sequence of stages:

* **progressive resizing**: stages with growing ``patch`` (small patches first: many
  cheap steps that teach texture and colour, then larger ones that teach context such
  as a shadow beside its cloud);
* **hard-example fine-tuning**: a stage with ``hard_examples > 0`` first scores a pool
  of candidate samples with the current model and trains on the worst of them, mixed
  with fresh samples;
* **transfer learning**: ``init_from`` starts from another run's weights (e.g. the
  simulated-data model, or an all-band model whose first convolution is mapped onto
  this model's bands by band name, see :func:`transfer`).

With ``ema_decay > 0`` an exponential moving average of the weights (and batch-norm
statistics) is kept beside the trained ones (``torch.optim.swa_utils``); it is what is
validated, checkpointed and exported, which smooths out the last steps' noise.

Everything is seeded; CPU runs use float32, a GPU uses bfloat16 autocast. Each stage
writes a safetensors checkpoint and appends one JSON line per epoch to
``metrics.jsonl``; the end of the run exports safetensors, ONNX, the sha256 of both
and a model card.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..exceptions import InputError

CLASSES = (0, 1, 2, 3)


@dataclass(frozen=True)
class Stage:
    """One training stage."""

    name: str
    patch: int = 128
    epochs: int = 1
    samples_per_epoch: int = 512
    batch_size: int = 16
    lr: float = 2e-3
    simulated_fraction: float = 0.6
    hard_examples: int = 0
    hard_pool: int = 0
    init_from: str | None = None


@dataclass(frozen=True)
class TrainConfig:
    """A training run, as read from TOML."""

    name: str
    bands: tuple[str, ...]
    stages: tuple[Stage, ...]
    encoder: str = "tu-mobilenetv3_small_100"
    decoder_channels: tuple[int, ...] = (64, 32, 16, 16, 8)
    resolution_m: int = 10
    seed: int = 0
    data: str = "../shared/data"
    sources: tuple[str, ...] | None = None  # default: every source of training.sources.SOURCES
    out: str = "runs"
    cache: str = "~/.cache/xs2mask/pseudo"
    class_weights: tuple[float, ...] = (1.0, 1.0, 1.5, 2.0, 1.0)  # codes 0-4 of simulated samples
    teacher_class_weights: tuple[float, ...] | None = None  # the same for teacher targets; None: as above
    min_confidence: float = 0.7
    validation_samples: int = 48
    scene_sampling: str = "area"
    teacher_targets: str = "confident"  # or "sampled": distil the teacher's soft labels
    teachers: tuple[str, ...] = ()  # ukis-csmask variants averaged; default: the scene level's
    ema_decay: float = 0.0  # > 0: validate and export a moving average of the weights
    # Metres taken off the inside of human cloud outlines of training scenes (generous outlines:
    # the teacher's targets stay in that ring); 0: the outlines as drawn.
    human_label_erosion_m: float = 0.0
    # [clouds] table: overrides of simulate.CloudConfig, as (field, value) pairs (kept hashable)
    clouds: tuple[tuple[str, Any], ...] = ()
    # [augment] table: overrides of data.Augment, as (field, value) pairs
    augment: tuple[tuple[str, Any], ...] = ()
    # Inference tiling written into the model's spec: a stride of 512 (544 - 32) tiles power-of-two
    # chunks without a mostly-wasted extra row of patches, and patch borders are blended over 32 px.
    inference_patch_size: int = 544
    inference_overlap: int = 32
    threads: int = 0
    device: str = "auto"
    licence: str = "Apache-2.0"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        # Checked on construction, so that a config built in Python fails as early as one read from TOML.
        from .data import check_options
        from .pseudo import check_teachers

        if not self.stages:
            raise InputError("no [[stages]]; a run needs at least one stage")
        # Building the simulator's and the augmentation's settings checks the [clouds] and [augment] tables.
        _ = self.cloud_config, self.augmentation
        check_teachers(self.teachers)
        if not 0.0 <= self.ema_decay < 1.0:
            raise InputError(f"ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        if not self.human_label_erosion_m >= 0.0:
            raise InputError(f"human_label_erosion_m must be >= 0 metres, got {self.human_label_erosion_m!r}")
        try:
            check_options(
                self.scene_sampling, self.teacher_targets, self.class_weights, self.teacher_class_weights
            )
        except ValueError as err:
            raise InputError(str(err)) from None

    @property
    def cloud_config(self):  # -> simulate.CloudConfig (imported lazily, as everything but numpy here)
        """The simulator's :class:`~xs2mask.training.simulate.CloudConfig` with the ``[clouds]`` overrides.

        Examples
        --------
        >>> TrainConfig("x", ("B02",), (Stage("a"),), clouds=(("p_thin", 0.5),)).cloud_config.p_thin
        0.5
        """
        from .simulate import CloudConfig

        return _build(CloudConfig, dict(self.clouds), "[clouds]")

    @property
    def augmentation(self):  # -> data.Augment
        """The :class:`~xs2mask.training.data.Augment` ranges with the ``[augment]`` overrides.

        Examples
        --------
        >>> config = TrainConfig("x", ("B02",), (Stage("a"),), augment=(("illumination", 0.2),))
        >>> config.augmentation.illumination
        0.2
        """
        from .data import Augment

        return _build(Augment, dict(self.augment), "[augment]")

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        """Read a config file; unknown keys are an error naming them.

        Examples
        --------
        >>> cfg = TrainConfig.from_toml("configs/xs2mask-4b.toml")  # doctest: +SKIP
        >>> cfg.stages[0].patch  # doctest: +SKIP
        128

        A file of one's own (``configs/`` is in the repository, not in the package):

        >>> _ = Path("tiny.toml").write_text(
        ...     'name = "tiny-4b"\\nbands = ["B02", "B03", "B04", "B08"]\\n'
        ...     '[[stages]]\\nname = "p64"\\npatch = 64\\n'
        ... )
        >>> cfg = TrainConfig.from_toml("tiny.toml")
        >>> cfg.bands, cfg.stages[0].patch
        (('B02', 'B03', 'B04', 'B08'), 64)
        >>> _ = Path("typo.toml").write_text('name = "x"\\nbands = ["B02"]\\nepoch = 3\\n')
        >>> TrainConfig.from_toml("typo.toml")
        Traceback (most recent call last):
        ...
        xs2mask.exceptions.InputError: typo.toml: unknown keys ['epoch']; allowed: [...]
        """
        if sys.version_info >= (3, 11):
            import tomllib
        else:
            import tomli as tomllib

        raw = tomllib.loads(Path(path).read_text())
        stages = tuple(_build(Stage, s, f"{path} [[stages]]") for s in raw.pop("stages", []))
        raw["bands"] = tuple(raw.get("bands", ()))
        for table in ("clouds", "augment"):
            if table in raw:
                items = raw[table].items()
                raw[table] = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in items)
        for key in ("decoder_channels", "class_weights", "teacher_class_weights", "sources", "teachers"):
            if key in raw:
                raw[key] = tuple(raw[key])
        return _build(cls, {**raw, "stages": stages}, str(path))


def _build(kind, values: dict, where: str):
    names = {f for f in kind.__dataclass_fields__}
    unknown = set(values) - names
    if unknown:
        raise InputError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(names)}")
    try:
        return kind(**values)
    except (TypeError, ValueError) as err:  # the dataclass's own checks of its values
        raise InputError(f"{where}: {err}") from err


# --------------------------------------------------------------------------- model


def build_model(config: TrainConfig):
    """The U-Net of ``config`` (segmentation-models-pytorch, random init: no download)."""
    import segmentation_models_pytorch as smp

    return smp.create_model(
        **dict(architecture(config)),
        encoder_weights=None,
        in_channels=len(config.bands),
        classes=len(CLASSES),
    )


def architecture(config: TrainConfig) -> tuple[tuple[str, object], ...]:
    """smp ``create_model`` keyword arguments, hashable, as stored in the :class:`ModelSpec`.

    Bands and classes are not among them: the spec has them, and the loader passes them.
    """
    return (
        ("arch", "Unet"),
        ("encoder_name", config.encoder),
        ("decoder_channels", tuple(config.decoder_channels)),
    )


def transfer(model, state: dict, src_bands: tuple[str, ...], dst_bands: tuple[str, ...]) -> list[str]:
    """Load ``state`` into ``model``; input convolutions are mapped band by band.

    Tensors whose shape matches are copied; a first-layer weight whose input channels
    are bands is rebuilt from the source's channels of the same bands (bands the source
    lacks start at zero). Returns the names of tensors left at their initial values.
    """
    import torch

    own = model.state_dict()
    skipped = []
    for name, value in own.items():
        src = state.get(name)
        if src is None:
            skipped.append(name)
        elif src.shape == value.shape:
            own[name] = src
        elif src.ndim == 4 and src.shape[1] == len(src_bands) and value.shape[1] == len(dst_bands):
            mapped = torch.zeros_like(value)
            for j, band in enumerate(dst_bands):
                if band in src_bands:
                    mapped[:, j] = src[:, src_bands.index(band)]
            own[name] = mapped
        else:
            skipped.append(name)
    model.load_state_dict(own)
    return skipped


# --------------------------------------------------------------------------- training


def train(config: TrainConfig, *, log=print) -> Path:
    """Run every stage of ``config``; return the run folder with the exported model.

    Examples
    --------
    >>> run = train(TrainConfig.from_toml("configs/xs2mask-4b.toml"))  # doctest: +SKIP

    The run reads the real scenes of ``config.data``; the config is checked before, when it is made:

    >>> TrainConfig("tiny-4b", ("B02", "B03", "B04", "B08"), (Stage("p64", patch=64),), ema_decay=1.0)
    Traceback (most recent call last):
    ...
    xs2mask.exceptions.InputError: ema_decay must lie in [0, 1), got 1.0
    """
    from ..models.backends import require_backend

    require_backend("torch", "training")
    import torch

    from . import pseudo, sources
    from .data import Pools, SampleMaker, band_statistics, make_pools

    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = _device(config.device)
    out = Path(config.out).expanduser() / config.name
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(config), indent=1, default=str))

    data = Path(config.data).expanduser()
    scenes = sources.scenes(data, bands=config.bands, only=config.sources)
    train_scenes = [s for s in scenes if s.split == "train"]
    validation = [s for s in scenes if s.split == "validation"]
    cache = Path(config.cache).expanduser()
    labels = [
        pseudo.pseudo_label(s, min_confidence=config.min_confidence, cache=cache, teachers=config.teachers)
        for s in train_scenes
    ]
    # Training scenes with human labels: the person says where the cloud is, the teacher the shadow.
    labels = [
        pl
        if s.labels is None
        else pseudo.with_human_labels(pl, s.labels, round(config.human_label_erosion_m / config.resolution_m))
        for s, pl in zip(train_scenes, labels, strict=True)
    ]
    pools: Pools = make_pools(train_scenes, labels)
    mean, std = band_statistics(train_scenes, config.bands)
    log(
        f"data: {len(pools.clear)} clear scenes (+{len(pools.clear_validation)} held out), "
        f"{len(pools.cloudy)} pseudo-labelled cloudy scenes, {len(validation)} validation chips"
    )

    model = build_model(config).to(device)
    average = _averaged(model, config)
    metrics_path = out / "metrics.jsonl"
    for stage in config.stages:
        if stage.init_from:
            _init_from(model, stage.init_from, config, log)
            average = _averaged(model, config)  # the average restarts from the loaded weights
        shipped = average.module if average is not None else model
        maker = SampleMaker(
            pools, config.bands, mean, std, patch=stage.patch,
            simulated_fraction=stage.simulated_fraction, seed=config.seed,
            scene_sampling=config.scene_sampling, teacher_targets=config.teacher_targets,
            class_weights=config.class_weights, teacher_class_weights=config.teacher_class_weights,
            cloud_config=config.cloud_config, augment=config.augmentation,
        )  # fmt: skip
        hard = _mine(model, maker, stage, device, config) if stage.hard_examples else []
        optimiser = torch.optim.AdamW(model.parameters(), lr=stage.lr, weight_decay=1e-4)
        steps = stage.epochs * -(-stage.samples_per_epoch // stage.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=stage.lr, total_steps=steps)
        for epoch in range(stage.epochs):
            start = time.perf_counter()
            loss = _epoch(model, maker, stage, epoch, hard, optimiser, schedule, device, config, average)
            scores = validate(shipped, maker, validation, config, device)
            record = {
                "stage": stage.name,
                "epoch": epoch,
                "loss": loss,
                "seconds": time.perf_counter() - start,
            }
            record.update(scores)
            with metrics_path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        _save(shipped, out / f"{stage.name}.safetensors")
    export(shipped, config, mean, std, out)
    return out


def _averaged(model, config: TrainConfig):
    """An exponential moving average of ``model`` (weights and buffers), or None when off."""
    if not config.ema_decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)


def _device(name: str) -> str:
    import torch

    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def _init_from(model, path: str, config: TrainConfig, log) -> None:
    from safetensors.torch import load_file

    source = Path(path).expanduser()
    state = load_file(str(source))
    meta_path = source.with_suffix(".json")
    src_bands = tuple(json.loads(meta_path.read_text())["bands"]) if meta_path.exists() else config.bands
    skipped = transfer(model, state, src_bands, config.bands)
    log(f"init from {source} ({len(state)} tensors, {len(skipped)} kept at init)")


def _batches(maker, keys, batch_size):
    for i in range(0, len(keys), batch_size):
        items = [maker(*key) for key in keys[i : i + batch_size]]
        yield tuple(np.stack(parts) for parts in zip(*items, strict=True))


def _epoch(model, maker, stage, epoch, hard, optimiser, schedule, device, config, average=None) -> float:
    import torch

    from .data import partial_ce

    model.train()
    rng = np.random.default_rng((config.seed, 7, epoch))
    fresh = [(epoch, int(i)) for i in rng.permutation(stage.samples_per_epoch)]
    keys = fresh
    if hard:
        # Half of each epoch revisits the hardest samples found before the stage.
        take = min(len(hard), stage.samples_per_epoch // 2)
        chosen = [hard[i] for i in rng.choice(len(hard), take, replace=False)]
        keys = chosen + fresh[: stage.samples_per_epoch - take]
        keys = [keys[i] for i in rng.permutation(len(keys))]
    total, count = 0.0, 0
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else _null()
    for x, target, weight in _batches(maker, keys, stage.batch_size):
        x = torch.from_numpy(x).to(device)
        target = torch.from_numpy(target).to(device)
        weight = torch.from_numpy(weight).to(device)
        with autocast:
            logits = model(x)
        loss = partial_ce(logits, target, weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if average is not None:
            average.update_parameters(model)
        if schedule.last_epoch + 1 < schedule.total_steps:
            schedule.step()
        total += loss.item() * len(x)
        count += len(x)
    return total / max(count, 1)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _mine(model, maker, stage, device, config) -> list[tuple[int, int]]:
    """Score ``hard_pool`` candidate samples with the current model; keep the ``hard_examples`` worst."""
    import torch

    from .data import partial_ce

    model.eval()
    keys = [(10_000 + i, i) for i in range(stage.hard_pool)]
    losses = []
    with torch.no_grad():
        for key in keys:
            x, target, weight = (torch.from_numpy(a[None]).to(device) for a in maker(*key))
            losses.append(float(partial_ce(model(x), target, weight)))
    order = np.argsort(losses)[::-1][: stage.hard_examples]
    return [keys[i] for i in order]


def predict_array(model, x: np.ndarray, device: str) -> np.ndarray:
    """Class probabilities ``(4, H, W)`` of one normalised ``(C, H, W)`` array (padded to 32 px)."""
    import torch

    h, w = x.shape[-2:]
    ph, pw = -h % 32, -w % 32
    xp = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="symmetric")
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(xp[None]).to(device))
        probs = torch.softmax(logits.float(), dim=1)[0, :, :h, :w]
    return probs.cpu().numpy()


def validate(model, maker, validation, config: TrainConfig, device: str) -> dict[str, float]:
    """Cloud BOA on the human-labelled validation chips; per-class BOA on held-out simulated samples."""
    from ..evaluation import combine, evaluate

    real = []
    for scene in validation:
        x = maker.normalise(scene.select(config.bands))
        pred = np.asarray(CLASSES, np.uint8)[predict_array(model, x, device).argmax(axis=0)]
        pred[np.all(np.isnan(scene.reflectance), axis=0)] = 255
        real.append(evaluate(pred, scene.labels, reference_scheme="cloud"))
    scores: dict[str, float] = {}
    if real:
        scores["val_cloud_boa"] = combine(real)["cloud"].boa
    if maker.pools.clear_validation and config.validation_samples:
        sims = []
        for i in range(config.validation_samples):
            x, target, _ = maker.validation_sample(i)
            pred = np.asarray(CLASSES, np.uint8)[predict_array(model, x, device).argmax(axis=0)]
            sims.append(evaluate(pred, target, reference_scheme="full"))
        pooled = combine(sims)
        for name in ("cloud", "thick_cloud", "thin_cloud", "cloud_shadow", "clear"):
            scores[f"sim_{name}_boa"] = pooled[name].boa
    return scores


# --------------------------------------------------------------------------- export


def _save(model, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))


def export(model, config: TrainConfig, mean, std, out: Path) -> dict[str, str]:
    """Write ``<name>.safetensors``, ``<name>.onnx`` and ``<name>.json`` (spec fields + sha256)."""
    import torch

    from ..models.spec import sha256_file

    model = model.to("cpu").eval()
    weights = out / f"{config.name}.safetensors"
    _save(model, weights)
    onnx_path = out / f"{config.name}.onnx"
    dummy = torch.zeros(1, len(config.bands), 256, 256)
    torch.onnx.export(
        model, (dummy,), str(onnx_path), input_names=["x"], output_names=["logits"], opset_version=17,
        dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}}, dynamo=False,
    )  # fmt: skip
    digests = {"safetensors": sha256_file(weights), "onnx": sha256_file(onnx_path)}
    meta = {
        "name": config.name,
        "bands": list(config.bands),
        "classes": list(CLASSES),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "resolution_m": config.resolution_m,
        "patch_size": config.inference_patch_size,
        "overlap": config.inference_overlap,
        # B10 (cirrus) exists in L1C products only
        "levels": ["L1C"] if "B10" in config.bands else ["L1C", "L2A"],
        "architecture": {k: v for k, v in architecture(config)},
        "description": f"xs2mask U-Net ({config.encoder}), {' '.join(config.bands)}; "
        "4 classes: clear, thick cloud, thin cloud, shadow",
        "sha256": digests,
        "licence": config.licence,
    }
    (out / f"{config.name}.json").write_text(json.dumps(meta, indent=1, default=list))
    return digests
