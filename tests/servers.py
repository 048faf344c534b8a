"""Real servers on 127.0.0.1 and real-pixel STAC catalogues for the STAC -> Zarr pipeline tests.

Used by the fixtures in ``conftest.py``; importable by tests as ``import servers`` (conftest puts this
folder on ``sys.path``).

What is here
------------
* :func:`build_catalogue` writes single-band COGs (and JPEG2000 files where the provider serves JP2)
  from REAL Sentinel-2 pixels of ``../shared/data`` and the matching STAC items, rewritten from REAL
  provider items (Planetary Computer, Earth Search) so that their asset keys, properties, extensions
  and raster metadata stay exactly the provider's; only the geometry, bbox, ``proj:*`` fields, dates,
  ids and product names (tile, date, baseline tokens), tile names, hrefs, ``file:*`` fields,
  ``eo:cloud_cover`` (from the chip's human label), ``s2:nodata_pixel_percentage`` and the sun angles
  (computed for the place and time) change; the other scene statistics (``s2:*_percentage``, view
  angles) stay the template's. Only assets backed by real pixels are kept (no SCL, AOT, WVP, visual,
  thumbnails, metadata files). Each item comes with an :class:`ItemTruth`: the reflectance it must
  load to, computed independently from the original source files.
* :func:`serve_items` serves items and collections through a real STAC API: ``rustac serve``.
* :class:`ErrorServer` (HTTP server answering every request with one status), :func:`unreachable_url`.
* :class:`FlakyFileServer` serves the COGs over HTTP with ranges and, on demand, 503s, truncated
  answers, stalls past a timeout, or 404s, for the read-fault tests.
* :func:`moto_s3` runs moto's S3 server for Zarr-on-S3 tests.

Why ``rustac serve``
--------------------
It is a real STAC API server (core, collections, OGC features, item-search: GET and POST ``/search``
with ``bbox``, ``intersects``, ``datetime``, ``ids``, ``collections``, ``limit`` and ``next`` paging)
that ships as a wheel on PyPI (``rustac``), loads items and collections from JSON files into an
in-memory backend and starts in well under a second, with no database and no network. The
alternatives need more: stac-fastapi-pgstac needs a PostgreSQL server with the PostGIS and pgstac
extensions (not pip-installable; a test would need Docker or a system database), and
stac-fastapi-geoparquet needs the items converted to stac-geoparquet first plus a DuckDB/uvicorn
stack. Limits of rustac 0.9.18 (CLI 0.2.18), memory backend, measured here: it does NOT implement the
query, filter (CQL2), sort or fields extensions and does not advertise them in ``/conformance``:
``sortby`` and ``fields`` and a ``filter`` without ``filter-lang`` are silently ignored, while a POST
body with ``query`` or with ``filter-lang`` returns ZERO items (no error), and ``GET /search?sortby=``
answers 500. So ``eo:cloud_cover`` selection must be done on the client side against this server.
Results come in insertion order (items are written sorted by datetime, then id); the default page
size is 10 and ``next`` links carry ``skip``. rustac keeps the item's own links and appends its own
(``self``, ``root``, ``parent``, ``collection``), so the builders keep only the ``license`` link.

Radiometry of the written pixels
--------------------------------
The source pixels are "old baseline" DN: reflectance = DN / 10000 (cloud cover chips: Planetary
Computer L2A of 2019-2020; BigEarthNet: L2A of 2017-2018). Every variant of one source, loaded as its
provider's metadata says, yields the SAME reflectance:

* Planetary Computer ``sentinel-2-l2a``, ``s2:processing_baseline`` < 04.00: DN written unchanged;
  >= 04.00 (e.g. "05.11"): DN + 1000 (0 stays 0 = no data).
* Earth Search ``sentinel-2-l2a`` COG assets with ``earthsearch:boa_offset_applied: true``: DN unchanged
  (Element84 already removed the offset, although ``raster:bands`` still says ``offset: -0.1``);
  the ``*-jp2`` assets of the same item (ESA's original files): DN + 1000.
* Earth Search ``sentinel-2-l1c`` and ``sentinel-2-c1-l2a``: DN + 1000 (their ``raster:bands`` offset
  -0.1 is right).
* One Earth Search ``sentinel-2-l2a`` item LIES (role ``lying``): ``boa_offset_applied: false`` with
  baseline 05.11, but its COG pixels are already harmonised (DN unchanged), as in Earth Search issue
  #71. Loading it as its metadata says shifts every band by -0.1 (its source chip has dark water, so
  a large share of clearly negative reflectance betrays it).

Pitfalls met while building this (for loaders)
----------------------------------------------
* pystac >= 1.12 migrates items read from JSON (pystac_client too) to projection extension v2:
  ``proj:epsg: 32736`` becomes ``proj:code: "EPSG:32736"``. stackstac 0.5.1 reads only ``proj:epsg``,
  so ``stackstac.stack`` needs ``epsg=`` for items returned by pystac_client.
* Earth Search ``raster:bands`` make ``stackstac.stack(rescale=True)`` apply scale 1e-4 and offset -0.1,
  which is wrong for harmonised COGs (``boa_offset_applied: true``).
* Sentinel-2 grids are 10 m aligned; the reprojected item is snapped to a 10 m grid and keeps the
  source footprint (rotated) inside a larger rectangle whose corners are no data (0).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import hashlib
import http
import http.server
import json
import logging
import math
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ES_KEYS",
    "OFFSET_DN",
    "ErrorServer",
    "Fault",
    "FaultServer",
    "ItemTruth",
    "S3Server",
    "StacCatalogue",
    "build_catalogue",
    "es_collection",
    "exception_texts",
    "free_port",
    "moto_s3",
    "self_signed_cert",
    "serve_catalogue",
    "serve_items",
    "unreachable_url",
    "write_raster",
]

#: DN added to old-baseline DN for products of processing baseline >= 04.00 (BOA/RADIO_ADD_OFFSET -1000).
OFFSET_DN = 1000
QUANTIFICATION = 10000.0
#: Sentinel-2 tile origins are multiples of 60 m (so that the 10, 20 and 60 m grids align).
LATTICE = 60.0

#: Earth Search asset keys (common names) of the ESA band codes.
ES_KEYS = {
    "B01": "coastal",
    "B02": "blue",
    "B03": "green",
    "B04": "red",
    "B05": "rededge1",
    "B06": "rededge2",
    "B07": "rededge3",
    "B08": "nir",
    "B8A": "nir08",
    "B09": "nir09",
    "B10": "cirrus",
    "B11": "swir16",
    "B12": "swir22",
}
BANDS_10M = ("B02", "B03", "B04", "B08")
BANDS_ALL = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")

_TEMPLATES = {
    # template name: (file under stac_items/api_responses, collection id)
    "pc-l2a": ("planetarycomputer_microsoft_com__sentinel-2-l2a.json", "sentinel-2-l2a"),
    "es-l2a": ("earth-search_aws_element84_com__sentinel-2-l2a.json", "sentinel-2-l2a"),
    "es-l1c": ("earth-search_aws_element84_com__sentinel-2-l1c.json", "sentinel-2-l1c"),
    "es-c1-l2a": ("earth-search_aws_element84_com__sentinel-2-c1-l2a.json", "sentinel-2-c1-l2a"),
}
_PC_COLLECTION = "stac_items/odc_stac/sentinel-2-l2a.collection.json"
_CHIPS = "cloud_cover_chips"
_BEN = "bigearthnet/example_patches"
#: BigEarthNet patch of the ``multires`` items: native 10/20/60 m bands with real georeferencing
#: (Finland, UTM 35N, 120x120 px at 10 m), 2017 L2A, old baseline.
BEN_PATCH = "S2B_MSIL2A_20170924T93020_69_24"
_BEN_TIME = dt.datetime(2017, 9, 24, 9, 30, 20, tzinfo=dt.timezone.utc)
_CHIP_TIME = {
    "adwp": (8, 20, 47),  # Chifunfu (Tanzania), 2020-04-29T08:20:47Z in metadata.csv
    "khas": (7, 57, 18),  # Eswatini, 2020-09-12T07:57:18Z
    "adxp": (8, 20, 47),  # Chifunfu
}

_COG_OPTIONS = {
    "compress": "DEFLATE",
    "predictor": 2,
    "blocksize": 256,
    "overview_resampling": "NEAREST",
    "resampling": "NEAREST",
}
_JP2_OPTIONS = {"quality": 100, "reversible": "YES", "ycbcr420": "NO"}


# --------------------------------------------------------------------------------------------------
# ground truth
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemTruth:
    """What one served item must load to, derived from the original real files (not from the COGs).

    ``reflectance(band)`` = source DN / 10000 (NaN where DN is 0) on the asset's grid: the source
    window for plain items, the source warped (nearest) onto the item grid for the reprojected one.
    The file of asset ``k`` holds ``source DN + asset_dn_offset[k]`` (0 kept as no data), so a correct
    loader computes ``(file DN - asset_dn_offset[k]) / 10000``.
    """

    item_id: str
    collection: str
    role: str
    datetime: str
    #: CRS of every asset of the item, e.g. "EPSG:32736".
    crs: str
    #: lon/lat bbox of the item's data footprint.
    bbox: tuple[float, float, float, float]
    #: folder of the real source files (a cloud cover chip or a BigEarthNet patch).
    source_dir: Path
    #: (row_off, col_off, height, width) in 10 m pixels of the source, or None for the whole source.
    window: tuple[int, int, int, int] | None
    #: "real (...)", "borrowed from chip adwp (...)" or "reprojected to EPSG:... (nearest)". Real grids
    #: are moved (<= 30 m) onto the 60 m lattice of Sentinel-2 tiles: several chips are off it by 5 m.
    georeferencing: str
    #: asset key -> band code, asset key -> local file, asset key -> DN added to the source DN.
    asset_bands: Mapping[str, str]
    asset_paths: Mapping[str, Path]
    asset_dn_offset: Mapping[str, int]
    #: one line: how the provider's metadata says to read this item, and what the pixels really are.
    convention: str
    #: False when the metadata deliberately lies about the radiometry (role "lying").
    metadata_truthful: bool
    #: human cloud label (0 clear, 1 cloud) of the source chip, its quality, and its cloud fraction.
    label_path: Path | None = None
    label_trusted: bool | None = None
    cloud_fraction: float | None = None
    #: CRS and 10 m affine transform (6 numbers) of the source window as georeferenced in the item
    #: before any reprojection (real grid moved onto the 60 m lattice, or the borrowed footprint).
    source_grid: tuple[str, tuple[float, ...]] | None = field(default=None, repr=False)
    dst_crs: str | None = field(default=None, repr=False)

    def asset_of(self, band: str) -> str:
        """First asset key holding ``band`` (COG assets come before ``*-jp2`` ones)."""
        for key, code in self.asset_bands.items():
            if code == band:
                return key
        raise KeyError(f"{self.item_id} has no asset for {band}")

    def source_path(self, band: str) -> Path:
        """Original real file of ``band``."""
        return _source_file(self.source_dir, band)

    def grid(self, band: str) -> tuple[str, tuple[float, ...], tuple[int, int]]:
        """(crs, affine transform as 6 numbers, (height, width)) of the asset holding ``band``."""
        import rasterio

        with rasterio.open(self.asset_paths[self.asset_of(band)]) as ds:
            return str(ds.crs), tuple(ds.transform)[:6], ds.shape

    def source_dn(self, band: str) -> np.ndarray:
        """Source DN (old baseline, uint16) on the asset's grid, 0 = no data."""
        return _dn_on_grid(
            self.source_path(band),
            self.window,
            self.asset_paths[self.asset_of(band)],
            self.dst_crs,
            self.source_grid,
        )

    def reflectance(self, band: str) -> np.ndarray:
        """Expected reflectance (float32, NaN for no data) of ``band`` on the asset's grid."""
        dn = self.source_dn(band)
        return np.where(dn == 0, np.float32(np.nan), dn.astype(np.float32) / np.float32(QUANTIFICATION))

    def labels(self) -> np.ndarray | None:
        """Cloud label (uint8, 0 clear, 1 cloud) on the 10 m grid of the item, or None."""
        if self.label_path is None:
            return None
        return _dn_on_grid(
            self.label_path,
            self.window,
            self.asset_paths[self.asset_of("B02")],
            self.dst_crs,
            self.source_grid,
        )


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
    truth: Mapping[str, ItemTruth]
    #: the item JSON documents as served, sorted by datetime then id.
    items: tuple[dict[str, Any], ...]
    collection_docs: tuple[dict[str, Any], ...]
    #: folder holding the COG/JP2 files and the JSON files.
    folder: Path

    def item(self, role: str) -> dict[str, Any]:
        """Served JSON of the item of ``role`` (a deep copy)."""
        item_id = self.ids[role]
        return copy.deepcopy(next(i for i in self.items if i["id"] == item_id))

    def truth_of(self, role: str) -> ItemTruth:
        return self.truth[self.ids[role]]


