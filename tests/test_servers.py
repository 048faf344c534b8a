"""Checks of the test servers themselves (fixtures of conftest.py, helpers of tests/support).

They pin down what the pipeline tests may rely on: which items each local STAC API serves, that its
search filters work, that every file is a valid COG/JP2 on the advertised grid, and that every item,
read the way its provider's metadata says, yields the documented reflectance (or, for the one item
whose metadata lies, a reflectance shifted by -0.1).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from support.faults import Fault, FaultServer
from support.items import BANDS_10M, OFFSET_DN
from support.s3 import S3Server
from support.stac_api import serve_items
from support.variants import CLEAR, OVERCAST, StacCatalogue

CATALOGUES = ["stac_pc", "stac_es"]
#: roles whose footprint is not the main test area (chip adwp)
ELSEWHERE = {"lying", "multires"}


@pytest.fixture(params=CATALOGUES)
def catalogue(request: pytest.FixtureRequest) -> StacCatalogue:
    return request.getfixturevalue(request.param)


def _client(url: str):
    pystac_client = pytest.importorskip("pystac_client")
    return pystac_client.Client.open(url)


def _search_ids(cat: StacCatalogue, **kwargs) -> set[str]:
    kwargs.setdefault("collections", list(cat.collections))
    return {d["id"] for d in _client(cat.url).search(**kwargs).items_as_dicts()}


def _read(path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(1)


def provider_reflectance(item: dict, key: str, dn: np.ndarray) -> np.ndarray:
    """Reflectance as the item's own metadata says (rules of ../shared/design/sentinel2.md)."""
    props, asset = item["properties"], item["assets"][key]
    x = np.where(dn == 0, np.nan, dn.astype(np.float64))
    if props.get("earthsearch:boa_offset_applied") is True and not key.endswith("-jp2"):
        return x / 1e4
    bands = asset.get("raster:bands") or [{}]
    if "offset" in bands[0]:
        return x * bands[0]["scale"] + bands[0]["offset"]
    baseline = tuple(int(p) for p in props["s2:processing_baseline"].split("."))
    return (x - 1000) / 1e4 if baseline >= (4, 0) else x / 1e4


# ------------------------------------------------------------------------------------------------
# STAC API servers
# ------------------------------------------------------------------------------------------------


def test_catalogue_fields(catalogue: StacCatalogue) -> None:
    assert catalogue.url.startswith("http://127.0.0.1:")
    assert len(catalogue.items) == len(catalogue.truth) == len(catalogue.ids)
    assert {i["collection"] for i in catalogue.items} == set(catalogue.collections)
    assert len(catalogue.groups["tile_edge"]) == 2
    assert len(catalogue.groups["timeseries"]) == 3
    for item in catalogue.items:
        truth = catalogue.truth[item["id"]]
        assert truth.collection == item["collection"]
        assert truth.datetime == item["properties"]["datetime"]
        assert set(truth.asset_paths) == set(item["assets"])
        assert all(p.is_file() and p.is_relative_to(catalogue.folder) for p in truth.asset_paths.values())
        assert truth.source_dir.is_dir()
        props = item["properties"]
        zenith = props.get("s2:mean_solar_zenith", 90 - props.get("view:sun_elevation", 0))
        assert 15 < zenith < 65  # the place's own sun (templates: Kamchatka in January, Antarctica)
        # only the licence link is kept from the provider: rustac adds self/root/parent/collection
        assert [lk["rel"] for lk in item["links"]] in ([], ["license"])


