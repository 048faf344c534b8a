"""Read one Sentinel-2 scene from files into a reflectance cube ``(band, y, x)``.

:func:`read_scene` accepts what people have on disk: a ``.SAFE`` product (L1C or
L2A layout), a folder of single-band files, or a multi-band GeoTIFF. It finds the
bands by name, removes the processing-baseline offset where the metadata (or the
user) says there is one, and puts every band on one grid.

Resampling. Coarser bands are put onto the finer grid with **nearest neighbour**:
for the whole-number ratios of Sentinel-2 (20 m and 60 m onto 10 m, on grids that
share their corners) this is plain pixel replication, so every output value is a
measured DN scaled, no values are invented across cloud edges and no-data never
leaks into valid pixels. It is also what CloudS2Mask does (its VRT sources carry
no resampling attribute, which GDAL reads as nearest) and what Google Earth Engine,
where CloudSEN12 was prepared, does by default. Finer bands going onto a coarser
grid (``resolution=20`` or ``60``) are **averaged** over whole blocks, ignoring
no-data, like ESA's own R20m/R60m products; where the ratio is not a whole number
or the grids do not share corners they are sampled by nearest neighbour instead.
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import xarray as xr
from affine import Affine

from .bands import BAND_NAMES, canonical_band
from .exceptions import BandError, InputError, RadiometryWarning, XS2MaskError
from .radiometry import (
    Radiometry,
    baseline_from_name,
    baseline_radiometry,
    check_reflectance,
    negative_fraction,
    product_radiometry,
)

_RASTER_SUFFIXES = {".tif", ".tiff", ".jp2"}
_ESA_TOKEN = re.compile(r"^b(0?[1-9]|1[0-2]|8a)$", re.IGNORECASE)
_TOKEN_SPLIT = re.compile(r"[_\-.\s]+")
_RES_FOLDER = re.compile(r"^R(\d+)m$")
# Relative tolerance when comparing pixel sizes and grid corners (metres are exact in S2 products).
_TOL = 1e-6


@dataclass(frozen=True)
class _BandFile:
    """One band inside one raster file, with the geometry read from its header."""

    band: str
    path: Path
    index: int  # 1-based band index in the file
    crs: object
    transform: Affine
    width: int
    height: int
    dtype: str
    nodata: float | None
    count: int = 1  # bands in the file

    @property
    def xres(self) -> float:
        return float(self.transform.a)

    @property
    def yres(self) -> float:
        return float(-self.transform.e)

    @property
    def left(self) -> float:
        return float(self.transform.c)

    @property
    def top(self) -> float:
        return float(self.transform.f)

    @property
    def right(self) -> float:
        return self.left + self.width * self.xres

    @property
    def bottom(self) -> float:
        return self.top - self.height * self.yres


@dataclass(frozen=True)
class _Grid:
    crs: object
    left: float
    top: float
    res: float
    width: int
    height: int

    @property
    def transform(self):
        from rasterio.transform import Affine

        return Affine(self.res, 0.0, self.left, 0.0, -self.res, self.top)

    @property
    def x(self) -> np.ndarray:
        return self.left + (np.arange(self.width) + 0.5) * self.res

    @property
    def y(self) -> np.ndarray:
        return self.top - (np.arange(self.height) + 0.5) * self.res


# --------------------------------------------------------------------------- public API


def read_scene(
    path: str | Path,
    *,
    bands: Sequence[str] | str | None = None,
    resolution: float | None = 10,
    chunks: int | dict | None = None,
    harmonize: bool | str = "auto",
    offset: float | None = None,
) -> xr.DataArray:
    """Read a Sentinel-2 scene from files as top-of-atmosphere or surface reflectance.

    Parameters
    ----------
    path
        One of

        - a ``.SAFE`` product folder, L1C (``GRANULE/*/IMG_DATA/T..._B02.jp2``) or L2A
          (``GRANULE/*/IMG_DATA/R10m/T..._B02_10m.jp2``, ``R20m``, ``R60m``: each band is
          taken at its finest resolution); the radiometric offsets come from its
          ``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml``;
        - a folder of single-band ``.tif`` / ``.jp2`` files whose names contain the band
          (``B02``, ``B8A``, ``B02_10m``, ``blue``, ``nir08`` ...); other files (``SCL``,
          ``TCI``, labels) are ignored;
        - a multi-band GeoTIFF whose band descriptions name the bands, or any GeoTIFF
          together with ``bands=``.
    bands
        For a product or a folder: the bands to read (default: every band found).
        For a GeoTIFF with band descriptions: the bands to read. For a GeoTIFF without
        them: the name of each of its bands, in file order.
    resolution
        Pixel size of the output grid in metres. The grid covers the footprint of the
        finest band read; bands of another resolution are resampled onto it (see the
        module notes). ``None``: the finest band's own resolution.
    chunks
        Dask chunk size (pixels of the output grid) as an int or ``{"y": .., "x": ..}``;
        the result is then lazy. ``None``: read everything now into numpy.
    harmonize
        Remove the processing-baseline 04.00 offset (-1000 DN) where there is one.
        ``"auto"``: ``offset=`` when given, else the ``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml``
        of the product (or one beside the band files), else ``_N0400_`` in the product,
        folder or file names; if none of these tells, assume no offset and warn.
        ``True``: the same, but refuse to guess. ``False``: reflectance = DN / 10000,
        whatever the metadata says.
    offset
        DN offset to add before scaling (e.g. -1000), for data whose metadata is lost.
        Overrides the metadata (with a warning when they disagree).

    Returns
    -------
    xarray.DataArray
        float32 ``(band, y, x)`` reflectance, NaN where there is no data (DN 0, the
        file's nodata value, or outside a band's footprint); ESA band names; pixel-centre
        ``x``/``y`` coordinates and the CRS (rioxarray). ``attrs["xs2mask_radiometry"]``
        records how each band was scaled (one text, or ``"B02: ...; B03: ..."`` when bands
        differ), ``attrs["xs2mask_offset_dn"]`` the offset removed and
        ``attrs["xs2mask_resampling"]`` which bands were resampled and how. Files of float
        values are taken as reflectance as they are.

    Warns
    -----
    RadiometryWarning
        When the offset had to be assumed (``harmonize="auto"`` without metadata), when
        ``offset=`` overrides the metadata, and (numpy results only) when many pixels are far
        below 0, the sign of an offset removed from data that had none.

    Raises
    ------
    InputError
        The path is missing or unreadable, the band files are in several CRSs, or the
        offset cannot be decided with ``harmonize=True``.
    BandError
        No band, an unknown or duplicate band, or band names missing for a GeoTIFF.

    Examples
    --------
    >>> import xs2mask
    >>> safe = "S2B_MSIL1C_20220615T101559_N0400_R065_T32UPC_20220615T122549.SAFE"
    >>> cube = read_scene(safe, bands=["B02", "B03", "B04", "B08"])  # doctest: +SKIP
    >>> cube.attrs["xs2mask_radiometry"]  # doctest: +SKIP
    'MTD_MSIL1C.xml RADIO_ADD_OFFSET -1000 (baseline 04.00)'
    >>> xs2mask.predict(cube).mask  # doctest: +SKIP
    """
    if harmonize not in (True, False, "auto"):
        raise ValueError(f"harmonize must be True, False or 'auto', got {harmonize!r}")
    if offset is not None:
        offset = float(offset)
        if not math.isfinite(offset):
            raise ValueError(f"offset must be a finite number of DN, got {offset!r}")
        if harmonize is False:
            raise ValueError("offset= and harmonize=False contradict each other: pass one of them")
    if resolution is not None and not (isinstance(resolution, int | float) and resolution > 0):
        raise ValueError(f"resolution must be a positive number of metres or None, got {resolution!r}")
    wanted = _wanted_bands(bands)

    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"{path} does not exist: pass a .SAFE folder, a folder of band files or a GeoTIFF")
    files, metadata = _discover(path, bands)
    files = _select(files, wanted, path)
    radiometry = _decide_radiometry(files, metadata, path, harmonize, offset)
    grid = _grid(files, resolution)

    sizes = _chunk_sizes(chunks)
    opened: dict[Path, xr.DataArray] = {}
    layers = []
    resampled = []
    for bf in files:
        raw = _open(bf, opened, sizes, grid)
        refl = _to_reflectance(raw, bf, radiometry[bf.band])
        layer, how = _resample(refl, bf, grid)
        if how:
            resampled.append(f"{bf.band}: {how}")
        layers.append(layer)
    cube = xr.concat(layers, dim="band", coords="minimal", compat="override", join="override")
    cube = cube.assign_coords(band=[bf.band for bf in files], y=grid.y, x=grid.x)
    if sizes is not None:
        # Lazy: one chunk grid for every band, whatever each file's own blocks were.
        cube = cube.chunk({"band": 1, "y": sizes["y"], "x": sizes["x"]})
    else:
        cube = cube.load()
        for da in opened.values():
            da.close()
        # Cheap on numpy: an offset removed from data already harmonised pushes dark pixels to -0.1.
        check_reflectance(negative_fraction(cube), label=str(path))
    cube = cube.astype(np.float32, copy=False)
    cube.attrs = {
        "xs2mask_input": str(path),
        "xs2mask_radiometry": _summary({bf.band: radiometry[bf.band].source for bf in files}),
        "xs2mask_offset_dn": _summary({bf.band: f"{radiometry[bf.band].offset_dn:g}" for bf in files}),
        "xs2mask_resampling": "; ".join(resampled) if resampled else "none",
    }
    cube.name = "reflectance"
    return _attach_crs(cube, grid)


def band_from_name(name: str) -> str | None:
    """The band a file name refers to, or None when it names none (or several).

    ESA-style tokens (``B02``, ``B8A``, ``B2``) win over common names (``blue``),
    since product and tile names may contain words that are common names by chance.

    Examples
    --------
    >>> band_from_name("T32UPC_20220615T101559_B8A_20m.jp2")
    'B8A'
    >>> band_from_name("scene_nir08.tif")
    'B8A'
    >>> band_from_name("T32UPC_20220615T101559_TCI.jp2") is None
    True
    """
    stem = Path(name).name
    for suffix in Path(name).suffixes:
        stem = stem.removesuffix(suffix)
    tokens = [t for t in _TOKEN_SPLIT.split(stem) if t]
    esa = {canonical_band(t) for t in tokens if _ESA_TOKEN.match(t)}
    if esa:
        return esa.pop() if len(esa) == 1 else None
    common = set()
    for token in tokens:
        with contextlib.suppress(BandError):
            common.add(canonical_band(token))
    return common.pop() if len(common) == 1 else None


@dataclass(frozen=True)
class SceneMask:
    """What :func:`mask_scene` made and wrote.

    Attributes
    ----------
    source : the scene read.
    out : the mask GeoTIFF written.
    mask : the mask in memory, uint8 on the grid of the scene's finest band, CRS kept.
    bands : the bands found in the scene (the model read those it needs).
    radiometry : how DN became reflectance (the cube's ``xs2mask_radiometry``).
    model : the model that made the mask (an ensemble's names joined by commas).
    licence : the model's licence.
    device : where the model ran.
    seconds : time spent reading and masking.
    """

    source: Path
    out: Path
    mask: xr.DataArray
    bands: tuple[str, ...]
    radiometry: str
    model: str
    licence: str
    device: str
    seconds: float

    @property
    def percentages(self) -> dict[str, float]:
        """Percentage of the valid pixels in each class (:func:`xs2mask.export.class_percentages`)."""
        from .export import class_percentages

        return class_percentages(self.mask.values)


def mask_scene(
    source: str | Path,
    out: str | Path,
    *,
    model: str = "default",
    bands: Sequence[str] | None = None,
    offset: float | None = None,
    processing_resolution: float | None = None,
    tta: int = 0,
    device: str = "auto",
    chunks: int = 1024,
    overwrite: bool = False,
) -> SceneMask:
    """Mask one scene given as files and write the mask as a GeoTIFF: what ``xs2mask mask`` runs.

    The scene is read lazily (:func:`read_scene`, on the grid of its finest band), masked with
    :func:`xs2mask.predict` reading only the bands the model needs, checked for an offset applied
    to data that had none (in the same pass over the files), and written with
    :func:`xs2mask.export.write_geotiff` (COG, colour table, nodata 255).

    Parameters
    ----------
    source
        A ``.SAFE`` folder (L1C or L2A), a folder of band files or a multi-band GeoTIFF.
    out
        The mask GeoTIFF to write; its folder is created.
    model, processing_resolution, tta, device
        As in :func:`xs2mask.predict`.
    bands, offset
        As in :func:`read_scene`: the bands to read (or a GeoTIFF's band names), and the DN offset
        when the metadata cannot tell.
    chunks
        Block size in pixels of the lazy read.
    overwrite
        Replace an existing ``out`` (never the input itself).

    Returns
    -------
    SceneMask
        The mask, where it was written, and how it was made.

    Raises
    ------
    InputError
        ``source`` does not exist; ``out`` is a folder, the input, or an existing file without
        ``overwrite=True``.

    Warns
    -----
    RadiometryWarning
        The offset had to be assumed, or the reflectance looks like an offset was removed twice.

    Examples
    --------
    >>> import xs2mask
    >>> done = mask_scene(xs2mask.data.demo_path(), "demo_mask.tif", model="xs2mask-4b")  # doctest: +SKIP
    >>> done.out, done.percentages["clear"]  # doctest: +SKIP
    (PosixPath('demo_mask.tif'), 61.2)
    """
    import time

    import dask

    from . import models
    from .checks import check_scene_paths
    from .export import write_geotiff
    from .inference import predict

    source, out = check_scene_paths(source, out, overwrite=overwrite)
    # Lazy read: predict selects the bands its model needs, so only those files are decoded.
    cube = read_scene(source, bands=bands, resolution=None, chunks=chunks, offset=offset)
    start = time.perf_counter()
    ds = predict(cube, model=model, tta=tta, device=device, processing_resolution=processing_resolution)
    used = list(
        dict.fromkeys(b for name in ds.attrs["xs2mask_model"].split(",") for b in models.get(name).bands)
    )
    # One pass over the files: the radiometry check shares the reads with the model.
    mask, fraction = dask.compute(ds.mask, negative_fraction(cube.sel(band=used)))
    seconds = time.perf_counter() - start
    check_reflectance(fraction, label=str(source))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_geotiff(mask, out)
    attrs = ds.attrs
    return SceneMask(
        source=source,
        out=out,
        mask=mask,
        bands=tuple(map(str, cube.band.values)),
        radiometry=cube.attrs["xs2mask_radiometry"],
        model=attrs["xs2mask_model"],
        licence=attrs["xs2mask_model_licence"],
        device=attrs["xs2mask_device"],
        seconds=seconds,
    )


# --------------------------------------------------------------------------- discovery


@dataclass
class _Metadata:
    """Where the radiometry can come from, besides the user."""

    xml: Path | None = None
    names: tuple[str, ...] = ()  # product / folder names to parse a baseline from


def _wanted_bands(bands: Sequence[str] | str | None) -> list[str] | None:
    if bands is None:
        return None
    if isinstance(bands, str):
        bands = [b for b in re.split(r"[,\s]+", bands) if b]
    names = [canonical_band(b) for b in bands]
    if not names:
        raise BandError("bands= is empty: leave it out to read every band, or name some, e.g. ['B02', 'B03']")
    dupes = sorted({b for b in names if names.count(b) > 1})
    if dupes:
        raise BandError(f"bands= names {dupes} more than once (after mapping aliases to ESA names)")
    return names


def _discover(path: Path, bands: Sequence[str] | str | None) -> tuple[list[_BandFile], _Metadata]:
    if path.is_file():
        if path.suffix.lower() == ".zip":
            raise InputError(f"{path} is a zip archive: unzip it and pass the .SAFE folder inside")
        if path.name.upper().startswith("MTD_MSIL") and path.suffix.lower() == ".xml":
            return _discover(path.parent, bands)
        return _multiband(path, bands), _Metadata(names=(path.name,))
    safe = path.name.upper().endswith(".SAFE") or (path / "GRANULE").is_dir()
    if safe:
        return _safe(path)
    return _folder(path)


def _safe(safe: Path) -> tuple[list[_BandFile], _Metadata]:
    img = sorted((safe / "GRANULE").glob("*/IMG_DATA"))
    if not img:
        raise InputError(
            f"{safe} has no GRANULE/*/IMG_DATA folder: is the download complete? "
            "(Pass a folder of band files instead if you have only those.)"
        )
    if len(img) > 1:
        raise InputError(
            f"{safe} holds {len(img)} granules (an old multi-tile product): pass one granule's "
            f"IMG_DATA folder, e.g. {img[0]}"
        )
    files, _ = _folder(img[0], finest=True)
    xml = _product_xml(safe)
    return files, _Metadata(xml=xml, names=(safe.name,))


def _product_xml(folder: Path) -> Path | None:
    """The product metadata file of a SAFE root or a folder: MTD_MSIL1C.xml / MTD_MSIL2A.xml first."""
    xmls = sorted(p for p in folder.glob("*.xml") if "MTD" in p.name.upper())
    # Tile and datastrip metadata carry no radiometric offsets.
    xmls = [p for p in xmls if not p.name.upper().startswith(("MTD_TL", "MTD_DS"))]
    product = [p for p in xmls if p.name.upper().startswith("MTD_MSIL")]
    candidates = product or xmls
    if len(candidates) > 1:
        raise InputError(
            f"{folder} holds several metadata files {[p.name for p in candidates]}: keep the one "
            "that belongs to these bands, or pass offset= yourself"
        )
    return candidates[0] if candidates else None


def _folder(folder: Path, finest: bool = False) -> tuple[list[_BandFile], _Metadata]:
    rasters = [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in _RASTER_SUFFIXES]
    # An L2A IMG_DATA folder (or a copy of it) keeps its bands in R10m/R20m/R60m.
    sub = [p for p in sorted(folder.iterdir()) if p.is_dir() and _RES_FOLDER.match(p.name)]
    for d in sub:
        rasters += [p for p in sorted(d.iterdir()) if p.is_file() and p.suffix.lower() in _RASTER_SUFFIXES]
    finest = finest or bool(sub)
    named: dict[str, list[Path]] = {}
    ignored = []
    for p in rasters:
        band = band_from_name(p.name)
        if band is None:
            ignored.append(p.name)
        else:
            named.setdefault(band, []).append(p)
    if not named:
        found = ", ".join(p.name for p in rasters[:12]) or "no .tif/.tif/.jp2 files at all"
        more = f" and {len(rasters) - 12} more" if len(rasters) > 12 else ""
        raise BandError(
            f"no band files recognised in {folder} (found: {found}{more}). Band files need the band "
            "in their name, e.g. T32UPC_20220615T101559_B02.jp2, B8A.tif or scene_blue.tif"
        )
    files = []
    for band, paths in named.items():
        candidates = [_header(p, band) for p in paths]
        multi = [c.path.name for c in candidates if c.count != 1]
        if multi:
            raise InputError(
                f"{multi} in {folder} hold several bands; a folder must hold one band per file. Pass a "
                "multi-band GeoTIFF itself (not its folder) to read_scene"
            )
        if len(candidates) > 1 and not finest:
            raise BandError(
                f"band {band} is in several files in {folder}: {[p.name for p in paths]}; keep one of them"
            )
        finest_res = min(c.xres for c in candidates)
        best = [c for c in candidates if math.isclose(c.xres, finest_res, rel_tol=_TOL)]
        if len(best) > 1:
            raise BandError(
                f"band {band} is in several files of the same resolution in {folder}: "
                f"{[c.path.name for c in best]}; keep one of them"
            )
        files.append(best[0])
    return files, _Metadata(xml=_nearby_xml(folder), names=_nearby_names(folder))


def _nearby_xml(folder: Path) -> Path | None:
    """Metadata in the folder itself, else at the root of a SAFE product the folder sits in."""
    xml = _product_xml(folder)
    if xml is not None:
        return xml
    for parent in list(folder.parents)[:4]:
        if parent.name.upper().endswith(".SAFE"):
            return _product_xml(parent)
    return None


def _nearby_names(folder: Path) -> tuple[str, ...]:
    names = [folder.name]
    names += [p.name for p in list(folder.parents)[:4] if p.name.upper().endswith(".SAFE")]
    return tuple(names)


def _header(path: Path, band: str, index: int = 1) -> _BandFile:
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(path) as src:
            bf = _BandFile(
                band=band,
                path=path,
                index=index,
                crs=src.crs,
                transform=src.transform,
                width=src.width,
                height=src.height,
                dtype=src.dtypes[index - 1],
                nodata=src.nodata,
                count=src.count,
            )
    except RasterioIOError as err:
        raise InputError(
            f"cannot read {path}: {err}. Is the file complete? (JPEG2000 needs GDAL's JP2OpenJPEG driver)"
        ) from None
    _check_geometry(bf)
    return bf


def _check_geometry(bf: _BandFile) -> None:
    t = bf.transform
    if bf.crs is None:
        raise InputError(f"{bf.path} has no CRS: a Sentinel-2 band file must be georeferenced")
    if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
        raise InputError(
            f"{bf.path} is not a north-up grid (geotransform {tuple(t)[:6]}): warp it to north-up first, "
            "e.g. gdalwarp"
        )


def _multiband(path: Path, bands: Sequence[str] | str | None) -> list[_BandFile]:
    import rasterio
    from rasterio.errors import RasterioIOError

    if path.suffix.lower() not in _RASTER_SUFFIXES | {".vrt"}:
        raise InputError(f"{path} is neither a folder nor a GeoTIFF/JPEG2000 file")
    try:
        with rasterio.open(path) as src:
            count, descriptions = src.count, list(src.descriptions)
    except RasterioIOError as err:
        raise InputError(f"cannot read {path}: {err}. Is it a complete GeoTIFF?") from None
    names = _names_from_descriptions(descriptions)
    if names is None and count == 1:
        one = band_from_name(path.name)
        names = [one] if one else None
    if names is None:
        if bands is None:
            # rioxarray's to_raster writes the array's name as every band's description
            same = count > 1 and len(set(descriptions)) == 1 and descriptions[0]
            hint = (
                " (one name for all: rioxarray's to_raster writes the array's name there; to keep the "
                "band names, set da.attrs['long_name'] = list(da.band.values) before da.rio.to_raster)"
                if same
                else ""
            )
            raise BandError(
                f"{path} has {count} bands but no band names (its band descriptions are "
                f"{descriptions}{hint}): pass bands= ({count} names in file order, e.g. bands=['B02', "
                "'B03', 'B04', 'B08'] for a 4-band file), or set the descriptions with "
                "rasterio's dst.set_band_description"
            )
        given = _wanted_bands(bands) or []
        if len(given) != count:
            raise BandError(
                f"{path} has {count} bands but bands= names {len(given)} ({given}): name each band "
                "of the file, in file order"
            )
        names = given
    dupes = sorted({b for b in names if names.count(b) > 1})
    if dupes:
        raise BandError(f"{path} holds bands {dupes} more than once (band descriptions {descriptions})")
    return [_header(path, band, i + 1) for i, band in enumerate(names)]


def _names_from_descriptions(descriptions: list[str | None]) -> list[str] | None:
    """ESA names from band descriptions, or None when any band is not described by a band name."""
    names = []
    for d in descriptions:
        if not d:
            return None
        try:
            names.append(canonical_band(d))
        except BandError:
            return None
    return names


def _select(files: list[_BandFile], wanted: list[str] | None, path: Path) -> list[_BandFile]:
    by_band = {bf.band: bf for bf in files}
    if wanted is None:
        # Files named by bands= (GeoTIFF without descriptions) are all read, in file order.
        if len({bf.path for bf in files}) == 1 and len(files) > 1:
            return files
        return _same_crs([by_band[b] for b in BAND_NAMES if b in by_band], path)
    if len({bf.path for bf in files}) == 1 and [bf.band for bf in files] == wanted:
        return files
    missing = [b for b in wanted if b not in by_band]
    if missing:
        raise BandError(f"{path} lacks bands {missing}; it has {[b for b in BAND_NAMES if b in by_band]}")
    return _same_crs([by_band[b] for b in wanted], path)


def _same_crs(selected: list[_BandFile], path: Path) -> list[_BandFile]:
    if len({bf.crs for bf in selected}) > 1:
        detail = ", ".join(f"{bf.band}: {bf.crs}" for bf in selected)
        raise InputError(
            f"the band files of {path} are in different CRSs ({detail}): reproject them to one CRS "
            "(e.g. gdalwarp -t_srs) or read bands of one CRS only with bands="
        )
    return selected


# --------------------------------------------------------------------------- radiometry


def _decide_radiometry(files, metadata: _Metadata, path: Path, harmonize, offset):
    """One :class:`~xs2mask.radiometry.Radiometry` per band, with its reason in ``source``."""
    floats = [bf for bf in files if np.issubdtype(np.dtype(bf.dtype), np.floating)]
    if floats and offset is not None:
        raise InputError(
            f"offset= applies to integer DN, but {floats[0].path.name} holds float values, which are "
            "taken as reflectance: drop offset= (or convert the file to DN)"
        )
    as_is = Radiometry(scale=1e-4, offset=0.0, source="float values taken as reflectance as they are")
    decided: dict[str, Radiometry | None] = {bf.band: as_is for bf in floats}
    files = [bf for bf in files if bf not in floats]
    if harmonize is False:
        plain = Radiometry(scale=1e-4, offset=0.0, source="harmonize=False: DN / 10000, no offset removed")
        return decided | {bf.band: plain for bf in files}

    from_xml: dict = {}
    if metadata.xml is not None:
        try:
            from_xml = product_radiometry(metadata.xml)
        except XS2MaskError:
            raise
        except (ValueError, KeyError, OSError) as err:
            raise InputError(
                f"cannot read the radiometric offsets from {metadata.xml}: {err}. Remove the file or pass "
                "offset= yourself"
            ) from None

    unknown = []
    overridden: dict[str, Radiometry] = {}
    for bf in files:
        known = from_xml.get(bf.band)
        if known is None:
            for name in (bf.path.name, *metadata.names):
                baseline = baseline_from_name(name)
                if baseline is not None:
                    known = baseline_radiometry(baseline)
                    known = replace(
                        known, source=f"baseline {baseline} in the name {name}: offset {known.offset_dn:g} DN"
                    )
                    break
        if offset is not None:
            user = Radiometry(
                scale=1e-4, offset=offset * 1e-4, source=f"offset={offset:g} DN given by the user"
            )
            if known is not None and not math.isclose(known.offset_dn, offset, abs_tol=0.5):
                overridden[bf.band] = known
            decided[bf.band] = user
        elif known is not None:
            decided[bf.band] = known
        else:
            unknown.append(bf.band)
            decided[bf.band] = None

    if overridden:
        said = _summary({band: f"{r.source}: {r.offset_dn:g} DN" for band, r in overridden.items()})
        warnings.warn(
            f"offset={offset:g} DN overrides the metadata of {', '.join(overridden)} ({said}); drop "
            "offset= to follow the metadata",
            RadiometryWarning,
            stacklevel=3,
        )
    if unknown:
        reason = (
            f"cannot tell whether the DN of {path} carry the processing-baseline 04.00 offset: no "
            "MTD_MSIL1C.xml / MTD_MSIL2A.xml beside the bands and no _N0400_-style baseline in the "
            "product or file names"
        )
        fix = (
            "For products of baseline 04.00 or later (processed from 25 January 2022 on) pass --offset -1000 "
            "(offset=-1000); for older ones pass --offset 0 (offset=0)"
        )
        if harmonize is True:
            raise InputError(f"{reason}. {fix}.")
        warnings.warn(
            f"{reason}; assuming none (reflectance = DN / 10000). {fix}.", RadiometryWarning, stacklevel=3
        )
        assumed = Radiometry(scale=1e-4, offset=0.0, source="baseline unknown: assumed no offset, DN / 10000")
        for band in unknown:
            decided[band] = assumed
    return decided


def _summary(per_band: dict[str, str]) -> str:
    values = set(per_band.values())
    if len(values) == 1:
        return values.pop()
    return "; ".join(f"{band}: {value}" for band, value in per_band.items())


# --------------------------------------------------------------------------- grid and pixels


def _grid(files: list[_BandFile], resolution: float | None) -> _Grid:
    """Output grid: the union footprint of the finest bands, at ``resolution``."""
    finest_res = min(bf.xres for bf in files)
    finest = [bf for bf in files if math.isclose(bf.xres, finest_res, rel_tol=_TOL)]
    left = min(bf.left for bf in finest)
    right = max(bf.right for bf in finest)
    top = max(bf.top for bf in finest)
    bottom = min(bf.bottom for bf in finest)
    res = float(resolution) if resolution is not None else finest_res
    # Cover the whole footprint: a partial pixel at the right/bottom edge counts.
    width = max(1, math.ceil((right - left) / res - _TOL))
    height = max(1, math.ceil((top - bottom) / res - _TOL))
    return _Grid(crs=finest[0].crs, left=left, top=top, res=res, width=width, height=height)


def _chunk_sizes(chunks: int | dict | None) -> dict | None:
    if chunks is None:
        return None
    if isinstance(chunks, dict):
        return {"y": chunks.get("y", "auto"), "x": chunks.get("x", "auto")}
    if not isinstance(chunks, int) or isinstance(chunks, bool) or chunks < 1:
        raise ValueError(
            f"chunks must be a positive int, a dict like {{'y': 2048, 'x': 2048}} or None, got {chunks!r}"
        )
    return {"y": chunks, "x": chunks}


def _open(bf: _BandFile, opened: dict, sizes: dict | None, grid: _Grid) -> xr.DataArray:
    """The band's DN (or float values) on its own grid: numpy when ``sizes`` is None, else dask."""
    import rioxarray

    if bf.path not in opened:
        file_chunks = None
        if sizes is not None:
            # Chunk a coarse file so that, once resampled, its blocks are about the requested size.
            scale = grid.res / bf.xres
            file_chunks = {
                "band": 1,
                **{d: max(1, round(c * scale)) if isinstance(c, int) else c for d, c in sizes.items()},
            }
        try:
            # lock=False: JPEG2000 decoding is slow, so let Dask decode blocks of all bands in parallel
            # (each read opens its own handle) instead of behind rioxarray's one global lock.
            da = rioxarray.open_rasterio(
                bf.path, chunks=file_chunks, masked=False, cache=False, lock=False if sizes else None
            )
        except Exception as err:  # rasterio/GDAL raise several types for broken files
            raise InputError(f"cannot read {bf.path}: {err}") from None
        opened[bf.path] = da
    da = opened[bf.path].isel(band=bf.index - 1, drop=True)
    if sizes is None:
        try:
            da = da.load()
        except Exception as err:
            raise InputError(f"cannot read the pixels of {bf.path}: {err}. Is the file complete?") from None
    return da


def _to_reflectance(raw: xr.DataArray, bf: _BandFile, radiometry) -> xr.DataArray:
    if np.issubdtype(raw.dtype, np.floating):
        # Float files are taken as reflectance already (e.g. exported by SNAP or xarray).
        refl = raw.astype(np.float32)
        if bf.nodata is not None and not math.isnan(bf.nodata):
            refl = refl.where(raw != bf.nodata)
        return refl
    refl = radiometry.apply(raw)
    if bf.nodata is not None and bf.nodata != 0:
        # DN 0 is no-data in every band anyway; some crops mark another value (e.g. 65535).
        refl = refl.where(raw != bf.nodata)
    return refl.astype(np.float32)


def _resample(refl: xr.DataArray, bf: _BandFile, grid: _Grid) -> tuple[xr.DataArray, str]:
    """``refl`` on ``grid``, and a note on what was done ("" when the band was on the grid already)."""
    refl = refl.drop_vars([c for c in refl.coords if c not in refl.dims])
    if (
        bf.width == grid.width
        and bf.height == grid.height
        and math.isclose(bf.xres, grid.res, rel_tol=_TOL)
        and math.isclose(bf.yres, grid.res, rel_tol=_TOL)
        and math.isclose(bf.left, grid.left, abs_tol=_TOL * grid.res)
        and math.isclose(bf.top, grid.top, abs_tol=_TOL * grid.res)
    ):
        return refl, ""
    src = f"{bf.xres:g} m -> {grid.res:g} m"
    # The Sentinel-2 case: whole-number ratios on grids that share pixel corners. Done by repeating
    # or block-averaging pixels, one Dask task per block, rather than by fancy indexing (an order of
    # magnitude more tasks for a full tile).
    up = _whole(bf.xres / grid.res), _whole(bf.yres / grid.res)
    if all(up) and _on_grid(bf.left - grid.left, grid.res) and _on_grid(grid.top - bf.top, grid.res):
        fy, fx = up
        data = refl.data if fy == fx == 1 else _repeat(refl.data, fy, fx)
        # Target row/column of the band's first (repeated) pixel.
        row0, col0 = round((grid.top - bf.top) / grid.res), round((bf.left - grid.left) / grid.res)
        out = _window(xr.DataArray(data, dims=("y", "x")), -row0, grid.height, -col0, grid.width)
        return out, f"nearest {src}"
    down = _whole(grid.res / bf.xres), _whole(grid.res / bf.yres)
    if all(down) and _on_grid(grid.left - bf.left, bf.xres) and _on_grid(bf.top - grid.top, bf.yres):
        fy, fx = down
        row0, col0 = round((bf.top - grid.top) / bf.yres), round((grid.left - bf.left) / bf.xres)
        block = _window(refl, row0, grid.height * fy, col0, grid.width * fx)
        # Mean of the valid pixels of each block; sum / count rather than nanmean, which warns on
        # blocks with no valid pixel at all (outside a band's footprint).
        total = block.fillna(0).coarsen(y=fy, x=fx).sum()
        count = block.notnull().coarsen(y=fy, x=fx).sum()
        return (total / count.where(count > 0)).astype(np.float32), f"average {src}"
    # Anything else (grids that do not share corners, odd ratios): the source pixel that each
    # target pixel centre falls in.
    iy = np.floor((bf.top - grid.y) / bf.yres).astype(np.int64)
    ix = np.floor((grid.x - bf.left) / bf.xres).astype(np.int64)
    valid_y = (iy >= 0) & (iy < bf.height)
    valid_x = (ix >= 0) & (ix < bf.width)
    out = refl.isel(y=np.clip(iy, 0, bf.height - 1), x=np.clip(ix, 0, bf.width - 1))
    out = out.drop_vars(["y", "x"], errors="ignore")
    if not (valid_y.all() and valid_x.all()):
        out = out.where(xr.DataArray(valid_y, dims="y") & xr.DataArray(valid_x, dims="x"))
    return out, f"nearest {src}"


def _whole(ratio: float) -> int:
    """``ratio`` as an int when it is a whole number >= 1 (within float noise), else 0."""
    nearest = round(ratio)
    return nearest if nearest >= 1 and math.isclose(ratio, nearest, rel_tol=_TOL) else 0


def _on_grid(distance: float, res: float) -> bool:
    """Whether ``distance`` is a whole number of pixels of size ``res``."""
    return math.isclose(distance / res, round(distance / res), abs_tol=1e-6)


def _repeat(data, fy: int, fx: int):
    """Each pixel as an ``fy`` x ``fx`` block: one task per Dask block, or plain numpy."""
    if isinstance(data, np.ndarray):
        return _repeat_block(data, fy, fx)
    chunks = (tuple(c * fy for c in data.chunks[0]), tuple(c * fx for c in data.chunks[1]))
    return data.map_blocks(_repeat_block, fy, fx, chunks=chunks, dtype=data.dtype)


def _repeat_block(block: np.ndarray, fy: int, fx: int) -> np.ndarray:
    return block.repeat(fy, axis=0).repeat(fx, axis=1)


def _window(da: xr.DataArray, row0: int, nrows: int, col0: int, ncols: int) -> xr.DataArray:
    """Rows ``row0 .. row0 + nrows`` and the like columns of ``da``; NaN where they fall outside it."""
    height, width = da.sizes["y"], da.sizes["x"]
    inner = da.isel(
        y=slice(max(row0, 0), max(min(row0 + nrows, height), 0)),
        x=slice(max(col0, 0), max(min(col0 + ncols, width), 0)),
    )
    pad_y = (min(max(-row0, 0), nrows), 0)
    pad_x = (min(max(-col0, 0), ncols), 0)
    pad_y = (pad_y[0], nrows - inner.sizes["y"] - pad_y[0])
    pad_x = (pad_x[0], ncols - inner.sizes["x"] - pad_x[0])
    if any(pad_y + pad_x):
        inner = inner.pad(y=pad_y, x=pad_x, constant_values=np.nan)
    return inner.drop_vars(["y", "x"], errors="ignore")


def _attach_crs(cube: xr.DataArray, grid: _Grid) -> xr.DataArray:
    import rioxarray  # noqa: F401  (registers .rio)

    cube = cube.rio.write_crs(grid.crs)
    cube = cube.rio.write_transform(grid.transform)
    return cube.rio.write_coordinate_system()
