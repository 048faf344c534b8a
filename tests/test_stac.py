"""STAC search and lazy loading against a real STAC API (rustac serve) over COGs of real pixels."""

from __future__ import annotations

import datetime
import json
import warnings

import numpy as np
import pytest
from support.dask_checks import raise_if_dask_computes

import xs2mask
from xs2mask import radiometry, stac
from xs2mask.exceptions import BandError, InputError, RadiometryWarning, StacError

BANDS = ["B02", "B03", "B04", "B08"]


def _search(cat, role=None):
    if role is None:
        return list(stac.search(cat.url, collections=cat.collections, bbox=cat.bbox, datetime=cat.datetime))
    # Some roles lie outside the main test area: search everywhere, keep the one item.
    return [i for i in stac.search(cat.url, collections=cat.collections) if i.id == cat.ids[role]]


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
    with raise_if_dask_computes():
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
    # The lying item is chip khas (tests/data or ../shared/data): its dark water betrays the wrong offset.
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
    # The multires item is a BigEarthNet patch (tests/data or ../shared/data) with 10, 20 and 60 m bands.
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


# --------------------------------------------------------------------------- solar days, mosaics, duplicates


def _days(cube) -> list[str]:
    return [str(d) for d in cube["time"].values.astype("datetime64[D]")]


def _on_grid_of(cube, truth):
    """The cube's pixels on the (10 m) grid of an item's truth."""
    _, (res, _, left, _, _, top), (height, width) = truth.grid("B02")
    xs = left + res / 2 + res * np.arange(width)
    ys = top - res / 2 - res * np.arange(height)
    return cube.sel(x=xs, y=ys, method="nearest", tolerance=res / 4)


def _assert_reflectance(values, truth):
    for i, band in enumerate(BANDS):
        np.testing.assert_array_equal(values[i], truth.reflectance(band))


@pytest.mark.parametrize("catalogue", ["stac_pc", "stac_es"])
def test_whole_served_range_loads_one_step_per_solar_day(request, catalogue):
    # The reported crash: days of one tile and days of two tiles in one search.
    cat = request.getfixturevalue(catalogue)
    items = _search(cat)
    roles = {t.item_id: t.role for t in cat.truth.values()}
    cube = stac.load(items, bands=BANDS, chunks=256)
    expected_days = sorted({i.datetime.date().isoformat() for i in items})  # local = UTC date at 33 E
    assert _days(cube) == expected_days
    assert [str(d) for d in stac.group_days(items)] == expected_days
    assert cube.chunks[0] == (1,) * len(expected_days)
    recorded = json.loads(cube.attrs["xs2mask_radiometry"])
    assert sorted(recorded) == expected_days
    edge_day = cat.truth_of("tile_edge_left").datetime[:10]
    assert sorted(roles[i] for i in recorded[edge_day]) == ["tile_edge_left", "tile_edge_right"]
    values = cube.compute()
    for day, decisions in recorded.items():
        (role, *_) = [roles[i] for i in decisions]
        if role == "other_utm":  # on another grid: see test_items_in_another_utm_zone_...
            continue
        # The pair's mosaic is the whole chip, seamless: the very pixels of the unsplit scene.
        truth = cat.truth_of("timeseries_0" if day == edge_day else role)
        _assert_reflectance(_on_grid_of(values.sel(time=day), truth).values, truth)


def test_one_item_per_scene_across_collections(stac_es):
    # L2A, L1C and Collection 1 copies of one scene: one is kept, the newest processing (here the
    # same baseline and generation time for two of them; the latest `created` decides).
    items = _search(stac_es)
    first_day = stac_es.truth_of("harmonised").datetime[:10]
    days = stac.group_days(items)
    assert [i.id for i in days[np.datetime64(first_day)]] == [stac_es.ids["harmonised"]]
    assert sum(map(len, days.values())) == len(items) - 2


