"""The real files the item builder reads (:func:`support.items.build_item`), laid out from what ships.

A data root holds ``cloud_cover_chips/<chip>/{B02,B03,B04,B08,label}.tif`` with ``chips.json`` (label
quality per chip) and ``stac_items/`` (real provider items and the Planetary Computer collection):
the layout of ``../shared/data``. Here it is written from the demo scene of the package
(:func:`xs2mask.data.demo_path`: chip "adwp" of the "On Cloud N" challenge, Planetary Computer L2A of
2020-04-29, B02 B03 B04 B08, 512 x 512 at 10 m, UTM 36S, DN without offset), its human cloud label
(``templates/adwp_label.tif``) and the item templates of ``templates/stac_items``, so that a clean
clone builds catalogues without ``../shared``. Chips that only ``../shared`` has are linked in with
:func:`link_shared`.

Examples
--------
>>> dn, label, crs, transform = demo_scene(1024)
>>> dn["B08"].shape, label.shape, str(crs)
((1024, 1024), (1024, 1024), 'EPSG:32736')
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .items import BANDS_10M, CHIPS, write_raster

__all__ = ["TEMPLATES", "demo_scene", "link_shared", "mirror", "write_chips"]

TEMPLATES = Path(__file__).resolve().parent / "templates"


def mirror(a: np.ndarray, size: int) -> np.ndarray:
    """``a`` cropped or mirrored (``numpy.pad(mode="symmetric")``) to ``size`` x ``size``: every pixel
    stays a real value, the texture repeats."""
    pad_rows, pad_cols = size - a.shape[0], size - a.shape[1]
    grown = np.pad(a, ((0, max(pad_rows, 0)), (0, max(pad_cols, 0))), mode="symmetric")
    return grown[:size, :size]


def demo_scene(size: int = 512) -> tuple[dict[str, np.ndarray], np.ndarray, Any, Any]:
    """Real DN per band (mirrored up to ``size``), the cloud label, CRS and transform of the demo scene."""
    import rasterio

    from xs2mask.data import demo_path

    with rasterio.open(demo_path()) as ds:
        dn = dict(zip(ds.descriptions, ds.read(), strict=True))
        crs, transform = ds.crs, ds.transform
    with rasterio.open(TEMPLATES / "adwp_label.tif") as ds:
        label = ds.read(1)
    return {b: mirror(dn[b], size) for b in BANDS_10M}, mirror(label, size), crs, transform


def write_chips(
    root: Path,
    chips: Mapping[str, tuple[Mapping[str, np.ndarray], np.ndarray]],
    crs: Any,
    transform: Any,
) -> None:
    """Write each chip (DN per band, label) on one grid, their label quality ("trusted") and the
    item templates under the data root ``root``."""
    for chip, (dn, label) in chips.items():
        folder = root / CHIPS / chip
        for band, a in dn.items():
            write_raster(folder / f"{band}.tif", a, crs, transform)
        write_raster(folder / "label.tif", label, crs, transform)
    (root / CHIPS / "chips.json").write_text(
        json.dumps([{"chip": c, "label_quality": "trusted"} for c in chips])
    )
    shutil.copytree(TEMPLATES / "stac_items", root / "stac_items", dirs_exist_ok=True)


def link_shared(root: Path, shared: Path, folder: str) -> None:
    """Link ``shared/folder`` (e.g. ``cloud_cover_chips/khas``) into the data root, with its chip's
    label quality when it is a chip."""
    (root / folder).parent.mkdir(parents=True, exist_ok=True)
    (root / folder).symlink_to(shared / folder, target_is_directory=True)
    if Path(folder).parent.name == CHIPS:
        quality = json.loads((root / CHIPS / "chips.json").read_text())
        known = json.loads((shared / CHIPS / "chips.json").read_text())
        quality += [c for c in known if c["chip"] == Path(folder).name]
        (root / CHIPS / "chips.json").write_text(json.dumps(quality))
