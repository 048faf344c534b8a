"""Zarr output that mixes nothing and loses nothing: a one-way writer of mask cubes.

:class:`MaskStore` owns every write to a store; the job that computes the masks
(:mod:`xs2mask.pipeline`, :func:`to_zarr`) only hands it slabs. A store goes
through these states, each entered by one write, so that a process killed at any
moment leaves a store that the same command completes, with the bytes an
uninterrupted run writes:

1. **Template.** Metadata, coordinates and CRS are written first
   (``to_zarr(compute=False)``) under ``xs2mask_status = "creating"``; a store
   found in that state holds no pixels yet and is written again from scratch.
   Zarr chunks equal the Dask chunks (whole shards with ``shards=``). Then the
   status becomes ``"incomplete"``.
2. **Append** (``mode="a"``, dates later than the store's last). The intent is
   recorded first (``xs2mask_appending``), then every array along ``time`` is
   resized and the new times written, then the intent is cleared. A store found
   with an intent is rolled back to its dates before it, then the job goes on.
3. **Slabs.** Each slab (one date x one spatial block of whole chunks) is written
   into its region block by block, each block by the task that computed it (on any
   scheduler, a distributed cluster's workers included), and read back there and
   compared value by value; only then is its key added to ``xs2mask_done``: a write
   that the storage lost is an error, never a no-data slab in a complete store.
4. **Completion.** When every slab of every date is recorded, the status becomes
   ``"complete"`` and the metadata are consolidated. Any later change first drops
   the consolidated metadata, so they never describe a store that is being written.

What decides the pixels (models and their weights' sha256, TTA, processing
resolution, patch size and overlap, the caller's own entries such as the
harmonisation mode) is recorded in ``xs2mask_provenance``; variables, dtypes,
chunks, CRS and grid in ``xs2mask_layout`` and the coordinates. A resume or an
append that differs in any of them is refused, naming the stored and the new
value. Times are unique and increasing: duplicated times are refused, and so
are appended dates earlier than the store's last one (inserting them would mean
rewriting every date after them).

The store reads as plain CF with any reader: ``mask`` is uint8 with 255 listed
as the flag ``no_data`` (no ``_FillValue``, which xarray would decode to float
NaN); ``spatial_ref`` is a coordinate named by the ``coordinates`` and
``grid_mapping`` attributes, and GDAL finds the CRS in ``_CRS``. Zarr's own
fill value is 255 in format 3; format 2 surfaces it to xarray as ``_FillValue``,
so there it is left unset and every chunk is written as no-data up front.

A slab whose inputs cannot be read can be written as no-data with
:meth:`MaskStore.write_nodata`, listed in ``xs2mask_read_errors``;
:func:`open_masks` then warns, and a rerun retries those slabs.
"""

from __future__ import annotations

import errno
import functools
import json
import math
import os
import signal
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import xarray as xr

from .classes import NODATA
from .exceptions import ReadWarning, StoreError, XS2MaskError

STATUS_ATTR = "xs2mask_status"
DONE_ATTR = "xs2mask_done"
LAYOUT_ATTR = "xs2mask_layout"
PROVENANCE_ATTR = "xs2mask_provenance"
CONSOLIDATED_ATTR = "xs2mask_consolidated"
READ_ERRORS_ATTR = "xs2mask_read_errors"
APPENDING_ATTR = "xs2mask_appending"
# Set to n, the writer SIGKILLs its own process before its n-th write: how the tests prove crash safety.
KILL_ENV = "XS2MASK_TEST_KILL_AT"
# Exact for any acquisition time, and appendable without another choice of units.
TIME_ENCODING = {
    "units": "microseconds since 1970-01-01",
    "calendar": "proleptic_gregorian",
    "dtype": "int64",
}
# Grids must match to this fraction of a pixel, absolutely (northings near 1e7 m defeat relative tolerances).
GRID_TOLERANCE = 1e-3
_KEEP_ENCODING = ("dtype", "grid_mapping", "units", "calendar")
_FIX = "Rerun with the same options, write to another path, or replace the store with mode='w' (--overwrite)."

Mode = Literal["w-", "w", "a"]

_steps = 0


def _step(name: str) -> None:
    """Called just before each write to a store; ``name`` says which (the tests record them)."""
    global _steps
    _steps += 1
    if os.environ.get(KILL_ENV) == str(_steps):
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Slab:
    """One unit of work: a date and a block of whole Zarr chunks.

    Attributes
    ----------
    time : position of the date in the dataset being written.
    date : the time value itself.
    y, x : pixel slices of the block.
    key : stable name recorded when the slab is written (uses the time value,
        so that appending dates never changes the meaning of a key).
    """

    time: int
    date: np.datetime64
    y: slice
    x: slice
    key: str

    @property
    def isel(self) -> dict[str, Any]:
        return {"time": [self.time], "y": self.y, "x": self.x}


def _foreign(name: Hashable, coord: xr.DataArray, ds: xr.Dataset) -> bool:
    """A loader's metadata coordinate: object dtype (Zarr cannot store it), or text per date or for
    the whole cube (stackstac's ``title``, ``proj:code``: zarr 3 warns that it has no stable
    encoding for them). Text along another dim (the mask's ``class_name``) stays."""
    if name in ds.dims:
        return False
    return coord.dtype == object or (coord.dtype.kind in "US" and set(coord.dims) <= {"time", "y", "x"})