def test_a_day_mixing_one_and_two_tile_mosaics_loads(stac_pc):
    # One tile of the pair dropped (as --max-cloud does), the other pairs and singles kept.
    left, right = stac_pc.ids["tile_edge_left"], stac_pc.ids["tile_edge_right"]
    items = [i for i in _search(stac_pc) if i.id != right]
    cube = stac.load(items, bands=BANDS, chunks=256)
    day = stac_pc.truth_of("tile_edge_left").datetime[:10]
    assert day in _days(cube)
    assert list(json.loads(cube.attrs["xs2mask_radiometry"])[day]) == [left]
    whole = stac_pc.truth_of("timeseries_0")
    values = _on_grid_of(cube.sel(time=day), whole).values
    left_cols = stac_pc.truth_of("tile_edge_left").window[3]
    expected = np.stack([whole.reflectance(b) for b in BANDS])
    np.testing.assert_array_equal(values[..., :left_cols], expected[..., :left_cols])
    assert np.isnan(values[..., left_cols:]).all()


@pytest.mark.parametrize(("catalogue", "max_cloud"), [("stac_pc", None), ("stac_pc", 50), ("stac_es", None)])
def test_the_job_masks_the_whole_served_range(request, tmp_path, catalogue, max_cloud):
    # `xs2mask mask-stac` as `python tests/servers.py` suggests it: the whole range, with and without a cloud
    # limit that drops one tile of a pair and the only item of a day. Each day is reloaded on its own
    # per slab; the store must equal the masks of one full load.
    import xs2mask
    from xs2mask.pipeline import Job, Load, Predict, Search, Store, mask_stac

    cat = request.getfixturevalue(catalogue)
    collection = cat.collections[0]
    job = Job(
        Search(cat.url, (collection,), cat.bbox, cat.datetime, max_cloud=max_cloud),
        Store(str(tmp_path / "m.zarr")),
        load=Load(chunks=256),
        predict=Predict("xs2mask-4b"),
    )
    masks = mask_stac(job)
    found = stac.search(cat.url, collections=collection, bbox=cat.bbox, datetime=cat.datetime)
    kept = [i for i in found if max_cloud is None or i.properties["eo:cloud_cover"] <= max_cloud]
    assert len(kept) < len(found) or max_cloud is None
    model = job.predict.model
    expected = xs2mask.predict(stac.load(kept, bounds_latlon=cat.bbox, model=model), model=model)
    assert _days(masks) == [str(d) for d in stac.group_days(kept)] == _days(expected)
    np.testing.assert_array_equal(masks.mask.values, expected.mask.values)
    assert sorted(json.loads(masks.attrs["xs2mask_radiometry"])) == _days(masks)


def _reprocessed(old: dict, pixels_of: dict, baseline: str, generated: str) -> dict:
    """A reprocessing of ``old`` (same tile and datatake) whose files are ``pixels_of``'s."""
    new = json.loads(json.dumps(old))
    stamp = generated.replace("-", "").replace(":", "")[:15]
    tokens = [
        ("N0212", "N" + baseline.replace(".", "")),
        ("N02.12", "N" + baseline),
        ("20201007T214652", stamp),
    ]
    for key in ("s2:product_uri", "s2:datatake_id"):
        for a, b in tokens:
            new["properties"][key] = new["properties"][key].replace(a, b)
    new["id"] = old["id"].replace("20201007T214652", stamp)
    new["properties"].update({"s2:processing_baseline": baseline, "s2:generation_time": generated})
    new["assets"] = pixels_of["assets"]
    return new


def test_reprocessed_duplicate_keeps_the_newest(stac_pc):
    # Old product: khas pixels, baseline 02.12. Its reprocessing: adwp pixels + 1000 DN, baseline 05.11.
    old = stac_pc.item("timeseries_1")
    new = _reprocessed(old, stac_pc.item("baseline_0511"), "05.11", "2023-03-01T10:10:10Z")
    for order in ([old, new], [new, old]):
        cube = stac.load(order, bands=BANDS)
        assert cube.sizes["time"] == 1
        assert list(next(iter(json.loads(cube.attrs["xs2mask_radiometry"]).values()))) == [new["id"]]
        np.testing.assert_allclose(cube.radiometric_offset.values, [-0.1])
        _assert_reflectance(cube.isel(time=0).values, stac_pc.truth_of("baseline_0511"))


