"""A small real Sentinel-2 scene shipped with xs2mask, for demos, docs and tests.

The scene is 512 x 512 pixels at 10 m (B02 B03 B04 B08, Level-2A DN) near
Chifunfu, Tanzania, 2020-04-29: scattered cumulus with their shadows. It is
chip ``adwp`` of the "On Cloud N" cloud cover challenge (Radiant Earth
Foundation / DrivenData, CC BY 4.0), taken from Planetary Computer before
processing baseline 04.00, so reflectance = DN / 10000.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import xarray as xr

DEMO_FILE = "demo_chifunfu_20200429.tif"


def demo_path() -> Path:
    """Path of the demo GeoTIFF inside the installed package."""
    return Path(str(resources.files(__name__).joinpath(DEMO_FILE)))


def demo_scene(chunks: int | dict | None = None) -> xr.DataArray:
    """The demo scene as a ``(band, y, x)`` uint16 DataArray of DN with its CRS.

    Parameters
    ----------
    chunks
        Dask chunks (e.g. ``256``) for a lazy array; None reads it into memory.

    Examples
    --------
    >>> from xs2mask.data import demo_scene
    >>> cube = demo_scene()
    >>> cube.sizes["band"], cube.sizes["y"], cube.sizes["x"], str(cube.dtype)
    (4, 512, 512, 'uint16')
    >>> cube["band"].values.tolist()
    ['B02', 'B03', 'B04', 'B08']
    """
    import rioxarray

    da = rioxarray.open_rasterio(demo_path(), chunks=chunks, mask_and_scale=False)
    assert isinstance(da, xr.DataArray)  # a GeoTIFF without subdatasets opens as one array
    names = list(da.attrs.get("long_name") or ())
    da = da.assign_coords(band=names).rename("reflectance_dn")
    da.attrs = {k: v for k, v in da.attrs.items() if k in ("DATETIME", "PLACE", "LEVEL", "SOURCE")}
    return da
