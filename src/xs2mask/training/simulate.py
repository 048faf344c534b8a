"""Simulated clouds and cloud shadows, with exact labels, on real clear Sentinel-2 reflectance.

Real labelled cloud data is scarce (``../shared/data/README.md``); a real clear scene plus a physically
plausible cloud gives a training sample whose labels are exact by construction. The recipe follows
SatelliteCloudGenerator (Czerkawski et al. 2023, *Remote Sensing* 15(17) 4138: fractal-noise cloud
fields, thickness-dependent transparency, per-channel cloud magnitudes, shadows), re-implemented in
numpy with the following choices, each for the reason given.

Cloud shape
    Each cloud layer starts from a Gaussian random field with a power-law spectrum
    ``P(f) ~ (f^2 + 1/L0^2)^(-beta/2)``, drawn with one inverse FFT (milliseconds for 512 x 512).
    ``beta`` around 8/3 is the slope measured in cloud liquid-water and optical-depth fields (a -5/3
    one-dimensional spectrum, Cahalan & Snider 1989); the outer scale ``L0`` sets the size of the
    largest cloud structures. Both are in metres, not pixels, so that 20 m and 60 m data get clouds of
    the same physical size. A Gaussian taper of the spectrum (``edge_blur_m``) smooths pixel-scale
    texture. Thin (cirrus) layers get an anisotropic spectrum: fibrous streaks along a random direction.
Optical thickness -> opacity
    ``ln(tau)`` is linear in the field (cloud optical depth is close to log-normal) and the opacity is
    the two-stream reflectance of a conservatively scattering layer, ``alpha = tau'/(2 + tau')`` with
    ``tau' = (1 - g) tau``. Together: ``alpha = logistic(k (z - t))`` for the standardised field ``z``,
    where ``k`` (``edge_sharpness``) is the spread of ``ln(tau)`` and sets how soft cloud edges are.
    The threshold ``t`` is the ``1 - coverage`` quantile of ``z`` over the image, so the drawn coverage
    is exactly the share of the image that reaches the label threshold: ``alpha = 0.5`` for the thick
    layer (``tau`` about 13: opaque), ``alpha = visible_alpha`` for the thin layer. Thin layers are
    capped at ``thin_max_alpha`` (0.2-0.5): they never become opaque.
Per-band cloud reflectance
    Droplets and ice crystals are far larger than VIS-NIR wavelengths, so scattering is grey: one
    brightness (0.45-0.85 for thick clouds) for B01-B8A, with a few percent of per-band jitter (as
    SatelliteCloudGenerator's channel-specific magnitudes). Water and ice absorb in the SWIR, more so
    at 2.2 than at 1.6 um and more for large ice crystals: B11 is 0.65-0.9x VIS for water clouds and
    0.35-0.6x for ice clouds (tops above ``ice_height_m``), B12 0.6-0.8x B11 (the Nakajima-King
    reflectances of water droplets around 10 um and ice crystals around 30 um). B09 and B10 lie in
    water-vapour absorption bands: a cloud shows there its reflectance times the two-way transmission
    of the vapour above its top, ``exp(-a w exp(-h/H))`` (scale height ``H`` = 2 km, column ``w`` drawn
    per sample, 0.5-2x typical). B10 (1375 nm) absorbs so strongly that low clouds and the ground are
    nearly black in it while cirrus at 8-12 km is bright: thin cirrus shows mostly in B10, slightly in
    VIS.
Cloud-top shading
    Real cloud tops are not one flat brightness: their sun-facing slopes are bright and their lee
    slopes dim, down to the diffuse light alone (3-D radiative effects, strongest at low sun). With
    ``thick_top_slope_deg`` set, the thick layer's standardised field, smoothed below ``top_smoothing_m``
    (the field's pixel-scale texture would crumple the top like paper), is read as its top height, scaled
    so that the RMS slope of the top is the drawn angle, and the cloud reflectance of each pixel is
    multiplied by the Lambertian ratio ``cos(i) / sin(el)`` (``i`` the angle between the top's normal and
    the sun), kept within ``top_shading_limits``. Opacity and labels do not change: a dim lee slope of
    an opaque cloud is still thick cloud, flat in spectrum unlike a shadow on the ground, which keeps
    the ground's spectral shape. The default (0, 0) keeps the flat tops, and draws the same numbers as
    before the option existed.
Blending
    ``out = alpha C + (1 - alpha) g / (1 - alpha C g)``: SatelliteCloudGenerator's linear mix of
    ground ``g`` and cloud ``C`` times the ground-cloud multiple-reflection factor of the adding
    method (a few percent of brightening over bright ground). The thin layer lies above the thick one
    and is added second, on top of the thick layer's result.
Shadows
    The ground under a cloud point at height ``h`` is shaded ``h tan(zenith)`` away from the sun
    (azimuth clockwise from north, images north-up): ``dx = -h sin(az) / tan(el)`` and
    ``dy = +h cos(az) / tan(el)`` in metres, then pixels. Thick layers cast from levels every 3 px of
    displacement between base and top (towering clouds cast elongated shadows), each level only from
    the parts of the cloud opaque enough to reach it: thicker parts are deeper, so clouds are domes,
    not prisms. Thin layers cast ``thin_shadow_weight`` of their opacity. The cloud fields are drawn
    on a domain covering the image and the region up-sun of it, so clouds outside the image shade it
    and shadows of clouds inside may fall outside it. Displacements beyond half the image size
    (``max_shadow_shift``) are clamped, keeping direction: cloud and shadow that far apart are no
    longer seen together by a network's receptive field, and the clamp keeps the domain at most 2.25x
    the image. Shadow edges are blurred by the penumbra of the 0.53 degree sun disc
    (``h * 0.0093 / sin(el)``). A shadow removes direct sunlight, not diffuse skylight, whose share
    grows towards the blue (Rayleigh ~ lambda^-4): the darkening of band ``b`` is ``S k f_b``, with
    ``S`` the projected opacity, ``f_b`` the direct share of irradiance from Rayleigh and aerosol
    optical depths at the band's wavelength and the sun elevation, and ``k`` (``shadow_darkness``) the
    part of the direct beam not replaced by light from cloud sides and surroundings. Under an opaque
    cloud NIR darkens by 0.3-0.8 and SWIR by 0.4-0.85, blue by 0.1-0.75 (least in haze at low sun),
    always less than NIR. Shadows fall on the ground before clouds are added, so ground under a thin
    cloud can be shaded too (labelled cloud: cloud wins, as in CloudSEN12). Two options follow
    measured real shadows (``docs/training.md``): ``shadow_blur_m`` widens shadow edges beyond the
    sun disc's penumbra (real 10-90 % edges are 7-11 px at 10 m), and ``path_reflectance`` keeps the
    atmosphere's path reflectance of top-of-atmosphere (L1C) data out of the shading, so L1C shadows
    lose little blue, as real ones do.
Shadows on clouds
    With ``p_upper_deck`` set, a thick sample may get a second opaque deck ``upper_deck_gap_m`` above
    the first. Its shadow falls on the ground and on the lower deck, which it darkens as it darkens the
    ground (the direct beam's share ``k f_b``, cast from the height difference, with ``k`` from
    ``deck_shadow_darkness``: no sunlit surroundings fill the shade in): a cloud deck in the
    shadow of a higher one is dim and grey and stays cloud, as CloudSEN12's labellers call it. Without
    the upper deck, a dim deck would be taught only by real scenes, where the teacher often calls it
    shadow. A thin layer's shade on a cloud below it (at most ``thin_shadow_weight`` of its 0.2-0.5
    opacity) is left out. The default ``p_upper_deck = 0`` gives the same samples as before the option
    existed.
Labels, exact
    Combined opacity ``1 - prod(1 - alpha)`` over the layers above ``thick_label_alpha`` (0.5) is
    thick cloud, above ``visible_alpha`` (0.1) thin cloud. Below ``visible_alpha`` the cloud is
    *removed*, not merely left unlabelled, and so is a shadow whose NIR darkening is below
    ``shadow_label_darkening``: every pixel labelled clear is bit for bit the input. The price is a
    step of at most ``visible_alpha`` opacity at cloud borders, about what a human labeller calls
    clear anyway. No-data pixels (any band NaN, or every band 0) are copied unchanged and labelled 255.
Not modelled
    Ground blur under the cloud (forward scattering) and Sentinel-2's inter-band parallax (coloured
    cloud edges): the first costs a full-image convolution per band, the second would move cloud
    signal out of the labelled pixels.

Randomness comes only from ``rng``, in an order that does not depend on the bands or on the pixel
values: the same seed gives the same clouds and labels for any band subset of the same scene, and
band values that agree band by band.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from ..bands import BAND_NAMES, BANDS, canonical_band
from ..classes import CLEAR, CLOUD_SHADOW, NODATA, THICK_CLOUD, THIN_CLOUD

__all__ = ["CloudConfig", "simulate", "sun_geometry"]

Range = tuple[float, float]

_WAVELENGTH_NM = np.array([b.wavelength_nm for b in BANDS], dtype=np.float64)
_NIR_NM = 842.0
_SUN_DISC_RAD = 0.0093  # angular diameter of the sun: sets the penumbra width
_MIN_BASE_FRACTION = 0.2  # a cloud's base is at least this share of its top height
_LEVEL_STEP_PX = 3.0  # shadow displacement between the cloud levels that cast shadows, pixels
_MAX_LEVELS = 12  # at most this many levels per layer (a few ms each for 512 x 512)


@dataclass(frozen=True)
class CloudConfig:
    """The knobs of :func:`simulate`. Pairs ``(lo, hi)`` are ranges drawn uniformly per sample
    (heights and scales log-uniformly); a pair with ``lo == hi`` fixes the value.

    Attributes
    ----------
    p_thick : probability that a sample gets a thick (opaque) cloud layer.
    p_thin : probability that a sample gets only a thin layer (cirrus, haze); the remaining
        ``1 - p_thick - p_thin`` stay clear (negatives the model must leave alone).
    p_thin_over_thick : probability that a thick sample also gets a thin layer above.
    p_upper_deck : probability that a thick sample also gets a second opaque deck above, whose shadow
        darkens the lower deck (see "Shadows on clouds").
    upper_deck_gap_m : height of the upper deck's top above the lower deck's top (log-uniform).
    deck_shadow_darkness : share of the direct beam the upper deck's shadow removes from the deck below;
        higher than on the ground, where sunlit surroundings fill shadows in.
    thick_coverage, thin_coverage : share of the image the layer covers at its label threshold.
    outer_scale_m : size of the largest cloud structures (log-uniform).
    spectral_slope : exponent ``beta`` of the power spectrum; larger is smoother (8/3 is typical).
    edge_sharpness, thin_edge_sharpness : spread of ``ln(tau)`` per standard deviation of the field;
        larger gives sharper cloud edges and thinner semi-transparent fringes.
    edge_blur_m : Gaussian smoothing (sigma) of the cloud fields.
    thin_anisotropy : stretch of thin-layer structures along a random direction (cirrus streaks).
    thick_brightness, thin_brightness : VIS reflectance of the layer where it is opaque.
    thin_max_alpha : the largest opacity a thin layer reaches.
    band_jitter : relative per-band spread of cloud brightness around the spectral model.
    thick_top_m, thick_depth_m, thin_height_m : cloud-top heights and thick-layer depth (log-uniform).
    ice_height_m : tops above this are ice clouds (darker in SWIR).
    b11_water, b11_ice : B11 cloud reflectance relative to VIS for water and ice clouds.
    b12_over_b11 : B12 cloud reflectance relative to B11 (absorption grows from 1.6 to 2.2 um).
    b10_ratio : B10 reflectance relative to VIS of a cloud above all water vapour.
    b09_absorption, b10_absorption : two-way water-vapour optical depth from the ground in B09 and B10
        for a typical atmosphere, scaled per sample by ``water_vapour``.
    water_vapour : column water vapour relative to that typical atmosphere (dry polar to humid tropics).
    water_vapour_scale_height_m : scale height of atmospheric water vapour.
    thick_label_alpha : combined opacity above which a pixel is thick cloud.
    visible_alpha : combined opacity above which a pixel is thin cloud; weaker cloud is removed.
    thick_top_slope_deg : RMS slope of the thick layer's top, degrees (see "Cloud-top shading");
        (0, 0): flat tops.
    top_shading_limits : smallest and largest factor the shading applies to cloud reflectance.
    top_smoothing_m : scale (Gaussian sigma) below which the top is smooth: bumps of the top are
        this size and larger (log-uniform).
    thin_shadow_weight : share of a thin layer's opacity that shades the ground.
    shadow_darkness : share of the direct beam a fully opaque cloud removes from its shadow.
    shadow_label_darkening : relative NIR darkening above which a pixel is shadow; weaker is removed.
    shadow_blur_m : Gaussian blur (sigma, metres) of cast shadows on top of the sun-disc penumbra: the
        cloud's soft fringe and adjacency widen real shadow edges to 7-11 px at 10 m; (0, 0): off.
    path_reflectance : atmospheric path reflectance at 550 nm, scaled as ``lambda^-4`` (Rayleigh), that
        top-of-atmosphere (``level="L1C"``) reflectance holds and a shadow on the ground cannot remove;
        (0, 0): off. Measured real L1C shadows keep most of their blue (``docs/training.md``).
    aerosol_optical_depth : at 550 nm; sets with Rayleigh scattering how much skylight fills shadows.
    sun_azimuth_deg, sun_elevation_deg : drawn by :func:`sun_geometry` when not given.
    max_shadow_shift : longest shadow displacement, in image sizes (longer ones are clamped).
    """

    p_thick: float = 0.5
    p_thin: float = 0.25
    p_thin_over_thick: float = 0.3
    p_upper_deck: float = 0.0
    upper_deck_gap_m: Range = (500.0, 5_000.0)
    deck_shadow_darkness: Range = (0.7, 1.0)
    thick_coverage: Range = (0.03, 0.7)
    thin_coverage: Range = (0.05, 0.6)
    outer_scale_m: Range = (1_500.0, 20_000.0)
    spectral_slope: Range = (2.4, 3.2)
    edge_sharpness: Range = (3.0, 12.0)
    thin_edge_sharpness: Range = (1.0, 3.0)
    edge_blur_m: Range = (0.0, 20.0)
    thin_anisotropy: Range = (1.5, 8.0)
    thick_brightness: Range = (0.45, 0.85)
    thin_brightness: Range = (0.4, 0.8)
    thin_max_alpha: Range = (0.2, 0.5)
    band_jitter: float = 0.03
    thick_top_m: Range = (800.0, 9_000.0)
    thick_depth_m: Range = (200.0, 2_500.0)
    thin_height_m: Range = (2_000.0, 12_000.0)
    ice_height_m: float = 6_000.0
    b11_water: Range = (0.65, 0.9)
    b11_ice: Range = (0.35, 0.6)
    b12_over_b11: Range = (0.6, 0.8)
    b10_ratio: float = 0.8
    b09_absorption: float = 1.5
    b10_absorption: float = 7.6
    water_vapour: Range = (0.5, 2.0)
    water_vapour_scale_height_m: float = 2_000.0
    thick_label_alpha: float = 0.5
    visible_alpha: float = 0.1
    thick_top_slope_deg: Range = (0.0, 0.0)
    top_shading_limits: Range = (0.15, 1.5)
    top_smoothing_m: Range = (20.0, 300.0)
    thin_shadow_weight: float = 0.5
    shadow_darkness: Range = (0.5, 0.85)
    shadow_label_darkening: float = 0.2
    shadow_blur_m: Range = (0.0, 0.0)
    path_reflectance: Range = (0.0, 0.0)
    aerosol_optical_depth: Range = (0.05, 0.3)
    sun_azimuth_deg: Range = (0.0, 360.0)
    sun_elevation_deg: Range = (20.0, 70.0)
    max_shadow_shift: float = 0.5

    def __post_init__(self) -> None:
        for name in ("p_thick", "p_thin", "p_thin_over_thick", "p_upper_deck"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"CloudConfig.{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.p_thick + self.p_thin > 1.0 + 1e-9:
            raise ValueError(f"p_thick + p_thin must be <= 1, got {self.p_thick} + {self.p_thin}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple) and value[0] > value[1]:
                raise ValueError(f"CloudConfig.{f.name} must be (lo, hi) with lo <= hi, got {value}")
        if not 0.0 < self.visible_alpha < self.thick_label_alpha < 1.0:
            raise ValueError("need 0 < visible_alpha < thick_label_alpha < 1")
        if not (self.thin_max_alpha[0] > 0.0 and self.thin_max_alpha[1] < 1.0):
            raise ValueError("thin_max_alpha must lie in (0, 1)")
        if self.thin_max_alpha[0] <= self.visible_alpha:
            raise ValueError("thin_max_alpha must exceed visible_alpha, or thin clouds are never visible")
        if not (self.sun_elevation_deg[0] > 0.0 and self.sun_elevation_deg[1] <= 90.0):
            raise ValueError("sun_elevation_deg must lie in (0, 90]")
        if not (self.thick_top_slope_deg[0] >= 0.0 and self.thick_top_slope_deg[1] < 90.0):
            raise ValueError("thick_top_slope_deg must lie in [0, 90)")
        path = self.path_reflectance
        if self.shadow_blur_m[0] < 0.0 or not 0.0 <= path[0] <= path[1] < 0.2:
            raise ValueError("shadow_blur_m must be >= 0 and path_reflectance lie in [0, 0.2)")
        if not 0.0 < self.top_shading_limits[0] <= 1.0 <= self.top_shading_limits[1]:
            raise ValueError("top_shading_limits must be (lo, hi) with 0 < lo <= 1 <= hi")
        if not 0.0 <= self.deck_shadow_darkness[0] <= self.deck_shadow_darkness[1] <= 1.0:
            raise ValueError("deck_shadow_darkness must lie in [0, 1]")
        if not self.upper_deck_gap_m[0] > 0.0:
            raise ValueError("upper_deck_gap_m must be positive: the upper deck lies above the lower one")


@dataclass(frozen=True)
class _Layer:
    """One drawn cloud layer (internal)."""

    coverage: float
    outer_scale_m: float
    slope: float
    sharpness: float
    blur_m: float
    anisotropy: float
    angle: float
    max_alpha: float
    label_alpha: float
    top_m: float
    base_m: float
    spectrum: np.ndarray  # cloud reflectance at full opacity, one value per band of BAND_NAMES
    top_slope_deg: float = 0.0  # RMS slope of the cloud top; 0: flat, unshaded
    top_smooth_m: float = 0.0  # smoothing of the top's height before its slopes are taken


def sun_geometry(rng: np.random.Generator, config: CloudConfig = CloudConfig()) -> tuple[float, float]:
    """Draw a sun azimuth and elevation (degrees) from the ranges of ``config``.

    Azimuth is clockwise from north; the default range is the full circle because training also
    rotates and flips samples, so any direction must be plausible.

    Examples
    --------
    >>> az, el = sun_geometry(np.random.default_rng(0))
    >>> 0 <= az < 360 and 20 <= el <= 70
    True
    """
    azimuth = float(rng.uniform(*config.sun_azimuth_deg)) % 360.0
    elevation = float(rng.uniform(*config.sun_elevation_deg))
    return azimuth, elevation


def simulate(
    reflectance: np.ndarray,
    bands: Sequence[str],
    *,
    rng: np.random.Generator,
    config: CloudConfig = CloudConfig(),
    sun_azimuth: float | None = None,
    sun_elevation: float | None = None,
    resolution_m: float = 10.0,
    cloud_height_m: tuple[float, float] | None = None,
    level: str = "L2A",
) -> tuple[np.ndarray, np.ndarray]:
    """Add clouds and cloud shadows to clear reflectance and return the exact labels.

    Parameters
    ----------
    reflectance
        ``(band, y, x)`` reflectance (0-1, may exceed 1), NaN where there is no data; north up.
    bands
        Band names of ``reflectance`` in order (ESA names or aliases); any subset of the 13. B10 only
        makes sense for L1C-like data.
    rng
        The only source of randomness: the same seed gives the same sample.
    config
        Probabilities and ranges of the cloud model (:class:`CloudConfig`).
    sun_azimuth, sun_elevation
        Sun position in degrees (azimuth clockwise from north). Drawn by :func:`sun_geometry` when
        either is missing (a given one is kept).
    resolution_m
        Pixel size in metres: converts cloud sizes and shadow displacements to pixels.
    cloud_height_m
        ``(lo, hi)`` cloud-top heights in metres, for every layer, instead of the config's ranges.
    level
        ``"L1C"`` (top of atmosphere: its path reflectance is not shaded, see
        ``CloudConfig.path_reflectance``) or ``"L2A"`` (surface reflectance).

    Returns
    -------
    cloudy : numpy.ndarray
        float32, same shape as ``reflectance``; no-data pixels unchanged.
    labels : numpy.ndarray
        uint8 ``(y, x)``: 0 clear, 1 thick cloud, 2 thin cloud, 3 cloud shadow, 255 no data.

    Examples
    --------
    >>> rng = np.random.default_rng(3)
    >>> clear = np.full((4, 64, 64), 0.05, np.float32)
    >>> cloudy, labels = simulate(clear, ["B02", "B03", "B04", "B08"], rng=rng,
    ...                           config=CloudConfig(p_thick=1.0, p_thin=0.0))
    >>> cloudy.shape, labels.dtype
    ((4, 64, 64), dtype('uint8'))
    >>> bool((cloudy[:, labels == 1] > 0.2).all())  # thick: at least half opaque, cloud 0.45+ bright
    True
    >>> bool((cloudy[:, labels == 0] == clear[:, labels == 0]).all())
    True
    """
    refl = np.asarray(reflectance)
    names = tuple(canonical_band(b) for b in bands)
    if refl.ndim != 3 or refl.shape[0] != len(names):
        raise ValueError(f"reflectance must be (band, y, x) with {len(names)} bands, got shape {refl.shape}")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate bands in {names}")
    if not resolution_m > 0:
        raise ValueError(f"resolution_m must be positive, got {resolution_m}")
    band_index = np.array([BAND_NAMES.index(b) for b in names])
    height, width = refl.shape[1:]
    out = np.array(refl, dtype=np.float32, order="C", copy=True)  # C order: flat views below
    # No data: any band NaN (a NaN sum), or every band 0 (DN 0). Reductions only: no (band, y, x) temporaries.
    valid = np.isfinite(out.sum(axis=0)) & out.any(axis=0)
    labels = np.where(valid, CLEAR, NODATA).astype(np.uint8)

    # --- draw every scalar first, in a fixed order (independent of the bands and the pixels) ---
    kind = rng.random()
    has_thick = kind < config.p_thick
    has_thin = (not has_thick and kind < config.p_thick + config.p_thin) or (
        has_thick and rng.random() < config.p_thin_over_thick
    )
    if sun_azimuth is None or sun_elevation is None:
        azimuth, elevation = sun_geometry(rng, config)
        azimuth = azimuth if sun_azimuth is None else float(sun_azimuth)
        elevation = elevation if sun_elevation is None else float(sun_elevation)
    else:
        azimuth, elevation = float(sun_azimuth), float(sun_elevation)
    if not 0.0 < elevation <= 90.0:
        raise ValueError(f"sun elevation must lie in (0, 90] degrees, got {elevation}")
    aot = rng.uniform(*config.aerosol_optical_depth)
    darkness = rng.uniform(*config.shadow_darkness)
    vapour = rng.uniform(*config.water_vapour)
    thick = _draw_layer(rng, config, thin=False, heights=cloud_height_m, vapour=vapour) if has_thick else None
    thin = _draw_layer(rng, config, thin=True, heights=cloud_height_m, vapour=vapour) if has_thin else None
    # Drawn only when asked for: configs without them keep their random sequence.
    extra_blur_m = _uniform(rng, config.shadow_blur_m) if config.shadow_blur_m[1] > 0 else 0.0
    path_550 = _uniform(rng, config.path_reflectance) if config.path_reflectance[1] > 0 else 0.0
    upper, deck_darkness = None, 0.0
    if thick is not None and config.p_upper_deck > 0 and rng.random() < config.p_upper_deck:
        gap = config.upper_deck_gap_m
        upper = _draw_layer(
            rng, config, thin=False, heights=(thick.top_m + gap[0], thick.top_m + gap[1]), vapour=vapour
        )
        deck_darkness = rng.uniform(*config.deck_shadow_darkness)
    if thick is None and thin is None:
        return out, labels

    # --- shadow geometry: displacement (pixels) of the shadow of a cloud point at height h ---
    unit = _shadow_direction(azimuth, elevation) / resolution_m  # (dy, dx) pixels per metre of height
    cap = config.max_shadow_shift * max(height, width)
    per_m = float(np.hypot(*unit))

    def levels(layer: _Layer) -> np.ndarray:
        # Heights from base to top, <= _LEVEL_STEP_PX of displacement apart so that the cast shadow is
        # continuous; the depth is cut to _MAX_LEVELS levels (long smears only at very low sun).
        n = 1 + min(_MAX_LEVELS - 1, math.ceil(per_m * (layer.top_m - layer.base_m) / _LEVEL_STEP_PX))
        base = max(layer.base_m, layer.top_m - (n - 1) * _LEVEL_STEP_PX / max(per_m, 1e-12))
        return np.linspace(base, layer.top_m, n)

    def shift(h: float) -> tuple[int, int]:
        d = unit * h
        d *= min(1.0, cap / max(float(np.hypot(*d)), 1e-9))
        return round(d[0]), round(d[1])

    # (layer, the share of its opacity that shades) in the order of their fields: the upper deck last,
    # so that configs without it keep their random sequence
    drawn = [
        (layer, weight)
        for layer, weight in ((thick, 1.0), (thin, config.thin_shadow_weight), (upper, 1.0))
        if layer is not None
    ]
    all_off = [shift(h) for layer, _ in drawn for h in levels(layer)]
    oy = max(0, *(o[0] for o in all_off))
    ox = max(0, *(o[1] for o in all_off))
    dom_shape = (
        oy + height + max(0, *(-o[0] for o in all_off)),
        ox + width + max(0, *(-o[1] for o in all_off)),
    )
    inside = (slice(oy, oy + height), slice(ox, ox + width))

    # --- opacity of each layer over the whole domain ---
    fields_ = [_opacity(rng, layer, dom_shape, inside, resolution_m) for layer, _ in drawn]
    alphas = [alpha for alpha, _ in fields_]
    combined = alphas[0].copy()
    for a in alphas[1:]:
        combined = 1.0 - (1.0 - combined) * (1.0 - a)
    visible = combined > config.visible_alpha
    # Remove sub-visible cloud altogether, so that every clear-labelled pixel is the input exactly.
    for a in (*alphas, combined):
        np.multiply(a, visible, out=a)

    # (layer, the share of its opacity that shades, its opacity), in the order of ``drawn``
    casters = [(layer, weight, a) for (layer, weight), a in zip(drawn, alphas, strict=True)]

    def shade_at(floor_m: float, casting: Sequence[tuple[_Layer, float, np.ndarray]]) -> np.ndarray:
        """Projected opacity of the ``casting`` layers above ``floor_m`` on a surface that high,
        penumbra-blurred."""
        shade = np.zeros((height, width), np.float32)
        for layer, weight, a in casting:
            if weight <= 0 or layer.top_m <= floor_m:
                continue
            cast: np.ndarray = np.zeros((height, width), np.float32)
            hs = levels(layer)
            for j, h in enumerate(hs):
                if h <= floor_m:
                    continue
                dy, dx = shift(h - floor_m)
                part = a[oy - dy : oy - dy + height, ox - dx : ox - dx + width]
                # Level j of n (base to top) holds only the parts whose opacity reaches j/n: thicker parts
                # of a cloud are deeper, so a cloud narrows upwards (a dome, not a prism) as its shadow does.
                np.maximum(cast, part, out=cast, where=part >= np.float32(0.95 * j / len(hs)) if j else True)
            mean_height = 0.5 * (layer.top_m + max(layer.base_m, floor_m)) - floor_m
            penumbra_px = mean_height * _SUN_DISC_RAD / math.sin(math.radians(elevation)) / resolution_m
            # Gaussian sigmas add in quadrature: the sun disc's (FWHM / 2.355) and the extra blur.
            sigma_px = math.hypot(penumbra_px / 2.355, extra_blur_m / resolution_m)
            cast = _blur(cast, sigma_px)
            shade = 1.0 - (1.0 - shade) * (1.0 - weight * np.clip(cast, 0.0, 1.0))
        return shade

    # --- shadows on the ground ---
    shade = shade_at(0.0, casters)
    direct = _direct_fraction(_WAVELENGTH_NM, elevation, aot)
    nir_darkening = shade * darkness * _direct_fraction(np.array([_NIR_NM]), elevation, aot)[0]
    shaded = valid & (nir_darkening >= config.shadow_label_darkening)
    flat = out.reshape(out.shape[0], -1)  # a view: flat indices gather and scatter faster than masks
    if shaded.any():
        idx = np.flatnonzero(shaded)
        darkening = (darkness * direct[band_index]).astype(np.float32)[:, None] * shade.ravel()[idx]
        np.subtract(1.0, darkening, out=darkening)
        ground = np.take(flat, idx, axis=1)
        # Top-of-atmosphere reflectance = path + ground: only the ground part is shaded.
        path = _path_reflectance(path_550 if level.upper() == "L1C" else 0.0)[band_index][:, None]
        path = np.minimum(path, ground)
        darkening *= ground - path
        darkening += path
        flat[:, idx] = darkening
        labels[shaded] = CLOUD_SHADOW

    # --- clouds on top of the (possibly shaded) ground: thick, thin above it, the upper deck on top ---
    # The upper deck shades the layers below it; a thin layer's shade on a cloud (a few percent) is left
    # out, which keeps configs without the upper deck as they were.
    cloudy = valid & visible[inside]
    if cloudy.any():
        idx = np.flatnonzero(cloudy)
        ground = np.take(flat, idx, axis=1)
        for (layer, _), a, (_, z) in zip(drawn, alphas, fields_, strict=True):
            cloud = layer.spectrum[band_index][:, None]
            if layer.top_slope_deg > 0:
                shading = _top_shading(
                    z,
                    layer.top_slope_deg,
                    layer.top_smooth_m / resolution_m,
                    azimuth,
                    elevation,
                    config.top_shading_limits,
                )
                cloud = np.minimum(cloud * shading[inside].ravel()[idx], np.float32(0.98))
            if upper is not None and layer is not upper:
                on_top = shade_at(layer.top_m, casters[-1:]).ravel()[idx]  # the upper deck: drawn last
                cloud = cloud * (
                    1.0 - (deck_darkness * direct[band_index]).astype(np.float32)[:, None] * on_top
                )
            ground = _add_layer(ground, a[inside].ravel()[idx], cloud)
        flat[:, idx] = ground
        c = combined[inside].ravel()[idx]
        labels.ravel()[idx] = np.where(c > config.thick_label_alpha, THICK_CLOUD, THIN_CLOUD)
    return out, labels


# ----------------------------------------------------------------------------------------------------
# Pieces
# ----------------------------------------------------------------------------------------------------


def _uniform(rng: np.random.Generator, bounds: Range, *, log: bool = False) -> float:
    lo, hi = bounds
    if log and lo > 0:
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return float(rng.uniform(lo, hi))


def _draw_layer(
    rng: np.random.Generator,
    config: CloudConfig,
    *,
    thin: bool,
    heights: tuple[float, float] | None,
    vapour: float,
) -> _Layer:
    """Draw one layer's parameters and per-band spectrum (always for all 13 bands)."""
    coverage = _uniform(rng, config.thin_coverage if thin else config.thick_coverage)
    outer = _uniform(rng, config.outer_scale_m, log=True)
    slope = _uniform(rng, config.spectral_slope)
    sharpness = _uniform(rng, config.thin_edge_sharpness if thin else config.edge_sharpness)
    blur = _uniform(rng, config.edge_blur_m)
    anisotropy = _uniform(rng, config.thin_anisotropy) if thin else 1.0
    angle = float(rng.uniform(0.0, math.pi))
    brightness = _uniform(rng, config.thin_brightness if thin else config.thick_brightness)
    max_alpha = _uniform(rng, config.thin_max_alpha) if thin else 1.0
    top_range = heights if heights is not None else (config.thin_height_m if thin else config.thick_top_m)
    top = _uniform(rng, top_range, log=True)
    depth = 0.0 if thin else _uniform(rng, config.thick_depth_m, log=True)
    base = max(top - depth, _MIN_BASE_FRACTION * top) if depth > 0 else top
    b11_water, b11_ice = _uniform(rng, config.b11_water), _uniform(rng, config.b11_ice)
    swir = (b11_ice if top > config.ice_height_m else b11_water, _uniform(rng, config.b12_over_b11))
    jitter = 1.0 + config.band_jitter * rng.uniform(-1.0, 1.0, len(BAND_NAMES))
    # Drawn last and only when asked for: configs without shading keep their random sequence.
    shaded = not thin and config.thick_top_slope_deg[1] > 0
    slope_deg = _uniform(rng, config.thick_top_slope_deg) if shaded else 0.0
    smooth_m = _uniform(rng, config.top_smoothing_m, log=True) if shaded else 0.0
    return _Layer(
        coverage=coverage,
        outer_scale_m=outer,
        slope=slope,
        sharpness=sharpness,
        blur_m=blur,
        anisotropy=anisotropy,
        angle=angle,
        max_alpha=max_alpha,
        label_alpha=config.visible_alpha if thin else config.thick_label_alpha,
        top_m=top,
        base_m=base,
        spectrum=_cloud_spectrum(brightness, top, swir, vapour, jitter, config),
        top_slope_deg=slope_deg,
        top_smooth_m=smooth_m,
    )


