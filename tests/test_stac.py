"""STAC search and lazy loading against a real STAC API (rustac serve) over COGs of real pixels."""

from __future__ import annotations

import json
import warnings

import dask
import numpy as np
import pytest

from xs2mask import radiometry, stac
from xs2mask.exceptions import BandError, InputError, RadiometryWarning, StacError

BANDS = ["B02", "B03", "B04", "B08"]


def _search(cat, role=None):
    if role is None:
        return list(stac.search(cat.url, collections=cat.collections, bbox=cat.bbox, datetime=cat.datetime))
    # Some roles lie outside the main test area: search everywhere, keep the one item.
    return [i for i in stac.search(cat.url, collections=cat.collections) if i.id == cat.ids[role]]


class _NoCompute:
    """A Dask scheduler that fails the test if anything is computed."""

    def __call__(self, *args, **kwargs):
        raise AssertionError("something was computed while building the graph")


def test_search_finds_items_by_bbox_and_dates(stac_pc):
    items = _search(stac_pc)
    assert {i.id for i in items} >= {stac_pc.ids["baseline_0212"], stac_pc.ids["tile_edge_left"]}
    one_day = stac.search(stac_pc.url, collections="sentinel-2-l2a", bbox=stac_pc.bbox, datetime="2020-04-29")
    assert [i.id for i in one_day] == [stac_pc.ids["baseline_0212"]]
    nowhere = stac.search(stac_pc.url, collections="sentinel-2-l2a", bbox=[-60, -60, -59, -59])
    assert len(nowhere) == 0
    with pytest.raises(StacError, match="no items to load"):
        stac.load(nowhere)


@pytest.mark.parametrize(
    ("catalogue", "role"),
    [
        ("stac_pc", "baseline_0212"),
        ("stac_pc", "baseline_0511"),
        ("stac_es", "harmonised"),
        ("stac_es", "l1c"),
        ("stac_es", "c1_l2a"),
    ],
)
def test_every_provider_variant_loads_to_the_same_true_reflectance(request, catalogue, role):
    cat = request.getfixturevalue(catalogue)
    items = _search(cat, role)
    with dask.config.set(scheduler=_NoCompute()):
        cube = stac.load(items, bands=BANDS, chunks=256)  # lazy: nothing read
    assert cube.dims == ("time", "band", "y", "x")
    assert cube.dtype == np.float32
    assert list(cube.band.values) == BANDS
    assert cube.rio.crs.to_epsg() == 32736
    truth = cat.truth_of(role)
    values = cube.isel(time=0).values
    for i, band in enumerate(BANDS):
        expected = truth.reflectance(band)
        assert values[i].shape == expected.shape
        np.testing.assert_array_equal(values[i], expected)
    # Pixel-centre coordinates of the source grid.
    _, (res, _, left, _, _, top), _ = truth.grid("B02")
    assert float(cube.x[0]) == left + res / 2 and float(cube.y[0]) == top - res / 2
    decisions = json.loads(cube.attrs["xs2mask_radiometry"])
    assert truth.item_id in next(iter(decisions.values()))


def test_jp2_assets_of_a_harmonised_item_get_the_offset(stac_es):
    item = _search(stac_es, "harmonised")[0]
    assert radiometry.item_radiometry(item, "red").offset == 0.0
    assert radiometry.item_radiometry(item, "red-jp2").offset == pytest.approx(-0.1)


def test_offset_is_recorded_per_time_step(stac_pc):
    items = _search(stac_pc, "baseline_0212") + _search(stac_pc, "baseline_0511")
    cube = stac.load(items, bands=BANDS)
    np.testing.assert_allclose(cube.radiometric_offset.values, [0.0, -0.1])
    records = json.loads(cube.attrs["xs2mask_radiometry"])
    assert any("05.11" in s for d in records.values() for v in d.values() for s in v)
    np.testing.assert_array_equal(cube.isel(time=0).values, cube.isel(time=1).values)