def test_mosaic_order_within_a_day_is_by_time_then_id(stac_pc):
    # Two overpasses of one solar day over the same place (another tile name, so no duplicates) and of
    # two baselines: each item's radiometry is its own, and where both have pixels the earlier wins.
    first = stac_pc.item("timeseries_1")  # khas pixels, baseline 02.12
    second = json.loads(json.dumps(first))
    second["id"] += "_second"
    second["properties"].update({"s2:mgrs_tile": "36MWC", "s2:processing_baseline": "05.11"})
    second["assets"] = stac_pc.item("baseline_0511")["assets"]  # adwp pixels + 1000 DN, same grid
    for delta, on_top in (("08:21:47", "timeseries_1"), ("08:19:47", "baseline_0511")):
        second["properties"]["datetime"] = first["properties"]["datetime"][:11] + delta + "Z"
        cube = stac.load([second, first], bands=BANDS)
        assert cube.sizes["time"] == 1
        _assert_reflectance(cube.isel(time=0).values, stac_pc.truth_of(on_top))
        assert np.isnan(cube.radiometric_offset.values).all()  # the day's items differ: see the attrs
        assert len(next(iter(json.loads(cube.attrs["xs2mask_radiometry"]).values()))) == 2


def _item(id_, props, lon=33.0, when="2024-03-01T08:20:00Z"):
    import pystac

    return pystac.Item.from_dict(
        {
            "type": "Feature",
            "stac_version": "1.0.0",
            "id": id_,
            "geometry": None,
            "bbox": [lon - 0.5, -3.0, lon + 0.5, -2.0],
            "properties": {"datetime": when, **props},
            "links": [],
            "assets": {},
        }
    )


_PC = {"s2:mgrs_tile": "36MVC", "s2:datatake_id": "GS2A_20240301T082001_018417_N05.10"}
_ES = {"grid:code": "MGRS-36MVC", "s2:product_uri": "S2A_MSIL2A_20240301T082001_N0510_R121_T36MVC_X.SAFE"}


@pytest.mark.parametrize(
    ("kept", "other", "why"),
    [
        ({**_PC, "s2:processing_baseline": "05.10"}, {**_PC, "s2:processing_baseline": "02.14"}, "baseline"),
        (  # a higher baseline wins even when generated earlier
            {**_PC, "s2:processing_baseline": "05.10", "s2:generation_time": "2024-03-01T10:00:00Z"},
            {**_PC, "s2:processing_baseline": "05.09", "s2:generation_time": "2025-01-01T00:00:00Z"},
            "baseline first",
        ),
        (
            {**_PC, "s2:processing_baseline": "05.10", "s2:generation_time": "2024-03-02T10:00:00Z"},
            {**_PC, "s2:processing_baseline": "05.10", "s2:generation_time": "2024-03-01T10:00:00.5Z"},
            "generation time",
        ),
        (  # Earth Search: tile in grid:code, datatake and baseline and generation time in the product name
            {**_ES, "s2:product_uri": _ES["s2:product_uri"].replace("_X", "_20240302T000000")},
            {**_ES, "s2:product_uri": _ES["s2:product_uri"].replace("_X", "_20240301T000000")},
            "product name",
        ),
        ({**_PC, "created": "2024-03-05T00:00:00Z"}, {**_PC, "created": "2024-03-04T00:00:00Z"}, "created"),
        (  # one provider's tile and datatake fields against another's
            {"mgrs:utm_zone": 36, "mgrs:latitude_band": "M", "mgrs:grid_square": "VC", **_ES},
            {**_PC, "s2:processing_baseline": "04.00"},
            "across providers",
        ),
    ],
)
def test_duplicates_keep_the_newest_processing(kept, other, why):
    for order in ([_item("kept", kept), _item("other", other)], [_item("other", other), _item("kept", kept)]):
        (members,) = stac.group_days(order).values()
        assert [i.id for i in members] == ["kept"], why


def test_different_scenes_are_never_duplicates():
    items = [
        _item("tile", _PC),
        _item("other_tile", {**_PC, "s2:mgrs_tile": "36MWC"}),
        _item("other_datatake", {**_PC, "s2:datatake_id": "GS2B_20240301T082001_036000_N05.10"}),
        _item("no_tile", {"s2:datatake_id": _PC["s2:datatake_id"]}),
        _item("no_metadata", {}),
    ]
    (members,) = stac.group_days([*items, items[0]]).values()  # an item listed twice counts once
    assert sorted(i.id for i in members) == sorted(i.id for i in items)


