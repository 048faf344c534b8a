"""The benchmarks' inputs, built from real Sentinel-2 pixels of ``../shared/data`` and cached.

* :func:`cached_cube`: the 6-band mosaic cube (B02 B03 B04 B08 B11 B12, reflectance) of
  ``bench_predict``, ``bench_models``, ``bench_scale`` and ``bench_gpu``: the cloudy and three clear
  SEN12MS-CR patches (L1C, 256 x 256) and four BigEarthNet patches (L2A, 120 x 120: clouds, fields,
  snow) as a 512 x 512 mosaic, mirror-tiled (``np.pad(mode="symmetric")``) to the requested size, so
  the scene is seamless and keeps the clouds, snow, land and sea of the real patches; cached as
  ``.npy`` (float32, ``(band, y, x)``) under the temp dir, never in the repository.
* :func:`csmask`: ukis-csmask's own code (``CSmask``) on that cube, its classes as xs2mask codes.
* :func:`cached_catalogue`: the STAC catalogue of ``bench_pipeline`` and ``bench_scale``: one item per
  date, each a mosaic of the 512 x 512 "On Cloud N" chips (B02 B03 B04 B08, L2A DN) written as
  single-band COGs and described by real Planetary Computer item JSON (see ``bench_pipeline``).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from harness import tests_module

CUBE_BANDS = ("B02", "B03", "B04", "B08", "B11", "B12")
CUBE_VERSION = 2  # bump when the mosaic recipe changes, to invalidate cached cubes
# SEN12MS-CR stores all 13 bands: B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12
SEN12MS_INDEX = (1, 2, 3, 7, 11, 12)
SEN12MS_PATCHES = (
    "cloudy_ROIs1868_summer_19_p30.tif",  # land, partly cloudy
    "clear_ROIs1158_spring_15_p30.tif",  # land, clear
    "clear_ROIs1158_spring_101_31.tif",  # open sea
    "clear_ROIs1158_spring_101_32.tif",  # open sea, near coast
)
# BigEarthNet patches (120 x 120, L2A): two cloudy (bright, high SWIR), fields under a cumulus,
# snow-covered mountains (bright, low SWIR: a classic cloud look-alike)
BIGEARTHNET_PATCHES = (45, 50, 46, 18)

CSMASK_BANDS = ["blue", "green", "red", "nir", "swir16", "swir22"]  # CUBE_BANDS in CSmask's names
# CSmask classes 0 clear, 1 cloud, 2 shadow -> xs2mask codes 0 clear, 1 thick cloud, 3 cloud shadow
CSMASK_TO_XS2MASK = np.array([0, 1, 3], np.uint8)

CHIP = 512  # edge of an On Cloud N chip
CHIP_BANDS = ("B02", "B03", "B04", "B08")
CATALOGUE_CACHE = Path(tempfile.gettempdir()) / "xs2mask-bench-pipeline"
CATALOGUE_VERSION = 1  # bump when the catalogue recipe changes, to invalidate cached catalogues
CATALOGUE_MODEL = "ukis-csmask-4b-l2a"  # a model the catalogue's bands (4, L2A) feed
COLLECTION = "sentinel-2-l2a"
RES = 10.0
# UTM 36S on its central meridian near chip adwp (Tanzania, 2.5 S): grid north is true north there, so
# the lon/lat bbox of the grid transforms back onto the grid with almost no margin.
EPSG = 32736
CENTRE_X, CENTRE_Y = 500_000.0, 9_720_000.0
TILE = "36MWC"  # MGRS square of the centre, used as a tile name only
LATTICE = 60.0  # Sentinel-2 tile origins are multiples of 60 m
INSET = 3e-5  # degrees, about 3.3 m: the search bbox lies this far inside the grid
BASELINE = "05.11"
OFFSET_DN = 1000  # files of baseline >= 04.00 hold DN + 1000 (BOA_ADD_OFFSET -1000)
FIRST_DAY = dt.datetime(2024, 5, 3, 8, 20, 47, tzinfo=dt.timezone.utc)
REVISIT = dt.timedelta(days=10)
TEMPLATE = "stac_items/api_responses/planetarycomputer_microsoft_com__sentinel-2-l2a.json"
PC_COLLECTION = "stac_items/odc_stac/sentinel-2-l2a.collection.json"


def cached_npy(path: Path, build: Callable[[], np.ndarray]) -> Path:
    """``path``, written with ``build()`` first when it does not exist (atomically: a crash leaves none).

    Examples
    --------
    >>> cached_npy(Path("/tmp/xs2mask-bench/zeros.npy"), lambda: np.zeros(3))  # doctest: +SKIP
    PosixPath('/tmp/xs2mask-bench/zeros.npy')
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, build())
        tmp.replace(path)
    return path


