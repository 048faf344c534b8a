"""Chunk-wise, seamless model inference over xarray / Dask cubes.

:func:`predict` validates the input, builds a small hashable
:class:`~xs2mask.kernel.Plan`, and maps the numpy kernel
:func:`~xs2mask.kernel.predict_block` over the (halo-extended) Dask blocks, then
wraps the result as a Dataset on the input's grid. Nothing is computed and no
model is loaded while the graph is built; each worker loads each model once
(:func:`xs2mask.models.load`).
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import xarray as xr

from . import __version__
from .bands import as_text, canonical_band
from .checks import check_integer, check_real
from .classes import CLASS_NAMES, NODATA, mask_attrs
from .exceptions import BandError, InputError, InputWarning, OptionError, RadiometryWarning
from .kernel import DN_SCALE, ModelRun, Plan, block_halo, check_scale, measured_values, predict_block
from .models import ModelSpec, Runtime, get, resolve_default
from .models.backends import get_backend, resolve_device, resolve_dtype
from .tiling import TTA_TRANSFORMS, check_patch

# Asset names of Sentinel-2 products that are not spectral bands: ignored quietly.
_NON_SPECTRAL = {"scl", "aot", "wvp", "tci", "visual", "snw", "cld", "visual-jp2", "scl-jp2"}


def predict(
    obj: xr.DataArray | xr.Dataset,
    model: str | ModelSpec | Sequence[str | ModelSpec] = "default",
    *,
    patch_size: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    tta: int = 0,
    processing_resolution: float | None = None,
    device: str = "auto",
    dtype: str = "auto",
    output: Literal["mask", "probability", "both"] = "mask",
    probability_dtype: Literal["uint8", "float16"] = "uint8",
    offset: float | xr.DataArray | Literal["auto"] | None = None,
    threads: int = 0,
    model_dir: str | os.PathLike[str] | None = None,
    compile: bool = False,
) -> xr.Dataset:
    """Mask clouds and cloud shadows in a Sentinel-2 cube.

    Lazy in, lazy out: with Dask-backed input nothing is computed (and no model
    is loaded) until the result is; with numpy input the result is computed now.

    Parameters
    ----------
    obj
        ``DataArray`` with dims ``(band, y, x)`` or ``(time, band, y, x)`` whose
        ``band`` coordinate holds Sentinel-2 names (``B02``, ``B8A``) or STAC
        common names (``blue``, ``nir08``), or is numeric (1..N, as rioxarray reads a
        GeoTIFF) with the names in ``attrs["long_name"]``; or a ``Dataset`` with one
        variable per band (odc-stac). Only ``time``/``y``/``x``, ``spatial_ref``,
        ``radiometric_offset`` and numeric per-date coordinates reach the output: a
        loader's metadata coordinates (stackstac's ``proj:*``, ``eo:*``...) do not.
        Float values are reflectance; integer values are DN (reflectance =
        (DN + offset) / 10000), band by band in a Dataset. Extra bands
        are ignored. A pixel is no-data (255) where any band the model reads is NaN or
        DN 0, or every band is 0.0, or a value cannot come from Sentinel-2 (+-inf, or
        reflectance outside ``REFLECTANCE_RANGE`` = [-0.5, 3.5]: DN have 15 bits,
        at most 3.28 even with an offset). The model never sees such a value: a pixel
        with some bands measured gets its valid neighbours' mean, so the classes
        around it stay as they were (probabilities move by 0.02 at most, measured);
        a pixel with none gets the no-data fill. A cube whose ``y`` runs south to north
        (``.sortby("y")``) or ``x`` east to west is masked north up and returned in its
        own order.
    model
        A registered name (``xs2mask.models.available()``), a :class:`ModelSpec`,
        ``"default"`` (the best installed model the bands allow), or a list of
        them: an ensemble whose class probabilities are averaged.
    patch_size, overlap
        Patch edge and overlap between patches in processing pixels; default: the model's.
    batch_size
        Patches per model call; default: the model's own, 1 on the CPU and on a
        GPU as many as fit in its free memory (measured when the model loads).
    tta
        Test-time augmentation: 0 (none) to 7 extra rotated/flipped passes, averaged.
    processing_resolution
        Run the model at this ground sampling distance in metres (e.g. 20 for
        10 m input), then return on the input grid; a whole multiple of the input's.
        Default: the model's own (``clouds2mask-20m``: 20), else the input's. Needs
        x/y coordinates on a regular grid of square pixels.
    device
        ``"auto"`` (cuda > mps > cpu), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    dtype
        ``"auto"`` (float32 on the CPU, bfloat16/float16 on a GPU), ``"float32"``,
        ``"float16"``, ``"bfloat16"``.
    output
        ``"mask"``, ``"probability"`` or ``"both"``.
    probability_dtype
        ``"uint8"`` (0-255) or ``"float16"`` (0-1) for the ``probability`` variable.
    offset
        DN offset added before scaling integer input, from -2000 to 2000: a number
        (-1000 for products of processing baseline 04.00 and later, 0 before), one per
        date as a ``DataArray`` along ``time`` (a cube that spans baseline 04.00), or
        ``"auto"``: the ``radiometric_offset`` coordinate (reflectance, as
        :func:`xs2mask.stac.load` writes it) times 10000 for integer input; float input
        already holds it, so ``"auto"`` adds nothing there. ``None`` (default): 0, with a
        :class:`~xs2mask.exceptions.RadiometryWarning` when integer input has dates from
        25 January 2022 on (baseline 04.00 began then: its DN read without -1000 are 0.1
        too bright).
    threads
        CPU cores per block. 0: every core; ONNX models on the CPU then run the patches
        of all blocks on the cores Dask gives the process, one core per patch, and other
        models get the cores divided among the blocks that Dask runs in parallel. Set:
        ONNX models run that many patches of each block side by side, torch models use
        that many threads per call.
    model_dir
        Folder holding downloaded weights (OmniCloudMask, CloudS2Mask): looked in, and
        downloaded to, instead of ``$XS2MASK_MODEL_DIR`` and the user cache.
    compile
        ``torch.compile`` torch models when they load (once per process): slower
        first call, faster after it on a GPU.

    Returns
    -------
    xarray.Dataset
        ``mask`` (uint8: 0 clear, 1 thick cloud, 2 thin cloud, 3 cloud shadow,
        255 no-data) and/or ``probability`` (``class``, y, x), on the input grid
        with its ``time``/``y``/``x`` coordinates and CRS.

    Raises
    ------
    OptionError
        An option has the wrong type or is out of range; checked first, before the
        input is read. Numpy scalars count as numbers (``np.int64(2)``).
    InputError, BandError
        The input's dims, dtype, coordinates or CRS are unusable, or a float band
        holds DN (median above 2). The DN check runs at the call on a window of
        the first date (for Dask input when the chunks holding it are at most
        ``EAGER_CHECK_BYTES``: reading them is one chunk read per band) and again
        on every block when the result is computed.

    Warns
    -----
    InputWarning
        The input has no CRS: the mask has none either. Counting the values that
        cannot come from Sentinel-2, per band: for Dask input, when a block holding
        them is computed (once per such block).

    Examples
    --------
    >>> import xs2mask
    >>> cube = xs2mask.data.demo_scene()
    >>> ds = xs2mask.predict(cube)
    >>> ds.mask.attrs["flag_meanings"]
    'clear thick_cloud thin_cloud cloud_shadow'
    """
    prepared = prepare(
        obj,
        model,
        patch_size=patch_size,
        overlap=overlap,
        batch_size=batch_size,
        tta=tta,
        processing_resolution=processing_resolution,
        device=device,
        dtype=dtype,
        output=output,
        probability_dtype=probability_dtype,
        offset=offset,
        threads=threads,
        model_dir=model_dir,
        compile=compile,
    )
    return prepared.predict()


@dataclass(frozen=True)
class Prepared:
    """What :func:`predict` makes of its input before any block runs: the cube of the model's bands,
    the :class:`~xs2mask.kernel.Plan` every block follows, and how the output is labelled.

    For callers that run the blocks themselves (the STAC job reads each slab with its halo and
    calls :func:`predict_window`), with the same plan and labels as :func:`predict`. Their windows
    are in ``cube``'s order, north up: ``flipped`` names the dims reversed from the input's
    (none for a stackstac or odc-stac cube).
    """

    cube: xr.DataArray
    plan: Plan
    processing_resolution: float | None
    had_time: bool
    crs: Any
    #: dims of the input reversed in ``cube`` so that the model sees it north up, reversed back in the output
    flipped: tuple[str, ...] = ()

    def predict(self) -> xr.Dataset:
        """:func:`predict`'s output: lazy for a Dask cube, computed now for a numpy one."""
        plan, data = self.plan, self.cube.data
        if _is_dask(data):
            result = _map_dask(data, plan)
        else:
            result = predict_block(np.asarray(data), plan, (0, plan.height), (0, plan.width))
        return self.dataset(result)

    def dataset(self, result: Any) -> xr.Dataset:
        """The output Dataset of ``result`` (``(time, n_out, y, x)``) on the input's coordinates."""
        ds = _to_dataset(result, self.cube, self.plan, self.processing_resolution, self.had_time, self.crs)
        return ds.isel({dim: slice(None, None, -1) for dim in self.flipped}) if self.flipped else ds


