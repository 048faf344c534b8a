"""The ``.s2mask`` accessor on DataArrays and Datasets: a thin shell over plain functions."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import xarray as xr

from . import analysis, export, inference, plotting, store


def _method(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn ``func(obj, ...)`` into an accessor method sharing its docstring."""

    @functools.wraps(func)
    def method(self: _S2MaskAccessor, *args: Any, **kwargs: Any) -> Any:
        return func(self._obj, *args, **kwargs)

    return method


class _S2MaskAccessor:
    # xarray caches an accessor per object and rebuilds it after each operation:
    # it must hold no state and compute nothing here.
    def __init__(self, obj: xr.DataArray | xr.Dataset) -> None:
        self._obj = obj

    predict = _method(inference.predict)
    to_zarr = _method(store.to_zarr)

    # on a cube, given its masks
    apply = _method(analysis.apply_mask)
    composite = _method(analysis.composite)
    # on masks
    usable = _method(analysis.usable)
    clear_fraction = _method(analysis.clear_fraction)
    plot = _method(plotting.plot_masks)
    for_raster = _method(export.for_raster)
    to_geotiff = _method(export.to_geotiff)


xr.register_dataarray_accessor("s2mask")(_S2MaskAccessor)
xr.register_dataset_accessor("s2mask")(_S2MaskAccessor)
