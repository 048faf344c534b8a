"""The numpy core of :func:`xs2mask.predict`: one block of a cube in, its mask out.

:func:`predict_block` takes a halo-extended block ``(time, band, y, x)`` and a
:class:`Plan` (what every block needs to know: the models, their tiling, the
output) and returns the block's mask and probabilities. It reads no metadata and
imports no xarray: :mod:`xs2mask.inference` checks the input, maps this over the
Dask blocks and wraps the result as a Dataset; a pipeline may call it on numpy
blocks directly.

Per date (``_predict_scene``): DN or reflectance to float32 reflectance, the
no-data and impossible values screened and filled, the pixels averaged down to the
processing resolution, each model run patch by patch on the global patch grid
(so the result does not depend on the chunking), the models averaged, the
probabilities upsampled back, then encoded.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np

from .classes import NODATA
from .exceptions import InputError, InputWarning
from .models.backends import Runtime, get_backend, load, softmax
from .models.spec import ModelSpec
from .tiling import TTA_TRANSFORMS, axis_grid, forward, inverse, margin

T = TypeVar("T")
R = TypeVar("R")

#: reflectance = (DN + offset) / DN_SCALE, the QUANTIFICATION_VALUE of L1C and L2A products
DN_SCALE = 10_000.0


@dataclass(frozen=True)
class ModelRun:
    """One model of the ensemble with its tiling and band positions in the block."""

    spec: ModelSpec
    patch_size: int
    overlap: int
    band_index: tuple[int, ...]

    @property
    def per_pixel(self) -> bool:
        """Whether the model classifies each pixel on its own (its backend says)."""
        return get_backend(self.spec.backend).per_pixel


@dataclass(frozen=True)
class Plan:
    """What every block needs to know; small and hashable, it travels in the graph."""

    runs: tuple[ModelRun, ...]
    runtime: Runtime
    classes: tuple[int, ...]  # output class codes, probability channel order
    bands: tuple[str, ...]  # ESA names of the block's bands, in order
    height: int
    width: int
    factor: int  # processing pixel = factor x factor input pixels
    halo: int
    tta: int
    batch_size: int  # 0: the loaded model's own (1 on the CPU, fitted to a GPU's memory)
    offset: float
    integer_input: bool
    output: Literal["mask", "probability", "both"]
    probability_dtype: str

    @property
    def n_out(self) -> int:
        n = 0 if self.output == "probability" else 1
        return n + (0 if self.output == "mask" else len(self.classes))

    @property
    def out_dtype(self) -> np.dtype:
        if self.output == "mask" or self.probability_dtype == "uint8":
            return np.dtype(np.uint8)
        return np.dtype(np.float16)


def block_halo(run: ModelRun, factor: int) -> int:
    """Input pixels each side a block needs so its patches match the whole array's.

    Examples
    --------
    >>> from xs2mask.models import get
    >>> block_halo(ModelRun(get("xs2mask-4b"), patch_size=256, overlap=64, band_index=(0, 1, 2, 3)), 1)
    242
    """
    # +2 processing pixels: bilinear upsampling reads one neighbour, plus rounding.
    if run.per_pixel:
        return 0 if factor == 1 else 2 * factor
    return factor * (run.patch_size - margin(run.overlap) + 2)


def predict_block(
    block: np.ndarray, plan: Plan, core_y: tuple[int, int], core_x: tuple[int, int]
) -> np.ndarray:
    """Predict the core of a halo-extended block ``(time, band, y, x)``.

    ``core_y``/``core_x`` are the global pixel ranges of the output; the block
    extends ``min(halo, distance to the array edge)`` beyond them on each side.

    Returns
    -------
    numpy.ndarray
        ``(time, n_out, core_h, core_w)``: the mask first (unless only
        probabilities were asked for), then one probability channel per class.

    Raises
    ------
    InputError
        If a float band holds DN rather than reflectance.

    Warns
    -----
    InputWarning
        Counting the values that cannot come from Sentinel-2, per band.

    Examples
    --------
    >>> from xs2mask.models import Runtime, get
    >>> spec = get("xs2mask-4b")
    >>> run = ModelRun(spec, patch_size=64, overlap=16, band_index=(0, 1, 2, 3))
    >>> plan = Plan(runs=(run,), runtime=Runtime(), classes=spec.classes, bands=spec.bands,
    ...             height=64, width=64, factor=1, halo=block_halo(run, 1), tta=0, batch_size=0,
    ...             offset=0.0, integer_input=False, output="mask", probability_dtype="uint8")
    >>> block = np.full((1, 4, 64, 64), 0.05, np.float32)  # one date of dark reflectance
    >>> predict_block(block, plan, (0, 64), (0, 64)).shape
    (1, 1, 64, 64)
    """
    top, left = min(plan.halo, core_y[0]), min(plan.halo, core_x[0])
    origin = (core_y[0] - top, core_x[0] - left)
    expected = (
        core_y[1] - core_y[0] + top + min(plan.halo, plan.height - core_y[1]),
        core_x[1] - core_x[0] + left + min(plan.halo, plan.width - core_x[1]),
    )
    if block.shape[2:] != expected:
        raise RuntimeError(f"internal error: block shape {block.shape[2:]} != expected {expected}")
    for t in range(0 if plan.integer_input else block.shape[0]):  # every date, before any model runs
        check_scale(block[t], plan.bands)
    out = np.empty((block.shape[0], plan.n_out, core_y[1] - core_y[0], core_x[1] - core_x[0]), plan.out_dtype)
    impossible, pixels = np.zeros(len(plan.bands), np.int64), 0
    for t in range(block.shape[0]):
        out[t], counts, spoiled = _predict_scene(block[t], plan, origin, core_y, core_x)
        impossible += counts
        pixels += spoiled
    if pixels:
        _warn_impossible(impossible, pixels, plan)
    return out


def _predict_scene(
    scene: np.ndarray,
    plan: Plan,
    origin: tuple[int, int],
    core_y: tuple[int, int],
    core_x: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, int]:
    """The encoded core of one date, with the impossible values per band and the pixels they spoil."""
    refl = _reflectance(scene, plan)
    nodata, spoiled, impossible = _screen(refl, plan)
    hidden = nodata
    if spoiled is not None:
        refl, hidden = _fill_spoiled(refl, nodata, spoiled)
    core = (
        slice(core_y[0] - origin[0], core_y[1] - origin[0]),
        slice(core_x[0] - origin[1], core_x[1] - origin[1]),
    )
    counts, n_impossible = np.zeros(len(plan.bands), np.int64), 0
    if impossible is not None:
        in_core = impossible[:, core[0], core[1]]
        counts, n_impossible = in_core.sum(axis=(1, 2)), int(in_core.any(axis=0).sum())
    f = plan.factor
    coarse, coarse_hidden = _coarsen(refl, hidden, f)
    n_y, n_x = -(-plan.height // f), -(-plan.width // f)
    g_y, g_x = origin[0] // f, origin[1] // f
    # processing-grid rows/cols whose values the core needs (bilinear reads one neighbour)
    need_y = _needed(core_y, f, n_y)
    need_x = _needed(core_x, f, n_x)
    probs = _run_model(plan.runs[0], plan, coarse, coarse_hidden, (g_y, g_x), (n_y, n_x), need_y, need_x)
    for run in plan.runs[1:]:
        probs += _run_model(run, plan, coarse, coarse_hidden, (g_y, g_x), (n_y, n_x), need_y, need_x)
    probs /= len(plan.runs)
    if f > 1:
        probs = _upsample(probs, need_y, need_x, core_y, core_x, f, (n_y, n_x))
    return _encode(probs, nodata[core], plan), counts, n_impossible


def _reflectance(scene: np.ndarray, plan: Plan) -> np.ndarray:
    if plan.integer_input:
        dn = scene.astype(np.float32)
        dn[scene == 0] = np.nan  # DN 0 is no-data in every band
        dn += np.float32(plan.offset)
        dn /= np.float32(DN_SCALE)
        return dn
    with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf: impossible, screened next
        return scene.astype(np.float32, copy=False)


# Reflectance Sentinel-2 can record: L1C and L2A store reflectance x 10000 (QUANTIFICATION_VALUE) in
# 15 bits, DN 1..32767 (0 is no-data, 65535 saturated), plus an offset of -1000 DN since processing
# baseline 04.00: -0.1 to 3.28. The bounds leave room for any offset predict() accepts (+-2000 DN:
# -0.2 to 3.48) and for resampling; beyond them (+-inf, 3e38, DN 65535, DN read as reflectance in
# one pixel) a value is not a measurement.
REFLECTANCE_RANGE = (-0.5, 3.5)
# A band whose median reflectance is above this is DN (a median of 2 is brighter than fresh snow).
_DN_MEDIAN = 2.0


def _screen(refl: np.ndarray, plan: Plan) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """No-data pixels; the spoiled ones among them; the impossible values (None: there are none).

    A pixel is no-data (255 in the mask) when any band is NaN (DN 0, a missing read) or impossible,
    or (float input) every band is 0. It is *spoiled* when some of its bands are measured: one bad
    value, not a hole in the data.
    """
    lo, hi = REFLECTANCE_RANGE
    with np.errstate(invalid="ignore"):
        measured = refl >= lo  # False for NaN and -inf
        measured &= refl <= hi
    nodata = ~np.all(measured, axis=0)
    if not plan.integer_input:
        nodata |= np.all(refl == 0, axis=0)
    if not nodata.any():
        return nodata, None, None
    missing = np.isnan(refl)
    spoiled = nodata & ~np.all(missing, axis=0)
    if not plan.integer_input:
        spoiled &= ~np.all(refl == 0, axis=0)
    impossible = ~measured
    impossible &= ~missing
    return nodata, spoiled if spoiled.any() else None, impossible if impossible.any() else None


def _fill_spoiled(refl: np.ndarray, nodata: np.ndarray, spoiled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Give each spoiled pixel the mean of its valid 8 neighbours, band by band.

    Returns the filled copy of ``refl`` and the pixels the model must not see (the no-data fill,
    the normalised mean, goes there): the no-data pixels less the filled ones. A filled pixel stays
    no-data (255) in the mask; the fill only keeps its neighbours' context. On the demo scene one
    +inf given the no-data fill changes the class of 54 to 540 other pixels, up to 326 pixels away
    (the models' receptive field spans the patch); given its neighbours' mean, of 0 or 1
    (benchmarks/bad_pixel.py). Over 250 random bad pixels of the demo scene no probability elsewhere
    moved by more than 0.02, and 0.5-0.9 other pixels per bad one changed class: near ties. Chunking does not
    change the fill: patches never read the outer 3 pixels of a block's halo, so every pixel they
    read has its neighbours in the block.
    """
    ys, xs = np.nonzero(spoiled)
    h, w = spoiled.shape
    total = np.zeros((refl.shape[0], ys.size), np.float64)
    count = np.zeros(ys.size, np.int64)
    for dy, dx in ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)):
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        ny, nx = np.clip(ny, 0, h - 1), np.clip(nx, 0, w - 1)
        good = inside & ~nodata[ny, nx]
        total += np.where(good, refl[:, ny, nx], 0.0)
        count += good
    filled = count > 0
    refl = refl.copy()  # may be the caller's float32 array
    refl[:, ys[filled], xs[filled]] = (total[:, filled] / count[filled]).astype(np.float32)
    hidden = nodata.copy()
    hidden[ys[filled], xs[filled]] = False
    return refl, hidden


