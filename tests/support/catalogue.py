"""Realistic Sentinel-2 STAC catalogues from real pixels and real item JSON, with their own oracle.

A catalogue here is what an ordinary search returns, not one feature at a time: days on which a
mosaic of overlapping MGRS tiles (one of them in the neighbouring UTM zone) covers the area, a day
of another relative orbit whose swath edge cuts the scene, processing baselines before and after
04.00, and reprocessed duplicates of one datatake and tile. :func:`build_catalogue` writes the COGs
and items; :func:`serve` (:func:`support.stac_api.serve_catalogue`) serves them with ``rustac serve``
(a real STAC API on 127.0.0.1); the :class:`Catalogue` it returns knows what it holds (:class:`Scene`
per item), so a test can say which solar days a search must yield without asking the loader
(:meth:`Catalogue.expected_days`).

Everything real is shipped with the project, so this works on a clean clone without ``../shared``:

* pixels: the demo scene of the package (:func:`xs2mask.data.demo_path`: chip "adwp" of the "On
  Cloud N" challenge, Planetary Computer L2A of 2020-04-29, B02 B03 B04 B08, 512 x 512 at 10 m,
  UTM 36S, DN without offset) and its human cloud label (``templates/adwp_label.tif``, for
  ``eo:cloud_cover``); CC BY 4.0, laid out by :mod:`support.sources`. Bigger scenes (``size`` > 512)
  mirror the real pixels (``numpy.pad(mode="symmetric")``): every pixel is a real L2A value, the
  texture repeats;
* item JSON: one real item each of Planetary Computer ``sentinel-2-l2a``, Earth Search
  ``sentinel-2-l2a`` and ``sentinel-2-c1-l2a``, and the real Planetary Computer collection
  (``templates/stac_items``, Apache-2.0 metadata, trimmed from ``../shared/data/stac_items``).

Items are written by :func:`support.items.build_item` (the provider's asset keys, extensions,
``raster:bands`` and properties kept; geometry, ``proj:*``, dates, tile names, sun angles and
``file:*`` rewritten; files hold DN + 1000 exactly where the provider's do). This module only lays
the real files out the way that builder reads them, says which items to make, and retags what the
builder leaves alone: relative orbit, generation time and sequence number of reprocessed
duplicates, the geometry of a swath-edge item (its valid-data polygon, as the providers publish),
and the assets of an item that lacks a band.

Catalogues (tile names as generated; each item's time is its own sensing time, UTC):

=== ==================== ===============================================================================
pc  2020-04-29 08:20:47  orbit 121, a mosaic of three overlapping tiles: 36MVC (west 60 %), 36MWC
                         (north-east) and 35MLT (south-east, reprojected to UTM 35S); baseline 02.12
    2020-05-02 08:30:31  orbit 78, the whole scene; swath edge: no data east of a slanted line
    2020-05-09 08:20:47  36MVC twice (baseline 02.12 generated 2020 with 6 % of its rows lost, and its
                         complete reprocessing, baseline 05.00 generated 2023: DN + 1000), 36MWC once
    2022-05-04 08:20:49  the whole scene, baseline 04.00 (DN + 1000)
    2020-05-14 08:20:47  (``missing_band`` only) the whole scene without the asset of ``missing_band``
es  2025-06-30 23:59:58  the same grid moved to UTM 57S (158.8 E): there the 10:30 overpass crosses
    2025-07-01 00:00:01  midnight UTC, so the mosaic's tiles (57MVT, 57MWT, 56MLC in UTM 56S) carry two
                         UTC dates and one solar day, 2025-07-01; ``sentinel-2-l2a``, harmonised COGs
    2025-07-03 23:59:59  orbit 78, swath edge (solar day 2025-07-04)
    2025-07-11 00:00:02  57MVT twice: ``..._0_L2A`` (baseline 05.10, rows lost) and ``..._1_L2A`` (05.11)
    2025-07-16 00:00:01  57MVT in ``sentinel-2-l2a`` and its Collection-1 twin in ``sentinel-2-c1-l2a``
                         (DN + 1000, ``raster:bands`` offset -0.1), same datatake
    2025-07-21 00:00:03  (``missing_band`` only) as in pc
=== ==================== ===============================================================================

The es scene's pixels are real but not of that place (the real place is pc's); its georeferencing,
dates, sun angles and tile names are consistent with each other.

Not covered: 20 and 60 m bands, Earth Search items of baselines before 04.00, the L1C collections.

Example (needs files and servers, so not a doctest)::

    cat = build_catalogue("pc", tmp / "pc")
    with serve(cat) as served:
        bbox = served.bbox_of(row=100, col=250, height=128, width=128)
        days = served.expected_days(bbox, "2020-04-01/2020-05-31")
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import items as it
from .sources import demo_scene, write_chips
from .stac_api import serve_catalogue as serve

__all__ = ["PROVIDERS", "Catalogue", "Scene", "build_catalogue", "serve", "solar_day"]

PROVIDERS = ("pc", "es")
BANDS = it.BANDS_10M
#: The demo scene as a source chip of the item builder, and two copies with data missing.
CHIP = "adwp"
_SWATH_CHIP = "adwp-swath"
_GAP_CHIP = "adwp-gap"
#: Where a provider's scene lies: (its UTM zone, the western neighbour's). pc: the real place of the
#: pixels (Chifunfu, Tanzania, 32.8 E); es: the same grid moved to UTM 57S (158.8 E, Solomon Sea).
_PLACES = {"pc": ("EPSG:32736", "EPSG:32735"), "es": ("EPSG:32757", "EPSG:32756")}

#: Fractions of the scene (row, col, height, width) of the tiles of a mosaic day; overlaps of 15 %.
_WEST = (0.0, 0.0, 1.0, 0.6)
_NORTH_EAST = (0.0, 0.45, 0.55, 0.55)
_SOUTH_EAST = (0.45, 0.45, 0.55, 0.55)
_WHOLE = (0.0, 0.0, 1.0, 1.0)
#: Swath edge: no data east of the line col = a * row + b (in scene fractions), as a slanted swath.
_SWATH_A, _SWATH_B = 0.3, 0.45
#: Rows (scene fractions) lost in transmission in a product that was reprocessed later (complete).
_GAP = (0.30, 0.36)


@dataclass(frozen=True)
class Scene:
    """What the generator knows about one item: the oracle's view, independent of any loader."""

    item_id: str
    role: str
    collection: str
    #: acquisition time (UTC) and the local solar day at the item's centre.
    datetime: dt.datetime
    solar_day: dt.date
    tile: str
    relative_orbit: int
    epsg: int
    baseline: str
    generation_time: str
    #: DN added to the real DN in the files (1000 from baseline 04.00 on, where the provider keeps it).
    dn_offset: int
    #: the published footprint, lon/lat polygon ring: the valid data (the swath edge cut off), except
    #: rows lost in transmission, which ESA's footprints do not show either.
    footprint: tuple[tuple[float, float], ...]
    bands: tuple[str, ...]
    #: id of the item this one reprocesses (same datatake and tile), or None.
    reprocesses: str | None = None

    def shape(self):
        """The footprint as a shapely polygon."""
        from shapely.geometry import Polygon

        return Polygon(self.footprint)


