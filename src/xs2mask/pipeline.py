"""The end-to-end job: STAC search -> lazy reflectance cube -> masks -> Zarr, slab by slab.

:func:`run` is what ``xs2mask mask-stac`` runs (:func:`mask_stac` returns its
masks); a :class:`Job` holds its checked options in four parts: :class:`Search`,
:class:`Load`, :class:`Predict` and :class:`Store`. It searches once, builds the
whole output grid lazily (nothing is read) and opens the store with
:class:`xs2mask.store.MaskStore` (which checks an existing store's provenance, grid
and dates); then each slab (one day x one spatial block) is loaded on its own, the
slab and the halo its patches need, from the day's items with freshly signed URLs
(signed again when a day takes longer than the signatures last): predicted, written
and recorded. Nothing is read twice, a slab's graph is built in the same time and
its memory is the same whatever the area, and the masks are those of
:func:`xs2mask.predict` on the whole day's cube. A rerun of an interrupted job
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
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import xarray as xr

from .exceptions import InputError, ReadError, ReadWarning, StacError
from .redaction import redact_url

if TYPE_CHECKING:
    from .inference import Prepared
    from .store import Progress

log = logging.getLogger("xs2mask")

# Planetary Computer signatures last about 45 minutes: a day's cube older than this is re-signed.
_RESIGN_AFTER_S = 30 * 60


def _positive(value: float) -> bool:
    return value > 0


@dataclass(frozen=True)
class Search:
    """Which STAC items to mask (``--stac-url``, ``--collection``, ``--bbox``, ``--datetime``,
    ``--max-cloud``), checked when made, before any request.

    Parameters
    ----------
    stac_url
        The STAC API root.
    collections
        Collection ids (one may be given as a string).
    bbox
        West, south, east, north in degrees (:func:`xs2mask.checks.check_bbox`).
    datetime
        One date or a range, e.g. ``"2024-06-01/2024-06-30"`` (:func:`xs2mask.checks.check_datetime`).
    max_cloud
        Skip items whose ``eo:cloud_cover`` is above this percentage.

    Examples
    --------
    >>> search = Search("https://earth-search.aws.element84.com/v1", "sentinel-2-l2a",
    ...                 [13.3, 52.4, 13.5, 52.6], "2024-06", max_cloud=60)
    >>> search.collections, search.bbox
    (('sentinel-2-l2a',), (13.3, 52.4, 13.5, 52.6))
    """

    stac_url: str
    collections: tuple[str, ...]
    bbox: tuple[float, float, float, float]
    datetime: str
    max_cloud: float | None = None

    def __post_init__(self) -> None:
        from .checks import check_bbox, check_datetime, check_real

        # One collection may be given as a plain string.
        names = (self.collections,) if isinstance(self.collections, str) else tuple(self.collections)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise InputError(
                f"collections must name at least one STAC collection, got {self.collections!r}; "
                "e.g. ('sentinel-2-l2a',)"
            )
        object.__setattr__(self, "collections", names)
        object.__setattr__(self, "bbox", check_bbox(self.bbox))
        object.__setattr__(self, "datetime", check_datetime(self.datetime))
        if self.max_cloud is not None:
            cloud = check_real("max_cloud", self.max_cloud, lambda v: 0 <= v <= 100, "a percentage in 0..100")
            object.__setattr__(self, "max_cloud", cloud)


@dataclass(frozen=True)
class Load:
    """How the items become a reflectance cube (``--pixel-size``, ``--chunks``, ``--harmonize``,
    ``--read-retries``, ``--read-timeout``, ``--on-read-error``).

    Parameters
    ----------
    pixel_size
        Pixel size of the cube, and so of the masks, in metres. The model may run at another
        resolution: :attr:`Predict.processing_resolution`.
    chunks
        Dask chunk edge in pixels.
    harmonize
        Remove the processing-baseline 04.00 offset: ``"auto"``, ``True`` or ``False``
        (:func:`xs2mask.stac.load`).
    read_retries, read_timeout
        Retries of a failing read, and seconds per HTTP request (:mod:`xs2mask.reading`).
    on_read_error
        When a slab's reads still fail: ``"raise"`` stops the job with
        :class:`~xs2mask.exceptions.ReadError`, ``"nodata"`` writes the slab as no-data and lists it
        in the store.

    Examples
    --------
    >>> Load(pixel_size=20, on_read_error="nodata").pixel_size
    20.0
    """

    pixel_size: float = 10.0
    # 2048: patches that straddle chunks run once per chunk, so bigger chunks repeat fewer of them.
    chunks: int = 2048
    harmonize: bool | Literal["auto"] = "auto"
    read_retries: int = 3
    read_timeout: float = 30.0
    on_read_error: Literal["raise", "nodata"] = "raise"

    def __post_init__(self) -> None:
        from .checks import check_integer, check_real

        positive = "a positive number"
        object.__setattr__(self, "pixel_size", check_real("pixel_size", self.pixel_size, _positive, positive))
        object.__setattr__(self, "chunks", check_integer("chunks", self.chunks, 1))
        object.__setattr__(self, "read_retries", check_integer("read_retries", self.read_retries, 0, 100))
        timeout = check_real("read_timeout", self.read_timeout, _positive, "a positive number of seconds")
        object.__setattr__(self, "read_timeout", timeout)
        if self.harmonize not in ("auto", True, False):
            raise InputError(f"harmonize must be 'auto', True or False, got {self.harmonize!r}")
        if self.on_read_error not in ("raise", "nodata"):
            raise InputError(f"on_read_error must be 'raise' or 'nodata', got {self.on_read_error!r}")

    def cube(
        self,
        items: Sequence[Any],
        *,
        model: str = "default",
        bands: Sequence[str] | None = None,
        epsg: int | None = None,
        bounds: Sequence[float] | None = None,
        bounds_latlon: Sequence[float] | None = None,
        chunks: int | None = None,
    ) -> xr.DataArray:
        """The items as a lazy reflectance cube (:func:`xs2mask.stac.load`) loaded with these options;
        ``chunks`` replaces :attr:`chunks` (the job reads each slab as one chunk per item)."""
        from .stac import load

        return load(
            items,
            model=model,
            bands=bands,
            epsg=epsg,
            bounds=bounds,
            bounds_latlon=bounds_latlon,
            resolution=self.pixel_size,
            chunks=chunks or self.chunks,
            harmonize=self.harmonize,
            read_retries=self.read_retries,
            read_timeout=self.read_timeout,
        )


@dataclass(frozen=True)
class Predict:
    """How the cube is masked (``--model``, ``--tta``, ``--processing-resolution``, ``--device``,
    ``--compile``): the options of :func:`xs2mask.predict` of the same names.

    Parameters
    ----------
    model
        A model name, or ``"default"``: the best installed model for the bands every item has.
    tta
        Test-time augmentation passes, 0-7.
    processing_resolution
        Run the model at this resolution in metres (e.g. 20); the masks keep the cube's pixel
        size (:attr:`Load.pixel_size`). ``None``: the model's own.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    compile
        ``torch.compile`` torch models when they load (GPU).

    Examples
    --------
    >>> Predict(model="xs2mask-4b", processing_resolution=20).tta
    0
    """

    model: str = "default"
    tta: int = 0
    processing_resolution: float | None = None
    device: str = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        from .checks import check_integer, check_real

        object.__setattr__(self, "tta", check_integer("tta", self.tta, 0, 7, what="an integer in 0..7"))
        if self.processing_resolution is not None:
            metres = check_real("processing_resolution", self.processing_resolution, _positive, "positive")
            object.__setattr__(self, "processing_resolution", metres)

    def prepare(self, cube: xr.DataArray) -> Prepared:
        """:func:`xs2mask.predict` of the cube with these options, planned and not run
        (:func:`xs2mask.inference.prepare`): ``.predict()`` gives the lazy masks, ``.plan`` how their
        blocks run (the job runs them itself, each slab from its own window)."""
        from .inference import prepare

        return prepare(
            cube,
            model=self.model,
            tta=self.tta,
            processing_resolution=self.processing_resolution,
            device=self.device,
            compile=self.compile,
        )


@dataclass(frozen=True)
class Store:
    """Where and how the masks are written (``--out``, ``--append`` / ``--overwrite``,
    ``--zarr-format``, ``--block``, ``--batch``, ``--storage-option``).

    Parameters
    ----------
    out
        The Zarr store: a path or an fsspec URL (``s3://...``).
    mode
        ``"w-"``: create, or resume an interrupted job; ``"a"``: append new dates; ``"w"``: replace.
    zarr_format
        2 or 3 (default: zarr's).
    block
        Edge of a slab in pixels (default: :class:`xs2mask.store.MaskStore`'s).
    batch
        Slabs computed together (default: two per Dask thread of the cluster, or per core);
        a killed job redoes at most one batch.
    storage_options
        fsspec options of the store.

    Examples
    --------
    >>> Store("s3://bucket/masks.zarr", mode="a", storage_options={"anon": False}).mode
    'a'
    """

    out: str
    mode: Literal["w-", "w", "a"] = "w-"
    zarr_format: Literal[2, 3] | None = None
    block: int | None = None
    batch: int | None = None
    storage_options: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        from .checks import check_integer

        object.__setattr__(self, "out", str(self.out))
        if self.mode not in ("w-", "w", "a"):
            raise InputError(
                f"mode must be 'w-' (create or resume), 'a' (append) or 'w' (replace), got {self.mode!r}"
            )
        if self.zarr_format not in (None, 2, 3):
            raise InputError(f"zarr_format must be 2, 3 or None (the default), got {self.zarr_format!r}")
        for name in ("block", "batch"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, check_integer(name, getattr(self, name), 1))


@dataclass(frozen=True)
class Job:
    """What to mask and where to write it: the search, the store, and how to load and mask.

    ``xs2mask mask-stac`` builds one from its flags; each part is checked when it is made.

    Parameters
    ----------
    search
        Which items (:class:`Search`).
    store
        Where the masks go (:class:`Store`).
    load
        How the items are read (:class:`Load`).
    predict
        How they are masked (:class:`Predict`).

    Examples
    --------
    >>> job = Job(
    ...     Search("http://127.0.0.1:8080", ("sentinel-2-l2a",), (13.3, 52.4, 13.5, 52.6), "2024-06"),
    ...     Store("m.zarr"),
    ...     predict=Predict(model="xs2mask-4b"),
    ... )
    >>> job.load.pixel_size
    10.0
    """

    search: Search
    store: Store
    load: Load = Load()
    predict: Predict = Predict()

    def __post_init__(self) -> None:
        parts = {"search": Search, "store": Store, "load": Load, "predict": Predict}
        for name, kind in parts.items():
            if not isinstance(getattr(self, name), kind):
                raise InputError(
                    f"Job's {name} must be a {kind.__name__}, got {getattr(self, name)!r}: build a job from "
                    "its parts, e.g. Job(Search(url, collections, bbox, datetime), Store(out), "
                    "load=Load(pixel_size=10), predict=Predict(model='default'))"
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
    >>> search = Search("https://earth-search.aws.element84.com/v1", ("sentinel-2-l2a",),
    ...                 (13.3, 52.4, 13.5, 52.6), "2024-06-01/2024-06-30", max_cloud=60)
    >>> masks = mask_stac(Job(search, Store("berlin.zarr")))  # doctest: +SKIP
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
    >>> search = Search("https://earth-search.aws.element84.com/v1", ("sentinel-2-l2a",),
    ...                 (13.3, 52.4, 13.5, 52.6), "2024-06-01/2024-06-30", max_cloud=60)
    >>> run(Job(search, Store("berlin.zarr"), predict=Predict(tta=2))).written  # doctest: +SKIP
    120
    """
    from . import store as zstore
    from .inference import predict_window, select_bands, share_cores, window_rows
    from .stac import group_days, resign, resolve_model, search

    items = list(
        search(
            job.search.stac_url,
            collections=job.search.collections,
            bbox=job.search.bbox,
            datetime=job.search.datetime,
            sign=False,
        )
    )
    found = len(items)
    items = _below_cloud(items, job.search.max_cloud)
    if not items:
        raise StacError(
            f"no items in {', '.join(job.search.collections)} at {redact_url(job.search.stac_url)} for bbox "
            f"{list(job.search.bbox)} and dates {job.search.datetime}"
            + (f" with cloud cover below {job.search.max_cloud} % ({found} above it)" if found else "")
            + ". Nothing was written. Widen the bbox or the dates, or raise --max-cloud."
        )
    # One concrete model for the whole job: "default" decided once, from the bands every item has.
    predict = replace(job.predict, model=resolve_model(items, job.predict.model))
    full = job.load.cube(items, bounds_latlon=job.search.bbox, model=predict.model)
    bounded = {"epsg": full.rio.crs.to_epsg(), "bands": list(full["band"].values)}
    # The very days of `full`'s time axis, each with the items it mosaics (duplicates dropped).
    by_day = group_days(items)
    used = [item for members in by_day.values() for item in members]
    log.info(
        "%d items (%d after --max-cloud, %d kept of reprocessed duplicates) in %d solar days, %s px",
        found, len(items), len(used), len(by_day), "x".join(map(str, full.shape[-2:])),
    )  # fmt: skip
    prepared = predict.prepare(full)
    template, plan = prepared.predict(), prepared.plan
    template.attrs.update(
        {
            # Credentials in the URL (user:password@, tokens) are never stored.
            "xs2mask_stac_url": redact_url(job.search.stac_url),
            "xs2mask_collections": ",".join(job.search.collections),
            "xs2mask_items": json.dumps(sorted(i.id for i in used)),
            "xs2mask_radiometry": full.attrs["xs2mask_radiometry"],
        }
    )
    writer = zstore.MaskStore.open(
        job.store.out,
        template,
        mode=job.store.mode,
        # Beside the model's own provenance: how reflectance was made from the DNs ("resolution": the
        # pixel size, under the name stores have always recorded it by).
        provenance={"harmonize": job.load.harmonize, "resolution": job.load.pixel_size},
        storage_options=job.store.storage_options or None,
        zarr_format=job.store.zarr_format,
        block=job.store.block,
    )
    todo = writer.todo()
    log.info(
        "%s: %d of %d slabs to write, %d dates in the store",
        job.store.out,
        len(todo),
        len(writer.slabs),
        writer.dates,
    )
    started = time.monotonic()
    findings: dict[str, float] = {}
    batch: list[_Pending] = []
    # A slab is one model block: two slabs per Dask thread keep every thread (every worker) busy,
    # the next slab's reads beside the current one's model.
    size = job.store.batch or 2 * zstore.dask_threads()
    plan = share_cores(plan, size)
    signed: tuple[float, np.datetime64, list] | None = None
    for slab in zstore.with_progress(todo, progress):
        day = slab.date.astype("datetime64[D]")
        if signed is None or signed[1] != day or time.monotonic() - signed[0] > _RESIGN_AFTER_S:
            # Signed here, just before the day's slabs run: signatures expire after ~45 minutes.
            signed = (time.monotonic(), day, resign(by_day[day], sign))
            log.debug("%s: %s", day, ", ".join(i.id for i in by_day[day]))
        # Each slab reads its own window, the slab and the halo its patches need: no chunk of a
        # neighbouring slab is read again for that halo, and memory stays that of a slab whatever
        # the area. The pixels are those of predict() on the whole day (see predict_window).
        rows = window_rows(plan, slab.y.start, slab.y.stop, plan.height)
        cols = window_rows(plan, slab.x.start, slab.x.stop, plan.width)
        # Read as one chunk per item: the slab is one model block, and reading chunks it then merged
        # cost a copy of every input (a tenth of the reads' time at 8192 px).
        cube = job.load.cube(
            signed[2],
            bounds=_window_bounds(full, rows, cols, job.load.pixel_size),
            chunks=max(rows[1] - rows[0], cols[1] - cols[0]),
            **bounded,
        )
        result = predict_window(
            select_bands(cube, plan.bands).data,
            plan,
            (rows[0], cols[0]),
            (slab.y.start, slab.y.stop),
            (slab.x.start, slab.x.stop),
            # One model block per slab, not one per reading chunk: patches that straddle chunks
            # would run once per chunk. The batch's slabs share the cores (share_cores).
            max(slab.y.stop - slab.y.start, slab.x.stop - slab.x.start),
        )
        part = template.isel(slab.isel)
        part = part.assign(mask=part["mask"].copy(data=result[:, 0]))
        inputs = cube.isel(
            y=slice(slab.y.start - rows[0], slab.y.stop - rows[0]),
            x=slice(slab.x.start - cols[0], slab.x.stop - cols[0]),
        )
        batch.append(_Pending(slab, part, inputs))
        if len(batch) >= size:
            _flush(writer, batch, by_day, findings, job.load.on_read_error)
    _flush(writer, batch, by_day, findings, job.load.on_read_error)
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
    log.info("%s complete: %d slabs written in %.1f s", job.store.out, len(todo), time.monotonic() - started)
    masks = zstore.open_masks(job.store.out, storage_options=job.store.storage_options or None)
    pixels = sum((s.y.stop - s.y.start) * (s.x.stop - s.x.start) for s in todo)
    return Outcome(job.store.out, writer.dates, len(todo), len(writer.slabs), pixels, masks)


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
        day = pending.slab.date.astype("datetime64[D]")
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


def _check_slab(
    findings: dict[str, float], day: np.datetime64, items: Sequence[Any], fraction: float
) -> None:
    from .radiometry import check_reflectance

    key = str(day)
    if fraction > findings.get(key, 0.0):
        findings[key] = fraction
        label = f"{key} ({', '.join(i.id for i in items)})"
        check_reflectance(fraction, label=label)