def test_lying_metadata_is_caught_by_the_sanity_check(stac_es):
    cube = stac.load(_search(stac_es, "lying"), bands=BANDS)
    fraction = float(radiometry.negative_fraction(cube).max())
    with pytest.warns(RadiometryWarning, match="lying|" + stac_es.ids["lying"]):
        message = radiometry.check_reflectance(fraction, label=stac_es.ids["lying"])
    assert message is not None
    fixed = stac.load(_search(stac_es, "lying"), bands=BANDS, harmonize=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RadiometryWarning)
        fraction = float(radiometry.negative_fraction(fixed).max())
        assert radiometry.check_reflectance(fraction, label="x") is None


def test_tile_edge_pair_is_one_seamless_time_step(stac_pc):
    pair = _search(stac_pc, "tile_edge_left") + _search(stac_pc, "tile_edge_right")
    whole = _search(stac_pc, "baseline_0212")
    cube = stac.load(pair, bands=BANDS, chunks=200)
    assert cube.sizes["time"] == 1
    reference = stac.load(whole, bands=BANDS)
    np.testing.assert_array_equal(cube.isel(time=0).values, reference.isel(time=0).values)


def test_items_in_another_utm_zone_are_reprojected_onto_one_grid(stac_pc):
    items = _search(stac_pc, "baseline_0212") + _search(stac_pc, "other_utm")
    cube = stac.load(items, bands=BANDS)
    assert cube.rio.crs.to_epsg() == 32736  # ties go to the first item's zone
    assert cube.sizes["time"] == 2
    a, b = cube.isel(time=0).values, cube.isel(time=1).values
    both = ~np.isnan(a) & ~np.isnan(b)
    # A round trip through another zone with nearest resampling moves some pixels by one.
    assert both.mean() > 0.9
    assert np.mean(a[both] == b[both]) > 0.6


def test_twenty_metre_bands_are_resampled_onto_the_ten_metre_grid(stac_pc):
    cube = stac.load(_search(stac_pc, "multires"), bands=["B04", "B11"], resolution=10)
    truth = stac_pc.truth_of("multires")
    b11 = truth.reflectance("B11")
    values = cube.sel(band="B11").isel(time=0).values
    assert values.shape == (2 * b11.shape[0], 2 * b11.shape[1])
    np.testing.assert_array_equal(values[::2, ::2], b11)


def test_bands_none_loads_what_the_model_needs(stac_pc):
    cube = stac.load(_search(stac_pc, "baseline_0212"), model="ukis-csmask-4b-l2a")
    assert list(cube.band.values) == ["B02", "B03", "B04", "B08"]


def test_missing_band_names_the_item_and_the_fix(stac_pc):
    items = _search(stac_pc, "baseline_0212")
    with pytest.raises(BandError, match=rf"{items[0].id} has no asset for band B10.*L1C only"):
        stac.load(items, bands=["B02", "B10"])
    with pytest.raises(InputError, match="harmonize"):
        stac.load(items, bands=BANDS, harmonize="yes")


def test_error_status_is_retried_a_bounded_number_of_times(http_error_server):
    with pytest.raises(StacError, match=r"failed after 2 retries.*Check the URL"):
        stac.search(http_error_server.url, collections="sentinel-2-l2a", retries=2)
    assert http_error_server.requests == 3  # the first try + 2 retries, then a clear error


def test_unreachable_api_gives_a_clear_error(unreachable_url):
    with pytest.raises(StacError, match=rf"{unreachable_url}.*failed"):
        stac.search(unreachable_url, collections="sentinel-2-l2a", retries=1)


def test_resign_replaces_expired_signatures():
    import pystac

    item = pystac.Item.from_dict(
        {
            "type": "Feature",
            "stac_version": "1.0.0",
            "id": "x",
            "geometry": None,
            "properties": {"datetime": "2024-01-01T00:00:00Z"},
            "links": [],
            "assets": {"B04": {"href": "https://acc.blob.core.windows.net/c/b04.tif?se=2024&sig=old"}},
        }
    )
    calls = []

    def sign(it):
        calls.append(it.id)
        for asset in it.assets.values():
            asset.href += "?sig=new"
        return it

    fresh = stac.resign([item], sign)
    assert fresh[0].assets["B04"].href == "https://acc.blob.core.windows.net/c/b04.tif?sig=new"
    assert item.assets["B04"].href.endswith("sig=old")  # the caller's item is untouched
    assert calls == ["x"]
