"""The ``xs2mask`` command line.

Examples
--------
``xs2mask demo``                  mask the shipped scene, write GeoTIFF + PNG quick-look
``xs2mask models``                list models, whether installed, bands and licence
``xs2mask models download NAME``  fetch downloadable weights ahead of time (``--model-dir DIR``)
``xs2mask models convert clouds2mask PATH``  CloudS2Mask pickles -> ONNX + safetensors (once)
``xs2mask train --config FILE``   train a model (configs/xs2mask-4b.toml)
``xs2mask mask SCENE -o MASK.tif``  mask one scene given as files (.SAFE, band folder, GeoTIFF):
                                  :func:`xs2mask.scenes.mask_scene`
``xs2mask mask-stac --stac-url URL --collection C --bbox W S E N --datetime A/B --out STORE``
                                  mask a STAC search into Zarr (resumable, appendable):
                                  :func:`xs2mask.pipeline.mask_stac`; ``predict`` is its former name

``--processing-resolution`` is the resolution a model runs at (the masks keep the input's grid);
``--pixel-size`` is the pixel size of the masks ``mask-stac`` writes. ``--resolution``, the former name
of ``--processing-resolution``, still works and says so.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, NoReturn, cast

from . import __version__
from .exceptions import InputError, XS2MaskError


def _demo(args: argparse.Namespace) -> int:
    from . import data, predict
    from .export import class_percentages, quicklook, write_geotiff

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cube = data.demo_scene()
    where = f"{cube.attrs.get('PLACE')} {cube.attrs.get('DATETIME')}"
    print(f"scene: {data.demo_path()}  {dict(cube.sizes)}  {where}")
    start = time.perf_counter()
    ds = predict(cube, model=args.model, tta=args.tta, device=args.device)
    mask = ds.mask.values
    seconds = time.perf_counter() - start
    tif = write_geotiff(ds.mask, out / "demo_mask.tif")
    rgb = (cube.sel(band=["B04", "B03", "B02"]).values / 10_000.0).astype("float32")
    title = f"xs2mask demo: {ds.attrs['xs2mask_model']}"
    png = quicklook(rgb, mask, out / "demo_quicklook.png", title=title)
    attrs = ds.attrs
    print(f"model: {attrs['xs2mask_model']} ({attrs['xs2mask_model_licence']}) on {attrs['xs2mask_device']}")
    print(f"masked {mask.size / 1e6:.2f} Mpx in {seconds:.1f} s")
    for name, pct in class_percentages(mask).items():
        print(f"  {name:<13} {pct:6.2f} %")
    print(f"wrote {tif}\nwrote {png}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from . import models

    installed = set(models.available())
    for name in models.registered():
        spec = models.get(name)
        if name in installed:
            state = "installed"
        elif spec.is_available():  # the weights are here, the library that runs them is not
            parts = spec.members or (spec,)
            extras = sorted({models.get_backend(p.backend).extra for p in parts} - {""})
            state = f"not runnable: {', '.join(models.missing_modules(spec))} missing: " + " ".join(
                f"pip install 'xs2mask[{extra}]'" for extra in extras
            )
        else:
            missing = next(w for w in spec.all_weights() if not w.is_available())
            hint = missing.install_hint or ("downloaded on first use" if missing.url else "")
            state = f"not installed: {hint}"
        print(f"{name:<32} {' '.join(spec.bands):<52} {spec.licence}  [{state}]")
    return 0


def _models_download(args: argparse.Namespace) -> int:
    from . import models
    from .models.published import conversion_sources

    spec = models.get(args.name).with_model_dir(args.model_dir)
    sources = conversion_sources(spec)
    if sources:
        # CloudS2Mask's files are pickles: fetch them, convert them on request (never on load).
        paths = [w.with_model_dir(args.model_dir).fetch(name) for name, w in sources.items()]
        for path in paths:
            print(f"downloaded {path}")
        print(
            f"convert with: xs2mask models convert clouds2mask {paths[0].parent}"
            + (f" --out {args.model_dir}" if args.model_dir else "")
        )
        return 0
    spec.fetch()
    for weights in spec.all_weights():
        print(f"{weights.verified_path()}  (sha256 checked)")
    return 0


def _models_convert(args: argparse.Namespace) -> int:
    from .models.convert import convert_clouds2mask

    for path in convert_clouds2mask(args.path, args.out):
        print(f"wrote {path} (+ .safetensors, .json)")
    return 0


def _mask_scene(args: argparse.Namespace) -> int:
    from .scenes import mask_scene

    done = mask_scene(
        args.input,
        args.out,
        model=args.model,
        bands=args.bands,
        offset=args.offset,
        processing_resolution=args.processing_resolution,
        tta=args.tta,
        device=args.device,
        chunks=args.chunks,
        overwrite=args.overwrite,
    )
    mask = done.mask
    res = abs(mask.rio.resolution()[0])
    unit = "°" if mask.rio.crs is not None and mask.rio.crs.is_geographic else " m"
    print(
        f"scene: {done.source}  {mask.sizes['y']} x {mask.sizes['x']} px at {res:g}{unit}, {mask.rio.crs}, "
        f"bands {' '.join(done.bands)}"
    )
    print(f"radiometry: {done.radiometry}")
    print(f"model: {done.model} ({done.licence}) on {done.device}")
    print(f"masked {mask.size / 1e6:.2f} Mpx in {done.seconds:.1f} s")
    for name, pct in done.percentages.items():
        print(f"  {name:<13} {pct:6.2f} %")
    print(f"wrote {done.out}")
    return 0


def _mask_stac(args: argparse.Namespace) -> int:
    from contextlib import ExitStack

    from .pipeline import Job, Load, Predict, Search, Store, run

    job = Job(
        Search(
            args.stac_url, tuple(args.collection), tuple(args.bbox), args.datetime, max_cloud=args.max_cloud
        ),
        Store(
            args.out,
            mode="w" if args.overwrite else "a" if args.append else "w-",
            zarr_format=args.zarr_format,
            block=args.block,
            batch=args.batch,
            storage_options=dict(args.storage_option),
        ),
        load=Load(
            pixel_size=args.pixel_size,
            chunks=args.chunks,
            harmonize=_HARMONIZE[args.harmonize],
            read_retries=args.read_retries,
            read_timeout=args.read_timeout,
            on_read_error=args.on_read_error,
        ),
        predict=Predict(
            model=args.model,
            tta=args.tta,
            processing_resolution=args.processing_resolution,
            device=args.device,
            compile=args.compile,
        ),
    )
    start = time.perf_counter()
    with ExitStack() as stack:
        client = _client(args, stack)
        if client is not None:
            print(f"dask: {client.dashboard_link}  ({sum(client.nthreads().values())} threads)")
        outcome = run(job, progress=not args.quiet)
    seconds = time.perf_counter() - start
    masks = outcome.masks
    dates = _plural(outcome.dates, "date")
    if not outcome.written:
        print(f"nothing to do: {outcome.store} already holds {dates}, complete")
        return 0
    # The rate counts what this run wrote, not what an earlier run left in the store.
    print(
        f"wrote {outcome.store}: {outcome.written} of {_plural(outcome.slabs, 'slab')}; the store holds "
        f"{dates} x {masks.sizes['y']} x {masks.sizes['x']} px, masked with {masks.attrs['xs2mask_model']}, "
        f"in {seconds:.1f} s ({_rate(outcome.pixels / seconds)})"
    )
    return 0


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _rate(pixels_per_second: float) -> str:
    """Mpx/s with two significant digits at least: a small area's rate is not "0.00 Mpx/s"."""
    mpx = pixels_per_second / 1e6
    return f"{mpx:.2f} Mpx/s" if mpx >= 0.1 else f"{mpx:.2g} Mpx/s"