# --------------------------------------------------------------------------------------------------
# item specifications
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    role: str
    template: str  # key of _TEMPLATES
    day: dt.date
    source: str  # chip name or "ben"
    window: tuple[int, int, int, int] | None = None
    footprint: str | None = None  # chip whose georeferencing is borrowed
    dst_crs: str | None = None
    baseline: str | None = None  # override of s2:processing_baseline
    boa_offset_applied: bool | None = None  # override of earthsearch:boa_offset_applied
    tile_shift: int = 0  # MGRS column letter shift (second item of a tile-edge pair)
    with_jp2: bool = False  # also write the "*-jp2" assets (Earth Search sentinel-2-l2a)
    when: dt.datetime | None = None  # acquisition time (UTC); default: the chip's time of day on ``day``


def _d(y: int, m: int, d: int) -> dt.date:
    return dt.date(y, m, d)


_LEFT = (0, 0, 512, 300)  # columns 0..299
_RIGHT = (0, 200, 512, 312)  # columns 200..511: 100 columns of overlap
_OTHER_UTM = "EPSG:32735"  # chip adwp lies in UTM 36S; 35S is the western neighbour

_PC_SPECS = (
    _Spec("baseline_0212", "pc-l2a", _d(2020, 4, 29), "adwp", baseline="02.12"),
    _Spec("baseline_0511", "pc-l2a", _d(2024, 5, 3), "adwp", baseline="05.11"),
    _Spec("tile_edge_left", "pc-l2a", _d(2020, 5, 4), "adwp", window=_LEFT, baseline="02.12"),
    _Spec("tile_edge_right", "pc-l2a", _d(2020, 5, 4), "adwp", window=_RIGHT, baseline="02.12", tile_shift=1),
    _Spec("other_utm", "pc-l2a", _d(2020, 5, 9), "adwp", dst_crs=_OTHER_UTM, baseline="02.12"),
    _Spec("timeseries_0", "pc-l2a", _d(2020, 6, 3), "adwp", baseline="02.12"),
    _Spec("timeseries_1", "pc-l2a", _d(2020, 6, 13), "khas", footprint="adwp", baseline="02.12"),
    _Spec("timeseries_2", "pc-l2a", _d(2020, 6, 23), "adxp", footprint="adwp", baseline="02.12"),
    _Spec("multires", "pc-l2a", _BEN_TIME.date(), "ben", baseline="02.12"),
)
_ES_SPECS = (
    _Spec("harmonised", "es-l2a", _d(2025, 7, 1), "adwp", boa_offset_applied=True, with_jp2=True),
    _Spec("l1c", "es-l1c", _d(2025, 7, 1), "adwp"),
    _Spec("c1_l2a", "es-c1-l2a", _d(2025, 7, 1), "adwp"),
    _Spec("lying", "es-l2a", _d(2025, 7, 6), "khas", boa_offset_applied=False, baseline="05.11"),
    _Spec("tile_edge_left", "es-l2a", _d(2025, 7, 11), "adwp", window=_LEFT),
    _Spec("tile_edge_right", "es-l2a", _d(2025, 7, 11), "adwp", window=_RIGHT, tile_shift=1),
    _Spec("other_utm", "es-l2a", _d(2025, 7, 16), "adwp", dst_crs=_OTHER_UTM),
    _Spec("timeseries_0", "es-l2a", _d(2025, 7, 21), "adwp"),
    _Spec("timeseries_1", "es-l2a", _d(2025, 7, 26), "khas", footprint="adwp"),
    _Spec("timeseries_2", "es-l2a", _d(2025, 7, 31), "adxp", footprint="adwp"),
    # Collection 1 reprocessing of a 2017 product: processing baseline 05.00, offset present.
    _Spec("multires", "es-c1-l2a", _BEN_TIME.date(), "ben", baseline="05.00"),
)
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


