"""Zarr output that loses nothing: template first, slab-by-slab region writes, resume and append.

A mask cube is written in three steps, so that a job killed at any moment can be
rerun and ends with exactly the bytes an uninterrupted run writes:

1. **Template.** The store's metadata, coordinates and CRS are written first
   (``to_zarr(compute=False)``), with Zarr chunks equal to the Dask chunks
   (whole shards with ``shards=``) and stale encodings from the input cleared.
   The group is marked ``xs2mask_status = "incomplete"``.
2. **Slabs.** Each slab (one time step x one spatial block of whole chunks) is
   computed and written with ``region=``; only then is its key added to the
   group attribute ``xs2mask_done``. Slabs are independent graphs, so a big job
   never builds one giant graph, and a slab can rebuild its inputs (e.g. re-sign
   expiring URLs) just before it runs.
3. **Completion.** When every slab is recorded, the status becomes
   ``"complete"`` and, where asked, the metadata are consolidated. A store whose
   status is not ``"complete"`` is refused by :func:`open_masks` unless the
   caller asks for partial data, so it never looks complete when it isn't.

A slab whose inputs cannot be read can, if the caller says so, be written as
no-data (255) and listed in the group attribute ``xs2mask_read_errors``;
:func:`open_masks` then warns, and a rerun retries those slabs.

A rerun with the same layout skips the recorded slabs; ``mode="a"`` appends new
dates along ``time``; an existing store with another layout is refused, never
overwritten (only ``mode="w"`` replaces a store).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import xarray as xr

from .classes import NODATA
from .exceptions import ReadWarning, StoreError

STATUS_ATTR = "xs2mask_status"
DONE_ATTR = "xs2mask_done"
LAYOUT_ATTR = "xs2mask_layout"
CONSOLIDATED_ATTR = "xs2mask_consolidated"
READ_ERRORS_ATTR = "xs2mask_read_errors"
_KEEP_ENCODING = ("_FillValue", "dtype", "grid_mapping", "units", "calendar")


@dataclass(frozen=True)
class Slab:
    """One unit of work: a time step and a block of whole Zarr chunks.

    Attributes
    ----------
    time : position along ``time`` in the dataset being written.
    y, x : pixel slices of the block.
    key : stable name recorded when the slab is written (uses the time value,
        so that appending dates never changes the meaning of a key).
    """

    time: int
    y: slice
    x: slice
    key: str

    @property
    def isel(self) -> dict[str, Any]:
        return {"time": [self.time], "y": self.y, "x": self.x}


def prepare(ds: xr.Dataset | xr.DataArray, *, chunks: Mapping[str, int] | None = None) -> xr.Dataset:
    """Make a mask dataset writable to Zarr: one time step per chunk, regular chunks, clean metadata.

    Drops coordinates Zarr cannot store (object dtype, e.g. stackstac's
    ``proj:transform``) and attributes that are not plain values, and clears
    inherited encodings except the fill value, dtype and grid mapping.

    Examples
    --------
    >>> import xs2mask
    >>> ds = xs2mask.predict(xs2mask.data.demo_scene(chunks=256))
    >>> prepare(ds.expand_dims(time=[np.datetime64("2020-04-29")])).mask.chunks
    ((1,), (256, 256), (256, 256))
    """
    if isinstance(ds, xr.DataArray):
        ds = ds.to_dataset(name=ds.name or "mask")
    if "time" not in ds.dims:
        raise StoreError(
            "the dataset has no `time` dimension; Zarr mask cubes are written per time step. "
            "Add one with ds.expand_dims(time=[np.datetime64('2024-01-01')])."
        )
    missing = {"y", "x"} - set(ds.dims)
    if missing:
        raise StoreError(f"the dataset lacks spatial dims {sorted(missing)}; expected (time, y, x)")
    drop = [n for n, c in ds.coords.items() if c.dtype == object and n not in ds.dims]
    # A shallow copy gives fresh Variable objects: the caller's attrs and encodings stay untouched.
    ds = ds.drop_vars(drop).copy()
    ds.attrs = _plain_attrs(ds.attrs)
    sizes = _chunk_sizes(ds, chunks)
    ds = ds.chunk({dim: sizes.get(dim, -1) for dim in ds.dims})
    for var in ds.variables.values():
        var.attrs = _plain_attrs(var.attrs)
        kept = {k: v for k, v in var.encoding.items() if k in _KEEP_ENCODING}
        var.encoding.clear()
        var.encoding.update(kept)
    if "mask" in ds and ds["mask"].dtype == np.uint8:
        ds["mask"].encoding["_FillValue"] = NODATA
        # _FillValue already says it; xarray refuses to append when both are present.
        ds["mask"].attrs.pop("missing_value", None)
    return ds


def slabs(ds: xr.Dataset, block: int | None = None) -> list[Slab]:
    """Split a prepared dataset into slabs of one time step x ``block`` pixels of whole chunks.

    Examples
    --------
    >>> t = xr.Dataset({"mask": (("time", "y", "x"), np.zeros((2, 4, 6), np.uint8))},
    ...                coords={"time": np.array(["2024-01-01", "2024-01-02"], "datetime64[ns]")})
    >>> [s.key for s in slabs(prepare(t, chunks={"y": 2, "x": 3}), block=2)][:3]
    ['2024-01-01T00:00:00/y0/x0', '2024-01-01T00:00:00/y0/x1', '2024-01-01T00:00:00/y1/x0']
    """
    cy, cx = _first_chunk(ds, "y"), _first_chunk(ds, "x")
    by = _block(block, cy)
    bx = _block(block, cx)
    out = []
    for t, value in enumerate(ds["time"].values):
        for i, y0 in enumerate(range(0, ds.sizes["y"], by)):
            for j, x0 in enumerate(range(0, ds.sizes["x"], bx)):
                key = f"{_time_key(value)}/y{i}/x{j}"
                out.append(Slab(t, slice(y0, min(y0 + by, ds.sizes["y"])), slice(x0, x0 + bx), key))
    return [Slab(s.time, s.y, slice(s.x.start, min(s.x.stop, ds.sizes["x"])), s.key) for s in out]


def to_zarr(
    ds: xr.Dataset | xr.DataArray,
    store: str,
    *,
    mode: Literal["w-", "w", "a"] = "w-",
    append_dim: str = "time",
    storage_options: dict[str, Any] | None = None,
    zarr_format: int | None = None,
    consolidated: bool | None = None,
    chunks: Mapping[str, int] | None = None,
    shards: Mapping[str, int] | None = None,
    block: int | None = None,
    build: Callable[[Slab], xr.Dataset] | None = None,
    progress: Callable[[Iterator[Slab], int], Iterator[Slab]] | None = None,
    batch: int | None = None,
    check: Callable[[Slab, xr.Dataset], tuple[Any, Callable[[Any], None]]] | None = None,
    on_read_error: Callable[[Slab, Exception], dict[str, Any]] | None = None,
) -> str:
    """Write a mask cube to Zarr slab by slab, resuming and appending safely.

    Parameters
    ----------
    ds
        Output of :func:`xs2mask.predict` with a ``time`` dim (lazy or not).
    store
        Local path or fsspec URL (``s3://bucket/masks.zarr``).
    mode
        ``"w-"`` create; an existing incomplete store with the same layout is
        resumed, a complete one with the same dates is left as is, anything else
        is refused. ``"a"`` appends the dates not yet in the store along
        ``append_dim`` (dates already there are resumed or skipped). ``"w"``
        replaces whatever is at ``store``.
    append_dim
        Only ``"time"`` is supported: masks grow by dates.
    storage_options
        fsspec options for object storage (credentials, ``endpoint_url``).
    zarr_format
        2 or 3 (default: zarr-python's default, 3 with zarr>=3).
    consolidated
        Consolidate metadata when the store is complete. Default: True for Zarr
        v2 and False for v3, whose spec has no consolidated metadata yet.
    chunks
        Zarr chunk sizes for ``y``/``x`` (default: the Dask chunks of ``ds``).
    shards
        Zarr v3 shard sizes for ``y``/``x`` (multiples of ``chunks``); Dask
        chunks are then whole shards, so no two tasks write one shard.
    block
        Slab size in pixels (rounded to whole chunks; default about 4096).
    build
        Optional callable returning the dataset for one slab; the pipeline uses
        it to rebuild inputs (and re-sign URLs) per slab. Default: ``ds.isel``.
    progress
        Optional wrapper of the slab iterator, e.g. a progress bar.
    batch
        Slabs computed together (default: enough to keep every core busy). A
        killed job redoes at most one batch.
    check
        Optional ``(slab, part) -> (lazy_value, callback)``: the lazy value is
        computed in the same pass as the slab's write (sharing its reads) and
        handed to the callback, e.g. a radiometric sanity check of the inputs.
    on_read_error
        Optional ``(slab, error) -> record`` called when a slab fails: raise to
        stop the job, or return a JSON-able record; the slab is then written as
        no-data and the record appended to the group attribute
        ``xs2mask_read_errors``. A rerun retries those slabs.

    Returns
    -------
    str
        The store path or URL.

    Examples
    --------
    >>> import xs2mask
    >>> cube = xs2mask.data.demo_scene(chunks=256).expand_dims(time=[np.datetime64("2020-04-29")])
    >>> xs2mask.to_zarr(cube.s2mask.predict(), "masks.zarr")  # doctest: +SKIP
    'masks.zarr'
    """
    if append_dim != "time":
        raise StoreError(f"append_dim must be 'time' (masks grow by dates), got {append_dim!r}")
    if mode not in ("w-", "w", "a"):
        raise StoreError(f"mode must be 'w-', 'w' or 'a', got {mode!r}")
    if zarr_format not in (None, 2, 3):
        raise StoreError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
    sizes = dict(chunks or {})
    if shards:
        if zarr_format == 2:
            raise StoreError("shards need Zarr format 3; pass zarr_format=3 or drop shards=")
        for dim, size in shards.items():
            inner = sizes.get(dim) or _first_chunk(prepare(ds), dim)
            if size % inner:
                raise StoreError(f"shard size {size} along {dim} is not a multiple of the chunk size {inner}")
            sizes.setdefault(dim, inner)
    ds = prepare(ds, chunks=shards or sizes)
    zarr_format = zarr_format or _default_format()
    consolidated = (zarr_format == 2) if consolidated is None else consolidated
    encoding = _encoding(ds, sizes if shards else None, shards, zarr_format)
    layout = _layout(ds, encoding, block)
    kw = {"storage_options": storage_options, "zarr_format": zarr_format, "consolidated": False}

    if mode == "w" and _exists(store, storage_options):
        _remove(store, storage_options)
    existing = _open_existing(store, storage_options)
    if existing is None:
        ds.to_zarr(store, mode="w-", compute=False, encoding=encoding, **kw)
        _set_attrs(store, storage_options, {STATUS_ATTR: "incomplete", DONE_ATTR: [], LAYOUT_ATTR: layout})
    else:
        group_attrs, stored = existing
        _check_layout(store, group_attrs, stored, ds, layout)
        new_times = ~np.isin(ds["time"].values, stored["time"].values)
        if new_times.any():
            if mode != "a":
                raise StoreError(
                    f"{store} already holds masks for other dates: {int(new_times.sum())} of the "
                    "dates to write are not in it. Pass mode='a' to append them, another path, "
                    "or mode='w' to replace the store."
                )
            appended = ds.isel(time=np.flatnonzero(new_times))
            _set_attrs(store, storage_options, {STATUS_ATTR: "incomplete"})
            appended.to_zarr(store, append_dim="time", compute=False, **kw)
            # Appending rewrites the group attributes from `ds`: put back the progress record.
            _set_attrs(store, storage_options, {**group_attrs, STATUS_ATTR: "incomplete"})
    offsets = _time_positions(store, storage_options, ds)
    attrs = _read_attrs(store, storage_options)
    # Slabs written as no-data after read errors are done, but worth another try.
    failed = {r.get("slab") for r in attrs.get(READ_ERRORS_ATTR, [])}
    done = set(attrs.get(DONE_ATTR, [])) - failed
    todo = [s for s in slabs(ds, layout["block"]) if s.key not in done]
    if todo:
        _set_attrs(
            store,
            storage_options,
            {
                STATUS_ATTR: "incomplete",
                CONSOLIDATED_ATTR: False,
                READ_ERRORS_ATTR: [],
                DONE_ATTR: sorted(done),
            },
        )
    flush = _Flush(ds, store, kw, done, on_read_error)
    # Chunks in one real slab (an area smaller than the block has fewer): batch enough slabs to
    # give every core of the cluster work.
    per_slab = math.ceil(min(layout["block"], ds.sizes["y"]) / _first_chunk(ds, "y")) * math.ceil(
        min(layout["block"], ds.sizes["x"]) / _first_chunk(ds, "x")
    )
    batch = batch or max(1, math.ceil(2 * _threads() / per_slab))
    iterator: Iterator[Slab] = iter(todo)
    if progress is not None:
        iterator = progress(iterator, len(todo))
    pending: list[_Pending] = []
    for slab in iterator:
        built = build(slab) if build is not None else ds.isel(slab.isel)
        part = _region_part(built, ds)
        position = offsets[slab.time]
        region = {"time": slice(position, position + 1), "y": slab.y, "x": slab.x}
        write = part.to_zarr(store, region=region, mode="r+", compute=False, **kw)
        pending.append(_Pending(slab, region, write, check(slab, built) if check is not None else None))
        if len(pending) >= batch:
            flush(pending)
    flush(pending)
    _set_attrs(store, storage_options, {STATUS_ATTR: "complete", CONSOLIDATED_ATTR: consolidated})
    if consolidated:
        import zarr

        zarr.consolidate_metadata(_mapper(store, storage_options), zarr_format=zarr_format)
    return store


def open_masks(
    store: str,
    *,
    storage_options: dict[str, Any] | None = None,
    allow_incomplete: bool = False,
    **kwargs: Any,
) -> xr.Dataset:
    """Open a mask cube written by :func:`to_zarr`, keeping ``mask`` as uint8 with 255 = no-data.

    Raises :class:`~xs2mask.exceptions.StoreError` when the store is still being
    written or was interrupted (rerun the job to finish it), unless
    ``allow_incomplete=True``; unwritten parts then read as 255.

    Examples
    --------
    >>> masks = open_masks("masks.zarr")  # doctest: +SKIP
    >>> masks.mask.rio.crs  # doctest: +SKIP
    CRS.from_epsg(32736)
    """
    attrs = _read_attrs(store, storage_options)
    status = attrs.get(STATUS_ATTR)
    if status is None:
        raise StoreError(f"{store} is not an xs2mask mask store (no {STATUS_ATTR} attribute)")
    if status != "complete" and not allow_incomplete:
        done = len(attrs.get(DONE_ATTR, []))
        raise StoreError(
            f"{store} is incomplete ({done} slabs written): the job writing it was interrupted or is "
            "still running. Rerun the same command to finish it, or pass allow_incomplete=True."
        )
    import rioxarray  # noqa: F401  (registers .rio for the CRS)

    errors = attrs.get(READ_ERRORS_ATTR) or []
    if errors:
        import warnings

        listed = "; ".join(f"{e.get('slab')}: {e.get('item')} {e.get('asset')}" for e in errors[:5])
        warnings.warn(
            f"{store}: {len(errors)} slab(s) are no-data (255) because their inputs could not be read "
            f"({listed}{'; ...' if len(errors) > 5 else ''}). Rerun the job to retry them; the details "
            f"are in the attribute {READ_ERRORS_ATTR}.",
            ReadWarning,
            stacklevel=2,
        )
    kwargs.setdefault("consolidated", bool(attrs.get(CONSOLIDATED_ATTR, False)))
    ds = xr.open_zarr(
        store,
        storage_options=storage_options,
        mask_and_scale=False,
        decode_coords="all",
        **kwargs,
    )
    return ds


# --------------------------------------------------------------------------- helpers


def _plain_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Keep attributes Zarr's JSON metadata can hold; serialise the rest to JSON text."""
    out = {}
    for key, value in attrs.items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[key] = value
        elif isinstance(value, np.generic):
            out[key] = value.item()
        elif isinstance(value, (list, tuple, np.ndarray)):
            items = np.asarray(value).tolist()
            try:
                json.dumps(items)
            except TypeError:
                continue
            out[key] = items
        elif isinstance(value, dict):
            try:
                out[key] = json.loads(json.dumps(value))
            except TypeError:
                continue
    return out


def _chunk_sizes(ds: xr.Dataset, chunks: Mapping[str, int] | None) -> dict[str, int]:
    sizes: dict[str, int] = {"time": 1}
    for dim in ("y", "x"):
        if chunks and dim in chunks:
            sizes[dim] = int(chunks[dim])
        else:
            sizes[dim] = min(ds.sizes[dim], _first_chunk(ds, dim, default=2048))
    return sizes


def _first_chunk(ds: xr.Dataset, dim: str, default: int | None = None) -> int:
    chunks = ds.chunksizes.get(dim) if ds.chunks else None
    if chunks:
        return int(chunks[0])
    return default if default is not None else ds.sizes[dim]


def _block(block: int | None, chunk: int) -> int:
    wanted = 4096 if block is None else block
    return max(1, round(wanted / chunk)) * chunk


def _time_key(value: Any) -> str:
    return (
        np.datetime_as_string(value, unit="s") if np.issubdtype(np.asarray(value).dtype, "M") else str(value)
    )


def _default_format() -> int:
    import zarr

    try:
        return int(zarr.config.get("default_zarr_format"))
    except AttributeError:  # zarr 2 has no config and writes format 2
        return 2


def _encoding(
    ds: xr.Dataset, chunks: Mapping[str, int] | None, shards: Mapping[str, int] | None, zarr_format: int
) -> dict[str, dict[str, Any]]:
    encoding: dict[str, dict[str, Any]] = {}
    for name, var in ds.data_vars.items():
        dask_chunks = tuple(c[0] for c in var.chunks) if var.chunks else var.shape
        enc: dict[str, Any] = {**var.encoding, "chunks": dask_chunks}
        if zarr_format == 3 and "_FillValue" in enc:
            # Zarr v3 keeps its own fill value beside CF's _FillValue: both must say no-data,
            # so chunks not yet written read as 255, never as "clear".
            enc["fill_value"] = enc["_FillValue"]
        if shards:
            enc["shards"] = dask_chunks
            enc["chunks"] = tuple(
                (chunks or {}).get(d, size) if d in shards else size
                for d, size in zip(var.dims, dask_chunks, strict=True)
            )
        encoding[name] = enc
    return encoding


def _layout(ds: xr.Dataset, encoding: Mapping[str, Mapping[str, Any]], block: int | None) -> dict[str, Any]:
    """What must match for a store to be resumed or appended to."""
    cy = _first_chunk(ds, "y")
    return {
        "variables": {
            name: {
                "dims": list(var.dims),
                "dtype": str(var.dtype),
                "chunks": list(encoding[name]["chunks"]),
            }
            for name, var in sorted(ds.data_vars.items())
        },
        "block": _block(block, cy),
    }


def _mapper(store: str, storage_options: dict[str, Any] | None):
    if "://" in str(store):
        import fsspec

        return fsspec.get_mapper(str(store), **(storage_options or {}))
    return str(store)


def _open_group(store: str, storage_options: dict[str, Any] | None, mode: str = "r"):
    import zarr

    return zarr.open_group(_mapper(store, storage_options), mode=mode)


def _read_attrs(store: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    try:
        return dict(_open_group(store, storage_options).attrs)
    except (FileNotFoundError, KeyError, ValueError) as err:
        raise StoreError(f"cannot open {store} as a Zarr group: {err}") from err
    except Exception as err:  # zarr raises its own GroupNotFoundError
        if type(err).__name__ in ("GroupNotFoundError", "PathNotFoundError", "NodeTypeValidationError"):
            raise StoreError(f"cannot open {store} as a Zarr group: {err}") from err
        raise


def _set_attrs(store: str, storage_options: dict[str, Any] | None, values: Mapping[str, Any]) -> None:
    _open_group(store, storage_options, mode="r+").attrs.update(dict(values))


def _exists(store: str, storage_options: dict[str, Any] | None) -> bool:
    """Whether anything is at ``store`` (an empty folder counts as nothing)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(str(store), **(storage_options or {}))
    if fs.isdir(path):
        return bool(fs.ls(path))
    return fs.exists(path)


def _remove(store: str, storage_options: dict[str, Any] | None) -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(str(store), **(storage_options or {}))
    fs.rm(path, recursive=True)


def _open_existing(
    store: str, storage_options: dict[str, Any] | None
) -> tuple[dict[str, Any], xr.Dataset] | None:
    if not _exists(store, storage_options):
        return None
    try:
        attrs = _read_attrs(store, storage_options)
    except StoreError:
        raise StoreError(
            f"{store} exists and is not a Zarr store; refusing to overwrite it. "
            "Choose another path, or mode='w' to replace it."
        ) from None
    if STATUS_ATTR not in attrs:
        raise StoreError(
            f"{store} exists and was not written by xs2mask; refusing to touch it. "
            "Choose another path, or mode='w' to replace it."
        )
    stored = xr.open_zarr(store, storage_options=storage_options, consolidated=False, mask_and_scale=False)
    return attrs, stored


def _check_layout(
    store: str, attrs: Mapping[str, Any], stored: xr.Dataset, ds: xr.Dataset, layout: Mapping[str, Any]
) -> None:
    fix = "Choose another path, or mode='w' to replace it."
    old = attrs.get(LAYOUT_ATTR, {})
    problems = []
    if old.get("variables") != layout["variables"]:
        problems.append(
            f"variables/dtypes/chunks differ: stored {old.get('variables')}, new {layout['variables']}"
        )
    if old.get("block") != layout["block"]:
        problems.append(f"slab size differs: stored {old.get('block')}, new {layout['block']}")
    for dim in ("y", "x"):
        a, b = stored[dim].values, ds[dim].values
        if a.shape != b.shape or not np.allclose(a, b):
            problems.append(f"the {dim} coordinates differ (another area or resolution)")
    crs_old = stored.get("spatial_ref")
    crs_new = ds.get("spatial_ref")
    if (crs_old is None) != (crs_new is None) or (
        crs_old is not None and crs_old.attrs.get("crs_wkt") != crs_new.attrs.get("crs_wkt")
    ):
        problems.append("the CRS differs")
    if problems:
        raise StoreError(f"{store} exists with an incompatible layout: {'; '.join(problems)}. {fix}")


def _time_positions(store: str, storage_options: dict[str, Any] | None, ds: xr.Dataset) -> list[int]:
    stored = xr.open_zarr(store, storage_options=storage_options, consolidated=False)["time"].values
    index = {v: i for i, v in enumerate(stored)}
    return [index[v] for v in ds["time"].values]


def _region_part(part: xr.Dataset, ds: xr.Dataset) -> xr.Dataset:
    """Keep only what a region write may touch: variables sharing a dim with the region."""
    part = prepare(part, chunks={"y": _first_chunk(ds, "y"), "x": _first_chunk(ds, "x")}).copy()
    for var in part.variables.values():
        # The template holds the attributes; repeating CF ones here trips xarray's encoder.
        var.attrs = {}
        var.encoding.pop("_FillValue", None)
    return part.drop_vars([n for n, v in part.variables.items() if not set(v.dims) & {"time", "y", "x"}])


class _Flush:
    """Run a batch of slab writes, then record them: a slab is marked done only once written.

    When a batch fails and the caller handles read errors, its slabs are redone one
    by one (region writes are idempotent) so that only the failing ones become no-data.
    """

    def __init__(
        self,
        ds: xr.Dataset,
        store: str,
        kw: dict[str, Any],
        done: set[str],
        on_read_error: Callable[[Slab, Exception], dict[str, Any]] | None,
    ) -> None:
        self.ds, self.store, self.kw = ds, store, kw
        self.done, self.on_read_error = done, on_read_error
        self.errors: list[dict[str, Any]] = []

    def __call__(self, pending: list[_Pending]) -> None:
        if not pending:
            return
        try:
            outcomes: list[tuple[bool, Any]] = [(True, v) for v in _compute(pending)]
        except Exception:
            if self.on_read_error is None:
                raise
            outcomes = []
            for entry in pending:
                try:
                    outcomes.append((True, _compute([entry])[0]))
                except Exception as err:  # whatever failed, the caller's hook decides
                    outcomes.append((False, err))
        for entry, (ok, value) in zip(pending, outcomes, strict=True):
            if not ok:
                record = {"slab": entry.slab.key, **self.on_read_error(entry.slab, value)}
                part = _nodata_part(self.ds, entry.slab)
                part.to_zarr(self.store, region=entry.region, mode="r+", **self.kw)
                self.errors.append(record)
        self.done.update(entry.slab.key for entry in pending)
        attrs: dict[str, Any] = {DONE_ATTR: sorted(self.done)}
        if self.errors:
            attrs[READ_ERRORS_ATTR] = self.errors
        _set_attrs(self.store, self.kw["storage_options"], attrs)
        for entry, (ok, value) in zip(pending, outcomes, strict=True):
            if ok and entry.check is not None:
                entry.check[1](value)
        pending.clear()


@dataclass(frozen=True)
class _Pending:
    """A slab built but not yet computed: its region, lazy write and optional check."""

    slab: Slab
    region: dict[str, slice]
    write: Any
    check: tuple[Any, Callable[[Any], None]] | None


def _compute(pending: list[_Pending]) -> list[Any]:
    """The checks' values per slab (None without a check), writing the slabs on the way."""
    import dask

    lazies = [p.check[0] for p in pending if p.check is not None]
    values = iter(dask.compute([p.write for p in pending], lazies)[1])
    return [next(values) if p.check is not None else None for p in pending]


def _nodata_part(ds: xr.Dataset, slab: Slab) -> xr.Dataset:
    """The slab's region of ``ds`` filled with no-data: 255 for uint8, NaN for floats."""
    part = _region_part(ds.isel(slab.isel), ds)
    for name, var in part.data_vars.items():
        fill = NODATA if var.dtype == np.uint8 else np.nan
        part[name] = var.copy(data=np.full(var.shape, fill, var.dtype))
    return part


def _threads() -> int:
    """Cores of the Dask cluster in use (the default client's, else this machine's)."""
    try:
        from distributed import default_client

        return max(1, sum(default_client().nthreads().values()))
    except (ImportError, ValueError):
        import os

        return os.cpu_count() or 1