def prepare(
    obj: xr.DataArray | xr.Dataset,
    model: str | ModelSpec | Sequence[str | ModelSpec] = "default",
    *,
    patch_size: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    tta: int = 0,
    processing_resolution: float | None = None,
    device: str = "auto",
    dtype: str = "auto",
    output: Literal["mask", "probability", "both"] = "mask",
    probability_dtype: Literal["uint8", "float16"] = "uint8",
    offset: float | xr.DataArray | Literal["auto"] | None = None,
    threads: int = 0,
    model_dir: str | os.PathLike[str] | None = None,
    compile: bool = False,
) -> Prepared:
    """Check :func:`predict`'s input and options and plan its blocks; nothing is computed.

    Takes :func:`predict`'s arguments and raises what it raises.

    Examples
    --------
    >>> import xs2mask
    >>> prepare(xs2mask.data.demo_scene(), "xs2mask-4b").plan.bands
    ('B02', 'B03', 'B04', 'B08')
    """
    options = _check_options(
        model=model,
        patch_size=patch_size,
        overlap=overlap,
        batch_size=batch_size,
        tta=tta,
        processing_resolution=processing_resolution,
        device=device,
        dtype=dtype,
        output=output,
        probability_dtype=probability_dtype,
        offset=offset,
        threads=threads,
        model_dir=model_dir,
        compile=compile,
    )
    da, had_time, offset = _as_band_array(obj, options.offset)
    specs = _resolve_models(model, [str(b) for b in da["band"].values], model_dir)
    needed = tuple(dict.fromkeys(b for s in specs for b in s.bands))
    da = select_bands(da, needed)
    flipped = _against_map_order(da)
    if flipped:
        da = da.isel({dim: slice(None, None, -1) for dim in flipped})
    integer_input = _check_dtype(da, offset)
    # A cube from xs2mask.stac.load is reflectance by construction: reading it here would only add a
    # read per call (its blocks are still checked when computed).
    if not integer_input and "xs2mask_radiometry" not in da.attrs:
        _check_scale_now(da)
    crs = _input_crs(da)
    if crs is None:
        warnings.warn(
            "the input has no CRS: the mask will have none either. Set the cube's CRS before predict "
            "with cube.rio.write_crs('EPSG:32633') (your UTM zone; import rioxarray first)",
            InputWarning,
            stacklevel=3,
        )

    device = resolve_device(device, specs)
    runtime = Runtime(
        device=device,
        dtype=resolve_dtype(dtype, device, specs),
        threads=options.threads,
        compile=bool(compile),
    )
    processing_resolution = options.processing_resolution
    if processing_resolution is None:
        processing_resolution = _model_resolution(da, specs, crs)
    factor = _factor(da, processing_resolution, crs)
    runs = tuple(_model_run(s, needed, options.patch_size, options.overlap) for s in specs)
    halo = max(block_halo(r, factor) for r in runs)
    classes = tuple(sorted({c for s in specs for c in s.classes}))
    plan = Plan(
        runs=runs,
        runtime=runtime,
        classes=classes,
        bands=needed,
        height=da.sizes["y"],
        width=da.sizes["x"],
        factor=factor,
        halo=halo,
        tta=options.tta,
        batch_size=options.batch_size or 0,
        offset=offset,
        integer_input=integer_input,
        output=output,
        probability_dtype=probability_dtype,
    )
    return Prepared(da, plan, processing_resolution, had_time, crs, flipped)


