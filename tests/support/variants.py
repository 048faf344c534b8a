"""One scene in every provider variant: the catalogues of the ``stac_pc`` and ``stac_es`` fixtures.

Each item has a role (``baseline_0212``, ``harmonised``, ``tile_edge_left``...) and an
:class:`~support.items.ItemTruth` computed from the source files, so a test loads an item and compares
with what it must give. The pixels are the demo scene of the package (chip "adwp", see
:mod:`support.sources`) and two windows of it mirrored to the chip's size (real values, repeated
texture): "adwp-clear" (3 % cloud) and "adwp-overcast" (100 % cloud), which the time series borrows
for its second and third dates. So they build on a clean clone. Two roles need files that the demo
scene lacks and are there only when ``shared`` is given (``../shared/data``, or the shipped subset
``tests/data``): ``lying`` (chip khas: dark water that a wrong -0.1 offset drives below zero; the demo
scene has none) and ``multires`` (a BigEarthNet patch with native 10/20/60 m bands; the demo scene has
10 m bands only).

pc: collection ``sentinel-2-l2a`` (the real Planetary Computer collection JSON); items rewritten from a
real PC item (asset keys B02...; no raster extension):

============== ========== ================================== =================================
role           date       pixels / grid                      radiometry written
============== ========== ================================== =================================
baseline_0212  2020-04-29 chip adwp, real grid (UTM 36S)     baseline 02.12: DN
baseline_0511  2024-05-03 chip adwp, real grid               baseline 05.11: DN + 1000
tile_edge_*    2020-05-04 adwp cols 0..299 (tile 36MVC) and  DN
                          cols 200..511 (tile 36MWC)
other_utm      2020-05-09 adwp reprojected to UTM 35S        DN
timeseries_0   2020-06-03 chip adwp, real grid               DN
timeseries_1   2020-06-13 adwp-clear ON adwp grid            DN
timeseries_2   2020-06-23 adwp-overcast ON adwp grid         DN
multires       2017-09-24 BigEarthNet patch, 10/20/60 m,     DN (only with ``shared``)
                          real grid (UTM 35N, Finland)
============== ========== ================================== =================================

es: collections ``sentinel-2-l2a``, ``sentinel-2-l1c``, ``sentinel-2-c1-l2a`` (minimal collection
JSON); items rewritten from real Earth Search items (common-name asset keys, ``raster:bands`` scale
1e-4 offset -0.1):

============== ================= ========== =========================== ===========================
role           collection        date       pixels / grid               radiometry written
============== ================= ========== =========================== ===========================
harmonised     sentinel-2-l2a    2025-07-01 adwp, real grid             COG: DN (boa_offset_applied
                                                                        true); ``*-jp2``: DN + 1000
l1c            sentinel-2-l1c    2025-07-01 adwp (L2A pixels as L1C)    JP2: DN + 1000
c1_l2a         sentinel-2-c1-l2a 2025-07-01 adwp, real grid             COG: DN + 1000
lying          sentinel-2-l2a    2025-07-06 chip khas, real grid        COG: DN, but metadata says
                                            (Eswatini, dark water)      boa_offset_applied false
                                                                        (only with ``shared``)
tile_edge_*    sentinel-2-l2a    2025-07-11 adwp halves, 36MVC/36MWC    DN
other_utm      sentinel-2-l2a    2025-07-16 adwp -> UTM 35S             DN
timeseries_0-2 sentinel-2-l2a    07-21/26/31 adwp, -clear, -overcast    DN
multires       sentinel-2-c1-l2a 2017-09-24 BigEarthNet 10/20/60 m      DN + 1000 (baseline 05.00;
                                                                        only with ``shared``)
============== ================= ========== =========================== ===========================

Example (needs files and servers, so not a doctest)::

    cat = build_catalogue("pc", tmp / "pc")
    cat.truth_of("baseline_0511").convention
    # -> 'PC s2:processing_baseline 05.11 >= 04.00: files hold DN+1000; reflectance=(DN-1000)/1e4'
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import items as it
from .sources import demo_scene, link_shared, mirror, write_chips

__all__ = ["CLEAR", "OVERCAST", "StacCatalogue", "build_catalogue"]

#: Chips of the demo scene that the time series borrows: windows (row, col, height, width) of it,
#: mirrored to its size, picked for their cloud cover (3 % and 100 % of the human label).
CLEAR, OVERCAST = "adwp-clear", "adwp-overcast"
_WINDOWS = {CLEAR: (104, 0, 128, 128), OVERCAST: (144, 208, 128, 128)}
#: Folders of ``../shared/data`` (and of ``tests/data``) behind the roles ``lying`` and ``multires``.
_KHAS = f"{it.CHIPS}/khas"
_BEN = f"bigearthnet/example_patches/{it.BEN_PATCH}"


@dataclass(frozen=True)
class StacCatalogue:
    """A served catalogue: what the ``stac_pc`` / ``stac_es`` fixtures return."""

    name: str
    #: root of the STAC API (``pystac_client.Client.open(url)``); "" before serving.
    url: str
    collections: tuple[str, ...]
    #: lon/lat bbox of the main test area (footprint of chip adwp): holds every item except the
    #: roles ``lying`` and ``multires`` (see their truth's bbox).
    bbox: tuple[float, float, float, float]
    #: datetime range string covering every item of the catalogue.
    datetime: str
    #: role -> item id.
    ids: Mapping[str, str]
    #: group name -> item ids: "tile_edge" (left, right), "timeseries" (by date), "same_reflectance".
    groups: Mapping[str, tuple[str, ...]]
    #: item id -> ground truth.
    truth: Mapping[str, it.ItemTruth]
    #: the item JSON documents as served, sorted by datetime then id.
    items: tuple[dict[str, Any], ...]
    collection_docs: tuple[dict[str, Any], ...]
    #: folder holding the COG/JP2 files and the JSON files.
    folder: Path

    def item(self, role: str) -> dict[str, Any]:
        """Served JSON of the item of ``role`` (a deep copy)."""
        item_id = self.ids[role]
        return copy.deepcopy(next(i for i in self.items if i["id"] == item_id))

    def truth_of(self, role: str) -> it.ItemTruth:
        return self.truth[self.ids[role]]


def _d(y: int, m: int, d: int) -> dt.date:
    return dt.date(y, m, d)


_S = it.ItemSpec
_LEFT = (0, 0, 512, 300)  # columns 0..299
_RIGHT = (0, 200, 512, 312)  # columns 200..511: 100 columns of overlap
_OTHER_UTM = "EPSG:32735"  # chip adwp lies in UTM 36S; 35S is the western neighbour

_PC_SPECS = (
    _S("baseline_0212", "pc-l2a", _d(2020, 4, 29), "adwp", baseline="02.12"),
    _S("baseline_0511", "pc-l2a", _d(2024, 5, 3), "adwp", baseline="05.11"),
    _S("tile_edge_left", "pc-l2a", _d(2020, 5, 4), "adwp", window=_LEFT, baseline="02.12"),
    _S("tile_edge_right", "pc-l2a", _d(2020, 5, 4), "adwp", window=_RIGHT, baseline="02.12", tile_shift=1),
    _S("other_utm", "pc-l2a", _d(2020, 5, 9), "adwp", dst_crs=_OTHER_UTM, baseline="02.12"),
    _S("timeseries_0", "pc-l2a", _d(2020, 6, 3), "adwp", baseline="02.12"),
    _S("timeseries_1", "pc-l2a", _d(2020, 6, 13), CLEAR, footprint="adwp", baseline="02.12"),
    _S("timeseries_2", "pc-l2a", _d(2020, 6, 23), OVERCAST, footprint="adwp", baseline="02.12"),
    _S("multires", "pc-l2a", it.BEN_TIME.date(), "ben", baseline="02.12"),
)
_ES_SPECS = (
    _S("harmonised", "es-l2a", _d(2025, 7, 1), "adwp", boa_offset_applied=True, with_jp2=True),
    _S("l1c", "es-l1c", _d(2025, 7, 1), "adwp"),
    _S("c1_l2a", "es-c1-l2a", _d(2025, 7, 1), "adwp"),
    _S("lying", "es-l2a", _d(2025, 7, 6), "khas", boa_offset_applied=False, baseline="05.11"),
    _S("tile_edge_left", "es-l2a", _d(2025, 7, 11), "adwp", window=_LEFT),
    _S("tile_edge_right", "es-l2a", _d(2025, 7, 11), "adwp", window=_RIGHT, tile_shift=1),
    _S("other_utm", "es-l2a", _d(2025, 7, 16), "adwp", dst_crs=_OTHER_UTM),
    _S("timeseries_0", "es-l2a", _d(2025, 7, 21), "adwp"),
    _S("timeseries_1", "es-l2a", _d(2025, 7, 26), CLEAR, footprint="adwp"),
    _S("timeseries_2", "es-l2a", _d(2025, 7, 31), OVERCAST, footprint="adwp"),
    # Collection 1 reprocessing of a 2017 product: processing baseline 05.00, offset present.
    _S("multires", "es-c1-l2a", it.BEN_TIME.date(), "ben", baseline="05.00"),
)
#: Roles whose source the demo scene lacks: from ``shared``.
_SHARED_ROLES = {"lying": _KHAS, "multires": _BEN}
_GROUPS = {
    "pc": {
        "tile_edge": ("tile_edge_left", "tile_edge_right"),
        "timeseries": ("timeseries_0", "timeseries_1", "timeseries_2"),
        "same_reflectance": ("baseline_0212", "baseline_0511", "timeseries_0"),
    },
    "es": {
        "tile_edge": ("tile_edge_left", "tile_edge_right"),
        "timeseries": ("timeseries_0", "timeseries_1", "timeseries_2"),
        "same_reflectance": ("harmonised", "l1c", "c1_l2a", "timeseries_0"),
    },
}


def _iso_range(items: Iterable[Mapping[str, Any]]) -> str:
    days = sorted(i["properties"]["datetime"][:10] for i in items)
    return f"{days[0]}T00:00:00Z/{days[-1]}T23:59:59Z"


def _lay_out(root: Path, shared: Path | None) -> None:
    """The demo scene and its clear and overcast windows as chips; khas and BigEarthNet from ``shared``."""
    dn, label, crs, transform = demo_scene()
    chips = {"adwp": (dn, label)}
    for chip, (row, col, h, w) in _WINDOWS.items():
        crop = (slice(row, row + h), slice(col, col + w))
        chips[chip] = (
            {b: mirror(a[crop], a.shape[0]) for b, a in dn.items()},
            mirror(label[crop], label.shape[0]),
        )
    write_chips(root, chips, crs, transform)
    if shared is not None:
        for folder in _SHARED_ROLES.values():
            link_shared(root, shared, folder)


def build_catalogue(name: str, out: Path, *, shared: Path | None = None) -> StacCatalogue:
    """Write the COGs and items of catalogue ``name`` ("pc" or "es") under ``out`` (not served: url "").

    ``shared``: ``../shared/data`` or ``tests/data``, for the roles ``lying`` and ``multires``; without it
    they are left out.
    """
    root = out / "_sources"
    _lay_out(root, shared)
    specs = [s for s in {"pc": _PC_SPECS, "es": _ES_SPECS}[name] if shared or s.role not in _SHARED_ROLES]
    quality = it.chip_quality(root)
    templates = {t: it.load_template(root, t) for t in {s.template for s in specs}}
    items, truths = [], {}
    for spec in specs:
        item, truth = it.build_item(root, spec, out, templates[spec.template], quality)
        items.append(item)
        truths[item["id"]] = truth
    ids = {t.role: t.item_id for t in truths.values()}
    if len(ids) != len(items):
        raise AssertionError(f"duplicate item ids in catalogue {name}: {sorted(truths)}")
    collections = it.collection_docs(name, root, items)
    items.sort(key=lambda i: (i["properties"]["datetime"], i["id"]))
    return StacCatalogue(
        name=name,
        url="",
        collections=tuple(c["id"] for c in collections),
        bbox=truths[ids["timeseries_0"]].bbox,
        datetime=_iso_range(items),
        ids=ids,
        groups={g: tuple(ids[r] for r in roles) for g, roles in _GROUPS[name].items()},
        truth=truths,
        items=tuple(items),
        collection_docs=collections,
        folder=out,
    )