@dataclass(frozen=True)
class Catalogue:
    """A generated catalogue; ``url`` is "" until :func:`serve` serves it."""

    provider: str
    url: str
    collections: tuple[str, ...]
    size: int
    scenes: tuple[Scene, ...]
    items: tuple[dict[str, Any], ...] = field(repr=False)
    collection_docs: tuple[dict[str, Any], ...] = field(repr=False)
    truth: Mapping[str, it.ItemTruth] = field(repr=False)
    #: CRS and 10 m affine transform (6 numbers) of the scene grid (pc: UTM 36S, es: UTM 57S).
    grid: tuple[str, tuple[float, ...]] = field(repr=False)
    folder: Path = field(repr=False)

    @property
    def datetime(self) -> str:
        """A datetime range covering every item."""
        days = sorted(s.datetime.date() for s in self.scenes)
        return f"{days[0]}/{days[-1]}"

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """lon/lat bbox of the whole scene."""
        return self.bbox_of(0, 0, self.size, self.size)

    def scene(self, role: str) -> Scene:
        """The scene of ``role`` (e.g. "mosaic_west", "duplicate_new")."""
        return next(s for s in self.scenes if s.role == role)

    def bbox_of(self, row: float, col: float, height: float, width: float) -> tuple[float, ...]:
        """lon/lat bbox of a window of the scene grid in 10 m pixels (it may reach outside the scene)."""
        from affine import Affine
        from rasterio.warp import transform_bounds

        t = Affine(*self.grid[1])
        left, top = t @ (col, row)
        right, bottom = t @ (col + width, row + height)
        return tuple(transform_bounds(self.grid[0], "EPSG:4326", left, bottom, right, top))

    def expected_days(
        self, bbox: tuple[float, ...], datetime: str, *, margin_m: float = 50.0
    ) -> frozenset[dt.date] | None:
        """Solar days a search of ``bbox`` (lon/lat) and ``datetime`` ("YYYY-MM-DD/YYYY-MM-DD") yields.

        A day is there when an item of it acquired between the dates (UTC, both ends included)
        overlaps the bbox; duplicates and tiles of one day are one day. Returns None when an item is
        too close to call: its footprint and the bbox neither overlap by ``margin_m`` nor stay
        ``margin_m`` apart (after snapping to the 10 m grid, a sliver may hold no pixel centre).
        The rows an older duplicate lost do not empty a day: its reprocessing has the same footprint.
        """
        from shapely.geometry import box

        start, _, end = datetime.partition("/")
        first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end or start)
        area = box(*bbox)
        margin = margin_m / 111_320.0  # degrees; the scene lies 2.6 degrees from the equator
        days = set()
        for s in self.scenes:
            if not first <= s.datetime.date() <= last:
                continue
            footprint = s.shape()
            inside = footprint.buffer(-margin).intersects(area.buffer(-margin))
            apart = not footprint.buffer(margin).intersects(area.buffer(margin))
            if inside == apart:
                return None
            if inside:
                days.add(s.solar_day)
        return frozenset(days)


