"""Measured statistics of cloud shadows and clouds on labelled scenes, real or simulated.

The same functions measure human-labelled scenes (CloudSEN12) and the output of
:func:`xs2mask.training.simulate.simulate` with its exact labels, so that the simulator can be fitted
to what the labels say (``benchmarks/shadow_stats.py``, ``docs/training.md``). Numpy only.

Darkening
    The ratio of a shadow pixel's reflectance to the mean of *nearby clear pixels of the same land
    cover*: clear pixels in a ring ``ring`` pixels (Chebyshev distance) outside every shadow and
    cloud, within ``ring[1]`` pixels of the shadow pixel. Nearby, because the ground under a shadow is
    most like the ground beside it; the inner gap, because the labelled edge is not exact (penumbra,
    a generous or tight outline) and the first pixels outside are half shaded; same land cover,
    because a shadow on a field next to a lake would otherwise be compared with water. Land cover is
    read from the pixel itself by NDVI, which a shadow changes little (it darkens red and NIR by
    similar factors), and water by a dark NIR with negative NDVI. A pixel whose window holds fewer
    than ``min_reference`` reference pixels (deep inside a large shadow) is left out.
Penumbra
    Reflectance profiles along the outward normal of the labelled shadow edge, each normalised from
    its shadow level (mean of its inner end) to its clear level (mean of its outer end); the width is
    the distance between the 10 % and 90 % levels of the median profile (and of each profile).
Displacement
    The shift ``(dy, dx)`` that overlays most of the thick-cloud mask onto the shadow mask (their
    cross-correlation by FFT, shifts up to ``max_shift`` pixels), with the direction the shadow lies
    from its cloud and the cloud height it implies, ``h = length tan(sun elevation)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..classes import CLEAR, CLOUD_SHADOW, THICK_CLOUD, THIN_CLOUD

__all__ = [
    "LAND_COVERS",
    "Displacement",
    "Penumbra",
    "Quartiles",
    "class_reflectance",
    "cloud_height",
    "dilate",
    "displacement",
    "land_cover",
    "penumbra",
    "shadow_darkening",
]

LAND_COVERS = ("vegetation", "bare", "water")  # codes 0, 1, 2 of land_cover
_NDVI_VEGETATION = 0.4
_NIR_WATER = 0.05


@dataclass(frozen=True)
class Quartiles:
    """Median and quartiles of ``n`` values (NaN when ``n`` is 0)."""

    q25: float
    median: float
    q75: float
    n: int

    @classmethod
    def of(cls, values: np.ndarray) -> Quartiles:
        """Quartiles of the finite ``values``.

        Examples
        --------
        >>> Quartiles.of(np.array([1.0, 2.0, 3.0, np.nan]))
        Quartiles(q25=1.5, median=2.0, q75=2.5, n=3)
        """
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        if v.size == 0:
            return cls(math.nan, math.nan, math.nan, 0)
        q25, q50, q75 = np.quantile(v, [0.25, 0.5, 0.75])
        return cls(float(q25), float(q50), float(q75), int(v.size))


@dataclass(frozen=True)
class Penumbra:
    """Width of the transition across labelled shadow edges.

    Attributes
    ----------
    width_px : 10-90 % width of the median normalised profile, pixels.
    offset_px : where the median profile crosses 50 %, pixels outside (+) or inside (-) the label edge.
    per_profile : quartiles of the 10-90 % widths of the single profiles, pixels.
    profile : the median normalised profile, sampled at ``positions_px``.
    positions_px : distance along the outward normal from the edge pixel's centre.
    """

    width_px: float
    offset_px: float
    per_profile: Quartiles
    profile: tuple[float, ...]
    positions_px: tuple[float, ...]


@dataclass(frozen=True)
class Displacement:
    """Shift from the thick-cloud mask to the shadow mask.

    Attributes
    ----------
    dy, dx : pixels; rows grow southwards, columns eastwards.
    length_px : ``hypot(dy, dx)``.
    azimuth_deg : direction the shadow lies from its cloud, clockwise from north (the sun is opposite).
    overlap : share of the shadow mask the shifted cloud mask covers.
    """

    dy: int
    dx: int
    length_px: float
    azimuth_deg: float
    overlap: float

    def to_dict(self) -> dict[str, float]:
        """Plain values for JSON."""
        return asdict(self)


def land_cover(red: np.ndarray, nir: np.ndarray) -> np.ndarray:
    """Land cover code per pixel: 0 vegetation (NDVI > 0.4), 2 water (NIR < 0.05, NDVI < 0), 1 else.

    Examples
    --------
    >>> land_cover(np.array([0.04, 0.2, 0.03]), np.array([0.3, 0.25, 0.02])).tolist()
    [0, 1, 2]
    """
    red = np.asarray(red, dtype=np.float32)
    nir = np.asarray(nir, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        ndvi = (nir - red) / (nir + red)
    codes = np.ones(red.shape, np.uint8)
    codes[ndvi > _NDVI_VEGETATION] = 0
    codes[(nir < _NIR_WATER) & (ndvi < 0)] = 2
    return codes


def _box_sum(a: np.ndarray, radius: int) -> np.ndarray:
    """Sum of ``a`` over the (2r+1)^2 window around each pixel, zero outside the image (float64)."""
    out = np.asarray(a, dtype=np.float64)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius + 1, radius)
        c = np.cumsum(np.pad(out, pad), axis=axis)
        n = out.shape[axis]
        out = np.take(c, np.arange(2 * radius + 1, 2 * radius + 1 + n), axis=axis) - np.take(
            c, np.arange(n), axis=axis
        )
    return out


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within Chebyshev distance ``radius`` of ``mask`` (a square structuring element).

    Examples
    --------
    >>> m = np.zeros((5, 5), bool); m[2, 2] = True
    >>> int(dilate(m, 1).sum())
    9
    """
    if radius <= 0:
        return np.asarray(mask, bool).copy()
    return _box_sum(mask, radius) > 0.5