# --------------------------------------------------------------------------------------------------
# rasters
# --------------------------------------------------------------------------------------------------


def _source_file(source_dir: Path, band: str) -> Path:
    if source_dir.parent.name == _CHIPS:
        return source_dir / f"{band}.tif"
    return source_dir / f"{source_dir.name}_{band}.tif"


def _source_bands(source_dir: Path) -> tuple[str, ...]:
    return tuple(b for b in BANDS_ALL if _source_file(source_dir, b).exists())


def write_raster(path: Path, array: np.ndarray, crs: Any, transform: Any, *, jp2: bool = False) -> Path:
    """Write one uint16 band: a COG (GDAL driver "COG", nodata 0) or a lossless JPEG2000."""
    import rasterio

    path.parent.mkdir(parents=True, exist_ok=True)
    profile: dict[str, Any] = {
        "width": array.shape[1],
        "height": array.shape[0],
        "count": 1,
        "dtype": "uint16",
        "crs": crs,
        "transform": transform,
    }
    if jp2:
        # ESA's JP2 files carry no GDAL nodata; STAC raster:bands says nodata 0.
        profile.update(driver="JP2OpenJPEG", **_JP2_OPTIONS)
    else:
        profile.update(driver="COG", nodata=0, **_COG_OPTIONS)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array.astype(np.uint16, copy=False), 1)
    return path


def _snap_grid(crs_src: Any, transform: Any, shape: tuple[int, int], dst_crs: str, res: float):
    """Grid in ``dst_crs`` at ``res`` covering the source raster, its origin on the 60 m lattice."""
    from affine import Affine
    from rasterio.warp import transform_bounds

    h, w = shape
    left, top = transform @ (0, 0)
    right, bottom = transform @ (w, h)
    xmin, ymin, xmax, ymax = transform_bounds(
        crs_src,
        dst_crs,
        min(left, right),
        min(top, bottom),
        max(left, right),
        max(top, bottom),
        densify_pts=21,
    )
    x0, y1 = math.floor(xmin / LATTICE) * LATTICE, math.ceil(ymax / LATTICE) * LATTICE
    width, height = math.ceil((xmax - x0) / res), math.ceil((y1 - ymin) / res)
    return Affine(res, 0.0, x0, 0.0, -res, y1), (height, width)


def _lattice_shift(path: Path) -> tuple[float, float]:
    """(dx, dy) moving the origin of ``path`` to the nearest point of the 60 m lattice."""
    import rasterio

    with rasterio.open(path) as ds:
        c, f = ds.transform.c, ds.transform.f
    return round(c / LATTICE) * LATTICE - c, round(f / LATTICE) * LATTICE - f


