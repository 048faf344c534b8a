"""The ``xs2mask`` command line.

Examples
--------
``xs2mask demo``                  mask the shipped scene, write GeoTIFF + PNG quick-look
``xs2mask models``                list models, whether installed, bands and licence
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import __version__
from .exceptions import XS2MaskError


def _demo(args: argparse.Namespace) -> int:
    from . import data, predict
    from .io import class_percentages, quicklook, write_geotiff

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
        state = "installed" if name in installed else f"not installed: {spec.weights.install_hint}"
        print(f"{name:<20} {' '.join(spec.bands):<42} {spec.licence}  [{state}]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xs2mask", description="Cloud and cloud-shadow masks for Sentinel-2."
    )
    parser.add_argument("--version", action="version", version=f"xs2mask {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="mask the Sentinel-2 scene shipped with xs2mask")
    demo.add_argument("--out", default="xs2mask-demo", help="output folder (default: ./xs2mask-demo)")
    demo.add_argument("--model", default="default", help="model name (default: best installed)")
    demo.add_argument("--tta", type=int, default=0, help="test-time augmentation passes 0-7")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    demo.set_defaults(func=_demo)

    lst = sub.add_parser("models", help="list the models and whether they are installed")
    lst.set_defaults(func=_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except XS2MaskError as err:
        print(f"xs2mask: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