def test_search_by_bbox_and_datetime(catalogue: StacCatalogue) -> None:
    main_area = {catalogue.ids[r] for r in catalogue.ids if r not in ELSEWHERE}
    assert _search_ids(catalogue, bbox=catalogue.bbox, datetime=catalogue.datetime) == main_area
    assert _search_ids(catalogue, datetime=catalogue.datetime) == set(catalogue.truth)
    multires = catalogue.truth_of("multires")
    assert _search_ids(catalogue, bbox=multires.bbox) == {multires.item_id}
    # datetime filtering: the dates of the time series hold nothing else
    series = catalogue.groups["timeseries"]
    first, last = catalogue.truth[series[0]].datetime, catalogue.truth[series[-1]].datetime
    assert _search_ids(catalogue, bbox=catalogue.bbox, datetime=f"{first}/{last}") == set(series)
    assert _search_ids(catalogue, datetime=catalogue.truth[series[1]].datetime[:10]) == {series[1]}
    # the tile-edge pair shares one day
    edge_day = catalogue.truth[catalogue.groups["tile_edge"][0]].datetime[:10]
    assert _search_ids(catalogue, bbox=catalogue.bbox, datetime=edge_day) == set(
        catalogue.groups["tile_edge"]
    )
    # ids, and paging through "next" links with a small page size
    assert _search_ids(catalogue, ids=[series[0]]) == {series[0]}
    assert _search_ids(catalogue, limit=2) == set(catalogue.truth)


def test_search_es_collections(stac_es: StacCatalogue) -> None:
    for collection in stac_es.collections:
        expected = {i for i, t in stac_es.truth.items() if t.collection == collection}
        assert _search_ids(stac_es, collections=[collection]) == expected
    assert _search_ids(stac_es, collections=["sentinel-2-l1c"]) == {stac_es.ids["l1c"]}


def test_rustac_capabilities(stac_pc: StacCatalogue) -> None:
    """rustac's memory backend: item-search only; no query, filter, sort or fields extension."""
    with urllib.request.urlopen(stac_pc.url + "/conformance") as r:
        conforms = json.load(r)["conformsTo"]
    assert "https://api.stacspec.org/v1.0.0/item-search" in conforms
    assert not [c for c in conforms if any(k in c for k in ("filter", "query", "sort", "fields"))]
    # a body with "query" answers an EMPTY page (no error): select on eo:cloud_cover client-side
    body = json.dumps({"collections": ["sentinel-2-l2a"], "query": {"eo:cloud_cover": {"lt": 101}}})
    request = urllib.request.Request(
        stac_pc.url + "/search", data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request) as r:
        assert json.load(r)["features"] == []


def test_served_items_keep_provider_metadata(catalogue: StacCatalogue) -> None:
    served = {d["id"]: d for d in _client(catalogue.url).search(ids=list(catalogue.truth)).items_as_dicts()}
    assert set(served) == set(catalogue.truth)
    for item in catalogue.items:
        got = served[item["id"]]
        assert got["properties"] == item["properties"]
        assert got["assets"] == item["assets"]
        assert got["stac_extensions"] == item["stac_extensions"]
        assert {"self", "root", "collection"} <= {lk["rel"] for lk in got["links"]}


def test_pystac_migrates_proj_epsg_to_proj_code(stac_pc: StacCatalogue) -> None:
    """Pitfall: pystac >= 1.12 turns proj:epsg into proj:code (stackstac 0.5.1 reads only proj:epsg)."""
    item = next(iter(_client(stac_pc.url).search(ids=[stac_pc.ids["baseline_0212"]]).items()))
    assert item.properties.get("proj:epsg") is None
    assert item.properties["proj:code"] == "EPSG:32736"


def test_serve_items_custom_catalogue(stac_pc: StacCatalogue, tmp_path) -> None:
    item = stac_pc.item("baseline_0212")
    with serve_items([item], stac_pc.collection_docs, workdir=tmp_path) as url:
        found = list(_client(url).search(collections=["sentinel-2-l2a"]).items_as_dicts())
    assert [d["id"] for d in found] == [item["id"]]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)  # stopped on exit


