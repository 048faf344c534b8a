"""Simulated clouds and shadows: exact labels, physics, geometry, determinism (xs2mask.training.simulate)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from xs2mask.bands import BAND_NAMES
from xs2mask.classes import CLEAR, CLOUD_SHADOW, NODATA, THICK_CLOUD, THIN_CLOUD
from xs2mask.training.simulate import CloudConfig, simulate, sun_geometry

THICK_ONLY = CloudConfig(p_thick=1.0, p_thin=0.0, p_thin_over_thick=0.0)
THIN_ONLY = CloudConfig(p_thick=0.0, p_thin=1.0)
# A vegetated ground spectrum for all 13 bands (L1C-like, B10 near 0 under water vapour).
VEGETATION = dict(
    zip(
        BAND_NAMES,
        (0.10, 0.07, 0.06, 0.04, 0.08, 0.20, 0.24, 0.25, 0.27, 0.10, 0.002, 0.12, 0.05),
        strict=True,
    )
)


def _constant(bands: tuple[str, ...], shape: tuple[int, int] = (128, 128)) -> np.ndarray:
    return np.stack([np.full(shape, VEGETATION[b], np.float32) for b in bands])


def _idx(bands: tuple[str, ...], name: str) -> int:
    return bands.index(name)


@pytest.fixture(scope="module")
def wright(real_data: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """A real clear 10-band L2A scene (Australia), (band, y, x) reflectance, cropped to 256 x 256."""
    z = np.load(real_data / "wright_time_series" / "clear_20160101.npz")
    refl = np.moveaxis(z["reflectance"], -1, 0)[:, :256, :256]
    return np.ascontiguousarray(refl, dtype=np.float32), tuple(str(b) for b in z["band_order"])


@pytest.fixture(scope="module")
def eolearn(real_data: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """A real clear 13-band L1C scene (Slovenia), 101 x 100."""
    z = np.load(real_data / "eolearn_reference_scenes" / "scenes.npz")
    refl = np.moveaxis(z["reflectance"][4], -1, 0)
    return np.ascontiguousarray(refl, dtype=np.float32), tuple(str(b) for b in z["band_order"])


# --------------------------------------------------------------------------------------------------
# Determinism and exact labels on a real scene
# --------------------------------------------------------------------------------------------------


def test_same_seed_same_sample_other_seed_other_sample(wright):
    refl, bands = wright
    cfg = replace(THICK_ONLY, p_thin_over_thick=1.0)
    a = simulate(refl, bands, rng=np.random.default_rng(7), config=cfg)
    b = simulate(refl, bands, rng=np.random.default_rng(7), config=cfg)
    c = simulate(refl, bands, rng=np.random.default_rng(8), config=cfg)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    assert a[0].dtype == np.float32 and a[0].shape == refl.shape
    assert a[1].dtype == np.uint8 and a[1].shape == refl.shape[1:]


def test_labels_are_exact_on_a_real_scene(wright):
    refl, bands = wright
    b02, b03, b04 = (_idx(bands, b) for b in ("B02", "B03", "B04"))
    seen = set()
    for seed in range(8):
        out, labels = simulate(refl, bands, rng=np.random.default_rng(seed))
        seen |= set(np.unique(labels).tolist())
        assert set(np.unique(labels).tolist()) <= {CLEAR, THICK_CLOUD, THIN_CLOUD, CLOUD_SHADOW}
        clear = labels == CLEAR
        # Bit for bit: every pixel the simulator touched carries a non-clear label.
        assert np.array_equal(out[:, clear].view(np.uint32), refl[:, clear].view(np.uint32))
        changed = (out != refl).any(axis=0)
        assert not (changed & clear).any()
        thick = labels == THICK_CLOUD
        if thick.any():
            for b in (b02, b03, b04):
                assert (out[b, thick] > refl[b, thick]).all()
            ratio = out[b02, thick] / out[b04, thick]
            assert 0.85 < np.median(ratio) < 1.2 and ratio.min() > 0.6
        shadow = labels == CLOUD_SHADOW
        if shadow.any():
            assert (out[:, shadow] < refl[:, shadow]).all()
    assert {THICK_CLOUD, THIN_CLOUD, CLOUD_SHADOW} <= seen


# --------------------------------------------------------------------------------------------------
# Physics on constant fields
# --------------------------------------------------------------------------------------------------


def test_thick_cloud_bright_grey_and_darker_in_swir():
    bands = tuple(b for b in BAND_NAMES if b != "B10")
    refl = _constant(bands)
    for seed in range(3):
        out, labels = simulate(refl, bands, rng=np.random.default_rng(seed), config=THICK_ONLY)
        thick = labels == THICK_CLOUD
        assert thick.mean() > 0.01
        vis = out[[_idx(bands, b) for b in ("B02", "B03", "B04")]][:, thick]
        # At least thick_label_alpha opaque, with a cloud at least 0.45 bright (less the band jitter).
        assert (vis > 0.5 * 0.45 * 0.97).all() and (vis < 1.0).all()
        ratio = out[_idx(bands, "B02"), thick] / out[_idx(bands, "B04"), thick]
        assert np.abs(ratio - 1).max() < 0.2
        # Water and ice absorb in the SWIR: B12 < B11 < VIS over the cloud.
        b02, b11, b12 = (out[_idx(bands, b), thick].mean() for b in ("B02", "B11", "B12"))
        assert b12 < b11 < b02


def test_shaded_cloud_tops_are_dim_grey_thick_cloud_on_their_lee_side():
    bands = ("B02", "B03", "B04", "B08")
    refl = _constant(bands)
    dim = 0
    for seed in range(3):
        # The slope is drawn whatever its range, so a near-flat top sees the same clouds and labels.
        flat, flat_labels = simulate(
            refl,
            bands,
            rng=np.random.default_rng(seed),
            config=replace(THICK_ONLY, thick_top_slope_deg=(1e-3, 1e-3)),
        )
        out, labels = simulate(
            refl,
            bands,
            rng=np.random.default_rng(seed),
            config=replace(THICK_ONLY, thick_top_slope_deg=(35.0, 35.0)),
        )
        np.testing.assert_array_equal(labels, flat_labels)  # shading changes pixels, never labels
        clear = labels == CLEAR
        np.testing.assert_array_equal(out[:, clear], refl[:, clear])
        thick = labels == THICK_CLOUD
        vis = out[:3][:, thick].mean(axis=0)
        assert vis.min() < 0.5 * 0.45 * 0.97 <= flat[:3][:, thick].mean(axis=0).min()  # lee slopes are dim
        assert vis.max() > flat[:3][:, thick].mean(axis=0).max()  # sunlit slopes brighter than a flat top
        # An opaque lee slope stays grey: not the red-edge spectrum of the shaded vegetation beneath.
        opaque_dim = thick & (out[:3].mean(axis=0) < 0.2)
        dim += int(opaque_dim.sum())
        ratio = out[_idx(bands, "B08"), opaque_dim] / out[_idx(bands, "B04"), opaque_dim]
        assert (ratio < 0.5 * VEGETATION["B08"] / VEGETATION["B04"]).all()
    assert dim > 0


def test_a_deck_in_the_shadow_of_a_higher_one_is_dim_grey_and_stays_cloud():
    bands = ("B02", "B03", "B04", "B08")
    blue, red, nir = (_idx(bands, b) for b in ("B02", "B04", "B08"))
    refl = _constant(bands)
    most = {}
    for p_upper in (0.0, 1.0):
        config = replace(THICK_ONLY, p_upper_deck=p_upper, sun_elevation_deg=(35.0, 35.0))
        darkening = []
        for seed in range(4):
            # The darkness is drawn whatever its range: no darkness gives the same clouds, unshaded.
            unshaded, unshaded_labels = simulate(
                refl,
                bands,
                rng=np.random.default_rng(seed),
                config=replace(config, shadow_darkness=(0.0, 0.0), deck_shadow_darkness=(0.0, 0.0)),
            )
            out, labels = simulate(
                refl,
                bands,
                rng=np.random.default_rng(seed),
                config=replace(config, shadow_darkness=(0.8, 0.8)),
            )
            cloud = np.isin(labels, (THICK_CLOUD, THIN_CLOUD))
            np.testing.assert_array_equal(labels[cloud], unshaded_labels[cloud])  # shade never relabels cloud
            clear = labels == CLEAR
            np.testing.assert_array_equal(out[:, clear], refl[:, clear])
            thick = labels == THICK_CLOUD
            drop = unshaded[blue, thick] - out[blue, thick]
            darkening.append(drop)
            # A shaded deck stays grey: not the red edge of shaded vegetation.
            dim = drop > 0.1
            assert (out[nir, thick][dim] / out[red, thick][dim] < 1.5).all()
        most[p_upper] = float(np.concatenate(darkening).max())
    # Alone, a deck dims only where it lets shaded ground through (at most half of 0.07 blue); under a
    # higher deck's shadow it loses much of its own brightness.
    assert most[0.0] < 0.035 < 0.15 < most[1.0]


def test_cloud_tops_are_lit_on_the_side_facing_the_sun():
    from xs2mask.training.simulate import _top_shading

    z = np.tile(np.linspace(0.0, 1.0, 64, dtype=np.float32), (64, 1))  # a top rising towards the east
    towards_sun = _top_shading(z, 20.0, 0.0, 90.0, 40.0, (0.0, 10.0))  # sun in the east
    away = _top_shading(z, 20.0, 0.0, 270.0, 40.0, (0.0, 10.0))  # sun in the west
    across = _top_shading(z, 20.0, 0.0, 0.0, 40.0, (0.0, 10.0))  # sun in the north
    # Slope 20 degrees, sun 40 degrees up: cos(i) / sin(el) = sin(40 -+ 20) / sin(40) on a plane.
    expected_lit, expected_lee = (
        np.sin(np.radians(60)) / np.sin(np.radians(40)),
        np.sin(np.radians(20)) / np.sin(np.radians(40)),
    )
    np.testing.assert_allclose(away, expected_lit, rtol=1e-4)  # the eastward rise faces west
    np.testing.assert_allclose(towards_sun, expected_lee, rtol=1e-4)
    assert (np.abs(across - np.cos(np.radians(20))) < 1e-4).all()


def test_shadow_darkens_every_band_more_in_nir_than_in_blue():
    bands = ("B02", "B03", "B04", "B08", "B11", "B12")
    refl = _constant(bands)
    n = 0
    for seed in range(4):
        out, labels = simulate(
            refl, bands, rng=np.random.default_rng(seed), config=THICK_ONLY, sun_elevation=40.0
        )
        shadow = labels == CLOUD_SHADOW
        n += int(shadow.sum())
        rel = 1.0 - out[:, shadow] / refl[:, shadow]  # relative darkening per band and pixel
        assert (rel > 0).all() and (rel < 0.95).all()
        assert (rel[_idx(bands, "B08")] > rel[_idx(bands, "B02")]).all()
        assert (rel[_idx(bands, "B12")] >= rel[_idx(bands, "B08")]).all()
        # The labelled shadow is a significant one: at least shadow_label_darkening in NIR.
        assert rel[_idx(bands, "B08")].min() >= THICK_ONLY.shadow_label_darkening - 1e-5
    assert n > 0


def test_thin_cloud_changes_pixels_by_a_bounded_amount():
    bands = ("B02", "B03", "B04", "B08")
    refl = _constant(bands)
    for seed in range(4):
        out, labels = simulate(refl, bands, rng=np.random.default_rng(seed), config=THIN_ONLY)
        thin = labels == THIN_CLOUD
        assert thin.any() and not (labels == THICK_CLOUD).any()
        delta = out[:, thin] - refl[:, thin]
        # Semi-transparent: visibly brighter, but at most thin_max_alpha of an opaque cloud.
        assert (delta > 0).all()
        assert delta.max() <= max(THIN_ONLY.thin_max_alpha) * 0.98 + 1e-6
        assert np.median(delta[0]) > 0.03


def test_b10_raised_under_high_cirrus_not_under_low_cloud():
    refl = _constant(BAND_NAMES)
    b10, b02 = BAND_NAMES.index("B10"), BAND_NAMES.index("B02")
    rise = {}
    for name, heights in (("cirrus", (9_000.0, 11_000.0)), ("low", (600.0, 1_000.0))):
        out, labels = simulate(
            refl, BAND_NAMES, rng=np.random.default_rng(5), config=THIN_ONLY, cloud_height_m=heights
        )
        thin = labels == THIN_CLOUD
        rise[name] = (out[b10, thin] - refl[b10, thin], out[b02, thin] - refl[b02, thin])
    b10_cirrus, vis_cirrus = rise["cirrus"]
    assert np.median(b10_cirrus) > 0.02
    # Relative to the (near-black) ground, cirrus shows far more in B10 than in the visible.
    assert np.median(b10_cirrus / VEGETATION["B10"]) > 5 * np.median(vis_cirrus / VEGETATION["B02"])
    assert np.abs(rise["low"][0]).max() < 0.01  # water vapour above a low cloud hides it in B10


# --------------------------------------------------------------------------------------------------
# Shadow geometry
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("azimuth", [0.0, 90.0, 135.0, 250.0])
def test_shadow_falls_away_from_the_sun(azimuth):
    n, height_m, elevation, res = 192, 800.0, 45.0, 10.0
    bands = ("B02", "B03", "B04", "B08")
    refl = _constant(bands, (n, n))
    cfg = replace(THICK_ONLY, thick_coverage=(0.1, 0.1), thick_depth_m=(0.0, 0.0))
    shift = height_m / np.tan(np.radians(elevation)) / res  # 80 px
    az = np.radians(azimuth)
    away = np.array([np.cos(az), -np.sin(az)])  # (row, col) direction away from the sun; rows grow south
    d = np.round(shift * away).astype(int)

    def in_view(p: np.ndarray) -> np.ndarray:
        return ((p >= 0) & (p < n)).all(axis=1)

    for seed in range(3):
        _, labels = simulate(
            refl,
            bands,
            rng=np.random.default_rng(seed),
            config=cfg,
            sun_azimuth=azimuth,
            sun_elevation=elevation,
            resolution_m=res,
            cloud_height_m=(height_m, height_m),
        )
        cloud = (labels == THICK_CLOUD) | (labels == THIN_CLOUD)
        shadow = np.argwhere(labels == CLOUD_SHADOW)
        # Each shadow pixel's source, one displacement towards the sun, is cloud (where it is in view)...
        src = shadow - d
        src = src[in_view(src)]
        assert len(src) > 100 and cloud[src[:, 0], src[:, 1]].all()
        # ...while one displacement away from the sun is not (beyond the clustering of clouds).
        far = shadow + d
        far = far[in_view(far)]
        assert len(far) == 0 or cloud[far[:, 0], far[:, 1]].mean() < 0.6
        # Centroids, over clouds whose shadow is in view and shadows whose cloud is in view: the shadow
        # lies opposite the sun, about one displacement away.
        clouds = np.argwhere(cloud)
        clouds = clouds[in_view(clouds + d)]
        v = shadow[in_view(shadow - d)].mean(axis=0) - clouds.mean(axis=0)
        assert v @ away / np.linalg.norm(v) > 0.85
        assert 0.5 * shift < np.linalg.norm(v) < 1.6 * shift


# --------------------------------------------------------------------------------------------------
# No-data, band subsets, coverage, configuration
# --------------------------------------------------------------------------------------------------


def test_nodata_is_kept_and_labelled_255(wright):
    refl, bands = wright
    refl = refl.copy()
    refl[:, :40, :] = np.nan  # a NaN edge
    refl[:, 100:110, 100:110] = 0.0  # DN 0 block
    refl[3, 200, 200] = np.nan  # one band missing
    nodata = np.zeros(refl.shape[1:], bool)
    nodata[:40], nodata[100:110, 100:110], nodata[200, 200] = True, True, True
    for seed in range(4):
        out, labels = simulate(refl, bands, rng=np.random.default_rng(seed))
        assert (labels[nodata] == NODATA).all() and not (labels[~nodata] == NODATA).any()
        assert np.array_equal(out[:, nodata], refl[:, nodata], equal_nan=True)
        assert np.isfinite(out[:, ~nodata]).all()


def test_band_subsets_see_the_same_clouds(eolearn):
    refl, bands = eolearn
    assert len(bands) == 13
    full, full_labels = simulate(refl, bands, rng=np.random.default_rng(11), config=THICK_ONLY)
    assert (full_labels != CLEAR).any()
    for subset in (("B02", "B03", "B04", "B08"), ("B02", "B03", "B04", "B08", "B11", "B12"), bands[::-1]):
        idx = [bands.index(b) for b in subset]
        out, labels = simulate(refl[idx], subset, rng=np.random.default_rng(11), config=THICK_ONLY)
        assert out.shape == (len(subset), *refl.shape[1:])
        assert np.array_equal(labels, full_labels)
        np.testing.assert_allclose(out, full[idx], rtol=1e-6, atol=1e-7)


def test_aliases_are_accepted():
    refl = _constant(("B02", "B03", "B04", "B08"), (32, 32))
    a = simulate(refl, ("blue", "green", "red", "nir"), rng=np.random.default_rng(1))
    b = simulate(refl, ("B02", "B03", "B04", "B08"), rng=np.random.default_rng(1))
    assert np.array_equal(a[1], b[1])


def test_coverage_is_respected():
    bands = ("B02", "B03", "B04", "B08")
    refl = _constant(bands, (96, 96))
    thick = [
        (
            simulate(
                refl,
                bands,
                rng=np.random.default_rng(s),
                config=replace(THICK_ONLY, thick_coverage=(0.3, 0.3)),
            )[1]
            == THICK_CLOUD
        ).mean()
        for s in range(6)
    ]
    assert np.allclose(thick, 0.3, atol=0.01)  # the label threshold sits at the coverage quantile
    thin = [
        (
            simulate(
                refl, bands, rng=np.random.default_rng(s), config=replace(THIN_ONLY, thin_coverage=(0.4, 0.4))
            )[1]
            == THIN_CLOUD
        ).mean()
        for s in range(6)
    ]
    assert np.allclose(thin, 0.4, atol=0.01)
    drawn = [
        (
            simulate(
                refl,
                bands,
                rng=np.random.default_rng(s),
                config=replace(THICK_ONLY, thick_coverage=(0.1, 0.5)),
            )[1]
            == THICK_CLOUD
        ).mean()
        for s in range(16)
    ]
    assert min(drawn) > 0.09 and max(drawn) < 0.51 and 0.2 < np.mean(drawn) < 0.4


def test_scene_kind_probabilities():
    bands = ("B02", "B03", "B04", "B08")
    refl = _constant(bands, (24, 24))
    cfg = CloudConfig(p_thick=0.5, p_thin=0.3)
    kinds = []
    for s in range(300):
        _, labels = simulate(refl, bands, rng=np.random.default_rng(s), config=cfg)
        kinds.append(
            "thick" if (labels == THICK_CLOUD).any() else "thin" if (labels == THIN_CLOUD).any() else "none"
        )
    share = {k: kinds.count(k) / len(kinds) for k in ("thick", "thin", "none")}
    # Coverage can leave a 24 x 24 thick sample with only its thin fringe in view: generous margins.
    assert 0.38 < share["thick"] < 0.6 and 0.2 < share["thin"] < 0.42 and 0.12 < share["none"] < 0.29
    clear = CloudConfig(p_thick=0.0, p_thin=0.0)
    out, labels = simulate(refl, bands, rng=np.random.default_rng(0), config=clear)
    assert np.array_equal(out, refl) and (labels == CLEAR).all()


def test_sun_geometry_draws_from_the_config():
    cfg = CloudConfig(sun_azimuth_deg=(100.0, 120.0), sun_elevation_deg=(30.0, 35.0))
    draws = [sun_geometry(np.random.default_rng(s), cfg) for s in range(20)]
    assert all(100 <= az <= 120 and 30 <= el <= 35 for az, el in draws)
    assert sun_geometry(np.random.default_rng(3), cfg) == draws[3]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"p_thick": 0.8, "p_thin": 0.3},
        {"p_thick": -0.1},
        {"thick_coverage": (0.5, 0.2)},
        {"visible_alpha": 0.6},
        {"thin_max_alpha": (0.05, 0.08)},
        {"sun_elevation_deg": (0.0, 40.0)},
        {"thick_top_slope_deg": (10.0, 90.0)},
        {"top_shading_limits": (0.5, 0.9)},
        {"p_upper_deck": 1.5},
        {"upper_deck_gap_m": (0.0, 1000.0)},
        {"deck_shadow_darkness": (0.5, 1.2)},
    ],
)
def test_bad_config_is_refused(kwargs):
    with pytest.raises(ValueError):
        CloudConfig(**kwargs)


def test_bad_input_is_refused():
    refl = _constant(("B02", "B03", "B04"), (8, 8))
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="bands"):
        simulate(refl, ("B02", "B03"), rng=rng)
    with pytest.raises(ValueError, match="duplicate"):
        simulate(refl, ("B02", "B02", "B04"), rng=rng)
    with pytest.raises(ValueError, match="elevation"):
        simulate(refl, ("B02", "B03", "B04"), rng=rng, sun_azimuth=0.0, sun_elevation=0.0)


def test_extra_shadow_blur_softens_shadow_edges_only():
    bands = ("B02", "B03", "B04", "B08")
    refl = _constant(bands, (192, 192))
    sharp = replace(THICK_ONLY, thick_top_m=(1000.0, 1000.0), thick_depth_m=(100.0, 100.0))
    soft = replace(sharp, shadow_blur_m=(40.0, 40.0))

    def edge_width(config: CloudConfig) -> float:
        out, labels = simulate(refl, bands, rng=np.random.default_rng(5), config=config, sun_elevation=45.0)
        nir = out[_idx(bands, "B08")]
        ground = refl[_idx(bands, "B08")]
        rel = 1.0 - nir / ground  # darkening, cloud pixels excluded below
        partial = (rel > 0.02) & (rel < 0.9 * rel[labels == CLOUD_SHADOW].max()) & (labels != THICK_CLOUD)
        return partial.sum() / max(int((labels == CLOUD_SHADOW).sum()), 1)

    # The same cloud (drawn before the blur): the blurred one has a wider band of half-shaded pixels.
    assert edge_width(soft) > 1.5 * edge_width(sharp)


def test_l1c_path_reflectance_is_not_shaded_and_blue_keeps_most_of_it():
    bands = ("B02", "B03", "B04", "B08")
    refl = _constant(bands)
    config = replace(THICK_ONLY, path_reflectance=(0.05, 0.05))
    for seed in range(3):
        l2a, labels = simulate(refl, bands, rng=np.random.default_rng(seed), config=config, level="L2A")
        l1c, labels_l1c = simulate(refl, bands, rng=np.random.default_rng(seed), config=config, level="L1C")
        np.testing.assert_array_equal(labels, labels_l1c)  # the same clouds: the level changes only shadows
        shadow = labels == CLOUD_SHADOW
        if not shadow.any():
            continue
        rel_l2a = 1.0 - l2a[:, shadow] / refl[:, shadow]
        rel_l1c = 1.0 - l1c[:, shadow] / refl[:, shadow]
        blue, nir = _idx(bands, "B02"), _idx(bands, "B08")
        # path 0.05 (550 nm) is ~0.08 at 490 nm, above the 0.07 blue ground: blue is barely shaded in L1C.
        assert (rel_l1c[blue] < 0.5 * rel_l2a[blue] + 1e-6).all()
        np.testing.assert_allclose(rel_l1c[nir], rel_l2a[nir], atol=0.06)  # NIR path is under 0.01
        clear = labels == CLEAR
        np.testing.assert_array_equal(l1c[:, clear], refl[:, clear])


def test_new_options_off_draw_the_same_samples_as_before():
    # Configs without the options keep their random sequence: reproducible runs of shipped recipes.
    bands = ("B02", "B03", "B04", "B08")
    refl = _constant(bands)
    a = simulate(refl, bands, rng=np.random.default_rng(9), config=THICK_ONLY)
    off = replace(THICK_ONLY, shadow_blur_m=(0.0, 0.0))
    b = simulate(refl, bands, rng=np.random.default_rng(9), config=off)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