def _read_window(path: Path, window: tuple[int, int, int, int] | None):
    """(array, crs, transform) of ``window`` (10 m pixel units, scaled to the file's resolution)."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(path) as src:
        if window is None:
            return src.read(1), src.crs, src.transform
        k = 10.0 / src.res[0]
        row, col, h, w = (round(v * k) for v in window)
        win = Window(col, row, w, h)
        return src.read(1, window=win), src.crs, src.window_transform(win)


def _nodata_fraction(path: Path) -> float:
    import rasterio

    with rasterio.open(path) as ds:
        return float((ds.read(1) == 0).mean())


def _dn_on_grid(path: Path, window, grid_path: Path, dst_crs: str | None, source_grid) -> np.ndarray:
    """Source values of ``path`` (window) on the grid of the file ``grid_path``.

    ``source_grid`` = (crs, 10 m transform) given to the window before reprojection.
    """
    import rasterio
    from affine import Affine
    from rasterio.warp import Resampling, reproject

    data, _, transform = _read_window(path, window)
    if dst_crs is None:
        return data
    crs = source_grid[0]
    transform = Affine(*source_grid[1]) @ Affine.scale(abs(transform.a) / 10.0)
    with rasterio.open(grid_path) as g:
        out = np.zeros(g.shape, dtype=data.dtype)
        reproject(
            data,
            out,
            src_transform=transform,
            src_crs=crs,
            src_nodata=0,
            dst_transform=g.transform,
            dst_crs=g.crs,
            dst_nodata=0,
            resampling=Resampling.nearest,
        )
    return out


def _warp(data: np.ndarray, crs: Any, transform: Any, dst_crs: str, res: float):
    from rasterio.warp import Resampling, reproject

    dst_transform, shape = _snap_grid(crs, transform, data.shape, dst_crs, res)
    out = np.zeros(shape, dtype=data.dtype)
    reproject(
        data,
        out,
        src_transform=transform,
        src_crs=crs,
        src_nodata=0,
        dst_transform=dst_transform,
        dst_crs=dst_crs,
        dst_nodata=0,
        resampling=Resampling.nearest,
    )
    return out, dst_transform


# --------------------------------------------------------------------------------------------------
# STAC items
# --------------------------------------------------------------------------------------------------

_BAND_LETTERS = "CDEFGHJKLMNPQRSTUVWX"
_ROW_LETTERS = "ABCDEFGHJKLMNPQRSTUV"
_COL_SETS = ("STUVWXYZ", "ABCDEFGH", "JKLMNPQR")


def _mgrs_tile(epsg: int, x: float, y: float, lat: float, col_shift: int = 0) -> str:
    """MGRS 100 km square of (x, y) in UTM ``epsg`` (WGS84 "AA" lettering). Used as a tile name only."""
    zone = epsg % 100
    band = _BAND_LETTERS[min(max(int((lat + 80) // 8), 0), len(_BAND_LETTERS) - 1)]
    col = _COL_SETS[zone % 3][(int(x // 100_000) - 1 + col_shift) % 8]
    row = _ROW_LETTERS[(int(y // 100_000) + (5 if zone % 2 == 0 else 0)) % 20]
    return f"{zone:02d}{band}{col}{row}"


def _sun_angles(when: dt.datetime, lat: float, lon: float) -> tuple[float, float]:
    """(zenith, azimuth from north) of the sun in degrees: NOAA's general solar position (~0.1 deg)."""
    hour = when.hour + when.minute / 60 + when.second / 3600
    g = 2 * math.pi / 365 * (when.timetuple().tm_yday - 1 + (hour - 12) / 24)
    eqtime = 229.18 * (
        0.000075 + 0.001868 * math.cos(g) - 0.032077 * math.sin(g)
        - 0.014615 * math.cos(2 * g) - 0.040849 * math.sin(2 * g)
    )  # fmt: skip
    decl = (
        0.006918 - 0.399912 * math.cos(g) + 0.070257 * math.sin(g) - 0.006758 * math.cos(2 * g)
        + 0.000907 * math.sin(2 * g) - 0.002697 * math.cos(3 * g) + 0.00148 * math.sin(3 * g)
    )  # fmt: skip
    ha = math.radians((hour * 60 + eqtime + 4 * lon) / 4 - 180)
    phi = math.radians(lat)
    cos_zen = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(ha)
    zenith = math.degrees(math.acos(max(-1.0, min(1.0, cos_zen))))
    azimuth = math.degrees(
        math.atan2(math.sin(ha), math.cos(ha) * math.sin(phi) - math.tan(decl) * math.cos(phi))
    )
    return zenith, (azimuth + 180) % 360


def _replace_strings(obj: Any, subs: list[tuple[str, str]]) -> Any:
    if isinstance(obj, str):
        for old, new in subs:
            obj = obj.replace(old, new)
        return obj
    if isinstance(obj, list):
        return [_replace_strings(v, subs) for v in obj]
    if isinstance(obj, dict):
        return {k: _replace_strings(v, subs) for k, v in obj.items()}
    return obj


def _replace_strings_re(obj: Any, pattern: re.Pattern[str], new: str) -> Any:
    if isinstance(obj, str):
        return pattern.sub(new, obj)
    if isinstance(obj, list):
        return [_replace_strings_re(v, pattern, new) for v in obj]
    if isinstance(obj, dict):
        return {k: _replace_strings_re(v, pattern, new) for k, v in obj.items()}
    return obj


def _like(template_value: Any, value: float) -> Any:
    """``value`` as int when the provider wrote ints there and it is integral."""
    if isinstance(template_value, int) and float(value).is_integer():
        return int(value)
    return float(value)


def _template_tile(props: Mapping[str, Any]) -> str:
    if "s2:mgrs_tile" in props:
        return props["s2:mgrs_tile"]
    return f"{props['mgrs:utm_zone']}{props['mgrs:latitude_band']}{props['mgrs:grid_square']}"


def _tile_path(tile: str) -> str:
    return f"{int(tile[:2])}/{tile[2]}/{tile[3:]}"


def _baseline_tokens(baseline: str) -> list[str]:
    major, minor = baseline.split(".")
    return [f"N{major}{minor}", f"N{baseline}"]


def _file_fields(asset: dict[str, Any], path: Path) -> None:
    if "file:size" in asset:
        asset["file:size"] = path.stat().st_size
    if "file:checksum" in asset:  # multihash: 0x12 sha2-256, 0x20 bytes
        asset["file:checksum"] = "1220" + hashlib.sha256(path.read_bytes()).hexdigest()


def _asset_json(template: Mapping[str, Any], path: Path, epsg: int, transform: Any, shape, res: float):
    a = copy.deepcopy(dict(template))
    a["href"] = str(path)
    if "proj:shape" in a:
        a["proj:shape"] = [int(shape[0]), int(shape[1])]
    if "proj:transform" in a:
        tt = a["proj:transform"]
        a["proj:transform"] = [_like(tt[0], v) for v in tuple(transform)[:6]]
    if "proj:bbox" in a:
        left, top = transform @ (0, 0)
        right, bottom = transform @ (shape[1], shape[0])
        a["proj:bbox"] = [_like(a["proj:bbox"][0], v) for v in (left, bottom, right, top)]
    if "proj:epsg" in a:
        a["proj:epsg"] = epsg
    if "proj:code" in a:
        a["proj:code"] = f"EPSG:{epsg}"
    if "gsd" in a:
        a["gsd"] = _like(a["gsd"], res)
    for rb in a.get("raster:bands", []):
        if "spatial_resolution" in rb:
            rb["spatial_resolution"] = _like(rb["spatial_resolution"], res)
    _file_fields(a, path)
    return a


