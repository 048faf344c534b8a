"""The end-to-end job: STAC search -> lazy reflectance cube -> masks -> Zarr, slab by slab.

:func:`run` is what ``xs2mask predict`` runs (:func:`mask_stac` returns its
masks). It searches once, builds the whole output grid lazily (nothing is read)
and opens the store with :class:`xs2mask.store.MaskStore` (which checks an
existing store's provenance, grid and dates); then
each day's items are reloaded with freshly signed URLs (again when a day takes
longer than the signatures last) into one lazy cube, and each slab (one day x
one spatial block) is a slice of it: predicted, written and recorded, so a slab's
graph is built in the same time whatever the area. A rerun of an interrupted job
writes only the missing slabs (see :mod:`xs2mask.store`). The loop is plain code
here: the store never calls back into the job.

Reads are retried (:mod:`xs2mask.reading`); a slab whose reads still fail stops
the job with :class:`~xs2mask.exceptions.ReadError`, or, with
``on_read_error="nodata"``, is written as no-data and listed in the store.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from .exceptions import InputError, ReadError, ReadWarning, StacError
from .redaction import redact_url

if TYPE_CHECKING:
    from .kernel import Plan
    from .store import Progress

log = logging.getLogger("xs2mask")

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
    # 2048: patches that straddle chunks run once per chunk, so bigger chunks repeat fewer of them.
    chunks: int = 2048
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
        from .checks import check_bbox, check_datetime

        # A Job is checked when it is made, before any request: bbox and dates as the CLI checks them.
        object.__setattr__(self, "bbox", check_bbox(self.bbox))
        object.__setattr__(self, "datetime", check_datetime(self.datetime))
        if self.on_read_error not in ("raise", "nodata"):
            raise InputError(f"on_read_error must be 'raise' or 'nodata', got {self.on_read_error!r}")
        if self.mode not in ("w-", "w", "a"):
            raise InputError(
                f"mode must be 'w-' (create or resume), 'a' (append) or 'w' (replace), got {self.mode!r}"
            )


def mask_stac(
    job: Job,
    *,
    sign: bool | Callable[[Any], Any] | None = None,
    progress: Progress = True,
) -> xr.Dataset:
    """Mask every Sentinel-2 scene a STAC search finds and write the masks to Zarr: :func:`run`'s masks.

    Examples
    --------
    >>> job = Job("https://earth-search.aws.element84.com/v1", ("sentinel-2-l2a",),
    ...           (13.3, 52.4, 13.5, 52.6), "2024-06-01/2024-06-30", "berlin.zarr", max_cloud=60)
    >>> masks = mask_stac(job)  # doctest: +SKIP
    """
    return run(job, sign=sign, progress=progress).masks


def run(
    job: Job,
    *,
    sign: bool | Callable[[Any], Any] | None = None,
    progress: Progress = True,
) -> Outcome:
    """Mask every Sentinel-2 scene a STAC search finds and write the masks to Zarr.

    Parameters
    ----------
    job
        The search, the model and the output store.
    sign
        How to sign hrefs (see :func:`xs2mask.stac.search`); applied per slab.
    progress
        ``True`` (default): a ``tqdm.auto`` bar of the slabs (a widget in Jupyter);
        ``False``: none; or a wrapper ``(iterator, total) -> iterator`` of your own.

    Returns
    -------
    Outcome
        The store, its dates, how many slabs were written now (0: nothing to do)
        and the masks, opened lazily (:func:`xs2mask.store.open_masks`).

    Raises
    ------
    StoreError
        The store holds masks made otherwise (model, weights, options, grid),
        or dates that cannot be appended.

    Examples
    --------
    >>> job = Job("https://earth-search.aws.element84.com/v1", ("sentinel-2-l2a",),
    ...           (13.3, 52.4, 13.5, 52.6), "2024-06-01/2024-06-30", "berlin.zarr", max_cloud=60)
    >>> run(job).written  # doctest: +SKIP
    120
    """
    from . import store as zstore
    from .inference import predict, predict_window, prepare, window_rows
    from .stac import group_days, load, resign, resolve_model, search

    items = list(
        search(job.stac_url, collections=job.collections, bbox=job.bbox, datetime=job.datetime, sign=False)
    )
    found = len(items)
    items = _below_cloud(items, job.max_cloud)
    if not items:
        raise StacError(
            f"no items in {', '.join(job.collections)} at {redact_url(job.stac_url)} for bbox "
            f"{list(job.bbox)} and dates {job.datetime}"
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
    # One concrete model for the whole job: "default" decided once, from the bands every item has.
    model = resolve_model(items, job.model)
    full = load(items, bounds_latlon=job.bbox, model=model, **common)
    bounded = {"epsg": full.rio.crs.to_epsg(), "bands": list(full["band"].values)}
    options = {
        "model": model,
        "tta": job.tta,
        "processing_resolution": job.processing_resolution,
        "device": job.device,
        "compile": job.compile,
    }
    # The very days of `full`'s time axis, each with the items it mosaics (duplicates dropped).
    by_day = group_days(items)
    used = [item for members in by_day.values() for item in members]
    log.info(
        "%d items (%d after --max-cloud, %d kept of reprocessed duplicates) in %d solar days, %s px",
        found, len(items), len(used), len(by_day), "x".join(map(str, full.shape[-2:])),
    )  # fmt: skip
    template = predict(full, **options)
    plan = prepare(full, **options).plan
    template.attrs.update(
        {
            # Credentials in the URL (user:password@, tokens) are never stored.
            "xs2mask_stac_url": redact_url(job.stac_url),
            "xs2mask_collections": ",".join(job.collections),
            "xs2mask_items": json.dumps(sorted(i.id for i in used)),
            "xs2mask_radiometry": full.attrs["xs2mask_radiometry"],
        }
    )
    writer = zstore.MaskStore.open(
        job.out,
        template,
        mode=job.mode,
        # Beside the model's own provenance: how reflectance was made from the DNs.
        provenance={"harmonize": job.harmonize, "resolution": job.resolution},
        storage_options=job.storage_options or None,
        zarr_format=job.zarr_format,
        block=job.block,
    )
    todo = writer.todo()
    log.info(
        "%s: %d of %d slabs to write, %d dates in the store",
        job.out,
        len(todo),
        len(writer.slabs),
        writer.dates,
    )
    started = time.monotonic()
    findings: dict[str, float] = {}
    batch: list[_Pending] = []
    size = job.batch or writer.batch
    plan = _share_cores(plan, size * _blocks(writer.slabs[0], job.chunks) if writer.slabs else 1)
    signed: tuple[float, np.datetime64, list] | None = None
    for slab in zstore.with_progress(todo, progress):
        day = np.datetime64(slab.date, "D")
        if signed is None or signed[1] != day or time.monotonic() - signed[0] > _RESIGN_AFTER_S:
            # Signed here, just before the day's slabs run: signatures expire after ~45 minutes.
            signed = (time.monotonic(), day, resign(by_day[day], sign))
            log.debug("%s: %s", day, ", ".join(i.id for i in by_day[day]))
        # Each slab reads its own window, the slab and the halo its patches need: no chunk of a
        # neighbouring slab is read again for that halo, and memory stays that of a slab whatever
        # the area. The pixels are those of predict() on the whole day (see predict_window).
        rows = window_rows(plan, slab.y.start, slab.y.stop, plan.height)
        cols = window_rows(plan, slab.x.start, slab.x.stop, plan.width)
        cube = load(signed[2], bounds=_window_bounds(full, rows, cols, job.resolution), **bounded, **common)
        result = predict_window(
            cube.sel(band=list(plan.bands)).data,
            plan,
            (rows[0], cols[0]),
            (slab.y.start, slab.y.stop),
            (slab.x.start, slab.x.stop),
            job.chunks,
        )
        part = template.isel(slab.isel)
        part = part.assign(mask=part["mask"].copy(data=result[:, 0]))
        inputs = cube.isel(
            y=slice(slab.y.start - rows[0], slab.y.stop - rows[0]),
            x=slice(slab.x.start - cols[0], slab.x.stop - cols[0]),
        )
        batch.append(_Pending(slab, part, inputs))
        if len(batch) >= size:
            _flush(writer, batch, by_day, findings, job.on_read_error)
    _flush(writer, batch, by_day, findings, job.on_read_error)
    # An append adds its items and radiometry decisions to those of the dates already stored.
    stored = writer.stored_attrs
    writer.complete(
        {
            "xs2mask_items": json.dumps(
                sorted(set(json.loads(stored.get("xs2mask_items", "[]"))) | {i.id for i in used})
            ),
            "xs2mask_radiometry": json.dumps(
                {
                    **json.loads(stored.get("xs2mask_radiometry", "{}")),
                    **json.loads(full.attrs["xs2mask_radiometry"]),
                },
                sort_keys=True,
            ),
        }
    )
    log.info("%s complete: %d slabs written in %.1f s", job.out, len(todo), time.monotonic() - started)
    masks = zstore.open_masks(job.out, storage_options=job.storage_options or None)
    pixels = sum((s.y.stop - s.y.start) * (s.x.stop - s.x.start) for s in todo)
    return Outcome(job.out, writer.dates, len(todo), len(writer.slabs), pixels, masks)


@dataclass(frozen=True)
class Outcome:
    """What a job did: the store and its dates, the slabs (and pixels) written now out of the job's
    slabs, and the masks."""

    store: str
    dates: int
    written: int
    slabs: int
    pixels: int
    masks: xr.Dataset


@dataclass(frozen=True)
class _Pending:
    """A slab's lazy masks and the lazy inputs they are computed from (for the radiometry check)."""

    slab: Any
    masks: xr.Dataset
    inputs: xr.DataArray


