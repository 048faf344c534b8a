"""The STAC -> Zarr job on realistic catalogues (``tests/support/catalogue.py``), searched at random.

Hypothesis draws bounding boxes (inside the scene, across tile edges and the swath edge, partly
outside) and date ranges; the generator's own knowledge of what it wrote says which solar days the
store must hold (never the loader's), and the masks must equal ``xs2mask.predict`` of the same cube
loaded in memory, bit for bit. Plain tests pin each catalogue feature: two UTM zones in one mosaic,
reprocessed duplicates, baselines before and after 04.00, a swath edge, a missing band, both
providers' conventions.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, assume, example, given, settings
from hypothesis import strategies as st

import xs2mask
from xs2mask import stac
from xs2mask.exceptions import BandError, StacError
from xs2mask.pipeline import Job, Load, Predict, Search, Store, mask_stac

pytest.importorskip("rustac", reason="rustac (STAC API server) is not installed")
from support.catalogue import PROVIDERS, Catalogue, build_catalogue, serve, solar_day

# pystac migrates the Collection-1 items' storage extension and cannot parse local hrefs: harmless here.
pytestmark = pytest.mark.filterwarnings("ignore:Could not parse bucket/account from href:UserWarning")

MODEL = "xs2mask-4b"
EXAMPLES = 20  # per provider; an example runs the job and the in-memory prediction (about 1 s on 2 cores)


@pytest.fixture(scope="module")
def catalogues(tmp_path_factory):
    """Both providers' catalogues (512 x 512 px), served once for the module."""
    with contextlib.ExitStack() as stack:
        yield {
            p: stack.enter_context(serve(build_catalogue(p, tmp_path_factory.mktemp(f"cat_{p}"))))
            for p in PROVIDERS
        }


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _job(cat: Catalogue, bbox, datetime: str, out: Path) -> Job:
    return Job(
        Search(cat.url, cat.collections, tuple(bbox), datetime), Store(str(out)), predict=Predict(MODEL)
    )


def _in_memory(cat: Catalogue, bbox, datetime: str):
    items = stac.search(cat.url, collections=list(cat.collections), bbox=bbox, datetime=datetime)
    return stac.load(items, bounds_latlon=bbox, model=MODEL)


def _solar_days(times, bbox) -> list[dt.date]:
    lon = (bbox[0] + bbox[2]) / 2
    return [
        solar_day(dt.datetime.fromtimestamp(t.astype("datetime64[s]").astype(int), dt.timezone.utc), lon)
        for t in times
    ]


def _day(scene) -> str:
    return scene.datetime.date().isoformat()


def _truth_at(cube, cat: Catalogue, role: str, band: str) -> np.ndarray:
    """The generator's truth of ``band`` (real DN / 10000) at the cube's pixel centres; NaN off the item.

    For items on the cube's own grid (same UTM zone, 10 m lattice).
    """
    truth = cat.truth[cat.scene(role).item_id]
    _, t, (height, width) = truth.grid(band)
    rows = np.floor((cube["y"].values - t[5]) / t[4]).astype(int)
    cols = np.floor((cube["x"].values - t[2]) / t[0]).astype(int)
    inside = (rows[:, None] >= 0) & (rows[:, None] < height) & (cols[None] >= 0) & (cols[None] < width)
    values = truth.reflectance(band)[np.clip(rows, 0, height - 1)[:, None], np.clip(cols, 0, width - 1)[None]]
    return np.where(inside, values, np.float32(np.nan))


# --------------------------------------------------------------------------------------------------
# the whole job, searched at random
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Search:
    bbox: tuple[float, ...]
    datetime: str
    window: tuple[int, int, int, int]  # row, col, height, width in scene pixels (for the report)


_TALLIED = ("mosaic_other_zone", "duplicate_new", "swath_edge")