def _cloud_spectrum(
    brightness: float,
    top_m: float,
    swir: tuple[float, float],
    vapour: float,
    jitter: np.ndarray,
    config: CloudConfig,
) -> np.ndarray:
    """Reflectance of an opaque cloud in each of the 13 bands (order of ``BAND_NAMES``).

    ``swir`` is (B11 / VIS, B12 / B11); ``vapour`` the column water vapour relative to a typical one.
    """
    vapour_above = vapour * math.exp(-top_m / config.water_vapour_scale_height_m)
    factor = np.ones(len(BAND_NAMES))
    factor[BAND_NAMES.index("B09")] = math.exp(-config.b09_absorption * vapour_above)
    factor[BAND_NAMES.index("B10")] = config.b10_ratio * math.exp(-config.b10_absorption * vapour_above)
    factor[BAND_NAMES.index("B11")] = swir[0]
    factor[BAND_NAMES.index("B12")] = swir[0] * swir[1]
    # Kept below 1 so that the multiple-reflection denominator 1 - alpha C g stays positive.
    return np.clip(brightness * factor * jitter, 0.0, 0.98).astype(np.float32)


def _path_reflectance(at_550: float) -> np.ndarray:
    """Rayleigh-like path reflectance of the 13 bands (``lambda^-4``), ``at_550`` at 550 nm."""
    return (at_550 * (_WAVELENGTH_NM / 550.0) ** -4.0).astype(np.float32)