def _against_map_order(da: xr.DataArray) -> tuple[str, ...]:
    """The dims whose coordinates run against a map's order (rows north to south, columns west to
    east): a cube sorted by ``y`` (``.sortby("y")``) is upside down. The models learnt where shadows
    fall from north-up scenes; upside down they give other masks (8 % of a scene's pixels)."""
    flipped = []
    for dim, descending in (("y", True), ("x", False)):
        # `da.coords.get` gives a dim without coordinates its positions, which run south to north: a
        # bare array is an image, its first row north (as rasterio reads one).
        if dim not in da.coords:
            continue
        coord = da.coords[dim]
        if coord.size < 2 or coord.dtype.kind not in "iuf":
            continue
        if np.array_equal(coord.values, np.arange(coord.size)):
            continue  # row and column numbers (0, 1, 2...), not map coordinates: an image, as a bare array
        if (float(coord[-1]) < float(coord[0])) != descending:
            flipped.append(dim)
    return tuple(flipped)


# --------------------------------------------------------------------------- options

# Sentinel-2 offsets are -1000 DN (processing baseline 04.00 and later) or 0; twice that either way
# leaves room for any real product and still refuses a sign or unit mistake (-1e9, reflectance 0.1).
_OFFSET_LIMIT = 2000.0
_MAX_THREADS = 1024


@dataclass(frozen=True)
class _Options:
    """The numeric options of :func:`predict`, checked and as plain Python numbers."""

    patch_size: int | None
    overlap: int | None
    batch_size: int | None
    tta: int
    processing_resolution: float | None
    offset: float | xr.DataArray | Literal["auto"] | None
    threads: int


def _check_options(
    *,
    model: object,
    patch_size: object,
    overlap: object,
    batch_size: object,
    tta: object,
    processing_resolution: object,
    device: object,
    dtype: object,
    output: object,
    probability_dtype: object,
    offset: object,
    threads: object,
    model_dir: object,
    compile: object,
) -> _Options:
    """Check every option of :func:`predict` before any input is read or graph is built."""
    items = model if isinstance(model, list | tuple) else [model]
    if not items:
        raise OptionError("model list is empty: pass a model name, 'default', or a list of names")
    for item in items:
        if not isinstance(item, str | ModelSpec):
            raise OptionError(
                f"model must be a name, a ModelSpec or a list of them, got {item!r}; "
                "see xs2mask.models.available() for the names"
            )
    for name, value, choices in (
        ("output", output, ("mask", "probability", "both")),
        ("probability_dtype", probability_dtype, ("uint8", "float16")),
    ):
        if not isinstance(value, str) or value not in choices:
            listed = ", ".join(map(repr, choices[:-1])) + f" or {choices[-1]!r}"
            raise OptionError(f"{name} must be {listed}, got {value!r}")
    for name, value, example in (("device", device, "'cpu'"), ("dtype", dtype, "'float32'")):
        if not isinstance(value, str):
            raise OptionError(f"{name} must be a string such as 'auto' or {example}, got {value!r}")
    if not isinstance(compile, bool | np.bool_):
        raise OptionError(f"compile must be True or False, got {compile!r}")
    if model_dir is not None and not isinstance(model_dir, str | os.PathLike):
        raise OptionError(f"model_dir must be a folder path (str or pathlib.Path), got {model_dir!r}")
    return _Options(
        # the overlap's upper bound depends on the model's patch size: _model_run checks it
        patch_size=None if patch_size is None else check_patch(patch_size, 0)[0],
        overlap=None
        if overlap is None
        else check_integer("overlap", overlap, 0, what="a non-negative integer (processing pixels)"),
        batch_size=None
        if batch_size is None
        else check_integer("batch_size", batch_size, 1, what="a positive integer (patches per model call)"),
        tta=check_integer(
            "tta", tta, 0, len(TTA_TRANSFORMS) - 1, what=f"an integer from 0 to {len(TTA_TRANSFORMS) - 1}"
        ),
        processing_resolution=None
        if processing_resolution is None
        else check_real(
            "processing_resolution",
            processing_resolution,
            lambda v: v > 0,
            "a positive number of metres, e.g. 20, or None",
        ),
        offset=_check_offset(offset),
        threads=check_integer(
            "threads", threads, 0, _MAX_THREADS, what=f"an integer from 0 (every core) to {_MAX_THREADS}"
        ),
    )


_OFFSET_WHAT = (
    f"a DN offset from {-_OFFSET_LIMIT:g} to {_OFFSET_LIMIT:g} (-1000 for processing baseline 04.00 and "
    "later, 0 before), a DataArray of such offsets along `time`, or 'auto'; reflectance offsets must be "
    "applied to float input beforehand"
)


def _check_offset(offset: object) -> float | xr.DataArray | Literal["auto"] | None:
    """A scalar DN offset, one per date (a 1-D ``time`` DataArray, read now: it is small), "auto", or
    None (not given)."""
    if offset is None:
        return None
    if isinstance(offset, str) and offset == "auto":
        return "auto"
    if not isinstance(offset, xr.DataArray):
        return check_real("offset", offset, lambda v: abs(v) <= _OFFSET_LIMIT, _OFFSET_WHAT)
    if offset.dims != ("time",) or not np.issubdtype(offset.dtype, np.number):
        raise OptionError(
            f"offset as a DataArray must be numeric with the single dim `time`, got dims {offset.dims} "
            f"and dtype {offset.dtype}: pass one DN offset per date, e.g. "
            "xr.DataArray([0, -1000], dims='time', coords={'time': cube.time})"
        )
    values = np.asarray(offset.values, np.float64)
    bad = ~(np.abs(values) <= _OFFSET_LIMIT)  # NaN is bad too
    if bad.any():
        raise OptionError(f"offset must be {_OFFSET_WHAT}, got {values[bad][:3].tolist()} among its values")
    return offset.copy(data=values)


# --------------------------------------------------------------------------- input checks


# Names other libraries give the dims predict() needs (odc-stac, netCDF and CF, rioxarray, xarray's
# to_array); a dim of one of these names is named in the advice to rename it.
_DIM_ALIASES = {
    "y": ("latitude", "lat", "northing", "rows", "row"),
    "x": ("longitude", "lon", "easting", "columns", "cols", "col"),
    "time": ("t", "times", "date", "dates", "datetime"),
    "band": ("bands", "variable", "spectral_band", "channel", "channels"),
}


def _rename_advice(dims: tuple[str, ...]) -> str:
    """What to rename, for dims that other libraries name otherwise (e.g. latitude / longitude)."""
    renames = {
        dim: target
        for dim in dims
        for target, aliases in _DIM_ALIASES.items()
        if target not in dims and dim.lower() in aliases
    }
    if not renames:
        return (
            "Rename the dims to these names, e.g. .rename(lat='y', lon='x') (or rio.set_spatial_dims) "
            "and .rename(bands='band')."
        )
    call = ", ".join(f"{dim}={target!r}" for dim, target in renames.items())
    geographic = (
        " (y and x in metres of a projected CRS such as UTM)" if {"y", "x"} & set(renames.values()) else ""
    )
    return f"Rename them: .rename({call}){geographic}."