def _flush(
    writer: Any, batch: list[_Pending], by_day: dict, findings: dict[str, float], on_read_error: str
) -> None:
    """Write a batch in one pass with its radiometry checks; with ``on_read_error="nodata"``, a
    failing batch is redone slab by slab (region writes are idempotent) so only failing slabs
    become no-data."""
    from .radiometry import negative_fraction

    if not batch:
        return
    try:
        fractions = writer.write(
            [(p.slab, p.masks) for p in batch], [negative_fraction(p.inputs) for p in batch]
        )
        outcomes = list(zip(batch, fractions, strict=True))
    except Exception:
        if on_read_error != "nodata":
            raise
        outcomes = []
        for pending in batch:
            try:
                fraction = writer.write([(pending.slab, pending.masks)], [negative_fraction(pending.inputs)])[
                    0
                ]
            except Exception as err:
                # Only reads may become no-data, and never a file that is not there (HTTP 404).
                if not isinstance(err, ReadError) or err.permanent:
                    raise
                key = pending.slab.key
                warnings.warn(f"slab {key} written as no-data: {err}", ReadWarning, stacklevel=3)
                record = {"item": err.item, "asset": err.asset, "href": err.href, "error": err.reason}
                writer.write_nodata(pending.slab, record)
                continue
            outcomes.append((pending, fraction))
    for pending, fraction in outcomes:
        day = np.datetime64(pending.slab.date, "D")
        _check_slab(findings, day, by_day[day], float(np.max(fraction)))
    batch.clear()