def _searches(cat: Catalogue):
    size = cat.size
    # where tiles end (west: column 0.6; north-east: row 0.55) or start (0.45), the scene's edges; the
    # swath edge runs from column 0.45 (top) to 0.75 (bottom)
    edges = [0, int(0.45 * size), int(0.6 * size), int(0.55 * size), size]
    days = sorted({s.datetime.date() for s in cat.scenes})

    @st.composite
    def draw(draw):
        h, w = draw(st.integers(64, 256)), draw(st.integers(64, 256))
        centre = st.one_of(st.integers(0, size), st.sampled_from(edges))
        row = draw(centre) - h // 2 + draw(st.integers(-32, 32))
        col = draw(centre) - w // 2 + draw(st.integers(-32, 32))
        first = draw(st.integers(0, len(days) - 1))
        last = draw(st.integers(first, len(days) - 1))
        start = days[first] - dt.timedelta(days=draw(st.integers(0, 3)))
        end = days[last] + dt.timedelta(days=draw(st.integers(0, 3)))
        if draw(st.booleans()) and first == last:  # one day after a pass: mostly nothing to find
            start = end = days[first] + dt.timedelta(days=1)
        return _Search(cat.bbox_of(row, col, h, w), f"{start}/{end}", (row, col, h, w))

    return draw()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_job_writes_each_solar_day_once_and_the_masks_of_predict(provider, catalogues, record_property):
    cat = catalogues[provider]
    ran: list[_Search] = []
    tally: Counter[str] = Counter()  # what the drawn searches hit
    # the centre 256 px: the three tiles of the mosaic, the swath edge, the duplicates' lost rows
    window = (cat.size // 2 - 128, cat.size // 2 - 128, 256, 256)
    after = max(s.datetime for s in cat.scenes).date() + dt.timedelta(days=1)
    explicit = (
        _Search(cat.bbox_of(*window), cat.datetime, window),  # every day and feature
        _Search(cat.bbox_of(*window), f"{after}/{after}", window),  # no item
    )

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,  # the same examples on every run and machine
        database=None,
        phases=(Phase.explicit, Phase.generate),  # no shrinking: a failure reports its search as drawn
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(search=_searches(cat))
    @example(search=explicit[0])
    @example(search=explicit[1])
    def check(search: _Search) -> None:
        days = cat.expected_days(search.bbox, search.datetime)
        assume(days is not None)
        ran.append(search)
        if search not in explicit:
            tally["no item" if not days else f"{len(days)} day{'s' if len(days) > 1 else ''}"] += 1
            tally.update(s.role for s in cat.scenes if s.solar_day in days and s.role.startswith(_TALLIED))
        with tempfile.TemporaryDirectory(prefix="xs2mask-cat-") as tmp:
            job = _job(cat, search.bbox, search.datetime, Path(tmp) / "masks.zarr")
            if not days:
                with pytest.raises(StacError, match="no items"):
                    mask_stac(job)
                return
            written = mask_stac(job)
            got = _solar_days(written["time"].values, search.bbox)
            assert sorted(got) == sorted(days), f"{search}: solar days {got}, expected {sorted(days)}"
            expected = xs2mask.predict(_in_memory(cat, search.bbox, search.datetime), model=MODEL).compute()
            np.testing.assert_array_equal(written["time"].values, expected["time"].values)
            np.testing.assert_array_equal(written["mask"].values, expected["mask"].values)

    check()
    print(f"\n{provider}: {len(ran)} hypothesis examples run, drawn ones hit {dict(sorted(tally.items()))}")
    record_property("hypothesis_examples", len(ran))
    assert ran[: len(explicit)] == list(explicit)
    assert len(ran) >= EXAMPLES // 2, "most drawn searches were too close to a footprint to call"


def test_slabs_read_with_their_halo_give_the_masks_of_predict_on_the_whole_day(tmp_path_factory, tmp_path):
    """A job of many slabs reads each slab with its halo (not the whole day's chunks): still the masks of
    ``predict`` on the whole day's cube, bit for bit, on a scene wider than a slab and its halo, across
    tiles of two UTM zones, the swath edge and the duplicates' lost rows."""
    with serve(build_catalogue("pc", tmp_path_factory.mktemp("cat_wide"), size=1600)) as cat:
        bbox = cat.bbox_of(8, 8, cat.size - 16, cat.size - 16)
        job = Job(
            Search(cat.url, cat.collections, bbox, cat.datetime),
            Store(str(tmp_path / "m.zarr"), block=512),
            load=Load(chunks=256),
            predict=Predict(model=MODEL),
        )
        written = mask_stac(job, progress=False)
        assert written.sizes["y"] > 2 * 512 + 538  # at least one slab whose window is cut on both sides
        expected = xs2mask.predict(_in_memory(cat, bbox, cat.datetime), model=MODEL).compute()
    np.testing.assert_array_equal(written["time"].values, expected["time"].values)
    np.testing.assert_array_equal(written["mask"].values, expected["mask"].values)


# --------------------------------------------------------------------------------------------------
# one feature at a time
# --------------------------------------------------------------------------------------------------


def test_provider_conventions(catalogues):
    pc, es = catalogues["pc"], catalogues["es"]
    for item in pc.items:
        assert set(item["assets"]) <= {"B02", "B03", "B04", "B08"}
        assert "s2:processing_baseline" in item["properties"]
    for item in es.items:
        assert set(item["assets"]) <= {"blue", "green", "red", "nir"}
        offsets = {rb["offset"] for a in item["assets"].values() for rb in a["raster:bands"]}
        assert offsets == {-0.1}  # as published, also where Element84 already removed the offset
        harmonised = item["properties"].get("earthsearch:boa_offset_applied")
        assert harmonised is (True if item["collection"] == "sentinel-2-l2a" else None)
    # the files hold real DN + 1000 exactly where the provider's do
    import rasterio

    for cat, role, offset in (
        (pc, "baseline_0400", 1000),
        (pc, "mosaic_west", 0),
        (pc, "duplicate_new", 1000),
        (es, "collection_l2a", 0),
        (es, "collection_c1", 1000),
    ):
        scene, truth = cat.scene(role), cat.truth[cat.scene(role).item_id]
        assert scene.dn_offset == offset
        with rasterio.open(truth.asset_paths[truth.asset_of("B04")]) as ds:
            dn = ds.read(1).astype(np.int32)
        real = truth.source_dn("B04").astype(np.int32)
        np.testing.assert_array_equal(dn, np.where(real == 0, 0, real + offset))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_mosaic_of_tiles_in_two_utm_zones_is_one_full_day(provider, catalogues, tmp_path):
    cat = catalogues[provider]
    day = [s for s in cat.scenes if s.role.startswith("mosaic_")]
    zones = sorted(s.epsg for s in day)
    assert len(set(zones)) == 2 and len({s.tile for s in day}) == 3 and len({s.solar_day for s in day}) == 1
    dates = sorted({s.datetime.date() for s in day})  # es: two UTC dates, one datatake
    assert len(dates) == (2 if provider == "es" else 1)
    datetime = f"{dates[0]}/{dates[-1]}"
    # the south-east corner is covered by the tile of the other zone alone: found, loaded in its zone
    bbox = cat.bbox_of(cat.size - 100, cat.size - 100, 90, 90)
    cube = _in_memory(cat, bbox, datetime).compute()
    assert cube.sizes["time"] == 1 and cube.rio.crs.to_epsg() == zones[0]
    assert np.isfinite(cube.values).mean() > 0.98
    # the whole scene: one time step on the grid of the zone of two tiles, every pixel of the three
    written = mask_stac(
        _job(cat, cat.bbox_of(8, 8, cat.size - 16, cat.size - 16), datetime, tmp_path / "m.zarr")
    )
    assert _solar_days(written["time"].values, cat.bbox) == [day[0].solar_day]
    assert written["mask"].rio.crs.to_epsg() == zones[-1]
    assert (written["mask"].values == 255).mean() < 0.01


@pytest.mark.parametrize("provider", PROVIDERS)
def test_tiles_of_another_zone_load_the_same_pixels_for_any_chunks_and_bounds(provider, catalogues):
    """The warped tile's pixels depend on neither the chunks nor the load's bounds (GDAL's approximate
    transformer once made 1 % of them differ between chunkings), so a slab, a chunk or a window of a
    job reads what a whole load reads."""
    cat = catalogues[provider]
    dates = sorted({s.datetime.date() for s in cat.scenes if s.role.startswith("mosaic_")})
    items = stac.search(
        cat.url, collections=list(cat.collections), bbox=cat.bbox, datetime=f"{dates[0]}/{dates[-1]}"
    )
    assert len({stac._item_epsg(i) for i in items}) == 2
    whole = stac.load(items, bounds_latlon=cat.bbox_of(8, 8, cat.size - 16, cat.size - 16), model=MODEL)
    reference = whole.compute()
    epsg = whole.rio.crs.to_epsg()
    left, top = float(whole.x[0]) - 5, float(whole.y[0]) + 5
    height, width = whole.sizes["y"], whole.sizes["x"]
    for chunks, (r0, r1, c0, c1) in [
        (96, (0, height, 0, width)),
        (128, (37, 301, 250, 490)),
        (1000, (200, height, 3, 411)),
    ]:
        bounds = (left + 10 * c0, top - 10 * r1, left + 10 * c1, top - 10 * r0)
        part = stac.load(items, bounds=bounds, epsg=epsg, chunks=chunks, model=MODEL).values
        np.testing.assert_array_equal(part, reference.values[:, :, r0:r1, c0:c1])
    assert np.isfinite(reference.values).mean() > 0.9


@pytest.mark.parametrize("provider", PROVIDERS)
def test_reprocessed_duplicates_are_one_time_step_of_the_real_reflectance(provider, catalogues):
    cat = catalogues[provider]
    old, new = cat.scene("duplicate_old"), cat.scene("duplicate_new")
    assert (old.tile, old.datetime) == (new.tile, new.datetime) and new.reprocesses == old.item_id
    assert new.generation_time > old.generation_time and old.item_id != new.item_id
    # inside the west tile only, across the rows the older product lost: the newer one is complete
    assert np.isnan(cat.truth[old.item_id].reflectance("B02")).any()
    bbox = cat.bbox_of(120, 100, 128, 128)
    cube = _in_memory(cat, bbox, _day(old)).compute()
    assert cube.sizes["time"] == 1
    for band in ("B02", "B08"):
        expected = _truth_at(cube, cat, "duplicate_new", band)
        assert np.isfinite(expected).all()
        np.testing.assert_array_equal(cube.sel(band=band).values[0], expected)


def test_baselines_before_and_after_0400_load_to_the_same_reflectance(catalogues):
    cat = catalogues["pc"]
    assert cat.scene("mosaic_west").baseline == "02.12" and cat.scene("baseline_0400").baseline == "04.00"
    bbox = cat.bbox_of(40, 40, 128, 128)
    old = _in_memory(cat, bbox, "2020-04-29").compute()
    new = _in_memory(cat, bbox, "2022-05-04").compute()
    np.testing.assert_array_equal(old.values, new.values)
    np.testing.assert_array_equal(new.sel(band="B03").values[0], _truth_at(new, cat, "baseline_0400", "B03"))
    assert float(new["radiometric_offset"][0]) == pytest.approx(-0.1)
    assert float(old["radiometric_offset"][0]) == 0.0


def test_swath_edge_is_no_data_east_of_the_line(catalogues, tmp_path):
    cat = catalogues["pc"]
    scene = cat.scene("swath_edge")
    assert scene.relative_orbit != cat.scene("mosaic_west").relative_orbit
    truth = cat.truth[scene.item_id]
    assert 0.2 < np.isnan(truth.reflectance("B02")).mean() < 0.5
    # a box astride the top of the line: west half data, east half no data, masks too
    written = mask_stac(_job(cat, cat.bbox_of(12, 170, 64, 128), _day(scene), tmp_path / "m.zarr"))
    mask = written["mask"].values[0]
    assert (mask[:, :40] != 255).all() and (mask[:, -40:] == 255).all()


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_missing_band_stops_the_job_with_band_error(provider, tmp_path):
    cat = build_catalogue(provider, tmp_path / provider, size=128, missing_band="B08")
    scene = cat.scene("missing_band")
    assert "B08" not in scene.bands
    with serve(cat) as served:
        job = _job(served, served.bbox, f"{_day(scene)}/{_day(scene)}", tmp_path / "m.zarr")
        with pytest.raises(BandError, match=f"{scene.item_id} has no asset for band B08"):
            mask_stac(job)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_expected_days_is_an_independent_oracle(provider, catalogues):
    cat = catalogues[provider]
    everything = cat.expected_days(cat.bbox_of(200, 100, 64, 64), cat.datetime)
    assert everything == {s.solar_day for s in cat.scenes}  # west tile: every day has it
    # the north-east corner: the swath-edge pass has no data there, and the footprint says so
    corner = cat.expected_days(cat.bbox_of(0, cat.size - 64, 64, 64), cat.datetime)
    assert cat.scene("swath_edge").solar_day not in corner
    assert cat.expected_days(cat.bbox_of(-200, -200, 64, 64), cat.datetime) == frozenset()


def test_the_python_job_shows_progress_and_logs_unless_told_not_to(catalogues, tmp_path, capsys, caplog):
    served = catalogues["pc"]
    bbox = served.bbox_of(200, 100, 64, 64)
    with caplog.at_level(logging.INFO, logger="xs2mask"):
        mask_stac(_job(served, bbox, served.datetime, tmp_path / "a.zarr"))
    err = capsys.readouterr().err
    assert "masking" in err and "slab" in err  # tqdm's bar, on stderr
    logged = [r.getMessage() for r in caplog.records if r.name == "xs2mask"]
    assert any("solar days" in m for m in logged) and any("complete" in m for m in logged)
    mask_stac(_job(served, bbox, served.datetime, tmp_path / "b.zarr"), progress=False)
    assert "masking" not in capsys.readouterr().err


def test_the_default_model_is_one_the_items_can_feed(catalogues, tmp_path):
    """A four-band catalogue gets the best installed four-band model, never one needing B11 or L1C."""
    from xs2mask.models import registry

    served = catalogues["pc"]
    search = Search(served.url, served.collections, tuple(served.bbox_of(200, 100, 64, 64)), served.datetime)
    job = Job(search, Store(str(tmp_path / "default.zarr")))
    masks = mask_stac(job, progress=False)
    assert masks.attrs["xs2mask_model"] == registry.resolve_default(["B02", "B03", "B04", "B08"]).name