def _as_band_array(
    obj: xr.DataArray | xr.Dataset, offset: float | xr.DataArray | Literal["auto"] | None
) -> tuple[xr.DataArray, bool, float]:
    """Return ``(time, band, y, x)`` with ESA band names, whether a time dim was given, and the
    DN offset still to apply: 0 once integer bands became reflectance (a Dataset's integer bands
    among float ones; DN whose dates have different offsets)."""
    if not isinstance(obj, xr.DataArray | xr.Dataset):
        raise InputError(
            f"expected an xarray DataArray or Dataset, got {type(obj).__name__}; wrap numpy arrays "
            "with xr.DataArray(arr, dims=('band', 'y', 'x'), coords={'band': [...]})"
        )
    offsets = _dn_offsets(obj, offset)
    if isinstance(obj, xr.Dataset):
        obj, offsets = _dataset_to_array(obj, offsets)
    dims = set(obj.dims)
    if dims not in ({"band", "y", "x"}, {"time", "band", "y", "x"}):
        raise InputError(
            f"input dims are {tuple(obj.dims)}; expected (band, y, x) or (time, band, y, x). "
            + _rename_advice(tuple(map(str, obj.dims)))
        )
    if "time" not in dims:
        obj = obj.expand_dims("time")
    obj = obj.transpose("time", "band", "y", "x")
    if any(obj.sizes[d] == 0 for d in obj.dims):
        raise InputError(f"input is empty: sizes {dict(obj.sizes)}")
    if isinstance(offsets, xr.DataArray):
        if not np.issubdtype(obj.dtype, np.integer):
            raise InputError(_FLOAT_OFFSET)
        obj, offsets = _to_reflectance(obj, offsets), 0.0
    if "band" not in obj.coords:
        raise BandError(
            "the band dim has no coordinate: add one with .assign_coords(band=['B02', 'B03', ...])"
        )
    obj = _described_bands(obj)
    if np.issubdtype(obj["band"].dtype, np.integer):
        numbers = obj["band"].values.tolist()
        example = ", ".join(repr(b) for b in ("B02", "B03", "B04", "B08", "B11", "B12")[: len(numbers)])
        raise BandError(
            f"the bands are numbered {numbers[:13]}, not named (rioxarray numbers the bands of a file "
            f"without band descriptions): name them in their order, e.g. .assign_coords(band=[{example}])"
        )
    names: list[str | None] = []
    for raw in obj["band"].values:
        if as_text(raw).lower() in _NON_SPECTRAL:
            names.append(None)
            continue
        try:
            names.append(canonical_band(raw))
        except BandError as err:
            raise _not_a_band(err, f"cube.drop_sel(band=[{as_text(raw)!r}])") from None
    spectral = [n for n in names if n is not None]
    dupes = sorted({n for n in spectral if spectral.count(n) > 1})
    if dupes:
        raise BandError(f"bands {dupes} appear more than once (after mapping aliases to ESA names)")
    obj = _take_bands(obj, [i for i, n in enumerate(names) if n is not None])
    band_dependent = [c for c in obj.coords if "band" in obj[c].dims and c != "band"]
    return obj.drop_vars(band_dependent).assign_coords(band=spectral), "time" in dims, offsets


def select_bands(da: xr.DataArray, bands: Sequence[str]) -> xr.DataArray:
    """``da.sel(band=bands)``: a view, not a copy, when ``bands`` lie side by side in ``da`` in order.

    Selecting by a list copies every pixel of a numpy cube: 7.6 s of a 3 GB cube's 32 s predict, on
    one core. The kernel never writes into its input, so a view is safe.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> bands = {"band": ["B02", "B03", "B04"]}
    >>> cube = xr.DataArray(np.zeros((3, 2, 2)), dims=("band", "y", "x"), coords=bands)
    >>> np.shares_memory(select_bands(cube, ["B03", "B04"]).values, cube.values)
    True
    >>> select_bands(cube, ["B04", "B02"])["band"].values.tolist()
    ['B04', 'B02']
    """
    index = da.indexes["band"]
    return _take_bands(da, [int(index.get_loc(b)) for b in bands])


def _take_bands(da: xr.DataArray, positions: Sequence[int]) -> xr.DataArray:
    start = positions[0] if positions else 0
    if list(positions) == list(range(start, start + len(positions))):
        return da.isel(band=slice(start, start + len(positions)))
    return da.isel(band=list(positions))


def _dn_offsets(
    obj: xr.DataArray | xr.Dataset, offset: float | xr.DataArray | Literal["auto"] | None
) -> float | xr.DataArray:
    """The DN offset of integer bands: a number, or one per date (positional along ``time``) when the
    dates differ. "auto" reads ``radiometric_offset``; float input already holds it; None is 0, said
    in a warning when the dates are of processing baseline 04.00 or later."""
    variables = obj.data_vars.values() if isinstance(obj, xr.Dataset) else [obj]
    integer = any(np.issubdtype(v.dtype, np.integer) for v in variables)
    if offset is None:
        if integer:
            _warn_if_offset_era(obj)
        return 0.0
    if isinstance(offset, str):
        if not integer:
            return 0.0
        if "radiometric_offset" not in obj.coords:
            raise InputError(
                "offset='auto' reads the `radiometric_offset` coordinate (one reflectance offset per date, "
                "as xs2mask.stac.load writes it); this cube has none. Pass offset=-1000 (processing "
                "baseline 04.00 and later), 0 (before), or one DN offset per date as a DataArray along time"
            )
        offset = obj.coords["radiometric_offset"] * DN_SCALE
    if not isinstance(offset, xr.DataArray):
        return offset
    if "time" not in obj.dims:
        offset = offset.squeeze()  # a single date: one value
    elif "time" in offset.coords and "time" in obj.coords:
        missing = np.setdiff1d(obj["time"].values, offset["time"].values)
        if missing.size:
            raise InputError(
                f"offset has no value for the dates {missing[:3].tolist()}: give one DN offset for "
                "every date of the cube, e.g. xr.DataArray(values, dims='time', coords={'time': cube.time})"
            )
        offset = offset.sel(time=obj["time"].values)
    if offset.ndim > 1 or offset.size != obj.sizes.get("time", 1):
        raise InputError(
            f"offset has {offset.size} values for {obj.sizes.get('time', 1)} date(s): give one DN offset "
            "per date along `time`, or a number"
        )
    values = np.atleast_1d(np.asarray(offset.values, np.float64))
    if np.isnan(values).any():
        raise InputError(
            "radiometric_offset is NaN on some dates (their items have different offsets, see "
            "attrs['xs2mask_radiometry']): pass offset= with one DN offset per date as a DataArray along time"
        )
    if (values == values[0]).all():
        return float(values[0])
    return xr.DataArray(values.astype(np.float32), dims="time")