# --------------------------------------------------------------------------- the mosaic cube


def _sen12ms(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        dn = src.read([i + 1 for i in SEN12MS_INDEX])
    return dn.astype(np.float32) / 10_000


def _bigearthnet(path: Path) -> np.ndarray:
    """Four 120 x 120 patches as one 256 x 256 block (2 x 2, mirrored at the edges)."""
    with np.load(path) as npz:
        order = [str(b) for b in npz["band_order"]]
        s2 = npz["s2"][list(BIGEARTHNET_PATCHES)][:, [order.index(b) for b in CUBE_BANDS]]
    refl = s2.astype(np.float32) / 10_000
    block = np.concatenate(
        [np.concatenate([refl[0], refl[1]], axis=2), np.concatenate([refl[2], refl[3]], axis=2)], axis=1
    )
    pad = (256 - block.shape[1]) // 2
    return np.pad(block, ((0, 0), (pad, pad), (pad, pad)), mode="symmetric")


def build_cube(data: Path, size: int) -> np.ndarray:
    """Reflectance ``(6, size, size)`` float32: a 512 x 512 mosaic of real patches, mirror-tiled."""
    cloudy, land, sea, coast = (_sen12ms(data / "sen12ms_cr" / name) for name in SEN12MS_PATCHES)
    ben = _bigearthnet(data / "bigearthnet" / "configilm_patches.npz")
    # sea and coast share a quarter, split in halves, so the mosaic has land, sea, clouds and a shore
    water = np.concatenate([sea[:, :, :128], coast[:, :, 128:]], axis=2)
    base = np.concatenate(
        [np.concatenate([cloudy, land], axis=2), np.concatenate([water, ben], axis=2)], axis=1
    )
    reps = max(0, size - base.shape[1])
    cube = np.pad(base, ((0, 0), (0, reps), (0, reps)), mode="symmetric")[:, :size, :size]
    return np.ascontiguousarray(cube, np.float32)


def cached_cube(data: Path, cache: Path, size: int) -> Path:
    """Path of the cached cube, building it on first use."""
    return cached_npy(cache / f"cube_v{CUBE_VERSION}_{size}.npy", lambda: build_cube(data, size))


def csmask(cube: np.ndarray, threads: int) -> np.ndarray:
    """ukis-csmask's own ``CSmask`` (``ukis-csmask-6b-l2a``) on a ``(CUBE_BANDS, y, x)`` cube: xs2mask codes.

    ``threads`` is its ``intra_op_num_threads`` (0: onnxruntime's choice). Import ``ukis_csmask.mask``
    before timing this: the import is not the model's time.
    """
    from ukis_csmask.mask import CSmask

    # (rows, cols, bands) view; CSmask copies it when it reorders the bands
    img = np.moveaxis(cube, 0, -1)
    csm = CSmask(img, band_order=CSMASK_BANDS, product_level="l2a", intra_op_num_threads=threads).csm
    return CSMASK_TO_XS2MASK[csm[..., 0]]


# --------------------------------------------------------------------------- the pipeline catalogue


def _chips(data: Path) -> list[Path]:
    folder = data / "cloud_cover_chips"
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and all((p / f"{b}.tif").exists() for b in CHIP_BANDS)
    )