def _shadow_direction(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """(dy, dx) metres of shadow displacement per metre of cloud height; rows grow southwards."""
    az = math.radians(azimuth_deg)
    along = 1.0 / math.tan(math.radians(elevation_deg))
    # The sun lies towards (east, north) = (sin az, cos az); the shadow falls the other way.
    return np.array([math.cos(az) * along, -math.sin(az) * along])


def _direct_fraction(wavelength_nm: np.ndarray, elevation_deg: float, aot: float) -> np.ndarray:
    """Share of downwelling irradiance that is direct sunlight (what a cloud shadow takes away).

    Rayleigh optical depth ``0.0088 lambda^-4.05`` (lambda in micrometres), aerosol optical depth
    ``aot (lambda / 0.55)^-1.3`` (Angstrom exponent 1.3); half of Rayleigh-scattered and three
    quarters of aerosol-scattered light (mostly forward) reach the ground as skylight.
    """
    mu = math.sin(math.radians(elevation_deg))
    lam = np.asarray(wavelength_nm, dtype=np.float64) / 1000.0
    tau_r = 0.0088 * lam**-4.05
    tau_a = aot * (lam / 0.55) ** -1.3
    direct = np.exp(-(tau_r + tau_a) / mu)
    diffuse = 0.5 * (1.0 - np.exp(-tau_r / mu)) + 0.75 * (1.0 - np.exp(-tau_a / mu))
    return direct / (direct + diffuse)


def _fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: an FFT size pocketfft handles fast."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def _fractal_field(rng: np.random.Generator, layer: _Layer, shape: tuple[int, int], resolution_m: float):
    """Gaussian random field with a power-law spectrum, ``shape`` pixels, float32 (not standardised)."""
    ny, nx = (_fast_len(n) for n in shape)
    fy = np.fft.fftfreq(ny, d=resolution_m).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(nx, d=resolution_m).astype(np.float32)[None, :]
    f2 = fx * fx + fy * fy
    if layer.anisotropy != 1.0:
        c, s = np.float32(math.cos(layer.angle)), np.float32(math.sin(layer.angle))
        along, across = fx * c + fy * s, fy * c - fx * s
        g2 = (np.float32(layer.anisotropy) * along) ** 2 + across**2
    else:
        g2 = f2
    log_amp = np.log(g2 + np.float32(layer.outer_scale_m**-2))
    log_amp *= np.float32(-layer.slope / 4.0)
    if layer.blur_m > 0:
        log_amp -= np.float32(2.0 * math.pi**2 * layer.blur_m**2) * f2
    amp = np.exp(log_amp, out=log_amp)
    amp[0, 0] = 0.0
    # Complex white noise: pairs of float32 normals viewed as complex64 (no copy), coloured in place.
    spectrum = rng.standard_normal((ny, nx // 2 + 1, 2), dtype=np.float32).view(np.complex64)[..., 0]
    spectrum *= amp
    return np.fft.irfft2(spectrum, s=(ny, nx))[: shape[0], : shape[1]]


def _opacity(
    rng: np.random.Generator,
    layer: _Layer,
    shape: tuple[int, int],
    inside: tuple[slice, slice],
    resolution_m: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Layer opacity over the domain, logistic in the field, ``label_alpha`` at its coverage quantile;
    and the standardised field itself."""
    z = _fractal_field(rng, layer, shape, resolution_m)
    z /= max(float(z.std()), 1e-12)
    t = float(np.quantile(z[inside], 1.0 - layer.coverage))
    # alpha = max_alpha * logistic(k (z - t) + b), with b chosen so that alpha(t) = label_alpha.
    p = layer.label_alpha / layer.max_alpha
    bias = math.log(p / (1.0 - p))
    x = np.float32(layer.sharpness) * (z - np.float32(t)) + np.float32(bias)
    # logistic(x) = (1 + tanh(x/2)) / 2 avoids overflow in exp.
    return (np.float32(0.5 * layer.max_alpha) * (1.0 + np.tanh(0.5 * x))).astype(np.float32), z


def _top_shading(
    z: np.ndarray, slope_deg: float, smooth_px: float, azimuth_deg: float, elevation_deg: float, limits: Range
) -> np.ndarray:
    """Lambertian brightness of a cloud top of height ``z`` relative to a flat top, ``cos(i) / sin(el)``.

    ``z``, smoothed by ``smooth_px`` (sigma), is scaled so that the RMS slope of the top is
    ``slope_deg``; the result is clipped to ``limits`` (the lower one: diffuse light still reaches a
    lee slope).
    """
    gy, gx = np.gradient(_blur(z, smooth_px))  # per pixel; rows grow southwards
    rms = math.sqrt(float(np.mean(gx * gx + gy * gy)))
    scale = np.float32(math.tan(math.radians(slope_deg)) / max(rms, 1e-12))
    east, north = gx * scale, -gy * scale  # dh/dx towards east and north
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    # Normal (-h_e, -h_n, 1) / norm against the sun vector (cos el sin az, cos el cos az, sin el).
    cos_i = np.float32(math.sin(el)) - np.float32(math.cos(el)) * (
        east * np.float32(math.sin(az)) + north * np.float32(math.cos(az))
    )
    cos_i /= np.sqrt(1.0 + east * east + north * north)
    return np.clip(cos_i / np.float32(math.sin(el)), *limits).astype(np.float32)


def _add_layer(ground: np.ndarray, alpha: np.ndarray, cloud: np.ndarray) -> np.ndarray:
    """Top-of-layer reflectance of ``ground`` (band, n) under a layer of opacity ``alpha`` (n,) whose
    reflectance at full opacity is ``cloud`` (band, 1) or (band, n)."""
    a = alpha[None, :]
    r = cloud * a
    # Ground-cloud multiple reflections (adding method): 1 / (1 - R g), g capped at 1 to keep it finite.
    bounce = np.minimum(ground, np.float32(1.0))
    bounce *= r
    np.subtract(1.0, bounce, out=bounce)
    result = (1.0 - a) * ground
    result /= bounce
    result += r
    return result


def _box(a: np.ndarray, r: int, axis: int) -> np.ndarray:
    """Mean of a 2-D array over a window of 2r+1 pixels along ``axis``, edges extended."""
    pad = ((r + 1, r), (0, 0)) if axis == 0 else ((0, 0), (r + 1, r))
    c = np.cumsum(np.pad(a, pad, mode="edge"), axis=axis, dtype=np.float32)
    c = np.moveaxis(c, axis, 0)  # a view: slice the filtered axis first
    n = a.shape[axis]
    diff = c[2 * r + 1 : 2 * r + 1 + n] - c[:n]
    diff *= np.float32(1.0 / (2 * r + 1))
    return np.moveaxis(diff, 0, axis)


def _blur(a: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian-like blur: two box passes per axis (a triangle kernel), edges extended, no wrap-around."""
    # Two passes of width 2r+1 have variance ((2r+1)^2 - 1) / 6.
    r = round((math.sqrt(6.0 * sigma_px**2 + 1.0) - 1.0) / 2.0)
    if r < 1:
        return a
    for axis in (0, 1):
        for _ in range(2):
            a = _box(a, r, axis)
    return a