def _warn_if_offset_era(obj: xr.DataArray | xr.Dataset) -> None:
    """Warn when integer DN without an offset have dates on or after 25 January 2022, when ESA's
    processing baseline 04.00 began adding 1000 to every DN: such DN read without offset=-1000 are
    0.1 too bright, which a model takes for haze or cloud."""
    from .radiometry import OFFSET_DATE

    if "time" not in obj.coords or not np.issubdtype(obj["time"].dtype, np.datetime64):
        return
    times = np.atleast_1d(obj["time"].values)
    late = times[times >= np.datetime64(OFFSET_DATE)]
    if late.size:
        warnings.warn(
            f"integer DN with {late.size} of {times.size} date(s) from {OFFSET_DATE} on and no offset: "
            "taken as DN / 10000. Products of processing baseline 04.00 and later (all processed since "
            "25 January 2022: .SAFE products, Planetary Computer's sentinel-2-l2a, Earth Search's "
            "sentinel-2-l1c and the reprocessed sentinel-2-c1-l2a) add 1000 to every DN: pass "
            "offset=-1000 for those. Earth Search's sentinel-2-l2a COGs have it removed already, as do "
            "older products: pass offset=0. Or load with xs2mask.stac.load, which reads each item's offset",
            RadiometryWarning,
            stacklevel=6,  # predict's caller: through prepare, _as_band_array and _dn_offsets
        )


def _to_reflectance(dn: xr.DataArray, offset: float | xr.DataArray) -> xr.DataArray:
    """Integer DN as float32 reflectance, lazily; DN 0 (no-data) becomes NaN. The arithmetic is
    :func:`_reflectance`'s, so a band gives the same values either way."""
    # the per-date offsets are float32 already
    add = offset if isinstance(offset, xr.DataArray) else np.float32(offset)
    refl = (dn.astype(np.float32) + add) / np.float32(DN_SCALE)
    return refl.where(dn != 0)


def _described_bands(obj: xr.DataArray) -> xr.DataArray:
    """A numeric band coordinate (rioxarray's 1..N) renamed by the band descriptions in ``long_name``."""
    if not np.issubdtype(obj["band"].dtype, np.number):
        return obj
    described = obj.attrs.get("long_name")
    if isinstance(described, str):
        described = (described,)  # rioxarray's description of a single band
    if not isinstance(described, list | tuple) or len(described) != obj.sizes["band"]:
        return obj
    return obj.assign_coords(band=[str(d) for d in described])


def _not_a_band(err: BandError, drop: str) -> BandError:
    """An unknown band name's error, with the way to leave out a layer that is no band."""
    return BandError(f"{err}. If it is not a band (a mask, a quality layer), leave it out: {drop}")


def _dataset_to_array(
    ds: xr.Dataset, offset: float | xr.DataArray
) -> tuple[xr.DataArray, float | xr.DataArray]:
    bands: dict[str, xr.DataArray] = {}
    for name, var in ds.data_vars.items():
        if str(name).lower() in _NON_SPECTRAL:
            continue
        try:
            bands[canonical_band(name)] = var
        except BandError as err:
            if set(var.dims) & {"y", "x"}:
                raise _not_a_band(err, f"ds.drop_vars([{str(name)!r}])") from None
    if not bands:
        raise BandError(
            f"no Sentinel-2 band among the Dataset's variables {list(ds.data_vars)}; "
            "name variables B02, B03 ... or blue, green ..."
        )
    integer = [name for name, var in bands.items() if np.issubdtype(var.dtype, np.integer)]
    if 0 < len(integer) < len(bands):
        # Each band's dtype says its scale: integer DN, float reflectance. Concatenated as they
        # are, the DN would be promoted to float and read as reflectance.
        for name in integer:
            bands[name] = _to_reflectance(bands[name], offset)
        offset = 0.0
    cube = xr.concat(list(bands.values()), dim="band", coords="minimal", compat="override")
    return cube.assign_coords(band=list(bands)), offset


def _resolve_models(
    model: str | ModelSpec | Sequence[str | ModelSpec], bands: list[str], model_dir=None
) -> tuple[ModelSpec, ...]:
    items = [model] if isinstance(model, str | ModelSpec) else list(model)
    if not items:
        raise OptionError("model list is empty: pass a model name, 'default', or a list of names")
    specs = tuple(resolve_default(bands) if m == "default" else get(m) for m in items)
    if model_dir is not None:
        specs = tuple(s.with_model_dir(model_dir) for s in specs)
    for spec in specs:
        missing = [b for b in spec.bands if b not in bands]
        if missing:
            raise BandError(
                f"model {spec.name!r} needs bands {list(spec.bands)}; the input lacks {missing} "
                f"(it has {bands}). Load the missing bands or choose a model that fits, "
                "e.g. a 4-band model for B02 B03 B04 B08."
            )
    for spec in specs:
        # download now, once, in this process (not in every worker), or fail with the fix
        spec.fetch()
    return specs


def _check_dtype(da: xr.DataArray, offset: float) -> bool:
    """Whether the input is integer DN (else float reflectance); refuse anything else."""
    integer = bool(np.issubdtype(da.dtype, np.integer))
    if not (integer or np.issubdtype(da.dtype, np.floating)):
        raise InputError(
            f"input dtype {da.dtype} is not numeric: pass reflectance as float or DN as integers"
        )
    if integer and da.dtype.itemsize == 1:
        raise InputError(
            f"input dtype {da.dtype} holds 0-255 at most, but Sentinel-2 DN run to 10000 and beyond "
            "(uint16): 8-bit imagery (a PNG, a stretched quick-look) has lost the reflectance the "
            "models need. Load the products' bands (xs2mask.stac.load, rioxarray.open_rasterio of the "
            "band files)"
        )
    if offset and not integer:
        raise InputError(_FLOAT_OFFSET)
    return integer


_FLOAT_OFFSET = (
    "offset= applies to integer DN; this input is float (taken as reflectance). "
    "Apply the offset yourself, or pass the DN as integers."
)