def prepare(ds: xr.Dataset | xr.DataArray, *, chunks: Mapping[str, int] | None = None) -> xr.Dataset:
    """Make a mask dataset writable to Zarr: sorted unique times, one per chunk, clean CF metadata.

    Drops coordinates Zarr cannot store (object dtype, e.g. stackstac's
    ``proj:transform``) or stores without a stable encoding (text per date, e.g.
    stackstac's ``title``), and attributes that are not plain values, clears
    inherited encodings, and refuses two time steps with the same time (one
    would overwrite the other).

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
    times = ds["time"].values
    if not np.issubdtype(times.dtype, np.datetime64) or np.isnat(times).any():
        raise StoreError(
            f"the `time` coordinate must hold dates (numpy datetime64), not {times.dtype}"
            + (" with NaT among them" if np.issubdtype(times.dtype, np.datetime64) else "")
            + ": each time step is stored under its date. Set it, e.g. "
            "ds.assign_coords(time=pd.to_datetime(ds.time.values))."
        )
    _check_unique_times(times)
    if times.dtype != np.dtype("datetime64[ns]"):
        # xarray (2026.9) encodes dates coarser than the store's microsecond units (a day, a second:
        # what np.datetime64("2020-04-29") and many readers give) as NaT, silently.
        ds = ds.assign_coords(time=ds["time"].copy(data=times.astype("datetime64[ns]")))
    if not ds.indexes["time"].is_monotonic_increasing:
        ds = ds.sortby("time")
    drop = [n for n, c in ds.coords.items() if _foreign(n, c, ds)]
    # A shallow copy gives fresh Variable objects: the caller's attrs and encodings stay untouched.
    ds = ds.drop_vars(drop).copy()
    ds.attrs = _plain_attrs(ds.attrs)
    sizes = _chunk_sizes(ds, chunks)
    ds = ds.chunk({dim: sizes.get(dim, -1) for dim in ds.dims})
    for variable in ds.variables.values():
        variable.attrs = _plain_attrs(variable.attrs)
        kept = {k: v for k, v in variable.encoding.items() if k in _KEEP_ENCODING}
        variable.encoding.clear()
        variable.encoding.update(kept)
    ds["time"].encoding.update(TIME_ENCODING)
    if "mask" in ds and ds["mask"].dtype == np.uint8:
        attrs = ds["mask"].attrs
        for cf_missing in ("_FillValue", "missing_value", "valid_range"):
            attrs.pop(cf_missing, None)
        if "flag_values" in attrs and NODATA not in attrs["flag_values"]:
            attrs["flag_values"] = [*attrs["flag_values"], NODATA]
            attrs["flag_meanings"] = f"{attrs.get('flag_meanings', '')} no_data".strip()
    if "probability" in ds and ds["probability"].dtype == np.uint8:
        ds["probability"].attrs["scale_factor"] = ds["probability"].attrs.pop(
            "scale_factor_to_probability", 1 / 255
        )
    for var in ds.data_vars.values():
        # Named explicitly: xarray leaves a grid-mapping variable out of `coordinates`, and a
        # plain reader then loses the CRS.
        coords = [str(c) for c, v in ds.coords.items() if c not in ds.dims and set(v.dims) <= set(var.dims)]
        if coords:
            var.encoding["coordinates"] = " ".join(sorted(coords))
        if "spatial_ref" in ds.coords:
            var.encoding["grid_mapping"] = "spatial_ref"
            wkt = ds["spatial_ref"].attrs.get("crs_wkt")
            if wkt:
                var.attrs["_CRS"] = {"wkt": wkt}  # where GDAL's Zarr driver reads a CRS
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
    by = _block(block, _first_chunk(ds, "y"))
    bx = _block(block, _first_chunk(ds, "x"))
    ny, nx = ds.sizes["y"], ds.sizes["x"]
    return [
        Slab(
            t,
            value,
            slice(y0, min(y0 + by, ny)),
            slice(x0, min(x0 + bx, nx)),
            f"{_time_key(value)}/y{i}/x{j}",
        )
        for t, value in enumerate(ds["time"].values)
        for i, y0 in enumerate(range(0, ny, by))
        for j, x0 in enumerate(range(0, nx, bx))
    ]


def provenance_of(ds: xr.Dataset | xr.DataArray) -> dict[str, Any]:
    """What decides the pixels of masks made by :func:`xs2mask.predict`, read from their attributes.

    Model names with the sha256 of their weights, patch size, overlap, TTA,
    processing resolution and precision. :class:`MaskStore` records it and
    refuses to mix masks whose provenance differs.

    Examples
    --------
    >>> import xs2mask
    >>> ds = xs2mask.predict(xs2mask.data.demo_scene(), model="ukis-csmask-4b-l2a")
    >>> provenance_of(ds)["tta"]
    0
    """
    attrs = ds.attrs
    keys = ("model", "patch_size", "overlap", "tta", "processing_resolution", "dtype")
    out = {key: attrs[f"xs2mask_{key}"] for key in keys if f"xs2mask_{key}" in attrs}
    if "model" in out:
        out["weights_sha256"] = {name: _weights_sha256(name) for name in str(out["model"]).split(",")}
    return out


#: ``True``: a ``tqdm.auto`` progress bar; ``False`` (or None): none; or ``(iterator, total) -> iterator``.
Progress = bool | Callable[[Iterator[Slab], int], Iterator[Slab]] | None


def with_progress(todo: Sequence[Slab], progress: Progress) -> Iterator[Slab]:
    """The slabs to write, behind a progress bar as ``progress`` asks (see :data:`Progress`).

    Examples
    --------
    >>> list(with_progress([], True))
    []
    """
    if progress is None or progress is False:
        return iter(todo)
    if progress is True:
        from tqdm.auto import tqdm

        return iter(tqdm(todo, total=len(todo), unit="slab", desc="masking", disable=not todo))
    return progress(iter(todo), len(todo))


def _permission_faults(method: Callable[..., Any]) -> Callable[..., Any]:
    """A store the user may not write (read-only folder, file system or bucket) is a StoreError."""

    @functools.wraps(method)
    def guarded(first: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(first, *args, **kwargs)
        except OSError as err:
            if not isinstance(err, PermissionError) and err.errno != errno.EROFS:
                raise
            path = first.path if isinstance(first, MaskStore) else kwargs.get("path", args[0] if args else "")
            where = f" ({err.filename})" if getattr(err, "filename", None) else ""
            raise StoreError(
                f"cannot write the mask store {path}{where}: {err.strerror or err}. Make it writable "
                "(permissions, a read-only file system or bucket), or write to another path (--out)."
            ) from None

    return guarded


class MaskStore:
    """The one writer of a mask store: create or resume, append, write slabs, complete.

    Use :meth:`open`, then write what :meth:`todo` lists with :meth:`write` (or
    :meth:`write_nodata`), then call :meth:`complete`. The store never calls
    back into the job: how the slabs are computed is the caller's business.

    Examples
    --------
    >>> import xs2mask
    >>> cube = xs2mask.data.demo_scene(chunks=256).expand_dims(time=[np.datetime64("2020-04-29")])
    >>> masks = cube.s2mask.predict()
    >>> writer = MaskStore.open("masks.zarr", masks)  # doctest: +SKIP
    >>> for slab in writer.todo():  # doctest: +SKIP
    ...     writer.write([(slab, writer.template.isel(slab.isel))])
    >>> writer.complete()  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str,
        template: xr.Dataset,
        *,
        storage_options: dict[str, Any] | None,
        zarr_format: int,
        consolidated: bool,
        block: int,
    ) -> None:
        self.path, self.template = path, template
        self.storage_options, self.zarr_format = storage_options, zarr_format
        self.consolidated, self.block = consolidated, block
        self.slabs = slabs(template, block)
        self._positions: dict[str, int] = {}
        self._done: set[str] = set()
        self._errors: list[dict[str, Any]] = []
        self._todo: list[Slab] = []
        self._store_times: np.ndarray = template["time"].values
        self.stored_attrs: dict[str, Any] = {}

    # ------------------------------------------------------------------ opening

    @classmethod
    @_permission_faults
    def open(
        cls,
        path: str,
        template: xr.Dataset | xr.DataArray,
        *,
        mode: Mode = "w-",
        provenance: Mapping[str, Any] | None = None,
        storage_options: dict[str, Any] | None = None,
        zarr_format: int | None = None,
        consolidated: bool = True,
        chunks: Mapping[str, int] | None = None,
        shards: Mapping[str, int] | None = None,
        block: int | None = None,
    ) -> MaskStore:
        """Create the store, or check an existing one against ``template`` and resume or append.

        Parameters
        ----------
        path
            Local path or fsspec URL (``s3://bucket/masks.zarr``).
        template
            The (lazy) masks to write, with a ``time`` dim: its metadata, grid and
            dates define the store; its pixels are never computed here.
        mode
            ``"w-"``: create; an existing store with the same provenance, layout
            and dates is resumed (or left as is when complete). ``"a"``: also
            append the dates not in the store, all later than its last date.
            ``"w"``: replace whatever is at ``path``.
        provenance
            Entries recorded and compared beside :func:`provenance_of` the
            template, e.g. ``{"harmonize": "auto"}``.
        storage_options
            fsspec options for object storage (credentials, ``endpoint_url``).
        zarr_format
            2 or 3 (default: zarr-python's default, 3 with zarr>=3).
        consolidated
            Consolidate the metadata once the store is complete.
        chunks, shards
            Zarr chunk sizes for ``y``/``x`` (default: the template's Dask chunks)
            and Zarr v3 shard sizes (multiples of ``chunks``); Dask chunks are
            then whole shards, so no two tasks write one shard.
        block
            Slab size in pixels (rounded to whole chunks; default: an existing
            store's own, else about 4096). On an existing store, a size that cuts
            the area into other slabs than the store's is refused.

        Raises
        ------
        StoreError
            The store was written otherwise (provenance, layout, grid, CRS), is
            not an xs2mask store, or the dates cannot be appended.
        """
        if mode not in ("w-", "w", "a"):
            raise StoreError(f"mode must be 'w-', 'w' or 'a', got {mode!r}")
        if zarr_format not in (None, 2, 3):
            raise StoreError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
        sizes = dict(chunks or {})
        if shards:
            if zarr_format == 2:
                raise StoreError("shards need Zarr format 3; pass zarr_format=3 or drop shards=")
            for dim, size in shards.items():
                inner = sizes.get(dim) or _first_chunk(prepare(template), dim)
                if size % inner:
                    raise StoreError(
                        f"shard size {size} along {dim} is not a multiple of the chunk size {inner}"
                    )
                sizes.setdefault(dim, inner)
        ds = prepare(template, chunks=shards or sizes)
        asked_format, zarr_format = zarr_format, zarr_format or _default_format()
        encoding = _encoding(ds, sizes if shards else None, shards, zarr_format)
        layout = _layout(ds, encoding, block)
        record = _jsonable({**provenance_of(ds), **(provenance or {})})
        self = cls(
            path,
            ds,
            storage_options=storage_options,
            zarr_format=zarr_format,
            consolidated=consolidated,
            block=layout["block"],
        )
        if mode == "w" and _exists(path, storage_options):
            _step("remove")
            _remove(path, storage_options)
        attrs = self._existing()
        if attrs is None or attrs.get(STATUS_ATTR) == "creating":
            self._create(encoding, layout, record)
            return self
        stored_format = _open_group(path, storage_options).metadata.zarr_format
        if asked_format is not None and stored_format != asked_format:
            raise StoreError(
                f"{path} is a Zarr format {stored_format} store, not format {asked_format}. "
                f"Pass zarr_format={stored_format} (--zarr-format {stored_format}) or another path."
            )
        self.zarr_format = stored_format
        self.stored_attrs = attrs
        stored_block = (attrs.get(LAYOUT_ATTR) or {}).get("block")
        if isinstance(stored_block, int) and stored_block > 0:
            stored_slabs = slabs(ds, stored_block)
            if block is None or stored_slabs == self.slabs:
                # No slab size asked for, or one that cuts the area into the same slabs: go on with the
                # store's own (a resume of a `--block 256` job without the option continues its slabs).
                layout = {**layout, "block": stored_block}
                self.block, self.slabs = stored_block, stored_slabs
        self._resume(attrs, mode, layout, record)
        return self

    def _existing(self) -> dict[str, Any] | None:
        """The group attributes of an xs2mask store at the path; None when there is nothing to keep."""
        if not _exists(self.path, self.storage_options):
            return None
        try:
            group = _open_group(self.path, self.storage_options)
        except StoreError:
            raise StoreError(
                f"{self.path} exists and is not a Zarr store; refusing to overwrite it. "
                "Choose another path, or mode='w' to replace it."
            ) from None
        attrs = dict(group.attrs)
        if STATUS_ATTR not in attrs:
            if not attrs and not list(group.keys()):
                return None  # an empty group: a kill came before the template's attributes
            raise StoreError(
                f"{self.path} exists and was not written by xs2mask; refusing to touch it. "
                "Choose another path, or mode='w' to replace it."
            )
        return attrs

    def _create(
        self, encoding: Mapping[Hashable, Any], layout: Mapping[str, Any], record: Mapping[str, Any]
    ) -> None:
        ds = self.template.copy()
        ds.attrs = {
            **ds.attrs,
            STATUS_ATTR: "creating",
            DONE_ATTR: [],
            READ_ERRORS_ATTR: [],
            APPENDING_ATTR: None,
            CONSOLIDATED_ATTR: False,
            LAYOUT_ATTR: dict(layout),
            PROVENANCE_ATTR: dict(record),
        }
        for var in ds.variables.values():
            if not set(var.dims) & {"time", "y", "x"}:
                # No slab writes these (e.g. `class_name`): the template must hold their values.
                var.load()
                if self.zarr_format == 3 and var.dtype.kind == "U":
                    # Zarr 3 stores numpy's fixed-width text in a data type it warns has no spec
                    # (other readers may fail on it); variable-length UTF-8 has one.
                    var.data = var.values.astype(object)
        _step("template")
        # mode="w": what is there is an empty group or an unfinished template of ours.
        ds.to_zarr(self.path, mode="w", compute=False, encoding=dict(encoding), **self._kw)
        self._prefill(0)
        _step("status")
        self._set_attrs({STATUS_ATTR: "incomplete"})
        self._positions = {_time_key(t): i for i, t in enumerate(ds["time"].values)}
        self._todo = list(self.slabs)

    def _resume(
        self, attrs: dict[str, Any], mode: Mode, layout: Mapping[str, Any], record: Mapping[str, Any]
    ) -> None:
        if attrs.get(APPENDING_ATTR):
            self._roll_back(attrs[APPENDING_ATTR]["from"])
        stored = xr.open_zarr(
            self.path, storage_options=self.storage_options, consolidated=False, mask_and_scale=False
        )
        self._check(attrs, stored, layout, record)
        times = stored["time"].values
        keys = [_time_key(t) for t in times]
        new = [t for t in self.template["time"].values if _time_key(t) not in set(keys)]
        if new and mode != "a":
            raise StoreError(
                f"{self.path} already holds masks for other dates: {len(new)} of the dates to write "
                f"({_time_key(new[0])}{', ...' if len(new) > 1 else ''}) are not in it. Pass mode='a' "
                "(--append) to append them, write to another path, or mode='w' (--overwrite) to replace it."
            )
        if new and len(times) and new[0] <= times[-1]:
            early = [_time_key(t) for t in new if t <= times[-1]]
            raise StoreError(
                f"{self.path} ends at {keys[-1]}; the new date(s) {', '.join(early[:3])}"
                f"{', ...' if len(early) > 3 else ''} are earlier. Appending keeps the time axis in order, "
                "so earlier dates cannot be appended: write them to another store, or rewrite this one "
                "with all its dates (mode='w' / --overwrite)."
            )
        self._store_times = times
        wanted = {_time_key(t) for t in self.template["time"].values}
        errors = list(attrs.get(READ_ERRORS_ATTR) or [])
        # Slabs written as no-data after read errors are done, but worth another try when asked for.
        retry = {e.get("slab") for e in errors if str(e.get("slab")).split("/")[0] in wanted}
        self._errors = [e for e in errors if e.get("slab") not in retry]
        self._done = set(attrs.get(DONE_ATTR, [])) - retry
        unwritten = sorted({k.split("/")[0] for k in self._all_keys() if k not in self._done} - wanted)
        if unwritten:
            raise StoreError(
                f"{self.path} is incomplete: {len(unwritten)} of its dates ({', '.join(unwritten[:3])}"
                f"{', ...' if len(unwritten) > 3 else ''}) were being written by a job that was "
                "interrupted, and this job does not cover them. Rerun that job first (the same "
                "command), or replace the store with mode='w' (--overwrite)."
            )
        if new:
            self._append(np.asarray(new), len(times), stored["time"].attrs, stored["time"].encoding)
            self._store_times = np.concatenate([times, np.asarray(new, times.dtype)])
        self._positions = {_time_key(t): i for i, t in enumerate(self._store_times)}
        self._todo = [s for s in self.slabs if s.key not in self._done]
        if self._todo:
            self._unconsolidate()
            _step("start")
            self._set_attrs(
                {
                    STATUS_ATTR: "incomplete",
                    CONSOLIDATED_ATTR: False,
                    DONE_ATTR: sorted(self._done),
                    READ_ERRORS_ATTR: self._errors,
                }
            )

    def _check(
        self,
        attrs: Mapping[str, Any],
        stored: xr.Dataset,
        layout: Mapping[str, Any],
        record: Mapping[str, Any],
    ) -> None:
        """Refuse a store written otherwise, naming every difference (stored vs new)."""
        problems = []
        old = attrs.get(PROVENANCE_ATTR)
        if old is None:
            problems.append(f"it has no {PROVENANCE_ATTR} record (written by an older xs2mask)")
        else:
            problems.extend(
                f"{key}: stored {old.get(key)!r}, new {record.get(key)!r}"
                for key in sorted(set(old) | set(record))
                if old.get(key) != record.get(key)
            )
        stored_layout = attrs.get(LAYOUT_ATTR, {})
        if stored_layout.get("variables") != layout["variables"]:
            problems.append(
                f"variables/dtypes/chunks differ: stored {stored_layout.get('variables')}, "
                f"new {layout['variables']}"
            )
        if stored_layout.get("block") != layout["block"]:
            problems.append(
                f"slab size: stored {stored_layout.get('block')}, new {layout['block']} "
                "(px, --block rounded to whole chunks)"
            )
        for dim in ("y", "x"):
            problems.extend(_grid_problems(dim, stored[dim].values, self.template[dim].values))
        crs_old, crs_new = _crs_wkt(stored), _crs_wkt(self.template)
        if not _same_crs(crs_old, crs_new):
            problems.append(f"CRS: stored {_crs_name(crs_old)}, new {_crs_name(crs_new)}")
        if problems:
            raise StoreError(f"{self.path} holds masks made otherwise: {'; '.join(problems)}. {_FIX}")

    def _append(
        self, new: np.ndarray, start: int, time_attrs: Mapping[str, Any], time_encoding: Mapping[str, Any]
    ) -> None:
        """Grow every array along ``time`` by the new dates; an interrupted append is rolled back."""
        from xarray.coding.times import encode_cf_datetime

        self._unconsolidate()
        _step("append intent")
        self._set_attrs(
            {
                STATUS_ATTR: "incomplete",
                CONSOLIDATED_ATTR: False,
                APPENDING_ATTR: {"from": start, "dates": [_time_key(t) for t in new]},
            }
        )
        group = _open_group(self.path, self.storage_options, mode="r+")
        for name, array in sorted(_time_arrays(group).items()):
            _step(f"append resize {name}")
            array.resize((start + len(new), *array.shape[1:]))
        units = time_attrs.get("units") or time_encoding.get("units")
        calendar = time_attrs.get("calendar") or time_encoding.get("calendar")
        values, _, _ = encode_cf_datetime(new, units, calendar, dtype=group["time"].dtype)
        _step("append time")
        group["time"][start:] = values
        self._prefill(start)
        _step("append commit")
        self._set_attrs({APPENDING_ATTR: None})

    def _roll_back(self, start: int) -> None:
        group = _open_group(self.path, self.storage_options, mode="r+")
        for name, array in sorted(_time_arrays(group).items()):
            if array.shape[0] != start:
                _step(f"roll back {name}")
                array.resize((start, *array.shape[1:]))
        _step("roll back commit")
        self._set_attrs({APPENDING_ATTR: None})

    def _prefill(self, start: int) -> None:
        """Zarr v2 has no fill value here (xarray would decode it as NaN): write no-data up front."""
        if self.zarr_format != 2:
            return
        group = _open_group(self.path, self.storage_options, mode="r+")
        for name, var in self.template.data_vars.items():
            if var.dtype == np.uint8 and name == "mask":
                _step(f"prefill {name}")
                group[name][start:] = NODATA

    # ------------------------------------------------------------------ writing

    def todo(self) -> list[Slab]:
        """The slabs still to write, in order (date by date)."""
        return list(self._todo)

    @property
    def batch(self) -> int:
        """Slabs worth computing together: enough chunks to keep every core of the cluster busy."""
        per_slab = math.ceil(min(self.block, self.template.sizes["y"]) / _first_chunk(self.template, "y")) * (
            math.ceil(min(self.block, self.template.sizes["x"]) / _first_chunk(self.template, "x"))
        )
        # Four chunks per core: a batch's last chunks leave cores idle, the more chunks the less.
        return max(1, math.ceil(4 * dask_threads() / per_slab))

    @_permission_faults
    def write(
        self, parts: Sequence[tuple[Slab, xr.Dataset | xr.DataArray]], also: Sequence[Any] = ()
    ) -> list[Any]:
        """Compute and write slabs in one pass, then record them as done.

        Parameters
        ----------
        parts
            ``(slab, masks)`` pairs; ``masks`` covers exactly the slab, on the
            template's grid and date (checked), lazy or not.
        also
            Lazy xarray values (DataArray or Dataset) computed in the same pass,
            sharing the reads, e.g. a radiometric check of the inputs.

        Returns
        -------
        list
            The computed ``also`` values.
        """
        import dask

        for slab, part in parts:
            self._check_part(slab, part)
        keys = [slab.key for slab, _ in parts]
        group = _open_group(self.path, self.storage_options, mode="r+")
        checks = [self._placed(group, slab, part) for slab, part in parts]
        _step(f"write {' '.join(keys)}")
        # One pass for every scheduler: the blocks are written (each by the task that made it, on
        # whichever worker) and read back beside the `also` values, sharing their reads and model
        # runs. Not xarray's lazy to_zarr: dask optimises a store's sources on their own, so the
        # inputs were read a second time for `also`. All xarray objects: dask.compute over mixed
        # collection types (Delayed beside xarray) returns results out of order (dask 2026.8).
        results = dask.compute(*checks, *also)
        self._verify([slab for slab, _ in parts], results[: len(checks)])
        self._record(keys)
        return list(results[len(checks) :])

    def _placed(self, group: Any, slab: Slab, part: xr.Dataset | xr.DataArray) -> xr.DataArray:
        """Lazily write ``part`` into its region of the store, block by block; per block (pixels that
        read back otherwise, no-data pixels gained), flat (``[differ, lost, differ, lost, ...]``)."""
        import dask.array as dsa

        region = self._region(slab)
        ds = _region_part(part, self.template)
        checks = []
        for name, var in ds.variables.items():
            data = var.chunk().data if var.chunks is None else var.data
            origin = tuple(region[d].start if d in region else 0 for d in var.dims)
            per_block = data.map_blocks(
                _write_block,
                array=group[name],
                origin=origin,
                nodata=NODATA if name == "mask" else None,
                chunks=(*((1,) * len(c) for c in data.chunks[:-1]), (2,) * len(data.chunks[-1])),
                dtype=np.int64,
                meta=np.empty((0,) * data.ndim, np.int64),
            )
            checks.append(per_block.ravel())
        return xr.DataArray(dsa.concatenate(checks))

    def _verify(self, slabs: Sequence[Slab], checks: Sequence[xr.DataArray]) -> None:
        """Refuse to record the batch unless every block read back as written: a write lost or cut
        short on its way to storage is an error here, never a silent no-data slab in a store marked
        complete."""
        for slab, check in zip(slabs, checks, strict=True):
            differ, lost = np.asarray(check.values).reshape(-1, 2).sum(axis=0)
            if differ:
                raise StoreError(
                    f"slab {slab.key} of {self.path} does not read back as written "
                    f"({int(lost):+d} no-data pixels, {int(differ)} values differ): "
                    "the storage lost or changed the write. It is not recorded as done: run the same "
                    "command again to write it anew."
                )

    @_permission_faults
    def write_nodata(self, slab: Slab, record: Mapping[str, Any]) -> None:
        """Write a slab as no-data (255, NaN for floats) and list ``record`` in ``xs2mask_read_errors``."""
        part = self.template.isel(slab.isel)
        for name, var in part.data_vars.items():
            # As predict marks no-data: 255 in the mask, 0 in uint8 probabilities, NaN in floats.
            fill = NODATA if name == "mask" else 0 if var.dtype.kind in "iu" else np.nan
            part[name] = var.copy(data=np.full(var.shape, fill, var.dtype))
        _step(f"nodata {slab.key}")
        group = _open_group(self.path, self.storage_options, mode="r+")
        self._verify([slab], [self._placed(group, slab, part).compute()])
        self._errors.append({"slab": slab.key, **_jsonable(dict(record))})
        self._record([slab.key])

    @_permission_faults
    def complete(self, attrs: Mapping[str, Any] | None = None) -> None:
        """Mark the store complete and consolidate its metadata, once every slab of every date is written.

        ``attrs`` are group attributes written in the same update as the status,
        e.g. the list of input items merged over appends (:attr:`stored_attrs`
        holds the ones found at :meth:`open`).
        """
        missing = [k for k in self._all_keys() if k not in self._done]
        if missing:
            raise StoreError(
                f"{self.path} cannot be completed: {len(missing)} slab(s) are not written yet "
                f"(first: {missing[0]}). Write every slab of todo() first."
            )
        if self._attrs().get(STATUS_ATTR) != "complete":
            _step("complete")
            self._set_attrs({**(attrs or {}), STATUS_ATTR: "complete", CONSOLIDATED_ATTR: self.consolidated})
        if self.consolidated and not self._is_consolidated():
            import zarr

            _step("consolidate")
            with warnings.catch_warnings():
                # zarr-python warns that v3 consolidated metadata are not in the spec yet; xarray reads them.
                warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
                zarr.consolidate_metadata(
                    _mapper(self.path, self.storage_options),
                    zarr_format=cast(Literal[2, 3], self.zarr_format),  # open() checks it, or zarr says it
                )

    @property
    def dates(self) -> int:
        """Number of dates in the store."""
        return len(self._store_times)

    # ------------------------------------------------------------------ internals

    @property
    def _kw(self) -> dict[str, Any]:
        return {
            "storage_options": self.storage_options,
            "zarr_format": self.zarr_format,
            "consolidated": False,
        }

    def _all_keys(self) -> list[str]:
        """Slab keys of every date in the store (those of this template and any earlier ones)."""
        ny, nx = self.template.sizes["y"], self.template.sizes["x"]
        by = _block(self.block, _first_chunk(self.template, "y"))
        bx = _block(self.block, _first_chunk(self.template, "x"))
        return [
            f"{_time_key(t)}/y{i}/x{j}"
            for t in self._store_times
            for i in range(math.ceil(ny / by))
            for j in range(math.ceil(nx / bx))
        ]

    def _region(self, slab: Slab) -> dict[str, slice]:
        position = self._positions[_time_key(slab.date)]
        return {"time": slice(position, position + 1), "y": slab.y, "x": slab.x}

    def _check_part(self, slab: Slab, part: xr.Dataset | xr.DataArray) -> None:
        """Refuse masks that do not cover exactly the slab's date and pixels: they would land elsewhere."""
        expected = self.template.isel(slab.isel)
        if "time" in part.coords and not np.array_equal(part["time"].values, expected["time"].values):
            given = ", ".join(_time_key(t) for t in part["time"].values)
            raise StoreError(
                f"slab {slab.key}: the masks are for {given}, not for {_time_key(slab.date)}. "
                "Pass the masks of the slab's date (template.isel(slab.isel))."
            )
        for dim in ("y", "x"):
            size = part.sizes.get(dim)
            problems = (
                _grid_problems(dim, expected[dim].values, part[dim].values) if dim in part.coords else []
            )
            if size != expected.sizes[dim] or problems:
                raise StoreError(
                    f"slab {slab.key}: the masks do not cover the slab's {dim} pixels "
                    f"({'; '.join(problems) or f'{size} pixels, expected {expected.sizes[dim]}'}). "
                    "Pass the masks of exactly the slab (template.isel(slab.isel))."
                )

    def _record(self, keys: Sequence[str]) -> None:
        self._done.update(keys)
        _step(f"record {' '.join(keys)}")
        attrs: dict[str, Any] = {DONE_ATTR: sorted(self._done)}
        if self._errors:
            attrs[READ_ERRORS_ATTR] = self._errors
        self._set_attrs(attrs)

    def _attrs(self) -> dict[str, Any]:
        return dict(_open_group(self.path, self.storage_options).attrs)

    def _set_attrs(self, values: Mapping[str, Any]) -> None:
        # Written from the group's own metadata: in format 3 this also drops consolidated metadata.
        _open_group(self.path, self.storage_options, mode="r+").attrs.update(dict(values))

    def _is_consolidated(self) -> bool:
        return _is_consolidated(self.path, self.storage_options, self.zarr_format)

    def _unconsolidate(self) -> None:
        """Stale consolidated metadata would show readers a finished store: drop them before any change."""
        if self.zarr_format == 2 and _fs_exists(self.path, self.storage_options, ".zmetadata"):
            import fsspec

            _step("unconsolidate")
            fs, root = fsspec.core.url_to_fs(str(self.path), **(self.storage_options or {}))
            fs.rm(f"{root.rstrip('/')}/.zmetadata")
        # Format 3 keeps them in zarr.json, which the next attribute update rewrites without them.