def solar_day(when: dt.datetime, lon: float) -> dt.date:
    """Local mean solar date at longitude ``lon`` of the UTC time ``when``.

    Examples
    --------
    >>> solar_day(dt.datetime(2019, 1, 1, 0, 0, 1, tzinfo=dt.timezone.utc), 177.0).isoformat()
    '2019-01-01'
    >>> solar_day(dt.datetime(2018, 12, 31, 23, 59, 57, tzinfo=dt.timezone.utc), 177.0).isoformat()
    '2019-01-01'
    """
    return (when + dt.timedelta(hours=lon / 15.0)).date()


# --------------------------------------------------------------------------------------------------
# item plan
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """One item: the builder's spec plus what this module retags afterwards."""

    role: str
    template: str
    when: dt.datetime
    window: tuple[float, float, float, float]
    orbit: int = 121
    baseline: str | None = None
    #: generation time of the product (UTC, "YYYYmmddTHHMMSS"), None: the template's.
    generation: str | None = None
    #: Earth Search sequence number of a reprocessing ("_1_L2A").
    sequence: int = 0
    dst_crs: str | None = None
    tile_shift: int = 0
    swath: bool = False
    gap: bool = False  # rows _GAP missing (degraded data), the footprint unchanged as ESA's is
    drop_band: str | None = None
    reprocesses: str | None = None  # role of the older product


def _utc(y: int, m: int, d: int, hh: int, mm: int, ss: int) -> dt.datetime:
    return dt.datetime(y, m, d, hh, mm, ss, tzinfo=dt.timezone.utc)