def _input_crs(da: xr.DataArray):
    """The input's CRS (a rasterio CRS), None without one; a CRS that does not parse is refused now,
    not when the result is built."""
    # Importing rioxarray costs about a second: an array without CRS metadata (numpy input, a
    # cube built by hand) does not pay it. These are the places rioxarray looks for a CRS.
    if "rioxarray" not in sys.modules and not (
        "spatial_ref" in da.coords or {"crs", "grid_mapping"} & set(da.attrs) or "grid_mapping" in da.encoding
    ):
        return None
    try:
        import rioxarray  # noqa: F401  (registers the .rio accessor)
    except ImportError:
        return None
    from pyproj.exceptions import CRSError as ProjCRSError
    from rasterio.errors import CRSError

    try:
        return da.rio.crs
    except (ProjCRSError, CRSError) as err:
        raise InputError(
            f"the input's CRS metadata is not a valid CRS: {str(err).splitlines()[0]}. Write a valid one "
            "with .rio.write_crs('EPSG:32633') (your UTM zone), or drop it with .drop_vars('spatial_ref') "
            "and del .attrs['crs']"
        ) from err


def _grid_step(da: xr.DataArray, dim: str) -> float | None:
    """The spacing of the regular ``dim`` coordinate; None when there is none to measure.

    Raises :class:`InputError` naming the coordinate when it is there but not a regular grid.
    """
    if dim not in da.coords or da.sizes[dim] < 2:
        return None
    coord = da[dim]
    if not (np.issubdtype(coord.dtype, np.integer) or np.issubdtype(coord.dtype, np.floating)):
        raise InputError(
            f"the {dim} coordinate is {coord.dtype}, not numbers: the resolution cannot be known. "
            "Assign map coordinates in metres (rioxarray does), or leave processing_resolution unset."
        )
    values = coord.values.astype(np.float64)
    steps = np.diff(values)
    fix = (
        "Put the cube on a regular grid (e.g. .rio.reproject or .interp onto evenly spaced "
        "coordinates), or leave processing_resolution unset to run on the pixels as they are."
    )
    if not np.isfinite(values).all():
        raise InputError(f"the {dim} coordinate holds NaN or inf: its resolution cannot be known. {fix}")
    if (steps == 0).any():
        i = int(np.flatnonzero(steps == 0)[0])
        raise InputError(
            f"the {dim} coordinate repeats the value {values[i]:g} (positions {i}, {i + 1}). {fix}"
        )
    if not ((steps > 0).all() or (steps < 0).all()):
        raise InputError(f"the {dim} coordinate is not monotonic: its values go up and down. {fix}")
    size = np.abs(steps)
    # float32 map coordinates (9.7e6 m) are only good to a metre: allow their rounding
    rounding = 2 * float(np.spacing(np.abs(coord.values).max())) if coord.dtype.kind == "f" else 0.0
    if size.max() - size.min() > max(1e-3 * size.min(), rounding):
        raise InputError(
            f"the {dim} coordinate is not a regular grid: its steps range from {size.min():g} to "
            f"{size.max():g}. {fix}"
        )
    return abs(float(values[-1] - values[0])) / (len(values) - 1)


def _resolution(da: xr.DataArray, crs: Any = None) -> float | None:
    """The input's pixel size in metres from its x and y coordinates; None when they do not say.

    Coordinates in degrees (``crs`` geographic, e.g. EPSG:4326) say nothing in metres: None.
    """
    if crs is not None and crs.is_geographic:
        return None
    steps = {dim: step for dim in ("x", "y") if (step := _grid_step(da, dim)) is not None}
    if len(steps) == 2 and not math.isclose(steps["x"], steps["y"], rel_tol=1e-3):
        raise InputError(
            f"pixels are {steps['x']:g} wide (x) and {steps['y']:g} high (y): processing_resolution "
            "needs square pixels. Resample the cube to square pixels, or leave it unset."
        )
    return next(iter(steps.values()), None)


def _model_resolution(da: xr.DataArray, specs: tuple[ModelSpec, ...], crs: Any = None) -> float | None:
    """The models' own processing resolution, when they agree and the input is finer."""
    wanted = {s.processing_resolution for s in specs}
    if len(wanted) != 1:
        return None
    (wanted_res,) = wanted
    if wanted_res is None:
        return None
    res = _resolution(da, crs)
    if res is None:
        return None  # resolution unknown: run on the input's grid (recorded as such)
    return wanted_res if res < wanted_res else None


def _factor(da: xr.DataArray, processing_resolution: float | None, crs: Any = None) -> int:
    if processing_resolution is None:
        return 1
    if crs is not None and crs.is_geographic:
        raise InputError(
            f"processing_resolution={processing_resolution:g} m needs a grid in metres, but the input's CRS "
            f"({crs}) is in degrees. Reproject the cube to its UTM zone first (e.g. cube.rio.reproject("
            "cube.rio.estimate_utm_crs(), resolution=10)), or leave processing_resolution unset"
        )
    res = _resolution(da)
    if res is None:
        raise InputError(
            "processing_resolution needs numeric x coordinates (two or more, evenly spaced) to know "
            "the input's resolution; assign them, e.g. with rioxarray or .assign_coords(x=...)"
        )
    ratio = processing_resolution / res
    factor = round(ratio)
    if factor < 1 or not math.isclose(ratio, factor, rel_tol=1e-3):
        raise InputError(
            f"processing_resolution={processing_resolution:g} m must be a whole multiple of the "
            f"input resolution ({res:g} m), e.g. {2 * res:g}; or leave it unset to run at {res:g} m"
        )
    if factor > max(da.sizes["y"], da.sizes["x"]):
        raise InputError(
            f"processing_resolution={processing_resolution:g} m is coarser than the whole input "
            f"({da.sizes['x']} x {da.sizes['y']} pixels of {res:g} m): choose a finer one, or leave it unset"
        )
    return factor


def _model_run(spec: ModelSpec, needed: tuple[str, ...], patch: int | None, overlap: int | None) -> ModelRun:
    if patch is not None and spec.fixed_patch_size and patch != spec.patch_size:
        raise OptionError(
            f"model {spec.name!r} only accepts patch_size={spec.patch_size} (got {patch}): "
            "leave patch_size unset for it"
        )
    p = spec.patch_size if patch is None else patch
    o = spec.overlap if overlap is None else overlap
    if get_backend(spec.backend).per_pixel:
        o = 0  # no context, no overlap needed
    p, o = check_patch(p, o)
    return ModelRun(spec, p, o, tuple(needed.index(b) for b in spec.bands))


