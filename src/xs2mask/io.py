"""Writing masks: GeoTIFF with a colour table, and PNG quick-looks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from .classes import CLASS_COLOURS, CLASS_NAMES, NODATA, mask_attrs


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
    """Save a PNG: true colour on the left, coloured mask on the right, with a legend."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4), constrained_layout=True)
    axes[0].imshow(rgb_image(rgb_reflectance))
    axes[0].set_title("true colour (B04 B03 B02)")
    axes[1].imshow(colour_mask(mask), interpolation="nearest")
    pct = class_percentages(mask)
    axes[1].set_title("xs2mask")
    for ax in axes:
        ax.set_axis_off()
    handles = [
        Patch(facecolor=np.array(CLASS_COLOURS[c]) / 255, edgecolor="0.5", label=f"{n} {pct[n]:.1f}%")
        for c, n in CLASS_NAMES.items()
    ]
    handles.append(Patch(facecolor=np.array(CLASS_COLOURS[NODATA]) / 255, edgecolor="0.5", label="no data"))
    fig.legend(handles=handles, loc="lower center", ncol=5, frameon=False)
    if title:
        fig.suptitle(title)
    fig.get_layout_engine().set(rect=(0, 0.06, 1, 0.94))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