def _plans(provider: str, missing_band: str | None) -> tuple[_Plan, ...]:
    if provider == "pc":
        t, old = "pc-l2a", "02.12"
        a, b, dup = _utc(2020, 4, 29, 8, 20, 47), _utc(2020, 5, 2, 8, 30, 31), _utc(2020, 5, 9, 8, 20, 47)
        new, miss = _utc(2022, 5, 4, 8, 20, 49), _utc(2020, 5, 14, 8, 20, 47)
        plans = [
            _Plan("mosaic_west", t, a, _WEST, baseline=old),
            _Plan("mosaic_north_east", t, a, _NORTH_EAST, baseline=old, tile_shift=1),
            _Plan("mosaic_other_zone", t, a, _SOUTH_EAST, baseline=old, dst_crs=_PLACES[provider][1]),
            _Plan("swath_edge", t, b, _WHOLE, orbit=78, baseline=old, swath=True),
            _Plan("duplicate_old", t, dup, _WEST, baseline=old, generation="20200509T112233", gap=True),
            _Plan(
                "duplicate_new",
                t,
                dup,
                _WEST,
                baseline="05.00",
                generation="20230220T093000",
                reprocesses="duplicate_old",
            ),
            _Plan("duplicate_neighbour", t, dup, _NORTH_EAST, baseline=old, tile_shift=1),
            _Plan("baseline_0400", t, new, _WHOLE, baseline="04.00", generation="20220504T120000"),
        ]
    else:
        # Near 159 E the 10:30 overpass is at midnight UTC: one datatake's tiles straddle two UTC dates
        # (Earth Search dates each tile by its own sensing time).
        t, c1, old = "es-l2a", "es-c1-l2a", None
        a0, a1 = _utc(2025, 6, 30, 23, 59, 58), _utc(2025, 7, 1, 0, 0, 1)
        b, dup = _utc(2025, 7, 3, 23, 59, 59), _utc(2025, 7, 11, 0, 0, 2)
        twin, miss = _utc(2025, 7, 16, 0, 0, 1), _utc(2025, 7, 21, 0, 0, 3)
        plans = [
            _Plan("mosaic_west", t, a0, _WEST),
            _Plan("mosaic_north_east", t, a1, _NORTH_EAST, tile_shift=1),
            _Plan("mosaic_other_zone", t, a1, _SOUTH_EAST, dst_crs=_PLACES[provider][1]),
            _Plan("swath_edge", t, b, _WHOLE, orbit=78, swath=True),
            _Plan("duplicate_old", t, dup, _WEST, baseline="05.10", generation="20250711T101500", gap=True),
            _Plan(
                "duplicate_new",
                t,
                dup,
                _WEST,
                baseline="05.11",
                generation="20250712T160000",
                sequence=1,
                reprocesses="duplicate_old",
            ),
            _Plan("collection_l2a", t, twin, _WHOLE, generation="20250716T100000"),
            _Plan(
                "collection_c1", c1, twin, _WHOLE, generation="20250716T100000", reprocesses="collection_l2a"
            ),
        ]
    if missing_band is not None:
        plans.append(_Plan("missing_band", t, miss, _WHOLE, baseline=old, drop_band=missing_band))
    return tuple(plans)


# --------------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------------


def _swath_valid(size: int) -> np.ndarray:
    """True where the swath-edge scene has data: pixel centres west of the slanted line."""
    rows, cols = np.mgrid[0:size, 0:size] + 0.5
    return cols <= (_SWATH_A * rows / size + _SWATH_B) * size


def _lay_out_sources(root: Path, size: int, crs: str) -> None:
    """Write the real files where :func:`support.items.build_item` reads them (``root`` = its ``data``).

    The grid is the demo scene's (x, y), in UTM zone ``crs``: its own (36S) or a borrowed one.
    """
    dn, label, _, transform = demo_scene(size)
    rows = np.arange(size)[:, None] + 0.5
    gap = np.broadcast_to((rows < _GAP[0] * size) | (rows >= _GAP[1] * size), (size, size))
    chips = {
        chip: ({b: a if keep is None else np.where(keep, a, 0) for b, a in dn.items()}, label)
        for chip, keep in ((CHIP, None), (_SWATH_CHIP, _swath_valid(size)), (_GAP_CHIP, gap))
    }
    write_chips(root, chips, crs, transform)