def to_zarr(
    ds: xr.Dataset | xr.DataArray,
    store: str,
    *,
    mode: Mode = "w-",
    append_dim: str = "time",
    storage_options: dict[str, Any] | None = None,
    zarr_format: int | None = None,
    consolidated: bool = True,
    chunks: Mapping[str, int] | None = None,
    shards: Mapping[str, int] | None = None,
    block: int | None = None,
    progress: Progress = True,
    batch: int | None = None,
) -> str:
    """Write a (lazy) mask cube to Zarr slab by slab; a rerun resumes, ``mode="a"`` appends dates.

    A thin loop over :class:`MaskStore`: see :meth:`MaskStore.open` for
    ``mode``, ``storage_options``, ``zarr_format``, ``consolidated``,
    ``chunks``, ``shards`` and ``block``.

    Parameters
    ----------
    ds
        Output of :func:`xs2mask.predict` with a ``time`` dim (lazy or not).
    store
        Local path or fsspec URL.
    append_dim
        Only ``"time"`` is supported: masks grow by dates.
    progress
        ``True`` (default): a ``tqdm.auto`` bar of the slabs (a widget in Jupyter);
        ``False``: none; or a wrapper ``(iterator, total) -> iterator`` of your own.
    batch
        Slabs computed together (default: enough to keep every core busy). A
        killed job redoes at most one batch.

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
    writer = MaskStore.open(
        store,
        ds,
        mode=mode,
        storage_options=storage_options,
        zarr_format=zarr_format,
        consolidated=consolidated,
        chunks=chunks,
        shards=shards,
        block=block,
    )
    todo = writer.todo()
    iterator = with_progress(todo, progress)
    size = batch or writer.batch
    pending: list[Slab] = []
    for slab in iterator:
        pending.append(slab)
        if len(pending) >= size:
            writer.write([(s, writer.template.isel(s.isel)) for s in pending])
            pending.clear()
    if pending:
        writer.write([(s, writer.template.isel(s.isel)) for s in pending])
    writer.complete()
    return store


def open_masks(
    store: str,
    *,
    storage_options: dict[str, Any] | None = None,
    allow_incomplete: bool = False,
    **kwargs: Any,
) -> xr.Dataset:
    """Open a mask cube written by :func:`to_zarr`, refusing one that is not complete.

    ``mask`` is uint8 with 255 = no-data, with its CRS; probabilities stored as
    uint8 decode to 0-1 floats. Raises :class:`~xs2mask.exceptions.StoreError`
    when the store is still being written or was interrupted (rerun the job to
    finish it), unless ``allow_incomplete=True``; unwritten parts then read as 255.

    Examples
    --------
    >>> import xs2mask
    >>> cube = xs2mask.data.demo_scene().isel(y=slice(0, 128), x=slice(0, 128))
    >>> cube = cube.expand_dims(time=[np.datetime64("2020-04-29")])
    >>> _ = xs2mask.to_zarr(cube.s2mask.predict(), "masks.zarr")
    >>> masks = open_masks("masks.zarr")
    >>> masks.mask.rio.crs.to_epsg()
    32736
    """
    group = _open_group(store, storage_options)
    attrs = dict(group.attrs)
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
        listed = "; ".join(f"{e.get('slab')}: {e.get('item')} {e.get('asset')}" for e in errors[:5])
        warnings.warn(
            f"{store}: {len(errors)} slab(s) are no-data (255) because their inputs could not be read "
            f"({listed}{'; ...' if len(errors) > 5 else ''}). Rerun the job to retry them; the details "
            f"are in the attribute {READ_ERRORS_ATTR}.",
            ReadWarning,
            stacklevel=2,
        )
    kwargs.setdefault("consolidated", _is_consolidated(store, storage_options, group.metadata.zarr_format))
    # Stores written before the mask lost its _FillValue: keep those uint8 too.
    kwargs.setdefault("mask_and_scale", not _masked_by_xarray(group))
    ds = xr.open_zarr(store, storage_options=storage_options, decode_coords="all", **kwargs)
    for name, var in ds.data_vars.items():
        raw = group[name]
        # Variables read as stored (the mask): read through a wrapper that names a damaged chunk.
        if var.chunks and var.dtype == raw.dtype and "scale_factor" not in raw.attrs:
            import dask.array as da

            checked = _CheckedArray(raw, store, name, ds["time"].values if "time" in var.dims else None)
            ds[name] = var.copy(data=da.from_array(checked, chunks=var.chunks, asarray=False, lock=False))
    return ds


# --------------------------------------------------------------------------- helpers


def _check_unique_times(values: np.ndarray) -> None:
    counts = Counter(_time_key(v) for v in values)
    duplicated = sorted(k for k, n in counts.items() if n > 1)
    if duplicated:
        raise StoreError(
            f"{len(duplicated)} time value(s) occur more than once ({', '.join(duplicated[:3])}"
            f"{', ...' if len(duplicated) > 3 else ''}; times count to the second): one date would be "
            "written over the other. Merge the scenes of one time into one (a day mosaic, as "
            "xs2mask.stac.load makes) or drop the extra ones (ds.drop_duplicates('time')), then write again."
        )


def _grid_problems(dim: str, stored: np.ndarray, new: np.ndarray) -> list[str]:
    """How two pixel-centre coordinates differ, with an absolute tolerance of a fraction of a pixel."""
    if stored.shape != new.shape:
        return [f"{dim}: stored {stored.size} pixels, new {new.size} (another area or resolution)"]
    if not stored.size:
        return []
    pixel = abs(float(stored[1] - stored[0])) if stored.size > 1 else 1.0
    tolerance = GRID_TOLERANCE * pixel
    stored, new = stored.astype(float), new.astype(float)
    worst = float(np.max(np.abs(stored - new)))
    if worst <= tolerance:
        return []
    if float(np.max(np.abs(stored - new[::-1]))) <= tolerance:  # (never with one pixel: stored[1] exists)
        order = "descending" if stored[1] < stored[0] else "ascending"
        return [
            f"{dim} coordinates: the store's grid in the other order (stored {order}): sort the masks "
            f"as the store has them, e.g. ds.sortby('{dim}', ascending={order == 'ascending'})"
        ]
    return [
        f"{dim} coordinates: stored from {stored[0]}, new from {new[0]}, "
        f"off by up to {worst:g} (another area or grid; tolerance {tolerance:g})"
    ]


def _crs_wkt(ds: xr.Dataset) -> str | None:
    ref = ds.get("spatial_ref")
    return None if ref is None else ref.attrs.get("crs_wkt") or ref.attrs.get("spatial_ref")


def _same_crs(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    if a == b:
        return True
    from pyproj import CRS

    return CRS.from_wkt(a) == CRS.from_wkt(b)


def _crs_name(wkt: str | None) -> str:
    if wkt is None:
        return "none"
    from pyproj import CRS

    crs = CRS.from_wkt(wkt)
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.name


def _weights_sha256(name: str) -> str | None:
    """sha256 of a model's weights (of its members' for an ensemble), published or recorded at download."""
    from . import models
    from .models import hub

    try:
        spec = models.get(name)
    except XS2MaskError:
        return None  # not a registered model (masks made elsewhere): its name is all we know
    digests = []
    for member in spec.members or (spec,):
        weights = member.weights
        if weights is None:
            continue
        digest = weights.sha256
        if digest is None:
            try:
                digest = hub.expected_sha256(weights.path(member.name), None)
            except XS2MaskError:
                digest = None
        digests.append(digest or "unknown")
    return ",".join(digests) or None


def _jsonable(value: Any) -> Any:
    """``value`` as it reads back from the store's JSON (tuples become lists, numpy values plain)."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if isinstance(v, np.generic) else str(v)))


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