# --------------------------------------------------------------------------- dask mapping


def _is_dask(data: object) -> bool:
    return type(data).__module__.startswith("dask")


def _map_dask(data, plan: Plan):
    import dask.array as da
    from dask.array.overlap import ensure_minimum_chunksize

    chunks = list(data.chunks)
    chunks[1] = (data.shape[1],)  # the model needs every band of a pixel at once
    for axis in (2, 3):
        c = chunks[axis]
        if plan.factor > 1:
            c = _align_chunks(c, plan.factor)
        if len(c) > 1 and plan.halo >= sum(c):
            c = (sum(c),)  # every block would need the whole axis anyway
        elif len(c) > 1 and min(c) < plan.halo:
            new = ensure_minimum_chunksize(plan.halo, c)
            if min(c[:-1]) < plan.halo:
                warnings.warn(
                    f"spatial chunks {c[:3]}... are smaller than the halo of {plan.halo} pixels the "
                    f"patches need; rechunked to {new[:3]}.... Chunk by 2048 or more to avoid this.",
                    stacklevel=3,
                )
            c = new
        chunks[axis] = tuple(c)
    if tuple(chunks) != data.chunks:
        data = data.rechunk(tuple(chunks))
    plan = share_cores(plan, math.prod(len(c) for c in data.chunks))
    # Axes in one chunk need no halo; the kernel finds the same from the array edges.
    depth = {axis: plan.halo if len(data.chunks[axis]) > 1 else 0 for axis in (2, 3)}
    extended = data
    if any(depth.values()):
        extended = da.overlap.overlap(data, depth=depth, boundary="none")
    out_chunks = (data.chunks[0], (plan.n_out,), data.chunks[2], data.chunks[3])
    return da.map_blocks(
        _dask_kernel,
        extended,
        plan=plan,
        chunks=out_chunks,
        dtype=plan.out_dtype,
        meta=np.empty((0, 0, 0, 0), plan.out_dtype),
        token="xs2mask-predict",  # a prefix: `name=` would give every predict the same keys
    )


