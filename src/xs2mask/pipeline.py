"""The end-to-end job: STAC search -> lazy reflectance cube -> masks -> Zarr, slab by slab.

:func:`mask_stac` is what ``xs2mask predict`` runs. It searches once, builds the
whole output grid lazily (nothing is read) and writes the Zarr template; then
each day's items are reloaded with freshly signed URLs (again when a day takes
longer than the signatures last) into one lazy cube, and each slab (one day x
one spatial block) is a slice of it: predicted, written and recorded, so a slab's
graph is built in the same time whatever the area. A rerun of an interrupted job
writes only the missing slabs (see :mod:`xs2mask.store`).

Reads are retried (:mod:`xs2mask.reading`); a slab whose reads still fail stops
the job with :class:`~xs2mask.exceptions.ReadError`, or, with
``on_read_error="nodata"``, is written as no-data and listed in the store.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from .exceptions import InputError, ReadError, ReadWarning, StacError

# Planetary Computer signatures last about 45 minutes: a day's cube older than this is re-signed.
_RESIGN_AFTER_S = 30 * 60


@dataclass(frozen=True)
class Job:
    """What to mask and where to write it (the CLI's arguments, validated).

    Examples
    --------
    >>> job = Job("http://127.0.0.1:8080", ("sentinel-2-l2a",), (13.3, 52.4, 13.5, 52.6), "2024-06", "m.zarr")
    >>> job.resolution
    10.0
    """

    stac_url: str
    collections: tuple[str, ...]
    bbox: tuple[float, float, float, float]
    datetime: str
    out: str
    model: str = "default"
    resolution: float = 10.0
    processing_resolution: float | None = None
    max_cloud: float | None = None
    chunks: int = 1024
    harmonize: bool | str = "auto"
    tta: int = 0
    device: str = "auto"
    mode: str = "w-"
    zarr_format: int | None = None
    block: int | None = None
    batch: int | None = None
    storage_options: dict[str, Any] = field(default_factory=dict, hash=False)
    read_retries: int = 3
    read_timeout: float = 30.0
    on_read_error: str = "raise"
    compile: bool = False

    def __post_init__(self) -> None:
        if self.on_read_error not in ("raise", "nodata"):
            raise InputError(f"on_read_error must be 'raise' or 'nodata', got {self.on_read_error!r}")


def mask_stac(
    job: Job,
    *,
    sign: bool | Callable[[Any], Any] | None = None,
    progress: Callable[[Iterator[Any], int], Iterator[Any]] | None = None,
) -> xr.Dataset:
    """Mask every Sentinel-2 scene a STAC search finds and write the masks to Zarr.

    Parameters
    ----------
    job
        The search, the model and the output store.
    sign
        How to sign hrefs (see :func:`xs2mask.stac.search`); applied per slab.
    progress
        Optional wrapper of the slab iterator (e.g. a progress bar).

    Returns
    -------
    xarray.Dataset
        The written store, opened lazily (:func:`xs2mask.store.open_masks`).

    Examples
    --------
    >>> job = Job("https://earth-search.aws.element84.com/v1", ("sentinel-2-l2a",),
    ...           (13.3, 52.4, 13.5, 52.6), "2024-06-01/2024-06-30", "berlin.zarr", max_cloud=60)
    >>> masks = mask_stac(job)  # doctest: +SKIP
    """
    from . import store as zstore
    from .inference import predict
    from .stac import group_days, load, resign, search

    items = list(
        search(job.stac_url, collections=job.collections, bbox=job.bbox, datetime=job.datetime, sign=False)
    )
    found = len(items)
    items = _below_cloud(items, job.max_cloud)
    if not items:
        raise StacError(
            f"no items in {', '.join(job.collections)} at {job.stac_url} for bbox {list(job.bbox)} and "
            f"dates {job.datetime}"
            + (f" with cloud cover below {job.max_cloud} % ({found} above it)" if found else "")
            + ". Nothing was written. Widen the bbox or the dates, or raise --max-cloud."
        )
    common = {
        "resolution": job.resolution,
        "chunks": job.chunks,
        "harmonize": job.harmonize,
        "read_retries": job.read_retries,
        "read_timeout": job.read_timeout,
    }
    full = load(items, bounds_latlon=job.bbox, model=job.model, **common)
    grid = {"epsg": full.rio.crs.to_epsg(), "bounds": _bounds(full), "bands": list(full["band"].values)}
    options = {
        "model": job.model,
        "tta": job.tta,
        "processing_resolution": job.processing_resolution,
        "device": job.device,
        "compile": job.compile,
    }
    template = predict(full, **options)
    template.attrs.update(
        {
            "xs2mask_stac_url": job.stac_url,
            "xs2mask_collections": ",".join(job.collections),
            "xs2mask_items": json.dumps(sorted(i.id for i in items)),
            "xs2mask_radiometry": full.attrs["xs2mask_radiometry"],
        }
    )
    # The very days of `full`'s time axis, in its order, each with the items it mosaics.
    by_day = group_days(items)
    days = list(by_day)
    findings: dict[str, float] = {}
    inputs: dict[str, xr.DataArray] = {}

    day: dict[int, tuple[float, xr.DataArray, xr.Dataset]] = {}

    def build(slab):
        built = day.get(slab.time)
        if built is None or time.monotonic() - built[0] > _RESIGN_AFTER_S:
            # Signed here, just before the day's slabs run: signatures expire after ~45 minutes.
            cube = load(resign(by_day[days[slab.time]], sign), **grid, **common)
            day.clear()  # slabs come day by day: one day's graph is kept, not the job's
            day[slab.time] = built = (time.monotonic(), cube, predict(cube, **options))
        _, cube, masks = built
        inputs[slab.key] = cube.isel(y=slab.y, x=slab.x)
        masks = masks.isel(y=slab.y, x=slab.x)
        return masks.assign_coords(time=template["time"].values[[slab.time]])

    def check(slab, part):
        from .radiometry import negative_fraction

        def record(fraction):
            _check_slab(findings, days[slab.time], by_day[days[slab.time]], float(np.max(fraction)))

        # Computed in the same pass as the masks, so the pixels are read once.
        return negative_fraction(inputs.pop(slab.key)), record

    def on_read_error(slab, err: Exception) -> dict[str, Any]:
        # Only reads may become no-data, and never a file that is not there (HTTP 404).
        if not isinstance(err, ReadError) or err.permanent:
            raise err
        warnings.warn(f"slab {slab.key} written as no-data: {err}", ReadWarning, stacklevel=2)
        return {"item": err.item, "asset": err.asset, "href": err.href, "error": err.reason}

    zstore.to_zarr(
        template,
        job.out,
        mode=job.mode,
        storage_options=job.storage_options or None,
        zarr_format=job.zarr_format,
        block=job.block,
        batch=job.batch,
        build=build,
        check=check,
        progress=progress,
        # Only when asked: a hook makes a failed batch rerun slab by slab to find the culprit.
        on_read_error=on_read_error if job.on_read_error == "nodata" else None,
    )
    return zstore.open_masks(job.out, storage_options=job.storage_options or None)


def _below_cloud(items: Sequence[Any], max_cloud: float | None) -> list:
    # Filtered here, not with the API's `query`, because not every STAC API implements that extension.
    if max_cloud is None:
        return list(items)
    return [i for i in items if i.properties.get("eo:cloud_cover", 0.0) <= max_cloud]


def _bounds(cube: xr.DataArray) -> tuple[float, float, float, float]:
    """Outer edges of the cube's pixel-centre grid: reloading with them gives the very same grid."""
    res_x = float(abs(cube.x[1] - cube.x[0]))
    res_y = float(abs(cube.y[1] - cube.y[0]))
    return (
        float(cube.x.min()) - res_x / 2,
        float(cube.y.min()) - res_y / 2,
        float(cube.x.max()) + res_x / 2,
        float(cube.y.max()) + res_y / 2,
    )


def _check_slab(
    findings: dict[str, float], day: np.datetime64, items: Sequence[Any], fraction: float
) -> None:
    from .radiometry import check_reflectance

    key = str(day)
    if fraction > findings.get(key, 0.0):
        findings[key] = fraction
        label = f"{key} ({', '.join(i.id for i in items)})"
        check_reflectance(fraction, label=label)