def _chunk_sizes(ds: xr.Dataset, chunks: Mapping[str, int] | None) -> dict[Hashable, int]:
    sizes: dict[Hashable, int] = {"time": 1}
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
) -> dict[Hashable, dict[str, Any]]:
    encoding: dict[Hashable, dict[str, Any]] = {}
    for name, var in ds.data_vars.items():
        dask_chunks = tuple(c[0] for c in var.chunks) if var.chunks else var.shape
        # `coordinates` stays in the variable's encoding, where xarray's CF encoder reads it.
        enc: dict[str, Any] = {k: v for k, v in var.encoding.items() if k != "coordinates"}
        enc["chunks"] = dask_chunks
        if var.dtype == np.uint8 and name == "mask" and zarr_format == 3:
            # Zarr's own fill value, not CF's _FillValue: chunks not yet written read as no-data,
            # and xarray keeps the mask uint8. Format 2 would surface it as _FillValue.
            enc["fill_value"] = NODATA
        if shards:
            enc["shards"] = dask_chunks
            enc["chunks"] = tuple(
                (chunks or {}).get(str(d), size) if d in shards else size
                for d, size in zip(var.dims, dask_chunks, strict=True)
            )
        encoding[name] = enc
    return encoding


def _layout(
    ds: xr.Dataset, encoding: Mapping[Hashable, Mapping[str, Any]], block: int | None
) -> dict[str, Any]:
    """What must match, beside provenance and grid, for a store to be resumed or appended to."""
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