def _dn_offset(template: str, spec: _Spec, asset_key: str, baseline: str) -> int:
    """DN added to the old-baseline source DN in the file of ``asset_key`` (provider conventions)."""
    if template == "es-l2a":
        # COGs of Earth Search sentinel-2-l2a are harmonised (also those of the lying item);
        # the *-jp2 assets are ESA's raw files.
        return OFFSET_DN if asset_key.endswith("-jp2") else 0
    if template in ("es-l1c", "es-c1-l2a"):
        return OFFSET_DN
    return OFFSET_DN if tuple(int(p) for p in baseline.split(".")) >= (4, 0) else 0


def _convention(template: str, spec: _Spec, baseline: str) -> str:
    if template == "pc-l2a":
        if tuple(int(p) for p in baseline.split(".")) >= (4, 0):
            return (
                f"PC s2:processing_baseline {baseline} >= 04.00: files hold DN+1000; "
                "reflectance=(DN-1000)/1e4"
            )
        return f"PC s2:processing_baseline {baseline} < 04.00: files hold DN; reflectance=DN/1e4"
    if template == "es-l2a":
        if spec.boa_offset_applied is False:
            return (
                "ES l2a LYING metadata: boa_offset_applied false + raster offset -0.1, but COG pixels are "
                "already harmonised: reflectance=DN/1e4 (applying the offset gives -0.1)"
            )
        jp2 = "; *-jp2 assets hold DN+1000: reflectance=(DN-1000)/1e4" if spec.with_jp2 else ""
        return (
            "ES l2a boa_offset_applied true: COGs hold DN (ignore raster offset -0.1); reflectance=DN/1e4"
            + jp2
        )
    return (
        f"ES {template[3:]} baseline {baseline}: files hold DN+1000; raster scale 1e-4 offset -0.1 is right"
    )


def _load_template(data: Path, template: str) -> dict[str, Any]:
    name, _ = _TEMPLATES[template]
    features = json.loads((data / "stac_items" / "api_responses" / name).read_text())["features"]
    return next(f for f in features if "assets" in f)  # some responses hold field-restricted items


def _chip_quality(data: Path) -> dict[str, str]:
    return {c["chip"]: c["label_quality"] for c in json.loads((data / _CHIPS / "chips.json").read_text())}