def _window(fractions: tuple[float, float, float, float], size: int) -> tuple[int, int, int, int]:
    """Window in 10 m pixels whose origin lies on the 60 m lattice of Sentinel-2 tiles."""
    row, col, h, w = (f * size for f in fractions)
    r0, c0 = int(row // 6 * 6), int(col // 6 * 6)
    return r0, c0, min(size - r0, round(h + row - r0)), min(size - c0, round(w + col - c0))


def _swath_footprint(truth: it.ItemTruth, size: int) -> dict[str, Any]:
    """lon/lat polygon of the valid data of the swath-edge item (the providers publish that, not the tile)."""
    from affine import Affine
    from rasterio.warp import transform_geom

    t = Affine(*truth.source_grid[1])
    col_top, col_bottom = _SWATH_B * size, (_SWATH_A + _SWATH_B) * size
    ring = [t @ (0, 0), t @ (col_top, 0), t @ (col_bottom, size), t @ (0, size), t @ (0, 0)]
    return transform_geom(
        truth.source_grid[0], "EPSG:4326", {"type": "Polygon", "coordinates": [ring]}, precision=7
    )


def _retag(item: dict[str, Any], template: Mapping[str, Any], plan: _Plan) -> dict[str, Any]:
    """Orbit, generation time and sequence number in the id and properties (assets keep their files)."""
    props_t = template["properties"]
    props = item["properties"]
    if "sat:relative_orbit" in props_t:
        props["sat:relative_orbit"] = plan.orbit
    # product names (and Planetary Computer ids) carry the orbit as "_Rnnn_"
    t_orbit = int(props_t["s2:product_uri"].split("_R")[1][:3])
    subs = [(f"_R{t_orbit:03d}_", f"_R{plan.orbit:03d}_")]
    if plan.generation is not None:
        stamp = dt.datetime.strptime(plan.generation, "%Y%m%dT%H%M%S")
        t_gen = dt.datetime.fromisoformat(props_t["s2:generation_time"].replace("Z", "+00:00"))
        subs.append((t_gen.strftime("%Y%m%dT%H%M%S"), plan.generation))
        props["s2:generation_time"] = stamp.strftime("%Y-%m-%dT%H:%M:%S.000000Z")
        for key in ("created", "updated"):
            if key in props:
                props[key] = stamp.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    if plan.sequence:
        subs.append(("_0_L2A", f"_{plan.sequence}_L2A"))
        if "s2:sequence" in props:
            props["s2:sequence"] = str(plan.sequence)
    assets = item.pop("assets")
    item = it.replace_strings(item, subs)
    item["assets"] = assets
    return item


def build_catalogue(
    provider: str, out: Path, *, size: int = 512, missing_band: str | None = None
) -> Catalogue:
    """Write the COGs and item JSON of catalogue ``provider`` ("pc" or "es") under ``out``; not served.

    Parameters
    ----------
    provider
        "pc" (Planetary Computer conventions: asset keys ``B02``..., ``s2:processing_baseline``) or
        "es" (Earth Search: ``blue``..., ``raster:bands``, ``earthsearch:boa_offset_applied``).
    out
        Empty or new folder.
    size
        Side of the scene in 10 m pixels; above 512 the real pixels are mirrored.
    missing_band
        Add a day whose item lacks this band's asset (a loader must refuse it with ``BandError``).

    Example (needs files and servers, so not a doctest)::

        cat = build_catalogue("es", tmp / "es", size=1024)
        [s.role for s in cat.scenes if s.solar_day.isoformat() == "2025-07-11"]
        # -> ['duplicate_old', 'duplicate_new']
    """
    from rasterio.crs import CRS
    from shapely.geometry import shape

    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")
    if size < 64:
        raise ValueError(f"size must be at least 64 px, got {size}")
    out = Path(out)
    root = out / "_sources"
    _lay_out_sources(root, size, _PLACES[provider][0])
    quality = it.chip_quality(root)
    templates: dict[str, dict[str, Any]] = {}
    items, scenes, truths, roles = [], [], {}, {}
    for k, plan in enumerate(_plans(provider, missing_band)):
        template = templates.setdefault(plan.template, it.load_template(root, plan.template))
        spec = it.ItemSpec(
            plan.role,
            plan.template,
            plan.when.date(),
            _SWATH_CHIP if plan.swath else _GAP_CHIP if plan.gap else CHIP,
            window=_window(plan.window, size),
            footprint=CHIP if plan.swath or plan.gap else None,
            dst_crs=plan.dst_crs,
            baseline=plan.baseline,
            boa_offset_applied=True if plan.template == "es-l2a" else None,
            tile_shift=plan.tile_shift,
            when=plan.when,
        )
        # one folder per item: a duplicate has its original's id until it is retagged
        item, truth = it.build_item(root, spec, out / f"{k:02d}", template, quality)
        item = _retag(item, template, plan)
        if plan.swath:
            item["geometry"] = _swath_footprint(truth, size)
        if plan.gap and "s2:degraded_msi_data_percentage" in item["properties"]:
            item["properties"]["s2:degraded_msi_data_percentage"] = round(100 * (_GAP[1] - _GAP[0]), 6)
        if plan.drop_band is not None:
            key = next(k for k, b in truth.asset_bands.items() if b == plan.drop_band)
            del item["assets"][key]
            truth = replace(
                truth,
                asset_bands={k: b for k, b in truth.asset_bands.items() if k != key},
                asset_paths={k: p for k, p in truth.asset_paths.items() if k != key},
                asset_dn_offset={k: o for k, o in truth.asset_dn_offset.items() if k != key},
            )
        ring = item["geometry"]["coordinates"][0]
        lons, lats = [p[0] for p in ring], [p[1] for p in ring]
        item["bbox"] = [min(lons), min(lats), max(lons), max(lats)]
        truth = replace(truth, item_id=item["id"], bbox=tuple(item["bbox"]))
        props = item["properties"]
        when = dt.datetime.fromisoformat(props["datetime"].replace("Z", "+00:00"))
        centre = shape(item["geometry"]).centroid
        scenes.append(
            Scene(
                item_id=item["id"],
                role=plan.role,
                collection=item["collection"],
                datetime=when,
                solar_day=solar_day(when, centre.x),
                tile=it.template_tile(props),
                relative_orbit=plan.orbit,
                epsg=int(CRS.from_user_input(truth.crs).to_epsg()),
                baseline=props["s2:processing_baseline"],
                generation_time=props["s2:generation_time"],
                dn_offset=max(truth.asset_dn_offset.values()),
                footprint=tuple(tuple(p) for p in ring),
                bands=tuple(truth.asset_bands[k] for k in item["assets"]),
                reprocesses=roles[plan.reprocesses] if plan.reprocesses else None,
            )
        )
        roles[plan.role] = item["id"]
        items.append(item)
        truths[item["id"]] = truth
    if len({i["id"] for i in items}) != len(items):
        raise AssertionError(f"duplicate item ids in catalogue {provider}: {[i['id'] for i in items]}")
    order = sorted(range(len(items)), key=lambda i: (items[i]["properties"]["datetime"], items[i]["id"]))
    docs = it.collection_docs(provider, root, items)
    base = truths[roles["mosaic_west"]]
    return Catalogue(
        provider=provider,
        url="",
        collections=tuple(c["id"] for c in docs),
        size=size,
        scenes=tuple(scenes[i] for i in order),
        items=tuple(items[i] for i in order),
        collection_docs=docs,
        truth=truths,
        grid=base.source_grid,
        folder=out,
    )
