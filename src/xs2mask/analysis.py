"""What comes after :func:`~xs2mask.predict`: masking a cube, clear fractions and cloud-free composites.

Plain functions over xarray objects, lazy on Dask; the ``.s2mask`` accessor exposes them
as methods (``cube.s2mask.apply(masks)``, ``masks.s2mask.clear_fraction()``, ...).
``masks`` is everywhere the Dataset :func:`~xs2mask.predict` returns (or that
:func:`~xs2mask.open_masks` reads) or its ``mask`` DataArray: class codes 0 clear,
1 thick cloud, 2 thin cloud, 3 cloud shadow, 255 no-data.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Iterable
from typing import Literal

import numpy as np
import xarray as xr

from .classes import CLASS_NAMES, CLEAR, CLOUD_SHADOW, NODATA, THICK_CLOUD, THIN_CLOUD
from .exceptions import InputError

logger = logging.getLogger("xs2mask")

Classes = str | int | Iterable[str | int]

# ``composite(method="best")`` falls back to the dropped classes in this order: a pixel under
# thin cloud still shows the ground, one in shadow shows it darkened, thick cloud hides it.
BEST_ORDER: tuple[int, ...] = (CLEAR, THIN_CLOUD, CLOUD_SHADOW, THICK_CLOUD)


# --------------------------------------------------------------------------- inputs


def as_mask(masks: xr.DataArray | xr.Dataset) -> xr.DataArray:
    """The ``mask`` DataArray of a mask Dataset, or the DataArray itself after a dtype check.

    Examples
    --------
    >>> import xs2mask
    >>> masks = xs2mask.predict(xs2mask.data.demo_scene(), model="xs2mask-4b")
    >>> as_mask(masks).dims
    ('y', 'x')
    """
    if isinstance(masks, xr.Dataset):
        if "mask" not in masks.data_vars:
            raise InputError(
                f"this Dataset has no 'mask' variable (it has {list(masks.data_vars)}); pass the Dataset "
                "xs2mask.predict(..., output='mask' or 'both') returns, or its mask DataArray"
            )
        masks = masks["mask"]
    if not isinstance(masks, xr.DataArray):
        raise InputError(
            f"expected the masks as an xarray Dataset or DataArray, got {type(masks).__name__}; pass what "
            "xs2mask.predict or xs2mask.open_masks returns"
        )
    if not np.issubdtype(masks.dtype, np.integer):
        raise InputError(
            f"the mask has dtype {masks.dtype}, not integer class codes: open the store with "
            "xs2mask.open_masks (it keeps uint8 with 255 = no-data) instead of xr.open_zarr"
        )
    if not {"y", "x"} <= set(masks.dims) <= {"time", "y", "x"}:
        raise InputError(
            f"the mask's dims are {masks.dims}; expected (y, x) or (time, y, x). Pass the masks (what "
            "predict returns), not the cube; rename spatial dims with .rename(lat='y', lon='x')"
        )
    return masks


def class_codes(classes: Classes) -> tuple[int, ...]:
    """Class codes from names (``"clear"``) or codes (``0``), one or several.

    Examples
    --------
    >>> class_codes(("clear", "thin_cloud"))
    (0, 2)
    >>> class_codes(3)
    (3,)
    """
    items = [classes] if isinstance(classes, str | int | np.integer) else list(classes)
    by_name = {name: code for code, name in CLASS_NAMES.items()}
    codes = []
    for item in items:
        code = by_name.get(item) if isinstance(item, str) else item
        if isinstance(code, bool) or not isinstance(code, int | np.integer) or code not in CLASS_NAMES:
            raise InputError(
                f"unknown class {item!r}: use names {list(by_name)} or codes {list(CLASS_NAMES)} "
                f"(no-data, {NODATA}, is never kept)"
            )
        codes.append(int(code))
    if not codes:
        raise InputError(f"no class given: name at least one of {list(by_name)}")
    return tuple(dict.fromkeys(codes))


# --------------------------------------------------------------------------- buffer


def _resolution(mask: xr.DataArray) -> tuple[float, float]:
    """Pixel size ``(y, x)`` in metres, from the coordinates."""
    sizes = []
    for dim in ("y", "x"):
        # `in`, not `coords.get`: that gives a dim without coordinates its positions, 1 "metre" apart
        coord = mask.coords[dim] if dim in mask.coords else xr.DataArray([])
        if coord.size < 2 or not np.issubdtype(coord.dtype, np.number):
            raise InputError(
                f"a buffer in metres needs numeric {dim} coordinates (two or more) to know the pixel size; "
                "keep the coordinates predict returns, or assign them with .assign_coords"
            )
        sizes.append(abs(float(coord[1] - coord[0])))
    if "spatial_ref" in mask.coords:
        import rioxarray  # noqa: F401  (registers .rio)

        crs = mask.rio.crs
        if crs is not None and crs.is_geographic:
            raise InputError(
                f"the mask's CRS {crs} is in degrees, so a buffer in metres cannot be converted to pixels; "
                "use the projected (UTM) grid Sentinel-2 data come on, or reproject with rio.reproject"
            )
    return sizes[0], sizes[1]


def disk_half_widths(buffer: float, resolution: tuple[float, float]) -> tuple[int, ...]:
    """Half width in pixels of each row of a disk of ``buffer`` metres, from its top row to its bottom row.

    Pixel ``(dy, dx)`` is in the disk when ``(dy * res_y)² + (dx * res_x)² <= buffer²``.

    Examples
    --------
    >>> disk_half_widths(20, (10.0, 10.0))
    (0, 1, 2, 1, 0)
    >>> disk_half_widths(5, (10.0, 10.0))
    (0,)
    """
    res_y, res_x = resolution
    eps = 1e-9  # a buffer of exactly k pixels includes the k-th one despite rounding in res
    radius_y = math.floor(buffer / res_y + eps)
    widths = []
    for dy in range(-radius_y, radius_y + 1):
        left = max(buffer**2 - (dy * res_y) ** 2, 0.0)
        widths.append(math.floor(math.sqrt(left) / res_x + eps))
    return tuple(widths)


def _dilate(block: np.ndarray, half_widths: tuple[int, ...]) -> np.ndarray:
    """Grow True pixels of ``(..., y, x)`` by the disk ``half_widths`` describes, within the block.

    Row by row: a 1-D dilation along x by cumulative sums, then OR-ed in at each row offset,
    so the cost grows with the radius, not with the disk's area.
    """
    ny, nx = block.shape[-2:]
    counts = np.zeros((*block.shape[:-1], nx + 1), np.int32)
    np.cumsum(block, axis=-1, out=counts[..., 1:])
    radius = len(half_widths) // 2
    out = np.zeros(block.shape, bool)
    cols = np.arange(nx)
    for width in set(half_widths):
        lo = np.clip(cols - width, 0, nx)
        hi = np.clip(cols + width + 1, 0, nx)
        grown = (counts[..., hi] - counts[..., lo]) > 0
        for dy in (i - radius for i, w in enumerate(half_widths) if w == width and abs(i - radius) < ny):
            src = slice(max(dy, 0), ny + min(dy, 0))
            dst = slice(max(-dy, 0), ny - max(dy, 0))
            out[..., dst, :] |= grown[..., src, :]
    return out


def _grow(flags: xr.DataArray, half_widths: tuple[int, ...]) -> xr.DataArray:
    """Dilate a boolean ``(..., y, x)`` DataArray, seamless across Dask chunks."""
    flags = flags.transpose(..., "y", "x")
    data = flags.data
    if type(data).__module__.startswith("dask"):
        import dask.array as da

        depth = {axis: 0 for axis in range(data.ndim)}
        for axis, radius in ((data.ndim - 2, len(half_widths) // 2), (data.ndim - 1, max(half_widths))):
            if radius >= data.shape[axis]:
                data = data.rechunk({axis: -1})  # every block would need the whole axis anyway
            elif len(data.chunks[axis]) > 1:
                depth[axis] = radius
        # boundary="none": outside the array there is nothing to grow from, as in the numpy case.
        grown = da.map_overlap(
            _dilate,
            data,
            half_widths=half_widths,
            depth=depth,
            boundary="none",
            dtype=bool,
            meta=np.empty((0,) * data.ndim, bool),
        )
    else:
        grown = _dilate(np.asarray(data), half_widths)
    return flags.copy(data=grown)


def usable(masks: xr.DataArray | xr.Dataset, keep: Classes = ("clear",), buffer: float = 0.0) -> xr.DataArray:
    """True where a pixel is of a kept class and farther than ``buffer`` metres from every dropped one.

    No-data (255) is never usable; the buffer grows around the dropped classes only, not
    around no-data, so a scene's edge does not shrink.

    Parameters
    ----------
    masks
        Mask Dataset or DataArray, ``(y, x)`` or ``(time, y, x)``.
    keep
        Class names or codes to keep; default clear only.
    buffer
        Distance in metres: pixels within it of a dropped class (in a disk) are dropped too.

    Examples
    --------
    >>> import xs2mask
    >>> masks = xs2mask.predict(xs2mask.data.demo_scene(), model="xs2mask-4b")
    >>> ok = usable(masks, keep="clear", buffer=60)
    >>> bool(ok.sum() < (masks.mask == 0).sum())
    True
    """
    mask = as_mask(masks)
    codes = class_codes(keep)
    if isinstance(buffer, bool) or not isinstance(buffer, numbers.Real) or not 0 <= buffer < math.inf:
        raise InputError(f"buffer must be a distance in metres >= 0, got {buffer!r}")
    kept = mask.isin(codes)
    if buffer:
        widths = disk_half_widths(float(buffer), _resolution(mask))
        logger.debug("buffer of %g m: a disk of %d x %d pixels", buffer, len(widths), 2 * max(widths) + 1)
        kept = kept & ~_grow(~kept & (mask != NODATA), widths)
    return kept.rename("usable")


# --------------------------------------------------------------------------- alignment


def align_to(masks: xr.DataArray | xr.Dataset, cube: xr.DataArray | xr.Dataset) -> xr.DataArray:
    """The mask on the cube's grid and dates: its ``time`` steps selected in the cube's order.

    A mask without ``time`` applies to every date of the cube. The ``y``/``x`` grids must match
    (coordinates equal to a thousandth of a pixel, as floating-point rounding leaves them).

    Examples
    --------
    >>> import xs2mask
    >>> cube = xs2mask.data.demo_scene()
    >>> masks = xs2mask.predict(cube, model="xs2mask-4b")
    >>> align_to(masks.mask, cube.isel(x=slice(0, 10))).sizes["x"]
    Traceback (most recent call last):
    ...
    xs2mask.exceptions.InputError: the masks' grid (512 x 512 px) differs from the cube's (512 x 10 px); ...
    """
    mask = as_mask(masks)
    for dim in ("y", "x"):
        if dim not in cube.dims:
            raise InputError(f"the cube has no {dim} dim (dims {tuple(cube.dims)}); rename its spatial dims")
    if "time" in mask.dims:
        if "time" not in cube.dims:
            if mask.sizes["time"] != 1:
                raise InputError(
                    f"the masks have {mask.sizes['time']} dates but the cube has no time dim: select one "
                    "date with masks.sel(time=...) or pass the time series the masks were predicted on"
                )
            mask = mask.squeeze("time", drop=True)
        elif not (mask.sizes["time"] == cube.sizes["time"] and np.array_equal(mask["time"], cube["time"])):
            mask = _select_dates(mask, cube["time"])
    same = mask.sizes["y"] == cube.sizes["y"] and mask.sizes["x"] == cube.sizes["x"]
    for dim in ("y", "x"):
        if not same:
            break
        if dim in mask.coords and dim in cube.coords:
            a, b = np.asarray(mask[dim], float), np.asarray(cube[dim], float)
            step = abs(float(b[1] - b[0])) if b.size > 1 else 1.0
            same = bool(np.allclose(a, b, rtol=0, atol=step * 1e-3))
    if not same:
        raise InputError(
            f"the masks' grid ({mask.sizes['y']} x {mask.sizes['x']} px) differs from the cube's "
            f"({cube.sizes['y']} x {cube.sizes['x']} px); predict on this cube, or bring the masks onto it "
            "with masks.rio.reproject_match(cube, resampling=rasterio.enums.Resampling.nearest)"
        )
    # The result carries the cube's coordinates. Comparing the mask's own (a store's lazy
    # radiometric_offset against the cube's) would compute them while the graph is built.
    extra = [name for name in mask.coords if name not in mask.dims and name != "spatial_ref"]
    return mask.drop_vars(extra).assign_coords({dim: cube[dim] for dim in ("y", "x") if dim in cube.coords})


def _select_dates(mask: xr.DataArray, times: xr.DataArray) -> xr.DataArray:
    index = mask.indexes.get("time")
    if index is None or not index.is_unique:
        raise InputError(
            "the masks' time coordinate is missing or has repeated dates, so they cannot be matched to the "
            "cube's dates: predict on this cube, or give both the same time coordinate"
        )
    missing = [str(t) for t in np.asarray(times) if t not in index]
    if missing:
        raise InputError(
            f"{len(missing)} of the cube's dates have no mask (first: {missing[0]}); predict on this cube, "
            "or select the dates the masks cover with cube.sel(time=masks.time)"
        )
    return mask.sel(time=np.asarray(times))


# --------------------------------------------------------------------------- public functions


def apply_mask(
    cube: xr.DataArray | xr.Dataset,
    masks: xr.DataArray | xr.Dataset,
    keep: Classes = ("clear",),
    buffer: float = 0.0,
) -> xr.DataArray | xr.Dataset:
    """The cube with NaN wherever its pixel is not usable (see :func:`usable`).

    Lazy on Dask; a buffer gives the same result for any chunking (blocks overlap by the buffer).

    Parameters
    ----------
    cube
        Reflectance (or any values) with ``y``/``x`` dims, and ``time`` if the masks have it.
    masks
        Masks of the same grid; their dates are matched to the cube's (:func:`align_to`).
    keep
        Class names or codes to keep; default ``("clear",)``.
    buffer
        Metres around the dropped classes to drop too (a disk), as s2cloudless' ``dilation_size``.

    Returns
    -------
    The cube as float (integers are promoted: uint16 to float32), NaN where dropped.

    Examples
    --------
    >>> import xs2mask
    >>> cube = xs2mask.data.demo_scene()
    >>> masks = xs2mask.predict(cube, model="xs2mask-4b")
    >>> clear = apply_mask(cube, masks, keep="clear", buffer=60)
    >>> str(clear.dtype), bool(clear.isnull().any())
    ('float32', True)
    """
    mask = align_to(masks, cube)
    return cube.where(usable(mask, keep, buffer))


def clear_fraction(masks: xr.DataArray | xr.Dataset, clear: Classes = ("clear",)) -> xr.DataArray:
    """Share of valid (not no-data) pixels that are clear, per date; NaN where a date is all no-data.

    Parameters
    ----------
    masks
        Mask Dataset or DataArray, ``(y, x)`` or ``(time, y, x)``.
    clear
        Class names or codes that count as clear; e.g. ``("clear", "thin_cloud")``.

    Examples
    --------
    >>> import numpy as np
    >>> import xs2mask
    >>> masks = xs2mask.predict(xs2mask.data.demo_scene(), model="xs2mask-4b")
    >>> frac = clear_fraction(masks)
    >>> bool(frac == float((masks.mask == 0).mean()))
    True
    """
    mask = as_mask(masks)
    valid = (mask != NODATA).sum(("y", "x"))
    hits = mask.isin(class_codes(clear)).sum(("y", "x"))
    frac = (hits / valid.where(valid > 0)).rename("clear_fraction")
    frac.attrs = {"long_name": "fraction of valid pixels that are clear", "units": "1"}
    return frac


def composite(
    cube: xr.DataArray | xr.Dataset,
    masks: xr.DataArray | xr.Dataset,
    method: Literal["median", "best"] = "median",
    keep: Classes = ("clear",),
    buffer: float = 0.0,
) -> xr.DataArray | xr.Dataset:
    """A cloud-free composite over ``time``.

    ``"median"``: the median of the usable pixels (:func:`usable`) of each place; NaN where no date
    has one. ``"best"``: each place takes all its values from one date, the first of: a usable pixel;
    a kept pixel within the buffer; then the dropped classes in :data:`BEST_ORDER` (clear, thin
    cloud, cloud shadow, thick cloud). Ties go to the latest date. No-data is never taken: NaN
    where every date is no-data.

    Lazy on Dask: ``time`` is put in one chunk inside (keep spatial chunks modest for long series).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> import xs2mask
    >>> scene = xs2mask.data.demo_scene()
    >>> cube = xr.concat([scene, scene[:, ::-1].assign_coords(y=scene.y)], "time")
    >>> cube = cube.assign_coords(time=np.array(["2020-04-29", "2020-05-04"], "datetime64[ns]"))
    >>> masks = xs2mask.predict(cube, model="xs2mask-4b")
    >>> best = composite(cube, masks, method="best")
    >>> best.dims, str(best.dtype)
    (('band', 'y', 'x'), 'float32')
    """
    if "time" not in cube.dims:
        raise InputError(
            "a composite is over time and the cube has no time dim: pass a time series, (time, band, y, x)"
        )
    if method not in ("median", "best"):
        raise InputError(f"method must be 'median' or 'best', got {method!r}")
    mask = align_to(masks, cube)
    if method == "median":
        values, rank = apply_mask(cube, mask, keep, buffer), None
    else:
        values, rank = cube, _rank(mask.broadcast_like(cube["time"]), class_codes(keep), buffer)
    if isinstance(values, xr.Dataset):
        return values.map(_composite_array, rank=rank)
    return _composite_array(values, rank)


def _rank(mask: xr.DataArray, keep: tuple[int, ...], buffer: float) -> xr.DataArray:
    """Per pixel and date, how good a pick it is for ``method="best"``: lower is better."""
    lut = np.full(256, 255, np.uint8)
    fallback = [c for c in BEST_ORDER if c not in keep]
    lut[list(keep)] = 0
    lut[fallback] = np.arange(2, 2 + len(fallback))
    rank = xr.apply_ufunc(_lookup, mask, kwargs={"table": lut}, dask="parallelized", output_dtypes=[np.uint8])
    if buffer:
        rank = xr.where((rank == 0) & ~usable(mask, keep, buffer), np.uint8(1), rank)
    return rank


def _lookup(codes: np.ndarray, *, table: np.ndarray) -> np.ndarray:
    return table[codes]


def _composite_array(values: xr.DataArray, rank: xr.DataArray | None) -> xr.DataArray:
    dtype = np.result_type(values.dtype, np.float32)
    args = [values] if rank is None else [values, rank]
    if any(type(a.data).__module__.startswith("dask") for a in args):
        args = [a.chunk({"time": -1}) for a in args]
    kernel = _nanmedian if rank is None else _pick_best
    out = xr.apply_ufunc(
        kernel,
        *args,
        input_core_dims=[["time"]] * len(args),
        dask="parallelized",
        output_dtypes=[dtype],
        kwargs={"dtype": dtype},
        keep_attrs=True,
    )
    return out.rename(values.name)


def _nanmedian(values: np.ndarray, *, dtype: np.dtype) -> np.ndarray:
    # Places without a usable date are filled before the median and emptied after it: nanmedian
    # would warn "All-NaN slice", and silencing that is not thread-safe under Dask's threads.
    empty = np.isnan(values).all(axis=-1)
    median = np.nanmedian(np.where(empty[..., None], 0, values), axis=-1)
    return np.where(empty, np.nan, median).astype(dtype)


def _pick_best(values: np.ndarray, rank: np.ndarray, *, dtype: np.dtype) -> np.ndarray:
    # apply_ufunc leaves out the leading dims a variable lacks; take_along_axis needs them.
    rank = rank.reshape((1,) * (values.ndim - rank.ndim) + rank.shape)
    # Reversed along time so that argmin's first hit is the latest date.
    last = rank.shape[-1] - 1 - np.argmin(rank[..., ::-1], axis=-1)[..., None]
    picked = np.take_along_axis(values, last, axis=-1)[..., 0].astype(dtype)
    never = np.take_along_axis(rank, last, axis=-1)[..., 0] == 255
    return np.where(never, np.nan, picked).astype(dtype)
