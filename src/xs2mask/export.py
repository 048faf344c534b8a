"""Exporting masks: GeoTIFF with a colour table, PNG quick-looks, class percentages.

Formerly ``xs2mask.io`` (still importable, deprecated).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from .analysis import as_mask
from .classes import CLASS_COLOURS, CLASS_NAMES, NODATA, mask_attrs
from .exceptions import InputError

logger = logging.getLogger("xs2mask")


def class_percentages(mask: np.ndarray) -> dict[str, float]:
    """Percentage of valid (non no-data) pixels in each class.

    Examples
    --------
    >>> class_percentages(np.array([[0, 1], [3, 255]], np.uint8))["clear"]
    33.33
    """
    valid = mask != NODATA
    n = int(valid.sum())
    return {
        name: round(100.0 * float((mask[valid] == code).sum()) / n, 2) if n else 0.0
        for code, name in CLASS_NAMES.items()
    }


def write_geotiff(mask: xr.DataArray, path: str | Path) -> Path:
    """Write a 2-D mask as a tiled, deflate-compressed GeoTIFF (COG layout when GDAL allows).

    The file carries nodata 255, a colour table, and per-class percentages as tags.
    It is written to a temporary name first, so an interrupted write never
    leaves a truncated file under ``path``.

    Examples
    --------
    >>> import xs2mask
    >>> ds = xs2mask.predict(xs2mask.data.demo_scene())
    >>> write_geotiff(ds.mask, "mask.tif")  # doctest: +SKIP
    """
    import rasterio
    import rasterio.shutil
    import rioxarray  # noqa: F401  (registers .rio)

    path = Path(path)
    values = np.asarray(mask.values, np.uint8)
    profile = {
        "driver": "GTiff",
        "height": values.shape[0],
        "width": values.shape[1],
        "count": 1,
        "dtype": "uint8",
        "nodata": NODATA,
        "crs": mask.rio.crs,
        "transform": mask.rio.transform(),
    }
    staging = path.with_name(path.name + ".staging.tif")
    partial = path.with_name(path.name + ".partial")
    try:
        with rasterio.open(staging, "w", **profile) as dst:
            dst.write(values, 1)
            dst.write_colormap(1, dict(CLASS_COLOURS))
            dst.update_tags(**{f"PCT_{k.upper()}": str(v) for k, v in class_percentages(values).items()})
            flags = mask_attrs()
            dst.update_tags(
                1,
                flag_values=" ".join(map(str, flags["flag_values"])),
                flag_meanings=flags["flag_meanings"],
            )
        rasterio.shutil.copy(staging, partial, driver="COG", compress="DEFLATE")
        partial.replace(path)
    finally:
        staging.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)
    return path


def rgb_image(reflectance: np.ndarray, gain: float = 3.0) -> np.ndarray:
    """``(3, y, x)`` reflectance to an 8-bit true-colour image ``(y, x, 3)`` (gamma 1/1.5)."""
    rgb = np.nan_to_num(np.clip(reflectance.transpose(1, 2, 0) * gain, 0, 1)) ** (1 / 1.5)
    return (rgb * 255).astype(np.uint8)


def colour_mask(mask: np.ndarray) -> np.ndarray:
    """Class codes ``(y, x)`` to an RGBA image ``(y, x, 4)``."""
    lut = np.zeros((256, 4), np.uint8)
    for code, rgba in CLASS_COLOURS.items():
        lut[code] = rgba
    return lut[mask]


def quicklook(rgb_reflectance: np.ndarray, mask: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Save a PNG: true colour on the left, coloured mask on the right, with a legend.

    Drawn on its own Agg canvas: pyplot's backend (a notebook's inline figures) is left alone.

    Examples
    --------
    >>> import xs2mask
    >>> cube = xs2mask.data.demo_scene()
    >>> mask = xs2mask.predict(cube, model="xs2mask-4b").mask.values
    >>> rgb = cube.sel(band=["B04", "B03", "B02"]).values / 10_000
    >>> quicklook(rgb, mask, "quicklook.png")  # doctest: +SKIP
    PosixPath('quicklook.png')
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    from .plotting import legend_handles

    fig = Figure(figsize=(10, 5.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    axes[0].imshow(rgb_image(rgb_reflectance))
    axes[0].set_title("true colour (B04 B03 B02)")
    axes[1].imshow(colour_mask(mask), interpolation="nearest")
    pct = class_percentages(mask)
    axes[1].set_title("xs2mask")
    for ax in axes:
        ax.set_axis_off()
    labels = {c: f"{n} {pct[n]:.1f}%" for c, n in CLASS_NAMES.items()}
    labels[NODATA] = "no data"
    fig.legend(handles=legend_handles(labels), loc="lower center", ncol=5, frameon=False)
    if title:
        fig.suptitle(title)
    engine = fig.get_layout_engine()
    assert isinstance(engine, ConstrainedLayoutEngine)  # the figure was made with layout="constrained"
    engine.set(rect=(0, 0.06, 1, 0.94))
    fig.savefig(path, dpi=90)
    return Path(path)


def date_labels(times: Sequence[object] | np.ndarray) -> list[str]:
    """Short labels of dates: the day, or to the minute (then second) where days repeat.

    Examples
    --------
    >>> date_labels(np.array(["2020-04-29T08:20:47", "2020-05-04T08:20:49"], "datetime64[ns]"))
    ['2020-04-29', '2020-05-04']
    >>> date_labels(np.array(["2020-04-29T08:20:47", "2020-04-29T08:21:02"], "datetime64[ns]"))
    ['2020-04-29T08:20', '2020-04-29T08:21']
    """
    times = np.asarray(times)
    if not np.issubdtype(times.dtype, np.datetime64):
        return [str(t) for t in times]
    for unit in ("D", "m", "s"):
        labels = [str(t) for t in np.datetime_as_string(times, unit=unit)]
        if len(set(labels)) == len(labels):
            break
    return labels


def for_raster(masks: xr.DataArray | xr.Dataset) -> xr.DataArray:
    """The mask ready for rioxarray's ``rio.to_raster``: uint8, nodata 255, CRS kept, lazy if it was.

    Several dates become the bands of one file, described by their dates.

    Examples
    --------
    >>> import xs2mask
    >>> masks = xs2mask.predict(xs2mask.data.demo_scene(), model="xs2mask-4b")
    >>> ready = for_raster(masks)
    >>> ready.rio.nodata, str(ready.dtype), ready.rio.crs.to_epsg()
    (np.uint8(255), 'uint8', 32736)
    >>> ready.rio.to_raster("mask.tif")  # doctest: +SKIP
    """
    import rioxarray  # noqa: F401  (registers .rio)

    mask = as_mask(masks).transpose(..., "y", "x")
    crs = mask.rio.crs
    ready = mask.astype(np.uint8)
    ready.encoding = {k: v for k, v in mask.encoding.items() if k not in ("_FillValue", "dtype")}
    if "time" in ready.dims:
        ready.attrs["long_name"] = tuple(date_labels(ready["time"].values))
    ready = ready.rio.write_nodata(NODATA, encoded=False)
    return ready if crs is None else ready.rio.write_crs(crs)


def to_geotiff(masks: xr.DataArray | xr.Dataset, path: str | Path) -> tuple[Path, ...]:
    """Write masks as GeoTIFFs with a colour table (:func:`write_geotiff`), one file per date.

    Parameters
    ----------
    masks
        Mask Dataset or DataArray, ``(y, x)`` or ``(time, y, x)``.
    path
        The file; with several dates it must hold ``{date}``, replaced by each date
        (``"masks/{date}.tif"``).

    Returns
    -------
    The paths written, in time order.

    Examples
    --------
    >>> import xs2mask
    >>> masks = xs2mask.predict(xs2mask.data.demo_scene(), model="xs2mask-4b")
    >>> to_geotiff(masks, "mask.tif")  # doctest: +SKIP
    (PosixPath('mask.tif'),)
    """
    mask = as_mask(masks).transpose(..., "y", "x")
    template = str(path)
    if "time" not in mask.dims and "time" in mask.coords:
        mask = mask.expand_dims("time")  # its one date can name the file
    if "time" in mask.dims and mask.sizes["time"] == 1 and "{date}" not in template:
        mask = mask.squeeze("time", drop=True)
    if "time" not in mask.dims:
        if "{date}" in template:
            raise InputError(
                f"the mask has no date to put in {template!r}: name the file without {{date}}, or give "
                "the mask its time coordinate (mask.expand_dims(time=[...]))"
            )
        return (write_geotiff(mask, template),)
    if "{date}" not in template:
        raise InputError(
            f"the masks have {mask.sizes['time']} dates and one path {template!r}: put {{date}} in the "
            "path for one file per date (e.g. 'mask_{date}.tif'), or select a date with .sel(time=...)"
        )
    labels = [label.replace(":", "") for label in date_labels(mask["time"].values)]
    if len(set(labels)) != len(labels):
        raise InputError(
            "several masks share a date to the second, so their files would overwrite each other: "
            "merge them first (e.g. masks.groupby('time').first()) or write them with for_raster"
        )
    paths = []
    for i, label in enumerate(labels):
        paths.append(write_geotiff(mask.isel(time=i), template.replace("{date}", label)))
        logger.info("wrote %s", paths[-1])
    return tuple(paths)