def _read(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        return src.read(1)


def mosaic(chips: list[Path], size: int, date: int) -> tuple[dict[str, np.ndarray], float]:
    """DN ``(size, size)`` per band (uint16, 0 = no data) and the labelled cloud fraction of one date."""
    n = size // CHIP
    # A seeded order per date, so the dates differ; chips repeat where the area needs more than there are.
    order = np.random.default_rng(date).permutation(len(chips))
    cells = [chips[order[k % len(chips)]] for k in range(n * n)]
    out = {b: np.zeros((size, size), np.uint16) for b in CHIP_BANDS}
    cloud = 0.0
    for k, chip in enumerate(cells):
        rows, cols = slice(k // n * CHIP, (k // n + 1) * CHIP), slice(k % n * CHIP, (k % n + 1) * CHIP)
        for b in CHIP_BANDS:
            out[b][rows, cols] = _read(chip / f"{b}.tif")
        label = chip / "label.tif"
        cloud += float(_read(label).mean()) if label.exists() else 0.0
    return out, cloud / len(cells)


def _grid(size: int):
    """10 m affine transform of the area, its origin on the 60 m lattice."""
    from affine import Affine

    x0 = round((CENTRE_X - size * RES / 2) / LATTICE) * LATTICE
    y1 = round((CENTRE_Y + size * RES / 2) / LATTICE) * LATTICE
    return Affine(RES, 0.0, x0, 0.0, -RES, y1)


def _lonlat(transform, size: int) -> tuple[dict[str, Any], tuple[float, ...], tuple[float, ...]]:
    """Footprint polygon, its outer bbox and the inner bbox (inside the grid) in lon/lat."""
    from rasterio.warp import transform as warp

    corners = [(0, 0), (size, 0), (size, size), (0, size)]
    xs, ys = zip(*(transform * c for c in corners), strict=True)
    lons, lats = warp(f"EPSG:{EPSG}", "EPSG:4326", list(xs), list(ys))
    ring = [[round(lo, 7), round(la, 7)] for lo, la in zip(lons, lats, strict=True)]
    geometry = {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}
    outer = (min(lons), min(lats), max(lons), max(lats))
    # corners: 0 top-left, 1 top-right, 2 bottom-right, 3 bottom-left. The inner box is moved in by
    # INSET, more than the bulge of its edges in UTM (1.4 m at 4096 px), so that the loader, which snaps
    # the box outwards to whole pixels, lands on the grid's own edges.
    inner = (
        max(lons[0], lons[3]) + INSET,
        max(lats[2], lats[3]) + INSET,
        min(lons[1], lons[2]) - INSET,
        min(lats[0], lats[1]) - INSET,
    )
    return geometry, outer, inner


def _item(
    template: dict[str, Any],
    when: dt.datetime,
    size: int,
    paths: dict[str, Path],
    cloud: float,
    nodata: float,
) -> dict[str, Any]:
    """A Planetary Computer item for one date of the mosaic, rewritten from a real PC item."""
    transform = _grid(size)
    geometry, outer, _ = _lonlat(transform, size)
    props_t = template["properties"]
    t_when = dt.datetime.fromisoformat(props_t["datetime"].replace("Z", "+00:00"))
    old_major, old_minor = props_t["s2:processing_baseline"].split(".")
    major, minor = BASELINE.split(".")
    text = json.dumps(template)
    for old, new in (
        (props_t["s2:mgrs_tile"], TILE),
        (t_when.strftime("%Y%m%d"), when.strftime("%Y%m%d")),
        (f"N{old_major}{old_minor}", f"N{major}{minor}"),
        (f"N{old_major}.{old_minor}", f"N{major}.{minor}"),
    ):
        text = text.replace(old, new)
    item = json.loads(text)
    item["id"] = f"S2A_MSIL2A_{when:%Y%m%dT%H%M%S}_R021_T{TILE}_bench{size}"
    props = item["properties"]
    props["datetime"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    props["s2:processing_baseline"] = BASELINE
    props["s2:mgrs_tile"] = TILE
    props["proj:epsg"] = EPSG
    props["eo:cloud_cover"] = round(100 * cloud, 4)
    props["s2:nodata_pixel_percentage"] = round(100 * nodata, 6)
    item["geometry"] = geometry
    item["bbox"] = list(outer)
    item["links"] = [lk for lk in item.get("links", []) if lk.get("rel") == "license"]
    left, top = transform * (0, 0)
    right, bottom = transform * (size, size)
    assets = {}
    for band in CHIP_BANDS:  # only the assets backed by real pixels
        asset = copy.deepcopy(template["assets"][band])
        asset["href"] = str(paths[band])
        asset["proj:shape"] = [size, size]
        asset["proj:transform"] = list(transform)[:6]
        asset["proj:bbox"] = [left, bottom, right, top]
        assets[band] = asset
    item["assets"] = assets
    return item


def build_catalogue(data: Path, folder: Path, size: int, dates: int) -> dict[str, Any]:
    """Write the COGs and items of one area size under ``folder``; return the catalogue description."""
    servers = tests_module("servers")
    features = json.loads((data / TEMPLATE).read_text())["features"]
    template = next(f for f in features if "assets" in f)  # some responses hold field-restricted items
    collection = json.loads((data / PC_COLLECTION).read_text())
    collection["links"] = [
        lk for lk in collection["links"] if lk.get("rel") not in ("self", "root", "parent", "items")
    ]
    chips = _chips(data)
    transform = _grid(size)
    items = []
    for d in range(dates):
        when = FIRST_DAY + d * REVISIT
        dn, cloud = mosaic(chips, size, d)
        paths = {}
        for band in CHIP_BANDS:
            if int(dn[band].max()) + OFFSET_DN > np.iinfo(np.uint16).max:
                raise ValueError(f"{band}: DN + {OFFSET_DN} overflows uint16")
            written = np.where(dn[band] == 0, 0, dn[band].astype(np.uint32) + OFFSET_DN).astype(np.uint16)
            path = folder / f"{when:%Y%m%d}" / f"{band}.tif"
            paths[band] = servers.write_raster(path, written, f"EPSG:{EPSG}", transform)
        nodata = float(np.mean(dn[CHIP_BANDS[0]] == 0))
        items.append(_item(template, when, size, paths, cloud, nodata))
    _, _, inner = _lonlat(transform, size)
    last = FIRST_DAY + (dates - 1) * REVISIT
    return {
        "size": size,
        "dates": dates,
        "chips": [c.name for c in chips],
        "items": items,
        "collections": [collection],
        # Inside the grid, so the search area does not reach past the mosaic into no data.
        "bbox": [round(v, 7) for v in inner],
        "datetime": f"{FIRST_DAY:%Y-%m-%d}/{last:%Y-%m-%d}",
    }


def cached_catalogue(data: Path, cache: Path, size: int, dates: int) -> dict[str, Any]:
    """The catalogue of one area size, built on first use."""
    folder = cache / f"v{CATALOGUE_VERSION}_{size}px_{dates}d"
    doc = folder / "catalogue.json"
    if not doc.exists():
        tmp = cache / f".{folder.name}.{os.getpid()}.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        cat = build_catalogue(data, tmp, size, dates)
        # hrefs point into the final folder: the temporary one is renamed in one step
        text = json.dumps(cat, indent=1).replace(str(tmp), str(folder))
        (tmp / "catalogue.json").write_text(text)
        if folder.exists():  # a half-built folder of an interrupted run
            shutil.rmtree(folder)
        tmp.replace(folder)
    return json.loads(doc.read_text())