def shadow_darkening(
    reflectance: np.ndarray,
    labels: np.ndarray,
    *,
    land: np.ndarray | None = None,
    ring: tuple[int, int] = (5, 30),
    min_reference: int = 20,
) -> dict[str, list[Quartiles]]:
    """Ratio of shadow reflectance to nearby clear reflectance of the same land cover, per band.

    Parameters
    ----------
    reflectance
        ``(band, y, x)`` reflectance.
    labels
        ``(y, x)`` 0 clear, 1 thick, 2 thin cloud, 3 shadow (other values are ignored).
    land
        ``(y, x)`` land cover codes (:func:`land_cover`); None: one class, reported as ``"all"``.
    ring
        Inner and outer Chebyshev distance, pixels, of the clear reference pixels from any shadow
        (the inner one also from any cloud); the outer one is also the reference window's radius.
    min_reference
        Fewest reference pixels a shadow pixel's window must hold.

    Returns
    -------
    dict
        Land cover name (``LAND_COVERS`` or ``"all"``) -> one :class:`Quartiles` per band; classes
        without measured pixels are left out.

    Examples
    --------
    >>> refl = np.full((1, 80, 80), 0.2, np.float32)
    >>> labels = np.zeros((80, 80), np.uint8); labels[30:50, 30:50] = 3
    >>> refl[:, labels == 3] *= 0.4
    >>> round(shadow_darkening(refl, labels)["all"][0].median, 3)
    0.4
    """
    refl = np.asarray(reflectance, dtype=np.float32)
    labels = np.asarray(labels)
    inner, outer = ring
    shadow = labels == CLOUD_SHADOW
    cloud = (labels == THICK_CLOUD) | (labels == THIN_CLOUD)
    reference = (labels == CLEAR) & dilate(shadow, outer) & ~dilate(shadow | cloud, inner)
    classes = ["all"] if land is None else list(LAND_COVERS)
    codes = np.zeros(labels.shape, np.uint8) if land is None else np.asarray(land)
    result: dict[str, list[Quartiles]] = {}
    for code, name in enumerate(classes):
        ref_c = reference & (codes == code)
        target = shadow & (codes == code)
        if not target.any() or not ref_c.any():
            continue
        count = _box_sum(ref_c, outer)
        target &= count >= min_reference
        if not target.any():
            continue
        per_band = []
        for band in refl:
            mean = _box_sum(np.where(ref_c, band, 0.0), outer)[target] / count[target]
            with np.errstate(divide="ignore", invalid="ignore"):
                per_band.append(Quartiles.of(band[target] / mean))
        result[name] = per_band
    return result


def _rise(t: np.ndarray, p: np.ndarray, low: float = 0.1, high: float = 0.9) -> tuple[float, float]:
    """(10-90 % width, 50 % position) of a normalised profile ``p`` at positions ``t``, made monotone."""
    mono = np.maximum.accumulate(np.clip(p, 0.0, 1.0))
    if mono[0] > low or mono[-1] < high:
        return math.nan, math.nan
    # First position where the rising envelope reaches each level, linearly interpolated.
    at = []
    for level in (low, 0.5, high):
        i = int(np.argmax(mono >= level))
        if i == 0:
            at.append(float(t[0]))
            continue
        f = (level - mono[i - 1]) / max(mono[i] - mono[i - 1], 1e-12)
        at.append(float(t[i - 1] + f * (t[i] - t[i - 1])))
    return at[2] - at[0], at[1]


