"""The item builder: single-band COGs (and JPEG2000 files) of real pixels, and STAC items rewritten from
real provider items, each with its :class:`ItemTruth` (the reflectance it must load to).

:func:`build_item` writes one item from a source chip laid out under a data root (folders as in
``../shared/data``: ``cloud_cover_chips/<chip>/B02.tif ... label.tif``, ``chips.json``,
``stac_items/api_responses/<provider>.json``; :mod:`support.sources` lays them out from the demo scene
of the package). The item keeps the provider's asset keys, properties, extensions and raster metadata
exactly; only the geometry, bbox, ``proj:*`` fields, dates, ids and product names (tile, date, baseline
tokens), tile names, hrefs, ``file:*`` fields, ``eo:cloud_cover`` (from the chip's human label),
``s2:nodata_pixel_percentage`` and the sun angles (computed for the place and time) change; the other
scene statistics (``s2:*_percentage``, view angles) stay the template's. Only assets backed by real
pixels are kept (no SCL, AOT, WVP, visual, thumbnails, metadata files).

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
* An Earth Search ``sentinel-2-l2a`` item may LIE (``boa_offset_applied: false`` with baseline 05.11,
  but its COG pixels already harmonised, as in Earth Search issue #71): loading it as its metadata
  says shifts every band by -0.1.

Pitfalls met while building this (for loaders)
----------------------------------------------
* pystac >= 1.12 migrates items read from JSON (pystac_client too) to projection extension v2:
  ``proj:epsg: 32736`` becomes ``proj:code: "EPSG:32736"``. stackstac 0.5.1 reads only ``proj:epsg``,
  so ``stackstac.stack`` needs ``epsg=`` for items returned by pystac_client.
* Earth Search ``raster:bands`` make ``stackstac.stack(rescale=True)`` apply scale 1e-4 and offset -0.1,
  which is wrong for harmonised COGs (``boa_offset_applied: true``).
* Sentinel-2 grids are 10 m aligned; a reprojected item is snapped to a 10 m grid and keeps the
  source footprint (rotated) inside a larger rectangle whose corners are no data (0).
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BANDS_10M",
    "BANDS_ALL",
    "BEN_PATCH",
    "BEN_TIME",
    "CHIPS",
    "ES_KEYS",
    "OFFSET_DN",
    "PC_COLLECTION",
    "TEMPLATE_FILES",
    "ItemSpec",
    "ItemTruth",
    "build_item",
    "chip_quality",
    "collection_docs",
    "es_collection",
    "load_template",
    "replace_strings",
    "template_tile",
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

TEMPLATE_FILES = {
    # template name: (file under stac_items/api_responses, collection id)
    "pc-l2a": ("planetarycomputer_microsoft_com__sentinel-2-l2a.json", "sentinel-2-l2a"),
    "es-l2a": ("earth-search_aws_element84_com__sentinel-2-l2a.json", "sentinel-2-l2a"),
    "es-l1c": ("earth-search_aws_element84_com__sentinel-2-l1c.json", "sentinel-2-l1c"),
    "es-c1-l2a": ("earth-search_aws_element84_com__sentinel-2-c1-l2a.json", "sentinel-2-c1-l2a"),
}
PC_COLLECTION = "stac_items/odc_stac/sentinel-2-l2a.collection.json"
CHIPS = "cloud_cover_chips"
_BEN = "bigearthnet/example_patches"
#: BigEarthNet patch of the ``multires`` items: native 10/20/60 m bands with real georeferencing
#: (Finland, UTM 35N, 120x120 px at 10 m), 2017 L2A, old baseline.
BEN_PATCH = "S2B_MSIL2A_20170924T93020_69_24"
BEN_TIME = dt.datetime(2017, 9, 24, 9, 30, 20, tzinfo=dt.timezone.utc)
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


# --------------------------------------------------------------------------------------------------
# item specification
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemSpec:
    """One item for :func:`build_item` to write: which template, day, source chip and window, and what
    to change (grid, baseline, Earth Search's offset flag, tile name)."""

    role: str
    template: str  # key of TEMPLATE_FILES
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


# --------------------------------------------------------------------------------------------------
# rasters
# --------------------------------------------------------------------------------------------------


def _source_file(source_dir: Path, band: str) -> Path:
    if source_dir.parent.name == CHIPS:
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


def _nearest(
    data: np.ndarray, src: tuple[Any, Any], dst: tuple[Any, Any], shape: tuple[int, int]
) -> np.ndarray:
    """``data`` on grid ``src`` = (crs, transform) warped (nearest, 0 = no data) onto ``dst``, ``shape``."""
    from rasterio.warp import Resampling, reproject

    out = np.zeros(shape, dtype=data.dtype)
    reproject(
        data,
        out,
        src_transform=src[1],
        src_crs=src[0],
        src_nodata=0,
        dst_transform=dst[1],
        dst_crs=dst[0],
        dst_nodata=0,
        resampling=Resampling.nearest,
    )
    return out


def _dn_on_grid(path: Path, window, grid_path: Path, dst_crs: str | None, source_grid) -> np.ndarray:
    """Source values of ``path`` (window) on the grid of the file ``grid_path``.

    ``source_grid`` = (crs, 10 m transform) given to the window before reprojection.
    """
    import rasterio
    from affine import Affine

    data, _, transform = _read_window(path, window)
    if dst_crs is None:
        return data
    transform = Affine(*source_grid[1]) @ Affine.scale(abs(transform.a) / 10.0)
    with rasterio.open(grid_path) as g:
        return _nearest(data, (source_grid[0], transform), (g.crs, g.transform), g.shape)


def _warp(data: np.ndarray, crs: Any, transform: Any, dst_crs: str, res: float):
    dst_transform, shape = _snap_grid(crs, transform, data.shape, dst_crs, res)
    return _nearest(data, (crs, transform), (dst_crs, dst_transform), shape), dst_transform


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


def replace_strings(obj: Any, subs: list[tuple[str, str]]) -> Any:
    if isinstance(obj, str):
        for old, new in subs:
            obj = obj.replace(old, new)
        return obj
    if isinstance(obj, list):
        return [replace_strings(v, subs) for v in obj]
    if isinstance(obj, dict):
        return {k: replace_strings(v, subs) for k, v in obj.items()}
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


def template_tile(props: Mapping[str, Any]) -> str:
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


def _dn_offset(template: str, spec: ItemSpec, asset_key: str, baseline: str) -> int:
    """DN added to the old-baseline source DN in the file of ``asset_key`` (provider conventions)."""
    if template == "es-l2a":
        # COGs of Earth Search sentinel-2-l2a are harmonised (also those of the lying item);
        # the *-jp2 assets are ESA's raw files.
        return OFFSET_DN if asset_key.endswith("-jp2") else 0
    if template in ("es-l1c", "es-c1-l2a"):
        return OFFSET_DN
    return OFFSET_DN if tuple(int(p) for p in baseline.split(".")) >= (4, 0) else 0


def _convention(template: str, spec: ItemSpec, baseline: str) -> str:
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


def load_template(data: Path, template: str) -> dict[str, Any]:
    """The real provider item of ``template`` (a key of :data:`TEMPLATE_FILES`) under the data root."""
    name, _ = TEMPLATE_FILES[template]
    features = json.loads((data / "stac_items" / "api_responses" / name).read_text())["features"]
    return next(f for f in features if "assets" in f)  # some responses hold field-restricted items


def chip_quality(data: Path) -> dict[str, str]:
    """Label quality ("trusted"...) of each chip under the data root, from its ``chips.json``."""
    return {c["chip"]: c["label_quality"] for c in json.loads((data / CHIPS / "chips.json").read_text())}


def build_item(
    data: Path, spec: ItemSpec, out: Path, template_doc: dict[str, Any], quality: dict[str, str]
) -> tuple[dict[str, Any], ItemTruth]:
    """Write the files of ``spec`` under ``out/<item id>`` from the data root ``data``; return the item
    JSON, rewritten from ``template_doc``, and its :class:`ItemTruth`."""
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.warp import transform_geom

    template = spec.template
    collection = TEMPLATE_FILES[template][1]
    is_chip = spec.source != "ben"
    source_dir = data / (CHIPS if is_chip else _BEN) / (spec.source if is_chip else BEN_PATCH)
    bands = _source_bands(source_dir)
    if spec.when is not None:
        when = spec.when
    elif is_chip:  # time of day of the place (footprint chip)
        hh, mm, ss = _CHIP_TIME[spec.footprint or spec.source]
        when = dt.datetime.combine(spec.day, dt.time(hh, mm, ss), tzinfo=dt.timezone.utc)
    else:
        when = BEN_TIME
    footprint_dir = data / CHIPS / spec.footprint if spec.footprint else source_dir

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
    t_tile = template_tile(props_t)
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
    item = replace_strings(copy.deepcopy(template_doc), subs)
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


def collection_docs(
    provider: str, data: Path, items: Iterable[Mapping[str, Any]]
) -> tuple[dict[str, Any], ...]:
    """The collections to serve with ``items`` (in the order of their first item): "pc", the real
    Planetary Computer ``sentinel-2-l2a`` collection under the data root ``data``, less its links to
    elsewhere; "es", :func:`es_collection` of each."""
    items = list(items)
    if provider == "pc":
        doc = json.loads((data / PC_COLLECTION).read_text())
        doc["links"] = [lk for lk in doc["links"] if lk.get("rel") not in ("self", "root", "parent", "items")]
        return (doc,)
    ids = dict.fromkeys(i["collection"] for i in items)
    return tuple(es_collection(c, [i for i in items if i["collection"] == c]) for c in ids)