def test_servers_cli_serves_what_its_command_line_searches() -> None:
    """``python tests/servers.py pc``, to try the CLI offline: it serves the catalogue, prints a
    ``xs2mask mask-stac`` command whose search finds the whole time range, and stops cleanly on SIGTERM."""
    from xs2mask import stac

    script = Path(__file__).resolve().parent / "servers.py"
    proc = subprocess.Popen([sys.executable, str(script), "pc"], stdout=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        assert lines[1].startswith("try: xs2mask mask-stac "), lines
        args = shlex.split(lines[1].removeprefix("try: xs2mask mask-stac "))
        opt = {k: args[i + 1] for i, k in enumerate(args) if k.startswith("--")}
        bbox = [float(v) for v in args[args.index("--bbox") + 1 : args.index("--bbox") + 5]]
        found = stac.search(
            opt["--stac-url"], collections=opt["--collection"], bbox=bbox, datetime=opt["--datetime"]
        )
        assert len({i.datetime.date() for i in found}) == 7  # every day of the main area
        assert opt["--out"] == "masks.zarr"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(opt["--stac-url"], timeout=2)  # rustac stopped with it


# ------------------------------------------------------------------------------------------------
# files and ground truth
# ------------------------------------------------------------------------------------------------


def test_files_are_cogs_on_the_advertised_grid(catalogue: StacCatalogue) -> None:
    import rasterio

    for item in catalogue.items:
        epsg = item["properties"]["proj:epsg"]
        assert catalogue.truth[item["id"]].crs == f"EPSG:{epsg}"
        for asset in item["assets"].values():
            with rasterio.open(asset["href"]) as ds:
                assert ds.count == 1 and ds.dtypes[0] == "uint16"
                assert ds.crs.to_epsg() == epsg
                assert list(ds.shape) == asset["proj:shape"]
                assert list(ds.transform)[:6] == pytest.approx(asset["proj:transform"])
                # every grid origin is on the 60 m lattice, except the right half of a tile-edge pair
                # (200 columns to the right of it, on the 20 m lattice)
                assert ds.transform.c % 20 == 0 and ds.transform.f % 60 == 0
                if asset["type"] == "image/jp2":
                    assert ds.driver == "JP2OpenJPEG"
                else:
                    assert ds.driver == "GTiff"
                    assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
                    assert ds.nodata == 0
                    assert ds.compression is not None
            if "file:checksum" in asset:  # sha2-256 multihash, as Earth Search writes it
                digest = hashlib.sha256(Path(asset["href"]).read_bytes()).hexdigest()
                assert asset["file:checksum"] == "1220" + digest
                assert asset["file:size"] == Path(asset["href"]).stat().st_size
            if "proj:bbox" in asset:
                left, top = asset["proj:transform"][2], asset["proj:transform"][5]
                h, w = asset["proj:shape"]
                res = asset["proj:transform"][0]
                assert asset["proj:bbox"] == pytest.approx([left, top - h * res, left + w * res, top])


def test_each_item_loads_to_its_ground_truth(catalogue: StacCatalogue) -> None:
    for item in catalogue.items:
        truth = catalogue.truth[item["id"]]
        for key, band in truth.asset_bands.items():
            dn = _read(truth.asset_paths[key])
            expected = truth.reflectance(band)
            offset = truth.asset_dn_offset[key]
            honest = np.where(dn == 0, np.nan, (dn.astype(np.float64) - offset) / 1e4)
            np.testing.assert_allclose(honest, expected, rtol=0, atol=1e-6, err_msg=f"{item['id']}/{key}")
            as_metadata_says = provider_reflectance(item, key, dn)
            if truth.metadata_truthful:
                np.testing.assert_allclose(as_metadata_says, expected, rtol=0, atol=1e-6)
            else:  # the lying item: its metadata makes every band 0.1 too dark
                np.testing.assert_allclose(as_metadata_says, expected - 0.1, rtol=0, atol=1e-6)


def test_lying_item_is_detectable(stac_es: StacCatalogue) -> None:
    item, truth = stac_es.item("lying"), stac_es.truth_of("lying")
    assert item["properties"]["earthsearch:boa_offset_applied"] is False
    assert item["properties"]["s2:processing_baseline"] == "05.11"
    assert item["assets"]["blue"]["raster:bands"][0]["offset"] == -0.1
    wrong = provider_reflectance(item, "blue", _read(truth.asset_paths["blue"]))
    assert np.mean(wrong < -0.05) > 0.2  # dark water: a large share clearly below zero
    assert np.mean(truth.reflectance("B02") < -0.05) == 0


def test_variants_share_one_reflectance(catalogue: StacCatalogue) -> None:
    """Every radiometric variant of chip adwp, read honestly, is the chip's DN / 10000."""
    ids = catalogue.groups["same_reflectance"]
    for band in BANDS_10M:
        chip = _read(catalogue.truth[ids[0]].source_path(band)).astype(np.float64) / 1e4
        for item_id in ids:
            truth = catalogue.truth[item_id]
            assert truth.source_dir.name == "adwp" and truth.window is None
            for key, code in truth.asset_bands.items():
                if code == band:
                    dn = _read(truth.asset_paths[key]).astype(np.float64)
                    np.testing.assert_allclose((dn - truth.asset_dn_offset[key]) / 1e4, chip, atol=1e-9)
    offsets = {catalogue.truth[i].asset_dn_offset[k] for i in ids for k in catalogue.truth[i].asset_dn_offset}
    assert offsets == {0, OFFSET_DN}  # both conventions are represented


def test_tile_edge_pair(catalogue: StacCatalogue) -> None:
    left, right = (catalogue.truth[i] for i in catalogue.groups["tile_edge"])
    items = [catalogue.item(r) for r in ("tile_edge_left", "tile_edge_right")]
    assert left.datetime == right.datetime
    tiles = {i["properties"].get("s2:mgrs_tile") or i["properties"]["grid:code"] for i in items}
    assert len(tiles) == 2
    assert left.window == (0, 0, 512, 300) and right.window == (0, 200, 512, 312)
    a, b = left.reflectance("B04"), right.reflectance("B04")
    np.testing.assert_array_equal(a[:, 200:300], b[:, :100])  # identical overlap
    chip = _read(left.source_path("B04")) / 1e4
    np.testing.assert_allclose(np.concatenate([a, b[:, 100:]], axis=1), chip, atol=1e-7)
    _, ta, _ = left.grid("B04")
    _, tb, _ = right.grid("B04")
    assert tb[2] - ta[2] == 2000 and tb[5] == ta[5]


def test_other_utm_item(catalogue: StacCatalogue) -> None:
    truth = catalogue.truth_of("other_utm")
    main = catalogue.truth_of("timeseries_0")
    assert truth.crs == "EPSG:32735" and main.crs == "EPSG:32736"
    assert truth.bbox == pytest.approx(main.bbox)  # same place, other zone
    refl = truth.reflectance("B02")
    assert 0 < np.isnan(refl).mean() < 0.1  # rotated footprint: no-data corners
    valid = refl[~np.isnan(refl)]
    chip = _read(main.source_path("B02")) / 1e4
    assert set(np.unique(valid)) <= set(np.unique(chip.astype(np.float32)))  # nearest: no new values


def test_timeseries_truth(catalogue: StacCatalogue) -> None:
    truths = [catalogue.truth[i] for i in catalogue.groups["timeseries"]]
    assert [t.source_dir.name for t in truths] == ["adwp", CLEAR, OVERCAST]
    assert len({t.datetime[:10] for t in truths}) == 3
    assert len({t.grid("B02") for t in truths}) == 1
    assert truths[0].georeferencing.startswith("real")
    assert all(t.georeferencing.startswith("borrowed from chip adwp") for t in truths[1:])
    clouds = [t.cloud_fraction for t in truths]
    assert 0.3 < clouds[0] < 0.7 and clouds[1] < 0.05 and clouds[2] > 0.99
    assert all(t.label_trusted for t in truths)
    assert truths[0].labels().shape == truths[0].reflectance("B02").shape


def test_multires_item(catalogue: StacCatalogue) -> None:
    item, truth = catalogue.item("multires"), catalogue.truth_of("multires")
    shapes = {truth.asset_bands[k]: tuple(a["proj:shape"]) for k, a in item["assets"].items()}
    assert shapes["B02"] == (120, 120) and shapes["B05"] == (60, 60) and shapes["B01"] == (20, 20)
    origins = {tuple(a["proj:transform"][i] for i in (2, 5)) for a in item["assets"].values()}
    assert len(origins) == 1  # 10, 20 and 60 m grids share their origin
    assert {a["gsd"] for a in item["assets"].values()} == {10, 20, 60}
    refl = truth.reflectance("B11")
    assert refl.shape == (60, 60) and np.isfinite(refl).all()


def test_stackstac_reads_served_items(stac_pc: StacCatalogue) -> None:
    """stackstac with dicts keeps proj:epsg; with pystac Items it needs epsg= (and then takes its
    bounds from the lon/lat bbox: pass bounds= to keep the exact grid)."""
    stackstac = pytest.importorskip("stackstac")
    client = _client(stac_pc.url)
    ids = list(stac_pc.groups["tile_edge"])
    dicts = list(client.search(ids=ids).items_as_dicts())
    cube = stackstac.stack(dicts, assets=["B04"], resolution=10, rescale=False)
    mosaic = stackstac.mosaic(cube, dim="time").squeeze().values
    chip = _read(stac_pc.truth[ids[0]].source_path("B04"))
    np.testing.assert_array_equal(mosaic, chip)
    items = list(client.search(ids=ids).items())
    with pytest.raises(ValueError, match="epsg"):
        stackstac.stack(items, assets=["B04"], resolution=10)
    cube = stackstac.stack(items, assets=["B04"], resolution=10, epsg=32736, bounds=cube.spec.bounds)
    np.testing.assert_array_equal(stackstac.mosaic(cube, dim="time").squeeze().values, chip)


# ------------------------------------------------------------------------------------------------
# fault servers and S3
# ------------------------------------------------------------------------------------------------


def test_http_error_server(http_error_server: FaultServer) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(http_error_server.url + "/search?limit=1", timeout=5)
    assert err.value.code == 503
    http_error_server.default = Fault.error(500)
    request = urllib.request.Request(http_error_server.url + "/search", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=5)
    assert err.value.code == 500
    assert http_error_server.requests == 2
    assert http_error_server.paths == [("GET", "/search?limit=1"), ("POST", "/search")]
    http_error_server.reset()
    assert http_error_server.requests == 0


def test_pystac_client_against_error_server(http_error_server: FaultServer) -> None:
    """pystac_client's default Retry(5) does not retry on HTTP status: one request, then APIError."""
    pystac_client = pytest.importorskip("pystac_client")
    from pystac_client.exceptions import APIError

    with pytest.raises(APIError):
        pystac_client.Client.open(http_error_server.url)
    assert http_error_server.requests == 1


def test_unreachable_url(unreachable_url: str) -> None:
    with pytest.raises(urllib.error.URLError) as err:
        urllib.request.urlopen(unreachable_url, timeout=5)
    assert isinstance(err.value.reason, ConnectionRefusedError)


def test_s3_zarr_roundtrip(s3_server: S3Server) -> None:
    xr = pytest.importorskip("xarray")
    s3fs = pytest.importorskip("s3fs")
    ds = xr.Dataset(
        {"mask": (("y", "x"), np.arange(12, dtype="uint8").reshape(3, 4))},
        coords={"y": [30.0, 20.0, 10.0], "x": [0.0, 10.0, 20.0, 30.0]},
        attrs={"source": "test_servers"},
    )
    url = s3_server.url("roundtrip.zarr")
    ds.to_zarr(url, storage_options=s3_server.storage_options, mode="w", consolidated=False)
    back = xr.open_zarr(url, storage_options=s3_server.storage_options, consolidated=False).load()
    xr.testing.assert_identical(back, ds)
    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    assert fs.exists(f"{s3_server.bucket}/roundtrip.zarr/zarr.json")
    assert s3_server.storage_options["client_kwargs"]["endpoint_url"] == s3_server.endpoint_url