def _bilinear(image: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``image`` at fractional pixel positions (clamped to the image)."""
    h, w = image.shape
    y = np.clip(y, 0.0, h - 1.0)
    x = np.clip(x, 0.0, w - 1.0)
    y0 = np.minimum(np.floor(y).astype(np.intp), h - 2)
    x0 = np.minimum(np.floor(x).astype(np.intp), w - 2)
    fy, fx = y - y0, x - x0
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def penumbra(
    signal: np.ndarray,
    labels: np.ndarray,
    *,
    half_length: float = 10.0,
    step: float = 0.5,
    end_px: float = 3.0,
    min_contrast: float = 1.25,
    normal_radius: int = 3,
) -> Penumbra:
    """Width of the shadow-to-clear transition across labelled shadow edges.

    Parameters
    ----------
    signal
        ``(y, x)`` one band (NIR where there is one: it darkens most) or a mean of bands.
    labels
        ``(y, x)`` class labels; a profile is kept only where its inner half (beyond 1 px) is labelled
        shadow and its outer half clear.
    half_length
        Profile length on each side of the edge pixel, pixels.
    step
        Sample spacing along the profile, pixels.
    end_px
        The shadow and clear levels are the means of the profile's last ``end_px`` on each side.
    min_contrast
        Profiles whose clear level is not this many times the shadow level are noise and left out.
    normal_radius
        Box smoothing (pixels) of the shadow mask before its gradient gives the edge normal.

    Examples
    --------
    >>> x = np.arange(64, dtype=np.float64)
    >>> row = 0.1 + 0.2 * (x >= 32)  # a sharp edge: all the rise within one sample step
    >>> labels = np.where(x < 32, 3, 0)[None, :].repeat(64, axis=0).astype(np.uint8)
    >>> p = penumbra(np.tile(row, (64, 1)), labels)
    >>> p.width_px <= 1.0
    True
    """
    sig = np.asarray(signal, dtype=np.float64)
    labels = np.asarray(labels)
    shadow = labels == CLOUD_SHADOW
    clear = labels == CLEAR
    # Edge pixels: shadow with a clear 4-neighbour.
    near_clear = np.zeros_like(clear)
    near_clear[1:] |= clear[:-1]
    near_clear[:-1] |= clear[1:]
    near_clear[:, 1:] |= clear[:, :-1]
    near_clear[:, :-1] |= clear[:, 1:]
    ey, ex = np.nonzero(shadow & near_clear)
    t = np.arange(-half_length, half_length + step / 2, step)
    empty = Penumbra(math.nan, math.nan, Quartiles.of(np.array([])), (), tuple(float(v) for v in t))
    if ey.size == 0:
        return empty
    smooth = _box_sum(shadow, normal_radius)
    gy, gx = np.gradient(smooth)
    ny, nx = -gy[ey, ex], -gx[ey, ex]  # outward: towards less shadow
    norm = np.hypot(ny, nx)
    keep = norm > 1e-9
    ey, ex, ny, nx = ey[keep], ex[keep], ny[keep] / norm[keep], nx[keep] / norm[keep]
    ys = ey[:, None] + ny[:, None] * t[None, :]
    xs = ex[:, None] + nx[:, None] * t[None, :]
    h, w = sig.shape
    inside = (ys >= 0) & (ys <= h - 1) & (xs >= 0) & (xs <= w - 1)
    yi = np.clip(np.rint(ys).astype(np.intp), 0, h - 1)
    xi = np.clip(np.rint(xs).astype(np.intp), 0, w - 1)
    lab = labels[yi, xi]
    ok = inside.all(axis=1)
    ok &= np.where(t[None, :] <= -1.0, lab == CLOUD_SHADOW, True).all(axis=1)
    ok &= np.where(t[None, :] >= 1.0, lab == CLEAR, True).all(axis=1)
    if not ok.any():
        return empty
    prof = _bilinear(sig, ys[ok], xs[ok])
    lo = prof[:, t <= -half_length + end_px].mean(axis=1)
    hi = prof[:, t >= half_length - end_px].mean(axis=1)
    contrast = (lo > 0) & (hi >= min_contrast * lo)
    if not contrast.any():
        return empty
    norm_prof = (prof[contrast] - lo[contrast, None]) / (hi[contrast] - lo[contrast])[:, None]
    widths = np.array([_rise(t, p)[0] for p in norm_prof])
    median = np.median(norm_prof, axis=0)
    width, offset = _rise(t, median)
    return Penumbra(
        width_px=width,
        offset_px=offset,
        per_profile=Quartiles.of(widths),
        profile=tuple(float(v) for v in median),
        positions_px=tuple(float(v) for v in t),
    )


def displacement(cloud: np.ndarray, shadow: np.ndarray, *, max_shift: int) -> Displacement | None:
    """The shift of ``cloud`` that covers most of ``shadow`` (both ``(y, x)`` masks), or None when
    either mask is empty.

    Shifts are limited to ``hypot(dy, dx) <= max_shift`` pixels; ties go to the shorter shift.

    Examples
    --------
    >>> cloud = np.zeros((64, 64), bool); cloud[10:20, 10:25] = True
    >>> shadow = np.roll(cloud, (7, -4), axis=(0, 1)) & ~cloud
    >>> d = displacement(cloud, shadow, max_shift=20)
    >>> (d.dy, d.dx)
    (7, -4)
    """
    cloud = np.asarray(cloud, bool)
    shadow = np.asarray(shadow, bool)
    if not cloud.any() or not shadow.any():
        return None
    h, w = cloud.shape
    size = (2 * h, 2 * w)
    # corr[dy, dx] = number of pixels x with cloud[x] and shadow[x + (dy, dx)]; negative shifts wrap.
    corr = np.fft.irfft2(
        np.fft.rfft2(shadow.astype(np.float64), size) * np.conj(np.fft.rfft2(cloud.astype(np.float64), size)),
        size,
    )
    dy = np.fft.fftfreq(size[0], 1.0 / size[0])[:, None]
    dx = np.fft.fftfreq(size[1], 1.0 / size[1])[None, :]
    length = np.hypot(dy, dx)
    score = np.where(length <= max_shift, np.rint(corr), -1.0)
    best = score.max()
    # Among equal overlaps the shortest shift: a shadow fully covered stays covered a little further.
    candidates = np.flatnonzero(score.ravel() == best)
    i = candidates[np.argmin(length.ravel()[candidates])]
    iy, ix = np.unravel_index(i, score.shape)
    sy, sx = int(dy[iy, 0]), int(dx[0, ix])
    return Displacement(
        dy=sy,
        dx=sx,
        length_px=float(math.hypot(sy, sx)),
        azimuth_deg=float(math.degrees(math.atan2(sx, -sy)) % 360.0),
        overlap=float(best / shadow.sum()),
    )


def cloud_height(length_m: float, sun_elevation_deg: float) -> float:
    """Height of a cloud whose shadow lies ``length_m`` away on flat ground, metres (nadir view).

    Examples
    --------
    >>> round(cloud_height(1000.0, 45.0))
    1000
    """
    return length_m * math.tan(math.radians(sun_elevation_deg))


def class_reflectance(
    reflectance: np.ndarray, labels: np.ndarray, bands: Sequence[str]
) -> dict[str, dict[str, Quartiles]]:
    """Brightness, NIR and flatness of the pixels of each label class (what "thick" means).

    Per class (``clear``, ``thick``, ``thin``, ``shadow``): ``visible`` the mean of B02-B04,
    ``B08`` when given, ``whiteness`` Fmask's ``sum |b - mean| / mean`` over the visible bands (0 for a
    grey pixel), and ``nir_over_visible`` (near 1 for cloud, high for vegetation).

    Examples
    --------
    >>> refl = np.full((4, 8, 8), 0.5, np.float32)
    >>> stats = class_reflectance(refl, np.ones((8, 8), np.uint8), ["B02", "B03", "B04", "B08"])
    >>> stats["thick"]["whiteness"].median, stats["thick"]["nir_over_visible"].median
    (0.0, 1.0)
    """
    refl = np.asarray(reflectance, dtype=np.float32)
    index: Mapping[str, int] = {b: i for i, b in enumerate(bands)}
    visible = refl[[index[b] for b in ("B02", "B03", "B04")]]
    mean = visible.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        features = {"visible": mean, "whiteness": np.abs(visible - mean).sum(axis=0) / mean}
        if "B08" in index:
            features["B08"] = refl[index["B08"]]
            features["nir_over_visible"] = refl[index["B08"]] / mean
    names = {CLEAR: "clear", THICK_CLOUD: "thick", THIN_CLOUD: "thin", CLOUD_SHADOW: "shadow"}
    result: dict[str, dict[str, Quartiles]] = {}
    for code, name in names.items():
        mask = np.asarray(labels) == code
        if mask.any():
            result[name] = {k: Quartiles.of(v[mask]) for k, v in features.items()}
    return result
