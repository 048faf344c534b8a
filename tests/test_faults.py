"""Read faults: real COGs over real HTTP (127.0.0.1) that answer 503, truncate, stall or 404.

Every test reads the real-pixel COGs of the ``stac_pc`` catalogue through
:class:`support.faults.FlakyFileServer` and compares with the same items read from the local files: a
retried read must give the very same pixels, and a read that cannot succeed must fail loudly (or, if
asked, become recorded no-data).
"""

from __future__ import annotations

import copy
import pickle
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from support.faults import FlakyFileServer
from support.stac_api import serve_items

import xs2mask
from xs2mask import stac, store
from xs2mask.exceptions import ReadError, ReadWarning
from xs2mask.pipeline import Job, Load, Predict, Search, Store, mask_stac

MODEL = "ukis-csmask-4b-l2a"
JUNE = "2020-06-01/2020-06-30"  # the 3-date time series of the PC catalogue
FAST = {"read_retries": 2, "read_timeout": 2.0}


def _over_http(item: dict, cog_server: FlakyFileServer, tag: str) -> dict:
    """``item`` with its assets served by ``cog_server``; ``tag`` makes the URLs new to GDAL's HTTP cache,
    which would otherwise answer from what an earlier test read."""
    item = copy.deepcopy(item)
    for asset in item["assets"].values():
        asset["href"] = f"{cog_server.href(asset['href'])}?{tag}"
    return item


def _path(item: dict, asset: str, cog_server: FlakyFileServer) -> str:
    """The server path of a local asset (what ``missing`` holds)."""
    return str(Path(item["assets"][asset]["href"]).resolve().relative_to(cog_server.root))


def _read(item: dict, **kw) -> np.ndarray:
    return stac.load([item], model=MODEL, **kw).values


@pytest.fixture(scope="module")
def expected(stac_pc) -> np.ndarray:
    """The undisturbed read: the same item from the local files."""
    return _read(stac_pc.item("timeseries_0"))


@pytest.mark.parametrize("kind", ["503", "truncate", "stall"])
def test_transient_faults_are_retried_to_the_same_pixels(stac_pc, cog_server, expected, kind):
    cog_server.kind, cog_server.faults = kind, 2
    got = _read(_over_http(stac_pc.item("timeseries_0"), cog_server, kind), **FAST)
    assert cog_server.faulty() == 2  # the faults were played, and the reads still came back whole
    np.testing.assert_array_equal(got, expected)


def test_persistent_fault_raises_read_error_naming_item_asset_and_fix(stac_pc, cog_server):
    item = _over_http(stac_pc.item("timeseries_0"), cog_server, "persistent")
    cog_server.kind, cog_server.faults, cog_server.only = "503", -1, "B04"
    start = time.perf_counter()
    with pytest.raises(ReadError) as info:
        _read(item, read_retries=1, read_timeout=2.0)
    err = info.value
    assert (err.item, err.asset, err.permanent) == (item["id"], "B04", False)
    assert err.href == item["assets"]["B04"]["href"]
    assert "on_read_error='nodata'" in str(err) and "--read-retries" in str(err)
    # Bounded: GDAL's own retries times ours, for the few windows of one small file.
    assert 2 <= cog_server.faulty() <= 40
    assert time.perf_counter() - start < 60


def test_missing_file_fails_at_once(stac_pc, cog_server):
    item = _over_http(stac_pc.item("timeseries_0"), cog_server, "missing")
    cog_server.missing.add(_path(stac_pc.item("timeseries_0"), "B08", cog_server))
    with pytest.raises(ReadError, match="no retry will help") as info:
        _read(item, read_retries=3, read_timeout=2.0)
    assert info.value.permanent and info.value.asset == "B08"
    misses = [p for m, p, status in cog_server.paths if status == 404]
    assert len(misses) <= 4  # GDAL may probe twice (HEAD, GET); we never retry a 404


def test_read_error_survives_pickling():
    err = ReadError.of("http://x/b04.tif", "CURL error", attempts=3, item="S2A_1", asset="B04")
    back = pickle.loads(pickle.dumps(err))
    assert (back.href, back.item, back.asset, back.reason, str(back)) == (
        err.href,
        err.item,
        err.asset,
        err.reason,
        str(err),
    )


# --------------------------------------------------------------------------- the pipeline


@pytest.fixture
def june_api(stac_pc, flaky, request):
    """A STAC API (rustac) over the June time series with every asset served by ``flaky``, at URLs
    new to this test."""
    tag = request.node.name
    items = [_over_http(i, flaky, tag) for i in stac_pc.items if i["id"] in stac_pc.groups["timeseries"]]
    with serve_items(items, stac_pc.collection_docs) as url:
        yield url


def _job(stac_pc, url, out, on_read_error="raise") -> Job:
    # One retry: the fault is persistent here, and each retry waits out GDAL's own back-off too.
    return Job(
        Search(url, stac_pc.collections[:1], stac_pc.bbox, JUNE),
        Store(str(out)),
        load=Load(read_retries=1, on_read_error=on_read_error),
        predict=Predict(MODEL),
    )


def test_pipeline_nodata_on_read_error_is_recorded_then_retried(stac_pc, june_api, cog_server, tmp_path):
    url = june_api
    bad = stac_pc.groups["timeseries"][1]
    # The undisturbed run: the same items, read from the local files through the fixture's own API.
    reference = mask_stac(_job(stac_pc, stac_pc.url, tmp_path / "ref.zarr"), sign=False).mask.values

    cog_server.kind, cog_server.faults, cog_server.only = "503", -1, f"{bad}"
    out = tmp_path / "nodata.zarr"
    with pytest.warns(ReadWarning, match="written as no-data"):
        mask_stac(_job(stac_pc, url, out, on_read_error="nodata"), sign=False)
    with pytest.warns(ReadWarning, match="1 slab"):
        masks = store.open_masks(str(out))
    errors = masks.attrs["xs2mask_read_errors"]
    assert [(e["item"], e["error"] != "") for e in errors] == [(bad, True)]
    assert errors[0]["asset"] in {"B02", "B03", "B04", "B08"} and bad in errors[0]["href"]
    assert np.all(masks.mask.values[1] == xs2mask.classes.NODATA)  # never silent garbage
    np.testing.assert_array_equal(masks.mask.values[[0, 2]], reference[[0, 2]])

    cog_server.faults = 0  # the host is back: a rerun retries the failed slab, and only that
    cog_server.paths.clear()
    mask_stac(_job(stac_pc, url, out, on_read_error="nodata"), sign=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReadWarning)
        healed = store.open_masks(str(out))
    assert healed.attrs["xs2mask_read_errors"] == []
    np.testing.assert_array_equal(healed.mask.values, reference)
    assert all(bad in p for m, p, s in cog_server.paths if m == "GET")


def test_pipeline_missing_file_raises_even_with_nodata(stac_pc, june_api, cog_server, tmp_path):
    bad = next(i for i in stac_pc.items if i["id"] == stac_pc.groups["timeseries"][0])
    cog_server.missing.add(_path(bad, "B02", cog_server))
    with pytest.raises(ReadError, match="no retry will help"):
        mask_stac(_job(stac_pc, june_api, tmp_path / "m.zarr", on_read_error="nodata"), sign=False)