def _warn_impossible(counts: np.ndarray, pixels: int, plan: Plan) -> None:
    per_band = ", ".join(f"{band}: {int(n)}" for band, n in zip(plan.bands, counts, strict=True) if n)
    lo, hi = REFLECTANCE_RANGE
    what = (
        f"DN whose reflectance (DN + {plan.offset:g}) / 10000 is outside [{lo}, {hi}] (DN 65535 is "
        "saturated; real DN have 15 bits)"
        if plan.integer_input
        else f"+-inf, or reflectance outside [{lo}, {hi}]"
    )
    warnings.warn(
        f"{int(counts.sum())} value(s) in {pixels} pixel(s) cannot come from Sentinel-2 ({per_band}): "
        f"{what}. Those pixels are no-data (255) in the mask; the model read their neighbours' mean "
        "there, so the pixels around them keep their classes. Check the input's scale and offset, "
        "or set such values to NaN (no-data) beforehand to silence this.",
        InputWarning,
        stacklevel=2,
    )


def measured_values(values: np.ndarray) -> np.ndarray:
    """A band's values that tell its scale: 0 and NaN are no-data, +-inf impossible."""
    return values[np.isfinite(values) & (values != 0)]


def check_scale(scene: np.ndarray, bands: Sequence[str]) -> None:
    """Refuse a float band whose values are DN: read as reflectance, they are all "bright".

    Integer bands are DN by definition: their impossible values are screened per pixel instead.

    Raises
    ------
    InputError
        If a band's median (of a strided sample, no-data left out) is above 2, naming the fix.

    Examples
    --------
    >>> check_scale(np.full((1, 8, 8), 0.2, np.float32), ["B02"])  # reflectance: fine
    >>> check_scale(np.full((1, 8, 8), 2000.0, np.float32), ["B02"])
    Traceback (most recent call last):
    ...
    xs2mask.exceptions.InputError: band B02 is float but looks like DN, not reflectance (median 2000): ...
    """

    # A strided sample of ~10^4 pixels per band is plenty for a median.
    step = max(1, math.isqrt(scene[0].size // 10_000))
    for band, values in zip(bands, scene, strict=True):
        sample = measured_values(values[::step, ::step])
        if sample.size == 0 and step > 1:
            sample = measured_values(values)  # a sparse band whose few valid pixels the sample missed
        median = float(np.median(sample)) if sample.size else 0.0
        if median > _DN_MEDIAN:
            # Percent reflectance (0-100) has medians of 2-60; DN that low would be black water.
            percent = " If it is reflectance in percent, divide it by 100." if median <= 100 else ""
            raise InputError(
                f"band {band} is float but looks like DN, not reflectance (median {median:.0f}): "
                "divide it by 10000 (after adding any baseline-04.00 offset: (cube - 1000) / 10000), or "
                "pass the DN as integers (cube.fillna(0).astype('uint16')) with offset=-1000 for "
                f"baseline 04.00 and later.{percent}"
            )


def _coarsen(refl: np.ndarray, nodata: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    if f == 1:
        return refl, nodata
    c, h, w = refl.shape
    ph, pw = -(-h // f) * f, -(-w // f) * f
    padded = np.full((c, ph, pw), np.nan, np.float32)
    padded[:, :h, :w] = np.where(nodata, np.nan, refl)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows are no-data
        coarse = np.nanmean(padded.reshape(c, ph // f, f, pw // f, f), axis=(2, 4))
    return coarse, np.all(np.isnan(coarse), axis=0)


def _needed(core: tuple[int, int], f: int, n: int) -> tuple[int, int]:
    if f == 1:
        return core
    lo = math.floor((core[0] + 0.5) / f - 0.5)
    hi = math.floor((core[1] - 0.5) / f - 0.5) + 2
    return max(lo, 0), min(hi, n)


def _run_model(
    run: ModelRun,
    plan: Plan,
    coarse: np.ndarray,
    nodata: np.ndarray,
    origin: tuple[int, int],
    size: tuple[int, int],
    need_y: tuple[int, int],
    need_x: tuple[int, int],
) -> np.ndarray:
    """Blend one model's patch predictions over ``need_y x need_x`` (processing grid).

    ``coarse``/``nodata`` are the block on the processing grid, its first pixel at global
    ``origin``; ``size`` is the whole array's. Four steps: where the patches lie
    (:func:`_patch_layout`), their normalised input (:func:`_model_input`), the model on them
    (:func:`_predict_patches`), their weighted sum (:func:`_blend`).
    """
    layout = _patch_layout(run, size, need_y, need_x)
    canvas = _model_input(run, layout, coarse, nodata, origin, size)
    work, results = _predict_patches(run, plan, layout, canvas)
    acc, wsum = _blend(run, plan, layout, work, results)
    ys = slice(need_y[0] - layout.start[0], need_y[1] - layout.start[0])
    xs = slice(need_x[0] - layout.start[1], need_x[1] - layout.start[1])
    w, out = wsum[ys, xs], acc[:, ys, xs]
    # where no patch weighs (w == 0) the accumulator is 0 as well, and stays so
    return np.divide(out, w, out=out, where=w > 0)


@dataclass(frozen=True, eq=False)
class _Layout:
    """Where one model's patches lie for one block, in global processing coordinates."""

    patch: tuple[int, int]  # edge of a patch along y and x
    origins: tuple[np.ndarray, np.ndarray]  # of the patches along y and x
    start: tuple[int, int]  # the canvas covering every patch: [start, stop)
    stop: tuple[int, int]
    weight: np.ndarray  # blending weights of one patch

    @property
    def shape(self) -> tuple[int, int]:
        return self.stop[0] - self.start[0], self.stop[1] - self.start[1]


def _patch_layout(
    run: ModelRun, size: tuple[int, int], need_y: tuple[int, int], need_x: tuple[int, int]
) -> _Layout:
    """The patches whose weight touches ``need_y x need_x``, and the canvas that holds them."""
    if run.per_pixel:  # no context needed: patches tile just the needed region
        extent, shift = (need_y[1] - need_y[0], need_x[1] - need_x[0]), (need_y[0], need_x[0])
    else:  # patches on the global grid, whatever the block
        extent, shift = size, (0, 0)
    fixed = run.spec.fixed_patch_size
    grids = [axis_grid(extent[i], run.patch_size, run.overlap, fixed=fixed) for i in (0, 1)]
    oy = grids[0].origins(need_y[0] - shift[0], need_y[1] - shift[0]) + shift[0]
    ox = grids[1].origins(need_x[0] - shift[1], need_x[1] - shift[1]) + shift[1]
    py, px = grids[0].patch, grids[1].patch
    return _Layout(
        patch=(py, px),
        origins=(oy, ox),
        start=(int(oy[0]), int(ox[0])),
        stop=(int(oy[-1]) + py, int(ox[-1]) + px),
        weight=grids[0].window()[:, None] * grids[1].window()[None, :],
    )


@dataclass(frozen=True, eq=False)
class _Canvas:
    """One model's normalised input under its patches, and what each patch may use."""

    data: np.ndarray  # (band, y, x): no-data at the normalised mean, mirrored beyond the array edge
    valid: np.ndarray  # (y, x): pixels with data (none beyond the array edge)
    band_ok: np.ndarray | None  # (band, y, x) usable values, for per-patch statistics; None: fixed ones

    def cut(self, y: int, x: int, patch: tuple[int, int]) -> np.ndarray:
        """The model input of the patch at canvas position ``(y, x)``."""
        window = (slice(None), slice(y, y + patch[0]), slice(x, x + patch[1]))
        return self.data[window] if self.band_ok is None else _zscore(self.data[window], self.band_ok[window])


def _model_input(
    run: ModelRun,
    layout: _Layout,
    coarse: np.ndarray,
    nodata: np.ndarray,
    origin: tuple[int, int],
    size: tuple[int, int],
) -> _Canvas:
    """The model's bands under the canvas, normalised, with no-data at 0 and the array edge mirrored."""
    spec = run.spec
    src, pad, extra = _source_window(run, layout, origin, coarse.shape[1:], size)
    # a copy of just the bands and rows the patches read, normalised in place: every full-size
    # temporary costs a pass over memory and, in a fresh process, its page faults
    data = coarse[:, src[0], src[1]][list(run.band_index)]
    ok = ~nodata[src[0], src[1]]
    per_patch = spec.normalisation == "patch"
    if not per_patch:
        data -= np.asarray(spec.mean, np.float32)[:, None, None]
        data /= np.asarray(spec.std, np.float32)[:, None, None]
    usable = ~np.isnan(data)
    usable &= ok
    # No-data and NaN get the normalised mean (0), as a zero-padded convolution sees;
    # beyond the array edge the image is mirrored, as ukis-csmask does.
    np.copyto(data, np.float32(0), where=~usable)
    edges = ((0, 0), *pad)
    mirrored = any(map(any, pad))
    # The pixels read only for the mirror come off again once it is made. They lie on the side
    # away from the edge mirrored (a canvas that passes the array's end starts inside it), so the
    # canvas is one slice of the padded array.
    (ey0, ey1), (ex0, ex1) = extra
    core = ok[ey0 : ok.shape[0] - ey1, ex0 : ok.shape[1] - ex1]
    if mirrored:
        keep = (
            slice(None),
            slice(ey0, ey0 + core.shape[0] + sum(pad[0])),
            slice(ex0, ex0 + core.shape[1] + sum(pad[1])),
        )
        data = np.pad(data, edges, mode="symmetric")[keep]
        if per_patch:  # per-patch statistics count the mirrored pixels too: they are image content
            usable = np.pad(usable, edges, mode="symmetric")[keep]
    return _Canvas(data=data, valid=np.pad(core, pad, mode="constant"), band_ok=usable if per_patch else None)


def _source_window(
    run: ModelRun, layout: _Layout, origin: tuple[int, int], shape: tuple[int, ...], size: tuple[int, int]
) -> tuple[list[slice], list[tuple[int, int]], list[tuple[int, int]]]:
    """The block's pixels under the canvas, per axis; how far the canvas reaches past the array; and
    how many more pixels (before, after) the mirror beyond the array edge reflects.

    The mirror must reflect the image's pixels next to its edge, whatever part of them the canvas
    covers: a block whose canvas holds only the last 72 columns of a 512 px scene mirrored those
    72 columns again and again into a 184 px overhang, where the whole scene mirrors 184 of its own.
    """
    src, pad, extra = [], [], []
    for i in (0, 1):
        lo, hi = max(layout.start[i], 0), min(layout.stop[i], size[i])
        if lo < origin[i] or hi > origin[i] + shape[i]:
            if not run.per_pixel:  # per-pixel models need no context beyond the block
                raise RuntimeError("internal error: patches reach beyond the block's halo")
            lo, hi = max(lo, origin[i]), min(hi, origin[i] + shape[i])
        before, after = lo - layout.start[i], layout.stop[i] - hi
        mirror_lo, mirror_hi = lo, hi
        if not run.per_pixel:
            if after:  # the canvas passes the array's end: it mirrors the last `after` pixels
                mirror_lo = max(min(lo, size[i] - after), 0)
            if before:  # and its start: the first `before` pixels
                mirror_hi = min(max(hi, before), size[i])
            if mirror_lo < origin[i] or mirror_hi > origin[i] + shape[i]:
                raise RuntimeError("internal error: the mirror beyond the array edge reaches past the block")
        src.append(slice(mirror_lo - origin[i], mirror_hi - origin[i]))
        pad.append((before, after))
        extra.append((lo - mirror_lo, mirror_hi - hi))
    return src, pad, extra


#: patches run together: a TTA transform and the canvas positions of the patches
_Work = tuple[tuple[int, bool], list[tuple[int, int]]]


def _predict_patches(
    run: ModelRun, plan: Plan, layout: _Layout, canvas: _Canvas
) -> tuple[list[_Work], Iterator[list[np.ndarray]]]:
    """The batches of patches holding data, and (lazily, in their order) each patch's weighted
    class probabilities, the model running ``concurrency`` batches at a time."""
    spec = run.spec
    predictor = load(spec, plan.runtime)
    step = plan.batch_size or predictor.batch_size
    py, px = layout.patch
    patches = [
        (y, x)
        for y in layout.origins[0] - layout.start[0]
        for x in layout.origins[1] - layout.start[1]
        if canvas.valid[y : y + py, x : x + px].any()
    ]
    work = [
        (transform, patches[start : start + step])
        for transform in TTA_TRANSFORMS[: plan.tta + 1]
        for start in range(0, len(patches), step)
    ]

    # third-party predictors may predate `pooled`
    slots = _core_slots(predictor.concurrency) if getattr(predictor, "pooled", False) else nullcontext()

    def weighted(item: _Work) -> list[np.ndarray]:
        transform, chunk = item
        batch = np.stack([forward(canvas.cut(y, x, layout.patch), transform) for y, x in chunk])
        with slots:
            out = predictor(batch)
        prob = softmax(out) if spec.outputs == "logits" else out
        # in place: the batch's probabilities are not used again
        return [np.multiply(q, layout.weight, out=q) for q in (inverse(p, transform) for p in prob)]

    return work, _ordered_map(weighted, work, predictor.concurrency)


def _blend(
    run: ModelRun, plan: Plan, layout: _Layout, work: list[_Work], results: Iterator[list[np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """The patches' weighted probabilities summed on the canvas (plan's class order), and their weights."""
    py, px = layout.patch
    acc = np.zeros((len(plan.classes), *layout.shape), np.float32)
    wsum = np.zeros(layout.shape, np.float32)
    order = np.array([plan.classes.index(c) for c in run.spec.classes])
    # A model with every output class, in order, accumulates through a view instead of a
    # fancy-indexed gather and scatter of the whole patch.
    channel: slice | np.ndarray = slice(None) if order.tolist() == list(range(len(plan.classes))) else order
    # summed in the order of ``work`` whatever runs concurrently: the same floats every time
    for (transform, chunk), probs in zip(work, results, strict=True):
        for (y, x), p in zip(chunk, probs, strict=True):
            acc[channel, y : y + py, x : x + px] += p
            if transform == TTA_TRANSFORMS[0]:
                wsum[y : y + py, x : x + px] += layout.weight
    wsum *= plan.tta + 1
    return acc, wsum


def _zscore(patch: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Each band minus its mean over the valid pixels, over their standard deviation; 0 elsewhere.

    OmniCloudMask's ``channel_norm``: the statistics are the patch's own, so any scale or
    offset of the input (DN, reflectance, a baseline offset) cancels out.
    """
    out = np.zeros(patch.shape, np.float32)
    for band, (values, good) in enumerate(zip(patch, ok, strict=True)):
        v = values[good]
        if v.size:
            std = v.std()
            out[band][good] = (v - v.mean()) / (std if std != 0 else np.float32(1))
    return out


def _upsample(
    probs: np.ndarray,
    need_y: tuple[int, int],
    need_x: tuple[int, int],
    core_y: tuple[int, int],
    core_x: tuple[int, int],
    f: int,
    size: tuple[int, int],
) -> np.ndarray:
    """Bilinear, pixel-centre aligned, clamped at the array edge: independent of chunking."""
    for axis, (need, core, n) in enumerate(((need_y, core_y, size[0]), (need_x, core_x, size[1]))):
        u = (np.arange(core[0], core[1]) + 0.5) / f - 0.5
        lo = np.floor(u).astype(int)
        frac = (u - lo).astype(np.float32)
        i0 = np.clip(lo, 0, n - 1) - need[0]
        i1 = np.clip(lo + 1, 0, n - 1) - need[0]
        a = np.take(probs, i0, axis=axis + 1)
        b = np.take(probs, i1, axis=axis + 1)
        shape = [1, 1, 1]
        shape[axis + 1] = -1
        frac = frac.reshape(shape)
        probs = a * (1 - frac) + b * frac
    return probs


def _ordered_map(function: Callable[[T], R], items: Sequence[T], workers: int) -> Iterator[R]:
    """``map(function, items)``, ``workers`` calls at a time, results in order.

    At most ``2 * workers`` results wait to be consumed, so memory stays bounded.
    """
    if workers <= 1 or len(items) <= 1:
        yield from map(function, items)
        return
    with ThreadPoolExecutor(min(workers, len(items))) as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


_SLOTS: dict[tuple[int, int], threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


def _core_slots(cores: int) -> threading.BoundedSemaphore:
    """One semaphore of ``cores`` slots per process: the model calls of every block running at once
    take a core each from it. Blocks then share the cores as they come and go (the last block of a
    batch gets them all), where cores split between the blocks in advance leave some idle at the end
    and a set per block oversubscribes them."""
    key = (os.getpid(), cores)  # a semaphore held across a fork is not the child's
    with _SLOTS_LOCK:
        if key not in _SLOTS:
            _SLOTS[key] = threading.BoundedSemaphore(cores)
        return _SLOTS[key]


def _top_class(probs: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    """``classes[argmax(probs, axis=0)]`` (first class on ties), in about half of argmax's time.

    ``np.argmax`` over the leading axis of a few channels is a strided reduction; a
    running maximum over the contiguous channel planes is not.
    """
    best = probs[0].copy()
    codes = np.full(best.shape, classes[0], np.uint8)
    better = np.empty(best.shape, bool)
    for channel, code in zip(probs[1:], classes[1:], strict=True):
        np.greater(channel, best, out=better)
        np.copyto(codes, np.uint8(code), where=better)
        np.maximum(best, channel, out=best)
    return codes


def _encode(probs: np.ndarray, nodata: np.ndarray, plan: Plan) -> np.ndarray:
    parts = []
    if plan.output != "probability":
        codes = _top_class(probs, plan.classes)
        codes[nodata] = NODATA
        parts.append(codes[None].astype(plan.out_dtype))
    if plan.output != "mask":
        if plan.probability_dtype == "uint8":
            p = np.rint(np.clip(probs, 0, 1) * 255).astype(np.uint8)
            p[:, nodata] = 0
        else:
            p = probs.astype(np.float16)
            p[:, nodata] = np.nan
        parts.append(p)
    return np.concatenate(parts, axis=0)