def _build_item(data: Path, spec: _Spec, out: Path, template_doc: dict[str, Any], quality: dict[str, str]):
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.warp import transform_geom

    template = spec.template
    collection = _TEMPLATES[template][1]
    is_chip = spec.source != "ben"
    source_dir = data / (_CHIPS if is_chip else _BEN) / (spec.source if is_chip else BEN_PATCH)
    bands = _source_bands(source_dir)
    if spec.when is not None:
        when = spec.when
    elif is_chip:  # time of day of the place (footprint chip)
        hh, mm, ss = _CHIP_TIME[spec.footprint or spec.source]
        when = dt.datetime.combine(spec.day, dt.time(hh, mm, ss), tzinfo=dt.timezone.utc)
    else:
        when = _BEN_TIME
    footprint_dir = data / _CHIPS / spec.footprint if spec.footprint else source_dir

    # georeferencing of the 10 m grid before any reprojection (real, or borrowed from another chip),
    # moved onto the 60 m lattice of Sentinel-2 tile origins so that 10/20/60 m grids align and
    # loaders that snap to multiples of the resolution (stackstac) do not resample
    dx, dy = _lattice_shift(_source_file(footprint_dir, "B02"))
    _, crs0, transform0 = _read_window(_source_file(footprint_dir, "B02"), spec.window)
    transform0 = Affine.translation(dx, dy) @ transform0
    data10, _, _ = _read_window(_source_file(source_dir, "B02"), spec.window)
    shape10 = data10.shape
    geom_src = {
        "type": "Polygon",
        "coordinates": [
            [
                tuple(transform0 @ (c, r))
                for c, r in ((0, 0), (shape10[1], 0), (shape10[1], shape10[0]), (0, shape10[0]), (0, 0))
            ]
        ],
    }
    # footprint of the data in lon/lat (the corners suffice for 5 km)
    geometry = transform_geom(crs0, "EPSG:4326", geom_src, precision=7)
    lons = [p[0] for p in geometry["coordinates"][0]]
    lats = [p[1] for p in geometry["coordinates"][0]]
    bbox = (min(lons), min(lats), max(lons), max(lats))
    centre_lon, centre_lat = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
    crs = CRS.from_user_input(spec.dst_crs) if spec.dst_crs else crs0
    epsg = int(crs.to_epsg())
    cx, cy = transform_geom("EPSG:4326", crs, {"type": "Point", "coordinates": (centre_lon, centre_lat)})[
        "coordinates"
    ]
    tile = _mgrs_tile(epsg, cx, cy, centre_lat, spec.tile_shift)

    props_t = template_doc["properties"]
    baseline = spec.baseline or props_t["s2:processing_baseline"]
    t_tile = _template_tile(props_t)
    t_when = dt.datetime.fromisoformat(props_t["datetime"].replace("Z", "+00:00"))
    subs = [
        (t_tile, tile),
        (_tile_path(t_tile), _tile_path(tile)),
        (t_when.strftime("%Y%m%d"), when.strftime("%Y%m%d")),
        (f"/{t_when.year}/{t_when.month}/", f"/{when.year}/{when.month}/"),
    ]
    subs += list(
        zip(_baseline_tokens(props_t["s2:processing_baseline"]), _baseline_tokens(baseline), strict=True)
    )
    item = _replace_strings(copy.deepcopy(template_doc), subs)
    # time stamps of the new date in ids and product names: the acquisition time of day
    stamp = re.compile(when.strftime("%Y%m%d") + r"T\d{6}")
    item = _replace_strings_re(item, stamp, when.strftime("%Y%m%dT%H%M%S"))
    item_id = item["id"]
    props = item["properties"]
    props["datetime"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")  # as rustac serves it
    props["s2:processing_baseline"] = baseline
    if spec.boa_offset_applied is not None:
        props["earthsearch:boa_offset_applied"] = spec.boa_offset_applied
    if "proj:epsg" in props:
        props["proj:epsg"] = epsg
    if "proj:code" in props:
        props["proj:code"] = f"EPSG:{epsg}"
    if "proj:centroid" in props:
        props["proj:centroid"] = {"lat": round(centre_lat, 5), "lon": round(centre_lon, 5)}
    # sun angles of this place and time (the template's belong to another place and date)
    zenith, azimuth = _sun_angles(when, centre_lat, centre_lon)
    for key, value in (
        ("view:sun_elevation", 90 - zenith),
        ("view:sun_azimuth", azimuth),
        ("s2:mean_solar_zenith", zenith),
        ("s2:mean_solar_azimuth", azimuth),
    ):
        if key in props:
            props[key] = round(value, 6)
    if "mgrs:utm_zone" in props:
        props["mgrs:utm_zone"] = int(tile[:2])
        props["mgrs:latitude_band"] = tile[2]
        props["mgrs:grid_square"] = tile[3:]
    label_path = source_dir / "label.tif" if is_chip else None
    cloud = None
    if label_path is not None:
        lab, _, _ = _read_window(label_path, spec.window)
        cloud = float(lab.mean())
    # eo:cloud_cover from the chip's human label (BigEarthNet patches: none, written as 0)
    props["eo:cloud_cover"] = round(100 * cloud, 4) if cloud is not None else 0.0
    item["geometry"] = geometry
    item["bbox"] = list(bbox)
    item["links"] = [lk for lk in item.get("links", []) if lk.get("rel") == "license"]

    # assets: only those backed by real pixels, in the provider's key order
    key_of = (lambda b: b) if template == "pc-l2a" else (lambda b: ES_KEYS[b])
    wanted: dict[str, str] = {}
    for b in bands:
        wanted[key_of(b)] = b
        if spec.with_jp2:
            wanted[key_of(b) + "-jp2"] = b
    assets: dict[str, Any] = {}
    paths: dict[str, Path] = {}
    offsets: dict[str, int] = {}
    item_dir = out / item_id
    for key, t_asset in template_doc["assets"].items():
        if key not in wanted:
            continue
        band = wanted[key]
        dn, _, transform = _read_window(_source_file(source_dir, band), spec.window)
        res = abs(transform.a)
        transform, src_crs = transform0 @ Affine.scale(res / 10.0), crs0
        if spec.dst_crs:
            dn, transform = _warp(dn, src_crs, transform, spec.dst_crs, res)
        offset = _dn_offset(template, spec, key, baseline)
        if int(dn.max()) + offset > np.iinfo(np.uint16).max:
            raise ValueError(f"{item_id}/{key}: DN + {offset} overflows uint16")
        written = np.where(dn == 0, 0, dn.astype(np.uint32) + offset).astype(np.uint16)
        jp2 = "jp2" in str(t_asset.get("type", ""))
        path = write_raster(item_dir / f"{key}.{'jp2' if jp2 else 'tif'}", written, crs, transform, jp2=jp2)
        assets[key] = _asset_json(t_asset, path, epsg, transform, dn.shape, res)
        paths[key] = path
        offsets[key] = offset
    item["assets"] = assets
    if "s2:nodata_pixel_percentage" in props:  # of the first asset's file, not of the template's tile
        nodata = np.mean([_nodata_fraction(p) for p in paths.values()][:1])
        props["s2:nodata_pixel_percentage"] = round(100 * float(nodata), 6)

    if spec.dst_crs:
        georef = f"reprojected to {spec.dst_crs} (nearest; origin on the 60 m lattice)"
    elif spec.footprint:
        georef = f"borrowed from chip {spec.footprint}: pixels of chip {spec.source}, not of this place"
    else:
        georef = f"real (moved by dx={dx:+g} m, dy={dy:+g} m onto the 60 m lattice)"
    truth = ItemTruth(
        item_id=item_id,
        collection=collection,
        role=spec.role,
        datetime=props["datetime"],
        crs=f"EPSG:{epsg}",
        bbox=bbox,
        source_dir=source_dir,
        window=spec.window,
        georeferencing=georef,
        asset_bands={k: wanted[k] for k in assets},
        asset_paths=paths,
        asset_dn_offset=offsets,
        convention=_convention(template, spec, baseline),
        metadata_truthful=spec.boa_offset_applied is not False,
        label_path=label_path,
        label_trusted=(quality.get(spec.source) == "trusted") if is_chip else None,
        cloud_fraction=cloud,
        source_grid=(str(crs0), tuple(transform0)[:6]),
        dst_crs=spec.dst_crs,
    )
    return item, truth


def es_collection(collection_id: str, items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Minimal valid STAC 1.0 collection for Earth Search collection ``collection_id``, extent from items."""
    items = list(items)
    bboxes = [i["bbox"] for i in items] or [[-180.0, -90.0, 180.0, 90.0]]
    times = sorted(i["properties"]["datetime"] for i in items) or [None]
    return {
        "type": "Collection",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": collection_id,
        "title": f"Earth Search {collection_id} (local test copy)",
        "description": f"Local test copy of Earth Search collection {collection_id}: real pixels.",
        "license": "proprietary",
        "extent": {
            "spatial": {
                "bbox": [
                    [
                        min(b[0] for b in bboxes),
                        min(b[1] for b in bboxes),
                        max(b[2] for b in bboxes),
                        max(b[3] for b in bboxes),
                    ]
                ]
            },
            "temporal": {"interval": [[times[0], times[-1]]]},
        },
        "links": [],
    }


def _iso_range(items: Iterable[Mapping[str, Any]]) -> str:
    days = sorted(i["properties"]["datetime"][:10] for i in items)
    return f"{days[0]}T00:00:00Z/{days[-1]}T23:59:59Z"


def build_catalogue(name: str, data: Path, out: Path) -> StacCatalogue:
    """Write the COGs and items of catalogue ``name`` ("pc" or "es") under ``out`` (not served: url "")."""
    specs = {"pc": _PC_SPECS, "es": _ES_SPECS}[name]
    quality = _chip_quality(data)
    templates = {t: _load_template(data, t) for t in {s.template for s in specs}}
    items, truths = [], {}
    for spec in specs:
        item, truth = _build_item(data, spec, out, templates[spec.template], quality)
        items.append(item)
        truths[item["id"]] = truth
    ids = {t.role: t.item_id for t in truths.values()}
    if len(ids) != len(items):
        raise AssertionError(f"duplicate item ids in catalogue {name}: {sorted(truths)}")
    items.sort(key=lambda i: (i["properties"]["datetime"], i["id"]))
    collection_ids = tuple(dict.fromkeys(_TEMPLATES[s.template][1] for s in specs))
    if name == "pc":
        doc = json.loads((data / _PC_COLLECTION).read_text())
        doc["links"] = [lk for lk in doc["links"] if lk.get("rel") not in ("self", "root", "parent", "items")]
        collections = [doc]
    else:
        collections = [es_collection(c, [i for i in items if i["collection"] == c]) for c in collection_ids]
    main = truths[ids["timeseries_0"]].bbox
    return StacCatalogue(
        name=name,
        url="",
        collections=collection_ids,
        bbox=main,
        datetime=_iso_range(items),
        ids=ids,
        groups={g: tuple(ids[r] for r in roles) for g, roles in _GROUPS[name].items()},
        truth=truths,
        items=tuple(items),
        collection_docs=tuple(collections),
        folder=out,
    )


# --------------------------------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unreachable_url() -> str:
    """URL of a port on 127.0.0.1 where nothing listens (connections are refused)."""
    return f"http://127.0.0.1:{free_port()}"


def _wait_http(
    url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            text = log.read_text(errors="replace") if log and log.exists() else ""
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}:\n{text}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s (last error: {last})")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# rustac's CLI entry point parses the process arguments after the first one (like its console script
# does), so it must run from a script file, not from ``python -c``; this works whatever PATH holds.
_RUSTAC = "import sys\n\nfrom rustac import main\n\nsys.exit(main())\n"


@contextlib.contextmanager
def serve_items(
    items: Iterable[Mapping[str, Any]],
    collections: Iterable[Mapping[str, Any]],
    *,
    workdir: Path | None = None,
    startup_timeout: float = 20.0,
) -> Iterator[str]:
    """Serve ``items`` and ``collections`` with ``rustac serve`` on 127.0.0.1; yield the API root URL.

    Every item's ``collection`` must be one of ``collections``. The server is terminated on exit.
    """
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rustac-")))
        workdir.mkdir(parents=True, exist_ok=True)
        hrefs = []
        for c in collections:
            p = workdir / f"collection-{c['id']}.json"
            p.write_text(json.dumps(c, indent=1, sort_keys=True))
            hrefs.append(str(p))
        p = workdir / "items.json"
        p.write_text(
            json.dumps({"type": "FeatureCollection", "features": list(items)}, indent=1, sort_keys=True)
        )
        hrefs.append(str(p))
        log = workdir / "rustac.log"
        script = workdir / "rustac_cli.py"
        script.write_text(_RUSTAC)
        for attempt in range(3):  # the free port may be taken between probing and binding
            url = f"http://127.0.0.1:{free_port()}"
            with log.open("w") as fh:
                proc = subprocess.Popen(
                    [sys.executable, str(script), "serve", "--addr", url.removeprefix("http://"), *hrefs],
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            try:
                _wait_http(url + "/", startup_timeout, proc, log)
            except RuntimeError:
                _stop(proc)
                if attempt == 2 or "in use" not in log.read_text(errors="replace").lower():
                    raise
                continue
            except BaseException:
                _stop(proc)
                raise
            break
        try:
            yield url
        finally:
            _stop(proc)


@contextlib.contextmanager
def serve_catalogue(cat: StacCatalogue, *, startup_timeout: float = 20.0) -> Iterator[StacCatalogue]:
    """Serve a built catalogue; yield it with ``url`` set."""
    with serve_items(
        cat.items, cat.collection_docs, workdir=cat.folder / "_api", startup_timeout=startup_timeout
    ) as url:
        yield replace(cat, url=url)


class ErrorServer:
    """Threaded HTTP server on 127.0.0.1 answering every request with ``status`` (default 503).

    ``requests`` counts the requests received, ``paths`` lists their methods and paths; both can be
    reset with :meth:`reset`. ``status``, ``headers`` and ``body`` may be changed while it runs.
    Use as a context manager, or :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self, status: int = 503, headers: Mapping[str, str] | None = None, body: bytes | None = None
    ):
        self.status = status
        self.headers = dict(headers or {})
        self.body = body
        self.paths: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def requests(self) -> int:
        with self._lock:
            return len(self.paths)

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def reset(self) -> None:
        with self._lock:
            self.paths.clear()

    def _handler(self):
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with owner._lock:
                    owner.paths.append((self.command, self.path))
                body = owner.body
                if body is None:
                    body = json.dumps({"code": owner.status, "description": "test error server"}).encode()
                self.send_response(owner.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                for k, v in owner.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def start(self) -> ErrorServer:
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="ErrorServer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> ErrorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class Fault:
    """How :class:`FaultServer` answers one path: status, content type and body, at a pace.

    ``{root}`` in the body becomes the server's URL (for links back to it). ``delay_s`` waits before
    answering. ``drip_s`` > 0 sends the answer one byte per ``drip_s`` seconds (a slow loris): the
    whole answer, status line and headers included, or only the body with ``drip_body_only``.
    """

    body: bytes = b""
    status: int = 200
    content_type: str = "application/json"
    delay_s: float = 0.0
    drip_s: float = 0.0
    drip_body_only: bool = False

    @classmethod
    def json(cls, doc: Any, **kw: Any) -> Fault:
        return cls(json.dumps(doc).encode(), **kw)


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, its own authority, and its key: ``(cert.pem, key.pem)`` in ``folder``.

    Clients trust it through ``REQUESTS_CA_BUNDLE`` (requests) or ``SSL_CERT_FILE`` (urllib).
    """
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = Path(folder) / "cert.pem", Path(folder) / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class FaultServer:
    """Threaded HTTP server on 127.0.0.1 answering each request as the :class:`Fault` of its path says.

    ``routes`` maps a path (with its query, else without) to a fault; other paths answer 404. GET,
    POST and HEAD are answered alike. A dripping answer stops after ``max_s`` seconds or when the
    client hangs up, so no thread outlives a test for long. ``paths`` lists (method, path) of every
    request. ``tls``: (certificate, key) PEM files (:func:`self_signed_cert`) to serve HTTPS. Use as a
    context manager; ``url`` stays readable after it stops.
    """

    def __init__(
        self,
        routes: Mapping[str, Fault] | None = None,
        max_s: float = 10.0,
        tls: tuple[Path, Path] | None = None,
    ):
        self.routes: dict[str, Fault] = dict(routes or {})
        self.max_s, self.tls = max_s, tls
        self.paths: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._url = ""

    @property
    def url(self) -> str:
        if not self._url:
            raise RuntimeError("server not started")
        return self._url

    def _handler(self):
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with owner._lock:
                    owner.paths.append((self.command, self.path))
                fault = owner.routes.get(self.path) or owner.routes.get(self.path.split("?", 1)[0])
                fault = fault or Fault(b"not found", status=404, content_type="text/plain")
                body = fault.body.replace(b"{root}", owner.url.encode())
                head = (
                    f"HTTP/1.1 {fault.status} {http.HTTPStatus(fault.status).phrase}\r\n"
                    f"Content-Type: {fault.content_type}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n"
                ).encode()
                data = head + (b"" if self.command == "HEAD" else body)
                slow = data if not fault.drip_body_only else data[len(head) :]
                fast = data[: len(data) - len(slow)] if fault.drip_s > 0 else data
                self.close_connection = True
                time.sleep(min(fault.delay_s, owner.max_s))
                with contextlib.suppress(OSError):  # the client hung up (a deadline passed)
                    self.wfile.write(fast)
                    self.wfile.flush()
                    if fault.drip_s <= 0:
                        return
                    end = time.monotonic() + owner.max_s
                    for i in range(len(slow)):
                        if time.monotonic() > end:
                            return
                        self.wfile.write(slow[i : i + 1])
                        self.wfile.flush()
                        time.sleep(fault.drip_s)

            do_GET = do_POST = do_HEAD = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> FaultServer:
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        scheme = "http"
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
            scheme = "https"
        self._url = f"{scheme}://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="FaultServer", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._httpd = None


def exception_texts(err: BaseException) -> list[str]:
    """Every text an error shows or carries: ``str`` and ``repr`` of it and of each error in its chain
    (causes and contexts), and of their arguments; what a test searches for leaked secrets."""
    texts: list[str] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        texts += [str(e), repr(e), *(repr(a) for a in e.args)]
        texts += [repr(v) for v in vars(e).values() if isinstance(v, str)]
        todo += [e.__cause__, e.__context__]
    return texts


class FlakyFileServer:
    """Threaded HTTP file server on 127.0.0.1 (HEAD, GET with ``Range``) that misbehaves on demand.

    Serves the files under ``root`` as a COG host does (``206 Partial Content`` for ranges). The next
    ``faults`` GET requests whose path contains ``only`` (every GET when ``only`` is "") misbehave as
    ``kind`` says, then it serves normally again; ``faults=-1`` misbehaves for ever:

    * ``"503"``: answer ``503 Service Unavailable``;
    * ``"truncate"``: announce the full ``Content-Length`` but send half the bytes and close;
    * ``"stall"``: wait ``stall_s`` seconds before answering (past the client's timeout);
    * ``"drip"``: send the body one byte per ``stall_s`` seconds (a slow loris; for 10 s at most).

    A path under ``missing`` answers 404. ``paths`` lists (method, path, status) of every request;
    :meth:`faulty` counts the misbehaving answers. Set the fields while it runs; use as a context
    manager. :meth:`href` maps a local file under ``root`` to its URL.
    """

    def __init__(self, root: Path, kind: str = "503", faults: int = 0, only: str = "", stall_s: float = 3.0):
        self.root = Path(root).resolve()
        self.kind, self.faults, self.only, self.stall_s = kind, faults, only, stall_s
        self.missing: set[str] = set()
        self.paths: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def href(self, path: str | Path) -> str:
        return f"{self.url}/{Path(path).resolve().relative_to(self.root).as_posix()}"

    def faulty(self) -> int:
        with self._lock:
            return sum(1 for _, _, status in self.paths if status < 0)

    def _misbehave(self, method: str, path: str) -> str | None:
        """The fault to play on this request, if any (and spend one)."""
        with self._lock:
            if method != "GET" or self.faults == 0 or self.only not in path:
                return None
            if self.faults > 0:
                self.faults -= 1
            return self.kind

    def _log(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.paths.append((method, path, status))

    def _handler(self):
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                path = urllib.request.url2pathname(self.path.split("?", 1)[0]).lstrip("/")
                file = (owner.root / path).resolve()
                if path in owner.missing or not file.is_file() or owner.root not in file.parents:
                    owner._log(self.command, self.path, 404)
                    return self._send(404, b"not found")
                fault = owner._misbehave(self.command, self.path)
                if fault == "503":
                    owner._log(self.command, self.path, -503)
                    return self._send(503, b"busy")
                if fault == "stall":
                    owner._log(self.command, self.path, -408)
                    time.sleep(owner.stall_s)
                data = file.read_bytes()
                status, headers = 200, {}
                match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if match:
                    start = int(match.group(1))
                    end = min(int(match.group(2) or len(data) - 1), len(data) - 1)
                    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                    data, status = data[start : end + 1], 206
                if fault == "truncate":
                    owner._log(self.command, self.path, -206)
                    return self._send(status, data, headers, cut=max(1, len(data) // 2))
                if fault == "drip":
                    owner._log(self.command, self.path, -200)
                    return self._send(status, data, headers, drip=owner.stall_s)
                if fault is None:
                    owner._log(self.command, self.path, status)
                return self._send(status, data, headers)

            def _send(
                self,
                status: int,
                body: bytes,
                headers: Mapping[str, str] | None = None,
                cut: int = 0,
                drip: float = 0.0,
            ):
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if cut:
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    # the client may have given up already (a timeout)
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        end = time.monotonic() + 10
                        while drip and body and time.monotonic() < end:
                            self.wfile.write(body[:1])
                            self.wfile.flush()
                            body = body[1:]
                            time.sleep(drip)
                        self.wfile.write(body[:cut] if cut else body)
                if cut or drip:
                    self.close_connection = True

            do_GET = do_HEAD = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> FlakyFileServer:
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="FlakyFileServer", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._httpd = None


@dataclass(frozen=True)
class S3Server:
    """A moto S3 server on 127.0.0.1 with one bucket and fake credentials."""

    endpoint_url: str
    bucket: str
    key: str
    secret: str
    region: str = "us-east-1"

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options (a fresh dict each time)."""
        return {
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"endpoint_url": self.endpoint_url, "region_name": self.region},
        }

    def url(self, path: str = "") -> str:
        """``s3://bucket/path``."""
        return f"s3://{self.bucket}/{path.lstrip('/')}"


_FAKE_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@contextlib.contextmanager
def moto_s3(bucket: str = "xs2mask-test") -> Iterator[S3Server]:
    """moto's ThreadedMotoServer on a free port of 127.0.0.1 with ``bucket`` created.

    Fake credentials are given in ``storage_options`` and, while the server runs, also in the
    environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY; restored afterwards) so that nothing can
    reach a real account.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in _FAKE_ENV}
    os.environ.update(_FAKE_ENV)
    werkzeug_log = logging.getLogger("werkzeug")  # moto logs every request even with verbose=False
    saved_level = werkzeug_log.level
    werkzeug_log.setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        s3 = S3Server(endpoint, bucket, _FAKE_ENV["AWS_ACCESS_KEY_ID"], _FAKE_ENV["AWS_SECRET_ACCESS_KEY"])
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=s3.region,
            aws_access_key_id=s3.key,
            aws_secret_access_key=s3.secret,
        )
        client.create_bucket(Bucket=bucket)
        yield s3
    finally:
        server.stop()
        werkzeug_log.setLevel(saved_level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _serve_forever(argv: list[str] | None = None) -> None:
    """``python tests/servers.py pc|es [DATA]``: serve a test catalogue until Ctrl-C (try the CLI offline)."""
    import argparse

    parser = argparse.ArgumentParser(description=_serve_forever.__doc__)
    parser.add_argument("name", choices=("pc", "es"))
    parser.add_argument(
        "data", nargs="?", default=str(Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix=f"xs2mask-{args.name}-") as tmp:
        cat = build_catalogue(args.name, Path(args.data), Path(tmp))
        with serve_catalogue(cat) as served:
            w, s, e, n = served.bbox
            print(f"STAC API {served.url}  collections {', '.join(served.collections)}", flush=True)
            print(
                f"try: xs2mask predict --stac-url {served.url} --collection {served.collections[0]} "
                f"--bbox {w} {s} {e} {n} --datetime {served.datetime} --out masks.zarr",
                flush=True,
            )
            # Ctrl-C, or a plain `kill` (SIGTERM) of a server started in the background: either way
            # the context managers stop rustac and remove the catalogue.
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            with contextlib.suppress(KeyboardInterrupt):
                threading.Event().wait()


if __name__ == "__main__":
    _serve_forever()