def _open_group(
    store: str, storage_options: dict[str, Any] | None, mode: Literal["r", "r+", "a", "w", "w-"] = "r"
):
    """The group itself, never its consolidated metadata (which are stale while a store is written)."""
    import zarr

    try:
        # As xarray opens it (a URL and its options, not an fsspec mapper): the same cached filesystem,
        # whose listings then see what the blocks' writes changed.
        remote = "://" in str(store)
        return zarr.open_group(
            str(store), mode=mode, use_consolidated=False, storage_options=storage_options if remote else None
        )
    except (FileNotFoundError, KeyError, ValueError) as err:
        raise StoreError(f"cannot open {store} as a Zarr group: {err}") from err
    except Exception as err:  # zarr raises its own GroupNotFoundError
        if type(err).__name__ in ("GroupNotFoundError", "PathNotFoundError", "NodeTypeValidationError"):
            raise StoreError(f"cannot open {store} as a Zarr group: {err}") from err
        raise


def _masked_by_xarray(group) -> bool:
    """Whether xarray would decode ``mask`` to float (stores written before it lost its _FillValue)."""
    if "mask" not in group:
        return False
    array = group["mask"]
    v2_fill = group.metadata.zarr_format == 2 and array.fill_value is not None
    return v2_fill or "_FillValue" in array.attrs