def test_solar_day_is_the_local_date_of_the_scene():
    def at(id_, lon, when, geometry=None):
        item = _item(id_, {}, lon=lon, when=when)
        if geometry is not None:
            item.geometry, item.bbox = geometry, [-180.0, -17.0, 180.0, -16.0]
        return item

    # A footprint split at the antimeridian whose bbox spans the globe: its centre is 180, not 0.
    split = {
        "type": "MultiPolygon",
        "coordinates": [
            [[[179.6, -17], [180, -17], [180, -16], [179.6, -16], [179.6, -17]]],
            [[[-180, -17], [-179.6, -17], [-179.6, -16], [-180, -16], [-180, -17]]],
        ],
    }
    items = [
        # Fiji, 10:40 local: the UTC date is the day before.
        at("fiji", 178.5, "2024-01-01T22:50:00Z"),
        at("antimeridian", 0.0, "2024-01-01T22:51:00Z", geometry=split),
        # One datatake across UTC midnight east of 157.5 E: two UTC dates, one solar day.
        at("before_midnight", 170.0, "2024-01-05T23:59:57Z"),
        at("after_midnight", 171.0, "2024-01-06T00:00:01Z"),
        # Far west, just after UTC midnight: still the afternoon of the day before.
        at("aleutians", -175.0, "2024-01-09T00:30:00Z"),
        at("greenwich", 0.5, "2024-01-09T10:30:00Z"),
    ]
    days = stac.group_days(items)
    assert {str(d): [i.id for i in m] for d, m in days.items()} == {
        "2024-01-02": ["fiji", "antimeridian"],
        "2024-01-06": ["before_midnight", "after_midnight"],
        "2024-01-08": ["aleutians"],
        "2024-01-09": ["greenwich"],
    }


def test_filtering_that_empties_a_day_drops_it(stac_pc):
    # As --max-cloud 50 does: drops one tile of the pair and the only item of 2020-06-23.
    items = _search(stac_pc)
    clear = [i for i in items if i.properties["eo:cloud_cover"] <= 50]
    emptied = stac_pc.truth_of("timeseries_2").datetime[:10]
    cube = stac.load(clear, bands=BANDS, chunks=256)
    assert emptied not in _days(cube) and emptied in _days(stac.load(items, bands=BANDS))
    assert cube.sizes["time"] == len({i.datetime.date() for i in clear}) == 6
    assert not np.isnan(cube.max(dim=("band", "y", "x")).values).any()  # no empty time step


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        # Copernicus Data Space Ecosystem: every band at the resolutions ESA resamples it to
        (
            [
                "B02_60m",
                "B02_20m",
                "B02_10m",
                "B03_10m",
                "B04_10m",
                "B08_10m",
                "B8A_60m",
                "B8A_20m",
                "SCL_20m",
            ],
            {"B02": "B02_10m", "B03": "B03_10m", "B04": "B04_10m", "B08": "B08_10m", "B8A": "B8A_20m"},
        ),
        # Earth Search: common names, COGs before their JPEG2000 twins
        (
            ["blue-jp2", "blue", "green", "red", "nir", "nir08-jp2", "nir08", "scl"],
            {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir", "B8A": "nir08"},
        ),
        # Planetary Computer: ESA names
        (["B02", "B03", "B04", "B08", "B8A", "SCL"], {b: b for b in ("B02", "B03", "B04", "B08", "B8A")}),
    ],
    ids=["cdse", "earth-search", "planetary-computer"],
)
def test_each_providers_asset_keys_give_the_bands_at_their_native_resolution(keys, expected):
    import pystac

    item = pystac.Item("x", None, None, datetime.datetime(2024, 6, 1), {})
    for key in keys:
        item.add_asset(key, pystac.Asset(f"https://example.com/{key}.tif"))
    assert stac._asset_keys(item, list(expected)) == expected
    assert stac.resolve_model([item]) == xs2mask.models.registry.resolve_default(sorted(expected)).name
