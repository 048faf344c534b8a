"""Shadow and cloud statistics on synthetic scenes with known answers (xs2mask.training.shadow_stats)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from xs2mask.classes import CLEAR, CLOUD_SHADOW, THICK_CLOUD, THIN_CLOUD
from xs2mask.training import shadow_stats as ss
from xs2mask.training.simulate import CloudConfig, simulate

RGBN = ("B02", "B03", "B04", "B08")


def _erf_edge(distance: np.ndarray, sigma: float, lo: float, hi: float) -> np.ndarray:
    """A step from ``lo`` (distance < 0) to ``hi`` blurred by a Gaussian of ``sigma`` pixels."""
    phi = 0.5 * (1.0 + np.vectorize(math.erf)(distance / (sigma * math.sqrt(2.0))))
    return lo + (hi - lo) * phi


def test_darkening_per_band_and_land_cover() -> None:
    # Left half vegetation, right half bare soil; one square shadow across both, darkened per band
    # and per land cover by known factors.
    veg = np.array([0.04, 0.07, 0.05, 0.35])
    bare = np.array([0.12, 0.15, 0.18, 0.25])
    refl = np.empty((4, 120, 160), np.float32)
    refl[:, :, :80] = veg[:, None, None]
    refl[:, :, 80:] = bare[:, None, None]
    labels = np.zeros((120, 160), np.uint8)
    labels[40:80, 50:110] = CLOUD_SHADOW
    labels[:10, :] = THICK_CLOUD  # a cloud far away: neither reference nor shadow
    veg_ratio = np.array([0.8, 0.7, 0.6, 0.5])
    bare_ratio = np.array([0.85, 0.75, 0.65, 0.55])
    refl[:, 40:80, 50:80] *= veg_ratio[:, None, None]
    refl[:, 40:80, 80:110] *= bare_ratio[:, None, None]
    land = ss.land_cover(refl[2], refl[3])
    assert (land[:, :80] == 0).all() and (land[:, 80:] == 1).all()  # shadow keeps its land cover

    result = ss.shadow_darkening(refl, labels, land=land)

    assert set(result) == {"vegetation", "bare"}
    for name, ratio in (("vegetation", veg_ratio), ("bare", bare_ratio)):
        medians = [q.median for q in result[name]]
        np.testing.assert_allclose(medians, ratio, rtol=1e-5)
        assert all(q.q25 == pytest.approx(q.q75, rel=1e-5) for q in result[name])
        assert result[name][0].n == 40 * 30


def test_darkening_ignores_the_half_shaded_rim_and_far_pixels() -> None:
    # Clear ground right next to the shadow is half shaded (penumbra): the 5 px gap keeps it out of
    # the reference; so does the ring's outer limit for a brighter field farther away.
    refl = np.full((1, 200, 200), 0.2, np.float32)
    labels = np.zeros((200, 200), np.uint8)
    labels[80:120, 80:120] = CLOUD_SHADOW
    refl[0, 76:124, 76:124] = 0.15  # rim, 4 px wide
    refl[0, 80:120, 80:120] = 0.1
    refl[0, :, :40] = 0.9  # 40 px from the shadow: beyond the ring
    result = ss.shadow_darkening(refl, labels)
    assert result["all"][0].median == pytest.approx(0.5, rel=1e-5)
    assert result["all"][0].q75 == pytest.approx(0.5, rel=1e-5)


def test_darkening_leaves_out_pixels_without_reference() -> None:
    refl = np.full((1, 100, 100), 0.2, np.float32)
    labels = np.full((100, 100), CLOUD_SHADOW, np.uint8)
    assert ss.shadow_darkening(refl, labels) == {}


@pytest.mark.parametrize("sigma", [1.0, 2.5, 4.0])
def test_penumbra_width_of_a_blurred_round_shadow(sigma: float) -> None:
    # A round shadow whose edge is a Gaussian-blurred step: 10-90 % width 2 * 1.2816 sigma, along
    # normals in every direction.
    yy, xx = np.mgrid[:200, :200]
    r = np.hypot(yy - 100.0, xx - 100.0)
    signal = _erf_edge(r - 60.0, sigma, 0.1, 0.3)
    labels = np.where(r < 60.0, CLOUD_SHADOW, CLEAR).astype(np.uint8)
    p = ss.penumbra(signal, labels, half_length=14.0)
    expected = 2.0 * 1.2816 * sigma
    assert p.width_px == pytest.approx(expected, abs=0.35)
    assert p.per_profile.median == pytest.approx(expected, abs=0.35)
    assert p.per_profile.n > 300
    assert abs(p.offset_px) < 1.0  # the labelled edge is where the reflectance is half way


def test_penumbra_offset_of_a_tight_outline() -> None:
    # Labels drawn 3 px inside the true edge: the rise lies 3 px outside the labelled edge.
    x = np.arange(120, dtype=np.float64)
    signal = np.tile(_erf_edge(x - 63.0, 1.5, 0.05, 0.25), (120, 1))
    labels = np.tile(np.where(x < 60, CLOUD_SHADOW, CLEAR), (120, 1)).astype(np.uint8)
    p = ss.penumbra(signal, labels)
    assert p.width_px == pytest.approx(2.0 * 1.2816 * 1.5, abs=0.35)
    assert p.offset_px == pytest.approx(3.5, abs=0.5)  # from the edge pixel's centre, 0.5 px inside


def test_penumbra_without_contrast_is_nan() -> None:
    labels = np.zeros((64, 64), np.uint8)
    labels[:, :32] = CLOUD_SHADOW
    p = ss.penumbra(np.full((64, 64), 0.2), labels)
    assert math.isnan(p.width_px) and p.per_profile.n == 0


@pytest.mark.parametrize(("dy", "dx", "azimuth"), [(12, 0, 180.0), (-9, -9, 315.0), (0, 25, 90.0)])
def test_displacement_recovers_a_known_shift(dy: int, dx: int, azimuth: float) -> None:
    rng = np.random.default_rng(0)
    cloud = np.zeros((128, 128), bool)
    for _ in range(5):  # irregular blobs
        y, x, h, w = rng.integers(30, 90), rng.integers(30, 90), rng.integers(4, 15), rng.integers(4, 15)
        cloud[y : y + h, x : x + w] = True
    shadow = np.roll(cloud, (dy, dx), axis=(0, 1)) & ~cloud
    d = ss.displacement(cloud, shadow, max_shift=40)
    assert d is not None
    assert (d.dy, d.dx) == (dy, dx)
    assert d.azimuth_deg == pytest.approx(azimuth)
    assert d.overlap == 1.0
    assert d.length_px == pytest.approx(math.hypot(dy, dx))


def test_displacement_respects_max_shift_and_empty_masks() -> None:
    cloud = np.zeros((64, 64), bool)
    cloud[5:15, 5:15] = True
    shadow = np.roll(cloud, (30, 0), axis=(0, 1))
    d = ss.displacement(cloud, shadow, max_shift=20)
    assert d is not None and d.length_px <= 20 and d.overlap < 1.0
    assert ss.displacement(cloud, np.zeros_like(cloud), max_shift=20) is None


def test_displacement_measures_the_simulator_geometry() -> None:
    # Sun due south at 45 degrees, cloud top 300 m, 1 m deep: the shadow lies 300 m = 30 px north.
    clear = np.stack([np.full((160, 160), v, np.float32) for v in (0.05, 0.07, 0.06, 0.3)])
    config = CloudConfig(
        p_thick=1.0, p_thin=0.0, p_thin_over_thick=0.0, thick_coverage=(0.1, 0.1), thick_depth_m=(1.0, 1.0)
    )
    _, labels = simulate(
        clear,
        RGBN,
        rng=np.random.default_rng(1),
        config=config,
        sun_azimuth=180.0,
        sun_elevation=45.0,
        cloud_height_m=(300.0, 300.0),
    )
    d = ss.displacement(labels == THICK_CLOUD, labels == CLOUD_SHADOW, max_shift=60)
    assert d is not None
    assert d.length_px == pytest.approx(30.0, abs=1.0)
    assert d.azimuth_deg == pytest.approx(0.0, abs=5.0) or d.azimuth_deg == pytest.approx(360.0, abs=5.0)
    assert ss.cloud_height(d.length_px * 10.0, 45.0) == pytest.approx(300.0, rel=0.04)


def test_class_reflectance_brightness_and_flatness() -> None:
    refl = np.empty((4, 10, 10), np.float32)
    labels = np.zeros((10, 10), np.uint8)
    labels[:, :5] = THICK_CLOUD
    labels[:, 5:] = THIN_CLOUD
    refl[:, :, :5] = np.array([0.6, 0.6, 0.6, 0.6])[:, None, None]  # grey, flat
    refl[:, :, 5:] = np.array([0.1, 0.2, 0.3, 0.4])[:, None, None]
    stats = ss.class_reflectance(refl, labels, RGBN)
    assert set(stats) == {"thick", "thin"}
    assert stats["thick"]["visible"].median == pytest.approx(0.6)
    assert stats["thick"]["whiteness"].median == pytest.approx(0.0, abs=1e-6)
    assert stats["thin"]["whiteness"].median == pytest.approx(0.2 / 0.2)  # |-0.1| + 0 + 0.1 over 0.2
    assert stats["thin"]["nir_over_visible"].median == pytest.approx(2.0)
    assert stats["thin"]["B08"].n == 50


def test_land_cover_water_needs_negative_ndvi() -> None:
    # Dark vegetation in shadow (NIR below 0.05, NDVI high) is vegetation, not water.
    codes = ss.land_cover(np.array([0.01, 0.03, 0.1]), np.array([0.04, 0.02, 0.12]))
    assert codes.tolist() == [0, 2, 1]