def share_cores(plan: Plan, blocks: int) -> Plan:
    """The plan with the CPU's cores split between ``blocks`` blocks that Dask runs at once.

    A model call per block using every core oversubscribes the CPU (measured 20-25 % slower). Left
    as it is when the user chose ``threads``, the model runs on a GPU, or every model's backend runs
    its calls on one set of cores per process (:attr:`Backend.pooled <xs2mask.models.backends.Backend>`):
    there blocks take cores as they need them, and a batch's last block gets them all.
    """
    if plan.runtime.threads or plan.runtime.device != "cpu":
        return plan
    if all(get_backend(run.spec.backend).pooled for run in plan.runs):
        return plan
    threads = max(1, (os.cpu_count() or 1) // max(blocks, 1))
    return replace(plan, runtime=replace(plan.runtime, threads=threads))


def _align_chunks(chunks: tuple[int, ...], factor: int) -> tuple[int, ...]:
    """Move chunk boundaries onto multiples of ``factor``."""
    bounds = np.cumsum(chunks)[:-1]
    bounds = np.unique(np.round(bounds / factor).astype(int) * factor)
    total = sum(chunks)
    bounds = bounds[(bounds > 0) & (bounds < total)]
    return tuple(np.diff(np.concatenate([[0], bounds, [total]])).tolist())


def _dask_kernel(block: np.ndarray, plan: Plan, block_info=None) -> np.ndarray:
    _, _, (y0, y1), (x0, x1) = block_info[None]["array-location"]
    return _run_block(block, plan, (y0, y1), (x0, x1))


def _run_block(block: np.ndarray, plan: Plan, core_y: tuple[int, int], core_x: tuple[int, int]) -> np.ndarray:
    # Imported only in processes where the distributed plugin ran: elsewhere the call is local. On a
    # cluster whose models run on named workers (GPUs), the block goes there.
    routing = sys.modules.get("xs2mask.distributed")
    if routing is None:
        return predict_block(block, plan, core_y, core_x)
    return routing.run_model(predict_block, block, plan, core_y, core_x)


def window_rows(plan: Plan, start: int, stop: int, size: int) -> tuple[int, int]:
    """Rows (or columns, with ``size`` the grid's width) of input that :func:`predict_window` needs
    for output rows ``start:stop`` of a grid ``size`` long: the rows with their halo, clipped."""
    f = plan.factor
    return max(start // f * f - plan.halo, 0), min(-(-stop // f) * f + plan.halo, size)


def predict_window(
    window: Any,
    plan: Plan,
    origin: tuple[int, int],
    core_y: tuple[int, int],
    core_x: tuple[int, int],
    block: int,
) -> Any:
    """Lazy output of rows ``core_y`` x columns ``core_x`` of the plan's grid from a window of its input.

    ``window`` is a Dask array ``(time, band, y, x)`` of the plan's bands starting at grid pixel
    ``origin`` and covering :func:`window_rows` of the core: the slab of a job read once with its
    halo, instead of a whole-scene cube whose neighbouring chunks each slab would read again for
    its halo. The core runs in blocks of at most ``block`` pixels a side; the pixels are those of
    :func:`predict` on the whole grid (the blocks see the same halo and the same patch grid).

    Returns
    -------
    dask.array.Array
        ``(time, n_out, core_h, core_w)`` of ``plan.out_dtype``.
    """
    import dask.array as da

    f = plan.factor

    def spans(core: tuple[int, int], size: int) -> list[tuple[int, int]]:
        # block edges on multiples of the processing factor, as _map_dask aligns its chunks
        step = max(block // f, 1) * f
        lo, hi = core[0] // f * f, min(-(-core[1] // f) * f, size)
        return [(a, min(a + step, hi)) for a in range(lo, hi, step)]

    rows = []
    for y0, y1 in spans(core_y, plan.height):
        row = []
        for x0, x1 in spans(core_x, plan.width):
            (wy0, wy1), (wx0, wx1) = (
                window_rows(plan, y0, y1, plan.height),
                window_rows(plan, x0, x1, plan.width),
            )
            part = window[:, :, wy0 - origin[0] : wy1 - origin[0], wx0 - origin[1] : wx1 - origin[1]]
            part = part.rechunk({1: -1, 2: -1, 3: -1})
            out = da.map_blocks(
                _run_block,
                part,
                plan=plan,
                core_y=(y0, y1),
                core_x=(x0, x1),
                chunks=(part.chunks[0], (plan.n_out,), (y1 - y0,), (x1 - x0,)),
                dtype=plan.out_dtype,
                meta=np.empty((0, 0, 0, 0), plan.out_dtype),
                token="xs2mask-predict",
            )
            # a block aligned to the factor may reach beyond the core: its edge pixels are cut off
            row.append(
                out[
                    :,
                    :,
                    max(core_y[0], y0) - y0 : min(core_y[1], y1) - y0,
                    max(core_x[0], x0) - x0 : min(core_x[1], x1) - x0,
                ]
            )
        rows.append(row)
    return da.block(rows)


# --------------------------------------------------------------------------- the DN check at the call

# The DN check at the call reads the first date's chunks under a window of this many pixels a side at
# the scene's centre (edges are often no-data), when those chunks hold at most EAGER_CHECK_BYTES.
_EAGER_WINDOW = 256
EAGER_CHECK_BYTES = 64 * 2**20


def _check_scale_now(da: xr.DataArray) -> None:
    """Refuse float DN at the call instead of deep in a Dask compute: the blocks check again, all of them.

    Numpy input costs nothing to read. Dask input is read (one chunk per band of the first date
    for a cube chunked by 2048 or less, the loaders' usual chunking) only when that is cheap; a
    coarser cube is checked when its blocks are computed.
    """
    (y0, y1), (x0, x1) = (_centre(da.sizes[d], _EAGER_WINDOW) for d in ("y", "x"))
    window = da.isel(time=0, y=slice(y0, y1), x=slice(x0, x1))
    if _is_dask(da.data):
        t_chunks, _, y_chunks, x_chunks = da.data.chunks
        size = t_chunks[0] * da.sizes["band"] * da.dtype.itemsize
        size *= _covering(y_chunks, y0, y1) * _covering(x_chunks, x0, x1)
        if size > EAGER_CHECK_BYTES:
            return
    pixels = np.asarray(window.values)
    check_scale(pixels, [str(b) for b in da["band"].values])
    _warn_if_too_dark(pixels)


# No Sentinel-2 scene is this dark in all of its brightest pixels: of 496 real scenes and patches
# (`../shared/data`, dark water among them), the darkest has the 99th percentile of its brightest band
# at 0.006 reflectance; the same scenes divided by 100 fall below this in 83 % of cases.
_DARKEST_P99 = 0.005


def _warn_if_too_dark(window: np.ndarray) -> None:
    """Warn when float input is darker in every band than any scene: reflectance divided once too often
    (DN / 10000 twice, percent / 10000), which the models would call clear throughout."""
    brightest = [
        float(np.percentile(valid, 99)) for values in window if (valid := measured_values(values)).size
    ]
    if brightest and max(brightest) < _DARKEST_P99:
        warnings.warn(
            "the input is darker than any Sentinel-2 scene: 99 % of every band is below "
            f"{max(brightest):.2g} reflectance. Is it scaled twice (DN / 10000 / 10000, or percent / "
            "10000)? Reflectance is DN / 10000 (0-1, after any baseline-04.00 offset); masks of values "
            "this dark are clear throughout",
            InputWarning,
            stacklevel=5,  # predict's caller: through _check_scale_now and prepare
        )


def _centre(n: int, width: int) -> tuple[int, int]:
    start = max(0, (n - width) // 2)
    return start, min(n, start + width)


def _covering(chunks: tuple[int, ...], start: int, stop: int) -> int:
    """Pixels of the chunks that hold ``[start, stop)``: what reading that range costs."""
    bounds = np.cumsum((0, *chunks))
    held = zip(chunks, bounds[:-1], bounds[1:], strict=True)
    return int(sum(c for c, lo, hi in held if lo < stop and hi > start))


# --------------------------------------------------------------------------- output


def _to_dataset(
    result, da: xr.DataArray, plan: Plan, processing_resolution: float | None, had_time: bool, crs
) -> xr.Dataset:
    # Variables, not DataArrays: a DataArray would bring its own coordinates (every other one on `time`).
    keep = {name: coord.variable for name, coord in da.coords.items() if _kept(name, coord)}
    names = [s.spec.name for s in plan.runs]
    attrs = {
        "xs2mask_version": __version__,
        "xs2mask_model": ",".join(names),
        "xs2mask_model_licence": "; ".join(s.spec.licence for s in plan.runs),
        "xs2mask_patch_size": ",".join(str(s.patch_size) for s in plan.runs),
        "xs2mask_overlap": ",".join(str(s.overlap) for s in plan.runs),
        "xs2mask_tta": plan.tta,
        "xs2mask_processing_resolution": processing_resolution or "input",
        "xs2mask_device": plan.runtime.device,
        "xs2mask_dtype": plan.runtime.dtype,
    }
    data_vars = {}
    i = 0
    if plan.output != "probability":
        mask = xr.DataArray(result[:, 0].astype(np.uint8), dims=("time", "y", "x"), attrs=mask_attrs())
        mask.encoding["_FillValue"] = NODATA
        data_vars["mask"] = mask
        i = 1
    if plan.output != "mask":
        scale = 1 / 255 if plan.probability_dtype == "uint8" else 1.0
        prob = xr.DataArray(
            result[:, i:],
            dims=("time", "class", "y", "x"),
            attrs={"long_name": "class probability", "scale_factor_to_probability": scale},
        )
        data_vars["probability"] = prob
    ds = xr.Dataset(data_vars, coords=keep, attrs=attrs)
    if plan.output != "mask":
        ds = ds.assign_coords(
            {"class": list(plan.classes), "class_name": ("class", [CLASS_NAMES[c] for c in plan.classes])}
        )
    if not had_time:
        ds = ds.squeeze("time", drop=True)
    return _keep_crs(ds, crs)


# The coordinates a mask keeps from its cube besides time/y/x: a loader's metadata (stackstac's ~40
# `proj:*`, `eo:*`, `s2:*`, object or text arrays) describes the input, and Zarr stores text badly.
_KEPT_COORDS = {"spatial_ref", "radiometric_offset"}


def _kept(name: object, coord: xr.DataArray) -> bool:
    """Whether the output keeps this input coordinate: its dims, the CRS, numeric per-date values."""
    if name in ("time", "y", "x") or name in _KEPT_COORDS:
        return True
    return coord.dims == ("time",) and coord.dtype.kind in "biuf"


def _keep_crs(ds: xr.Dataset, crs) -> xr.Dataset:
    if crs is None:
        return ds
    ds = ds.rio.write_crs(crs)
    for name in ds.data_vars:
        ds[name].attrs.pop("grid_mapping", None)
        ds[name].encoding["grid_mapping"] = "spatial_ref"
    return ds