def _below_cloud(items: Sequence[Any], max_cloud: float | None) -> list:
    # Filtered here, not with the API's `query`, because not every STAC API implements that extension.
    if max_cloud is None:
        return list(items)
    return [i for i in items if i.properties.get("eo:cloud_cover", 0.0) <= max_cloud]


def _window_bounds(
    cube: xr.DataArray, rows: tuple[int, int], cols: tuple[int, int], res: float
) -> tuple[float, float, float, float]:
    """Outer edges of rows x cols of the cube's pixel-centre grid (``res`` m pixels, y descending as
    stackstac makes it): loading them gives that window of the very same grid."""
    left, top = float(cube.x[0]) - res / 2, float(cube.y[0]) + res / 2
    return (left + cols[0] * res, top - rows[1] * res, left + cols[1] * res, top - rows[0] * res)


def _blocks(slab: Any, block: int) -> int:
    """Model blocks of at most ``block`` px a side in a slab (predict_window's split)."""
    height, width = slab.y.stop - slab.y.start, slab.x.stop - slab.x.start
    return -(-height // block) * -(-width // block)


def _share_cores(plan: Plan, blocks: int) -> Plan:
    """Split the CPU's cores between the blocks Dask runs at once (as predict does for its chunks):
    a model call per block using every core oversubscribes the CPU."""
    import os
    from dataclasses import replace

    if plan.runtime.threads or plan.runtime.device != "cpu":
        return plan
    threads = max(1, (os.cpu_count() or 1) // max(blocks, 1))
    return replace(plan, runtime=replace(plan.runtime, threads=threads))


def _check_slab(
    findings: dict[str, float], day: np.datetime64, items: Sequence[Any], fraction: float
) -> None:
    from .radiometry import check_reflectance

    key = str(day)
    if fraction > findings.get(key, 0.0):
        findings[key] = fraction
        label = f"{key} ({', '.join(i.id for i in items)})"
        check_reflectance(fraction, label=label)