def _time_arrays(group) -> dict[str, Any]:
    """The arrays of a group whose first dimension is ``time``."""
    out = {}
    for name, array in group.arrays():
        dims = getattr(array.metadata, "dimension_names", None) or array.attrs.get("_ARRAY_DIMENSIONS") or ()
        if dims and dims[0] == "time":
            out[name] = array
    return out


def _exists(store: str, storage_options: dict[str, Any] | None) -> bool:
    """Whether anything is at ``store`` (an empty folder counts as nothing)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(str(store), **(storage_options or {}))
    if fs.isdir(path):
        return bool(fs.ls(path))
    return fs.exists(path)


def _fs_exists(store: str, storage_options: dict[str, Any] | None, key: str) -> bool:
    import fsspec

    fs, path = fsspec.core.url_to_fs(str(store), **(storage_options or {}))
    return fs.exists(f"{path.rstrip('/')}/{key}")


def _is_consolidated(store: str, storage_options: dict[str, Any] | None, zarr_format: int) -> bool:
    if zarr_format == 2:
        return _fs_exists(store, storage_options, ".zmetadata")
    return bool(json.loads(_read_key(store, storage_options, "zarr.json")).get("consolidated_metadata"))


def _read_key(store: str, storage_options: dict[str, Any] | None, key: str) -> bytes:
    import fsspec

    fs, path = fsspec.core.url_to_fs(str(store), **(storage_options or {}))
    return fs.cat_file(f"{path.rstrip('/')}/{key}")


def _remove(store: str, storage_options: dict[str, Any] | None) -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(str(store), **(storage_options or {}))
    fs.rm(path, recursive=True)


def _write_block(
    block: np.ndarray,
    array: Any,
    origin: tuple[int, ...],
    nodata: int | None,
    block_info: dict[Any, Any] | None = None,
) -> np.ndarray:
    """Write one Dask block at its place in a Zarr array (``origin``: the region's corner) and read it
    back: ``[values that differ, no-data values gained]``, shaped as one block of the check array.
    Blocks hold whole Zarr chunks (shards), so no two tasks write one with other values (a per-date
    coordinate gets the same value from each slab of its date; Zarr's stores write chunks whole)."""
    assert block_info is not None  # map_blocks passes it to a function that takes it
    where = tuple(
        slice(o + a, o + b) for o, (a, b) in zip(origin, block_info[0]["array-location"], strict=True)
    )
    array[where] = block
    back = np.asarray(array[where])
    same = back == block
    if block.dtype.kind == "f":
        same |= np.isnan(back) & np.isnan(block)
    lost = (
        0
        if nodata is None
        else int(np.count_nonzero(back == nodata)) - int(np.count_nonzero(block == nodata))
    )
    return np.array([block.size - int(np.count_nonzero(same)), lost], np.int64).reshape(
        (1,) * (block.ndim - 1) + (2,)
    )


def _region_part(part: xr.Dataset | xr.DataArray, template: xr.Dataset) -> xr.Dataset:
    """Only what a region write may touch: the template's variables along the region's dims, no index."""
    if isinstance(part, xr.DataArray):
        part = part.to_dataset(name=part.name or "mask")
    drop = [
        n
        for n, v in part.variables.items()
        if n not in template.variables or n in template.dims or not set(v.dims) & {"time", "y", "x"}
    ]
    part = part.drop_vars(drop)
    part = part.chunk({d: _first_chunk(template, d) if d in ("y", "x") else -1 for d in part.dims}).copy()
    for name, var in part.variables.items():
        if var.dtype != template[name].dtype:
            # Written as they are (uint8 probabilities stay the stored integers of their scale_factor)
            raise StoreError(
                f"{name} is {var.dtype}, the store's is {template[name].dtype}: "
                "pass masks made as the template was"
            )
    return part


class _CheckedArray:
    """A Zarr array whose unreadable chunks raise a :class:`StoreError` naming the chunk and the fix,
    instead of a codec's bare error (e.g. ``Zstd decompression error``)."""

    def __init__(self, array: Any, store: str, name: str, times: np.ndarray | None) -> None:
        self.array, self.store, self.name, self.times = array, store, name, times
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        try:
            return self.array[key]
        except Exception as err:
            index = [
                k.start // c if isinstance(k, slice) and k.start else 0
                # The file is the shard when there are shards.
                for k, c in zip(key, self.array.shards or self.array.chunks, strict=True)
            ]
            sep = "/" if self.array.metadata.zarr_format == 3 else "."
            chunk = f"{self.name}/{'c/' if sep == '/' else ''}{sep.join(map(str, index))}"
            date = f" (date {_time_key(self.times[index[0]])})" if self.times is not None else ""
            raise StoreError(
                f"{self.store}: the chunk {chunk}{date} cannot be read ({type(err).__name__}: {err}): "
                "the file is damaged (a disk or transfer fault). Restore the store from a copy, or write it "
                "anew with the same job and mode='w' (--overwrite)."
            ) from err


def dask_threads() -> int:
    """Threads of the Dask cluster in use (the default client's workers), else this machine's cores."""
    if "distributed" not in sys.modules:  # no client without it; importing it costs half a second
        return os.cpu_count() or 1
    try:
        from distributed import default_client

        return max(1, sum(default_client().nthreads().values()))
    except (ImportError, ValueError):
        return os.cpu_count() or 1