# --------------------------------------------------------------------------- argument checks
# Every check runs before any network request or computation: a typo costs nothing.

# --harmonize's words, as Load.harmonize takes them.
_HARMONIZE: dict[str, bool | Literal["auto"]] = {"auto": "auto", "true": True, "false": False}


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, like every other xs2mask error (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"xs2mask: error: {message} (see '{self.prog} --help')\n")


def _number(kind: type, low: float | None = None, high: float | None = None, *, above: bool = False):
    """An argparse type: an ``int`` or finite ``float`` in ``[low, high]`` (``(low, high]`` if above)."""
    what = "a whole number" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if low is not None and (value <= low if above else value < low):
            raise argparse.ArgumentTypeError(f"{text} must be {'above' if above else 'at least'} {low:g}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{text} must be at most {high:g}")
        return value

    parse.__name__ = kind.__name__
    return parse


_positive_int = _number(int, 1)
_count = _number(int, 0)
_positive = _number(float, 0, above=True)


def _datetime(text: str) -> str:
    from .checks import check_datetime

    try:
        return check_datetime(text)
    except InputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expects KEY=VALUE, got {text!r}")
    return key, value


def _check_writable(path: Path, flag: str) -> None:
    """The nearest existing folder of ``path`` must be a folder this user may write into."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{flag} {path}: {parent} is a file, not a folder; choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(
            f"{flag} {path}: the folder {parent} is not writable; choose a folder you can write to"
        )


def _check_mask_stac_args(args: argparse.Namespace) -> None:
    from .checks import check_bbox

    if args.workers and args.scheduler:
        raise InputError("give either --workers or --scheduler, not both")
    if args.append and args.overwrite:
        raise InputError("give either --append or --overwrite, not both")
    check_bbox(args.bbox)
    if "://" not in args.out or args.out.startswith("file://"):
        out = Path(args.out.removeprefix("file://"))
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {out} is a file, not a Zarr store (a folder); choose another path")
        _check_writable(out / "zarr.json", "--out")


def _check_mask_args(args: argparse.Namespace) -> None:
    from .checks import check_scene_paths

    # mask_scene checks the same again, in its own words; here the messages name the flags.
    _, out = check_scene_paths(
        args.input, args.out, overwrite=args.overwrite, out_name="-o", overwrite_hint="--overwrite"
    )
    _check_writable(out, "-o")


def _check_train_args(args: argparse.Namespace) -> None:
    if not Path(args.config).is_file():
        raise InputError(
            f"--config {args.config} is not a file: give a TOML training config, e.g. configs/xs2mask-4b.toml"
        )


# Library messages name Python arguments; on the command line the same advice names the flags.
_FLAGS = {
    "model": "--model",
    "bands": "--bands",
    "offset": "--offset",
    "harmonize": "--harmonize",
    "device": "--device",
    "dtype": "--dtype",
    "tta": "--tta",
    "processing_resolution": "--processing-resolution",
    "pixel_size": "--pixel-size",
    "model_dir": "--model-dir",
    "zarr_format": "--zarr-format",
    "on_read_error": "--on-read-error",
    "read_retries": "--read-retries",
    "read_timeout": "--read-timeout",
    "max_cloud": "--max-cloud",
    "chunks": "--chunks",
}
_SAID_TWICE = re.compile(r"(--[\w-]+(?: [\w.+-]+)?) \(\1\)")
# name=value, name='value' or name=['a', 'b'] (a list: the flag's values, space-separated)
# "leave processing_resolution unset": on the command line, a flag left out
_UNSET = re.compile(r"\bleave ([a-z_]+) unset\b")
_PY_ARG = re.compile(r"\b([a-z_]+)=(?:\[([^\]]*)\]|('?)([\w.+-]*)\3)")


def _in_cli_terms(message: str) -> str:
    def flag(match: re.Match[str]) -> str:
        name, listed, value = match.group(1), match.group(2), match.group(4)
        if name == "mode" and value in ("w", "a"):
            return "--overwrite" if value == "w" else "--append"
        if name not in _FLAGS:
            return match.group(0)
        if listed is not None:
            return " ".join([_FLAGS[name], *(v.strip(" '\"") for v in listed.split(",") if v.strip())])
        return f"{_FLAGS[name]} {value.lower()}" if value else _FLAGS[name]

    def unset(match: re.Match[str]) -> str:
        name = match.group(1)
        return f"leave out {_FLAGS[name]}" if name in _FLAGS else match.group(0)

    # Library messages often give both ("mode='a' (--append)"): say the flag once.
    return _SAID_TWICE.sub(r"\1", _UNSET.sub(unset, _PY_ARG.sub(flag, message)))


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _client(args: argparse.Namespace, stack):
    """A Dask client for --workers / --scheduler, closed when the job ends; None = threads here."""
    if not (args.workers or args.scheduler):
        return None
    from distributed import Client, LocalCluster

    if args.scheduler:
        return stack.enter_context(Client(args.scheduler))
    # One Dask thread per worker process: the model's own threads then share the cores without
    # oversubscribing them.
    cluster = stack.enter_context(LocalCluster(n_workers=args.workers, threads_per_worker=1))
    return stack.enter_context(Client(cluster))


def _train(args: argparse.Namespace) -> int:
    from .training.train import TrainConfig, train

    config = TrainConfig.from_toml(args.config)
    overrides = {k: v for k, v in (("data", args.data), ("out", args.out), ("device", args.device)) if v}
    if overrides:
        from dataclasses import replace

        config = replace(config, **overrides)
    run = train(config)
    print(f"trained {config.name}: {run}")
    return 0


class _Renamed(argparse.Action):
    """A flag's former name: still works, and says the new name on stderr."""

    def __init__(self, option_strings: list[str], dest: str, *, new: str, why: str, **kwargs) -> None:
        self.new, self.why = new, why
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"xs2mask: warning: {option_string} is now {self.new} ({self.why})", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _add_model_options(parser: argparse.ArgumentParser, *, resolution: bool = True) -> None:
    """The model options every masking command shares, with one meaning everywhere."""
    parser.add_argument(
        "--model", default="default", help="model name (default: best installed for the bands)"
    )
    if resolution:
        parser.add_argument(
            "--processing-resolution",
            type=_positive,
            default=None,
            metavar="M",
            help="run the model at this resolution in metres (10, 20, 60); the mask keeps the input grid",
        )
        # The former name, ambiguous beside --pixel-size: still accepted, not listed.
        parser.add_argument(
            "--resolution",
            dest="processing_resolution",
            type=_positive,
            action=_Renamed,
            new="--processing-resolution",
            why="the resolution the model runs at; the masks keep the input's pixel size",
            help=argparse.SUPPRESS,
        )
    parser.add_argument("--tta", type=_number(int, 0, 7), default=0, help="test-time augmentation passes 0-7")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xs2mask", description="Cloud and cloud-shadow masks for Sentinel-2.")
    parser.add_argument("--version", action="version", version=f"xs2mask {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="mask the Sentinel-2 scene shipped with xs2mask")
    demo.add_argument("--out", default="xs2mask-demo", help="output folder (default: ./xs2mask-demo)")
    _add_model_options(demo, resolution=False)
    demo.set_defaults(func=_demo)

    pred = sub.add_parser(
        "mask-stac",
        # The subcommand's first name: `xs2mask.predict` masks an array, this a whole STAC search.
        aliases=["predict"],
        help="mask a STAC search (area x dates) into a Zarr store (formerly 'predict')",
        description="Search a STAC API, mask every scene found and write the masks to Zarr "
        "(xs2mask.pipeline.mask_stac). Rerunning an interrupted job completes it; --append adds new dates.",
    )
    pred.add_argument("--stac-url", required=True, help="STAC API root URL")
    pred.add_argument("--collection", required=True, action="append", help="collection id (repeatable)")
    pred.add_argument(
        "--bbox", required=True, nargs=4, type=_number(float), metavar=("W", "S", "E", "N"), help="degrees"
    )
    pred.add_argument(
        "--datetime", required=True, type=_datetime, help="date range, e.g. 2024-06-01/2024-06-30"
    )
    pred.add_argument("--out", required=True, help="Zarr store: a path or an fsspec URL (s3://...)")
    pred.add_argument(
        "--pixel-size",
        type=_positive,
        default=10,
        metavar="M",
        help="pixel size of the masks in metres (default 10); the model's is --processing-resolution",
    )
    pred.add_argument(
        "--max-cloud", type=_number(float, 0, 100), default=None, help="skip items above this cloud cover %%"
    )
    pred.add_argument(
        "--chunks", type=_positive_int, default=2048, help="chunk size in pixels (default 2048)"
    )
    pred.add_argument("--harmonize", choices=tuple(_HARMONIZE), default="auto")
    pred.add_argument("--workers", type=_count, default=0, help="start a local Dask cluster of N workers")
    pred.add_argument("--scheduler", default=None, help="address of a running Dask scheduler")
    pred.add_argument("--zarr-format", type=int, choices=(2, 3), default=None)
    pred.add_argument(
        "--block",
        type=_positive_int,
        default=None,
        metavar="PX",
        help="slab edge in pixels, whole chunks (default: the store's own, else about 4096): "
        "smaller slabs hold less memory",
    )
    pred.add_argument(
        "--batch",
        type=_positive_int,
        default=None,
        help="slabs computed together (a killed job redoes at most one)",
    )
    pred.add_argument("--append", action="store_true", help="append new dates to an existing store")
    pred.add_argument("--overwrite", action="store_true", help="replace an existing store")
    pred.add_argument(
        "--storage-option",
        action="append",
        default=[],
        type=_key_value,
        metavar="KEY=VALUE",
        help="fsspec option (repeatable)",
    )
    pred.add_argument(
        "--read-retries",
        type=_number(int, 0, 100),
        default=3,
        help="retries of a failing read, with back-off (default 3)",
    )
    pred.add_argument(
        "--read-timeout", type=_positive, default=30.0, help="seconds per HTTP request of a read (default 30)"
    )
    pred.add_argument(
        "--on-read-error",
        choices=("raise", "nodata"),
        default="raise",
        help="when a read still fails: stop (default), or write the slab as no-data, listed in the store",
    )
    pred.add_argument("--compile", action="store_true", help="torch.compile torch models (GPU)")
    pred.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_model_options(pred)
    pred.set_defaults(func=_mask_stac, check=_check_mask_stac_args)

    trn = sub.add_parser("train", help="train a model from a TOML config (see configs/)")
    trn.add_argument("--config", required=True, help="TOML file: bands, architecture, stages")
    trn.add_argument("--data", default=None, help="folder of the real training data (default: the config's)")
    trn.add_argument("--out", default=None, help="folder for runs (default: the config's)")
    trn.add_argument("--device", default=None, help="auto, cpu, cuda")
    trn.set_defaults(func=_train, check=_check_train_args)

    lst = sub.add_parser("models", help="list the models and whether they are installed; download, convert")
    lst.set_defaults(func=_models)
    model_sub = lst.add_subparsers(dest="models_command")
    dl = model_sub.add_parser(
        "download",
        help="fetch a model's weights now (OmniCloudMask; CloudS2Mask's pickles, to convert next)",
    )
    dl.add_argument("name", help="model name, e.g. omnicloudmask-v4 or clouds2mask-10m")
    default_dir = "default: $XS2MASK_MODEL_DIR, else the user cache"
    dl.add_argument("--model-dir", default=None, help=f"folder to download into ({default_dir})")
    dl.set_defaults(func=_models_download)
    conv = model_sub.add_parser(
        "convert",
        help="convert CloudS2Mask's pickled models to ONNX + safetensors (unpickles: trusted files only)",
    )
    conv.add_argument("kind", choices=("clouds2mask",), help="whose model files")
    conv.add_argument("path", help="a CloudS2Mask .pkl file or a folder of them")
    conv.add_argument("--out", default=None, help=f"output folder ({default_dir})")
    conv.set_defaults(func=_models_convert)

    msk = sub.add_parser(
        "mask",
        help="mask one scene given as files (.SAFE, folder of band files, multi-band GeoTIFF)",
        description="Mask one Sentinel-2 scene read from files and write the mask as a GeoTIFF "
        "(COG, colour table, nodata 255) on the grid of the input's finest band "
        "(xs2mask.scenes.mask_scene).",
    )
    msk.add_argument("input", help=".SAFE folder (L1C or L2A), folder of band files, or multi-band GeoTIFF")
    msk.add_argument("-o", "--out", required=True, help="mask GeoTIFF to write")
    msk.add_argument(
        "--bands", nargs="+", default=None, help="bands to read, or the names of a GeoTIFF's bands"
    )
    msk.add_argument(
        "--offset",
        type=_number(float, -10000, 10000),
        default=None,
        help="DN offset when the metadata cannot tell: -1000 for processing baseline >= 04.00, else 0",
    )
    msk.add_argument("--chunks", type=_positive_int, default=1024, help="block size in pixels (default 1024)")
    msk.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    _add_model_options(msk)
    msk.set_defaults(func=_mask_scene, check=_check_mask_args)
    _accept_debug_anywhere(parser)
    return parser


def _accept_debug_anywhere(parser: argparse.ArgumentParser) -> None:
    """``--debug`` also after a subcommand; SUPPRESS keeps a subcommand from resetting the flag."""
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        # An aliased subcommand is one parser under several names: visit it once.
        for child in dict.fromkeys(cast(dict[str, argparse.ArgumentParser], action.choices).values()):
            child.add_argument(
                "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
            )
            _accept_debug_anywhere(child)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; user errors print one ``xs2mask: error: ...`` line and return 2."""
    import warnings

    args = build_parser().parse_args(argv)

    def show(message, category, *_args, **_kwargs) -> None:
        print(f"xs2mask: warning: {_in_cli_terms(_one_line(message))}", file=sys.stderr)

    try:
        # Warnings (e.g. an offset that had to be assumed) read as messages here, not as source lines.
        with warnings.catch_warnings():
            if not args.debug:
                warnings.showwarning = show
            check: Callable[[argparse.Namespace], None] | None = getattr(args, "check", None)
            if check is not None:
                check(args)
            return args.func(args)
    except XS2MaskError as err:
        if args.debug:
            raise
        print(f"xs2mask: error: {_in_cli_terms(_one_line(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xs2mask: interrupted; rerun the same command to resume a mask-stac job", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        print(
            f"xs2mask: error: unexpected {type(err).__name__}: {_one_line(err)} "
            "(rerun with --debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
