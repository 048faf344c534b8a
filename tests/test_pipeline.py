"""`xs2mask mask-stac`: STAC API (rustac serve) -> lazy cube -> masks -> Zarr (local, S3), end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import xs2mask
from xs2mask import stac
from xs2mask.cli import main
from xs2mask.exceptions import RadiometryWarning
from xs2mask.pipeline import Job, Load, Predict, Search, Store, mask_stac

MODEL = "ukis-csmask-4b-l2a"
JUNE = "2020-06-01/2020-06-30"  # the 3-date time series of the PC catalogue


def _args(cat, out, *extra, datetime=JUNE, bbox=None):
    return [
        "mask-stac",
        "--stac-url", cat.url,
        "--collection", cat.collections[0],
        "--bbox", *map(str, bbox or cat.bbox),
        "--datetime", datetime,
        "--out", str(out),
        "--model", MODEL,
        "--quiet",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def expected(stac_pc):
    """Masks of the June time series computed in memory, without the pipeline."""
    items = stac.search(stac_pc.url, collections="sentinel-2-l2a", bbox=stac_pc.bbox, datetime=JUNE)
    cube = stac.load(items, bounds_latlon=stac_pc.bbox, model=MODEL)
    return xs2mask.predict(cube, model=MODEL).compute()


def test_cli_writes_the_same_masks_as_predict_in_memory(tmp_path, stac_pc, expected, capsys):
    out = tmp_path / "june.zarr"
    assert main(_args(stac_pc, out)) == 0
    assert "wrote" in capsys.readouterr().out
    assert xs2mask.open_masks(str(out)).attrs["xs2mask_provenance"]["harmonize"] == "auto"
    masks = xs2mask.open_masks(str(out))
    assert masks.sizes["time"] == 3
    np.testing.assert_array_equal(masks.mask.values, expected.mask.values)
    np.testing.assert_array_equal(masks.time.values, expected.time.values)
    assert masks.mask.rio.crs.to_epsg() == 32736
    assert masks.mask.attrs["flag_meanings"] == "clear thick_cloud thin_cloud cloud_shadow no_data"
    assert masks.attrs["xs2mask_model"] == MODEL
    assert masks.attrs["xs2mask_stac_url"] == stac_pc.url
    assert set(json.loads(masks.attrs["xs2mask_items"])) == set(stac_pc.groups["timeseries"])
    radiometry = json.loads(masks.attrs["xs2mask_radiometry"])
    assert sorted(radiometry) == ["2020-06-03", "2020-06-13", "2020-06-23"]
    np.testing.assert_array_equal(masks.radiometric_offset.values, [0, 0, 0])
    assert (masks.mask.values < 4).mean() > 0.9  # masks, not no-data
    assert set(np.unique(masks.mask.values)) <= {0, 1, 3, 255}


def test_processing_resolution_is_passed_to_the_engine(tmp_path, stac_pc):
    out = tmp_path / "20m.zarr"
    assert main([*_args(stac_pc, out, datetime="2020-06-03"), "--processing-resolution", "20"]) == 0
    masks = xs2mask.open_masks(str(out))
    assert masks.attrs["xs2mask_processing_resolution"] == 20
    assert float(abs(masks.x[1] - masks.x[0])) == 10  # run at 20 m, returned on the 10 m grid


def test_local_cluster_gives_the_same_masks(tmp_path, stac_pc, expected):
    out = tmp_path / "cluster.zarr"
    assert main([*_args(stac_pc, out), "--workers", "2"]) == 0
    np.testing.assert_array_equal(xs2mask.open_masks(str(out)).mask.values, expected.mask.values)


def test_s3_store(stac_pc, s3_server, expected):
    url = s3_server.url("june.zarr")
    options = [
        "--storage-option", f"endpoint_url={s3_server.endpoint_url}",
        "--storage-option", f"key={s3_server.key}",
        "--storage-option", f"secret={s3_server.secret}",
    ]  # fmt: skip
    assert main([*_args(stac_pc, url), *options]) == 0
    masks = xs2mask.open_masks(url, storage_options=s3_server.storage_options)
    np.testing.assert_array_equal(masks.mask.values, expected.mask.values)
    assert masks.mask.rio.crs.to_epsg() == 32736


def test_append_new_dates_then_nothing_left_to_do(tmp_path, stac_pc, expected):
    out = tmp_path / "growing.zarr"
    assert main(_args(stac_pc, out, datetime="2020-06-01/2020-06-15")) == 0
    assert xs2mask.open_masks(str(out)).sizes["time"] == 2
    assert main(_args(stac_pc, out)) == 2  # new dates without --append are refused
    assert main([*_args(stac_pc, out), "--append"]) == 0
    masks = xs2mask.open_masks(str(out))
    np.testing.assert_array_equal(masks.mask.values, expected.mask.values)
    # The items and radiometry decisions of both runs are kept.
    assert set(json.loads(masks.attrs["xs2mask_items"])) == set(stac_pc.groups["timeseries"])
    assert sorted(json.loads(masks.attrs["xs2mask_radiometry"])) == ["2020-06-03", "2020-06-13", "2020-06-23"]


def test_signing_happens_per_day_and_again_when_old(tmp_path, stac_pc, monkeypatch):
    signed = []

    def sign(item):
        signed.append(item.id)
        return item

    def run(name):
        job = Job(
            Search(stac_pc.url, ("sentinel-2-l2a",), stac_pc.bbox, "2020-06-03"),
            Store(str(tmp_path / name), block=256),
            load=Load(chunks=256),
            predict=Predict(MODEL),
        )
        return len(mask_stac(job, sign=sign).attrs["xs2mask_done"])

    # The day's cube is built (and signed) once and sliced per slab ...
    assert run("day.zarr") >= 4 and signed == [stac_pc.ids["timeseries_0"]]
    # ... and signed again once it is older than signatures may be trusted.
    signed.clear()
    monkeypatch.setattr("xs2mask.pipeline._RESIGN_AFTER_S", -1.0)
    n_slabs = run("old.zarr")
    assert signed == [stac_pc.ids["timeseries_0"]] * n_slabs


def test_tile_edge_gives_one_seamless_mask_equal_to_the_whole_scene(tmp_path, stac_pc):
    def run(datetime, name):
        out = tmp_path / name
        assert main(_args(stac_pc, out, datetime=datetime)) == 0
        return xs2mask.open_masks(str(out)).mask.isel(time=0).values

    np.testing.assert_array_equal(run("2020-05-04", "edge.zarr"), run("2020-04-29", "whole.zarr"))


def test_metadata_that_lies_is_reported(tmp_path, stac_es):
    truth = stac_es.truth_of("lying")
    day = truth.datetime[:10]
    job = Job(
        Search(stac_es.url, ("sentinel-2-l2a",), truth.bbox, day),
        Store(str(tmp_path / "l.zarr")),
        load=Load(chunks=256),
        predict=Predict(MODEL),
    )
    with pytest.warns(RadiometryWarning, match=truth.item_id):
        mask_stac(job)


def test_no_items_is_a_clear_error_and_leaves_no_store(tmp_path, stac_pc, capsys):
    out = tmp_path / "none.zarr"
    assert main(_args(stac_pc, out, datetime="1999-01-01/1999-12-31")) == 2
    err = capsys.readouterr().err
    assert "no items in sentinel-2-l2a" in err and "Nothing was written" in err
    assert not out.exists()
    assert main([*_args(stac_pc, out), "--max-cloud", "0"]) == 2
    assert "cloud cover below 0.0 %" in capsys.readouterr().err
    assert not out.exists()


def test_max_cloud_skips_cloudy_items(tmp_path, stac_pc):
    cover = {i["id"]: i["properties"]["eo:cloud_cover"] for i in stac_pc.items}
    series = stac_pc.groups["timeseries"]
    limit = sorted(cover[i] for i in series)[1]
    out = tmp_path / "clear.zarr"
    assert main([*_args(stac_pc, out), "--max-cloud", str(limit)]) == 0
    kept = set(json.loads(xs2mask.open_masks(str(out)).attrs["xs2mask_items"]))
    assert kept == {i for i in series if cover[i] <= limit}


def test_unreachable_stac_api(tmp_path, unreachable_url, capsys):
    out = tmp_path / "x.zarr"
    args = ["mask-stac", "--stac-url", unreachable_url, "--collection", "sentinel-2-l2a",
            "--bbox", "0", "0", "1", "1", "--datetime", JUNE, "--out", str(out)]  # fmt: skip
    assert main(args) == 2
    assert f"the STAC API at {unreachable_url} failed" in capsys.readouterr().err
    assert not out.exists()


def test_existing_store_of_another_area_is_refused(tmp_path, stac_pc, capsys):
    out = tmp_path / "area.zarr"
    assert main(_args(stac_pc, out, datetime="2020-06-03")) == 0
    before = sorted(p.read_bytes() for p in out.rglob("*") if p.is_file())
    w, s, e, n = stac_pc.bbox
    smaller = (w, s, (w + e) / 2, n)
    assert main([*_args(stac_pc, out, datetime="2020-06-03", bbox=smaller), "--append"]) == 2
    assert "holds masks made otherwise" in capsys.readouterr().err
    assert sorted(p.read_bytes() for p in out.rglob("*") if p.is_file()) == before


def test_rerun_with_other_options_is_refused_and_a_rerun_with_nothing_to_do_says_so(
    tmp_path, stac_pc, capsys
):
    out = tmp_path / "options.zarr"
    assert main(_args(stac_pc, out, datetime="2020-06-03")) == 0
    capsys.readouterr()
    before = sorted(p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert main(_args(stac_pc, out, datetime="2020-06-03")) == 0
    assert f"nothing to do: {out} already holds 1 date, complete" in capsys.readouterr().out
    for extra, named in [
        (["--tta", "2"], "tta: stored 0, new 2"),
        (["--harmonize", "false"], "harmonize: stored 'auto', new False"),
        (["--processing-resolution", "20"], "processing_resolution: stored 'input', new 20"),
    ]:
        assert main([*_args(stac_pc, out, datetime="2020-06-03"), *extra]) == 2
        err = capsys.readouterr().err
        assert named in err and "--overwrite" in err, err
    # A later date with other options is refused as well: an append never mixes models or options.
    assert main([*_args(stac_pc, out), "--append", "--tta", "2"]) == 2
    assert "tta: stored 0, new 2" in capsys.readouterr().err
    assert sorted(p.read_bytes() for p in out.rglob("*") if p.is_file()) == before


def test_append_of_an_area_shifted_by_70_m_is_refused(tmp_path, stac_pc, capsys):
    out = tmp_path / "shift.zarr"
    assert main(_args(stac_pc, out, datetime="2020-06-03")) == 0
    w, s, e, n = stac_pc.bbox
    shift = 70 / 111_320  # degrees of latitude
    assert main([*_args(stac_pc, out, bbox=(w, s + shift, e, n + shift)), "--append"]) == 2
    err = capsys.readouterr().err
    assert "holds masks made otherwise: y coordinates" in err, err
    assert xs2mask.open_masks(str(out)).sizes["time"] == 1


def test_block_sets_the_slabs_of_the_cli_job_and_a_resume_keeps_it(tmp_path, stac_pc, expected, capsys):
    """``--block``: smaller slabs (less memory per worker), the same masks; a rerun with another slab
    size is refused, naming it (the slabs recorded as done would mean other pixels); a rerun without
    ``--block`` goes on with the store's own."""
    out = tmp_path / "small.zarr"
    loud = [a for a in _args(stac_pc, out, "--chunks", "256", "--block", "256") if a != "--quiet"]
    assert main(loud) == 0
    printed = capsys.readouterr().out
    assert "27 of 27 slabs" in printed, printed  # 3 dates x 3 x 3 slabs of 256 px over 514 px
    masks = xs2mask.open_masks(str(out))
    np.testing.assert_array_equal(masks.mask.values, expected.mask.values)
    assert main(_args(stac_pc, out, "--chunks", "256", "--block", "512")) == 2
    assert "slab size: stored 256, new 512" in capsys.readouterr().err
    assert main([a for a in _args(stac_pc, out, "--chunks", "256") if a != "--quiet"]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_killed_cli_job_resumes_to_identical_masks(tmp_path, stac_pc, expected):
    out = tmp_path / "killed.zarr"
    # One slab (one date) per batch, so that the kill lands between recorded slabs.
    cmd = [sys.executable, "-m", "xs2mask.cli", *_args(stac_pc, out), "--batch", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    child = subprocess.Popen(cmd, env=env)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if (out / "zarr.json").exists():
                done = zarr.open_group(str(out), mode="r").attrs.get("xs2mask_done", [])
                if done:
                    break
            assert child.poll() is None, "the job finished before it could be killed"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    attrs = dict(zarr.open_group(str(out), mode="r").attrs)
    assert attrs["xs2mask_status"] == "incomplete"
    assert 0 < len(attrs["xs2mask_done"]) < 3
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    masks = xs2mask.open_masks(str(out))
    np.testing.assert_array_equal(masks.mask.values, expected.mask.values)
    assert Path(out).is_dir()


# --------------------------------------------------------------------------- the typed job

URL = "http://127.0.0.1:1"
BERLIN = (13.3, 52.4, 13.5, 52.6)


@pytest.mark.parametrize(
    "make,field",
    [
        (lambda: Search(URL, (), BERLIN, "2024-06"), "collections"),
        (lambda: Search(URL, "c", (13.3, 52.4, 13.5, 95), "2024-06"), "bbox"),
        (lambda: Search(URL, "c", BERLIN, "June"), "datetime"),
        (lambda: Search(URL, "c", BERLIN, "2024-06", max_cloud=101), "max_cloud"),
        (lambda: Load(pixel_size=0), "pixel_size"),
        (lambda: Load(chunks=0), "chunks"),
        (lambda: Load(harmonize="yes"), "harmonize"),
        (lambda: Load(read_retries=-1), "read_retries"),
        (lambda: Load(read_timeout=float("nan")), "read_timeout"),
        (lambda: Load(on_read_error="skip"), "on_read_error"),
        (lambda: Predict(tta=8), "tta"),
        (lambda: Predict(processing_resolution=-20), "processing_resolution"),
        (lambda: Store("m.zarr", mode="r"), "mode"),
        (lambda: Store("m.zarr", zarr_format=4), "zarr_format"),
        (lambda: Store("m.zarr", block=0), "block"),
        (lambda: Store("m.zarr", batch=1.5), "batch"),
    ],
)
def test_each_option_is_checked_when_made_and_named(make, field):
    with pytest.raises(xs2mask.XS2MaskError, match=field):
        make()


def test_options_take_their_canonical_form():
    search = Search(URL, "sentinel-2-l2a", [13.3, 52.4, 13.5, 52.6], " 2024-06 ", max_cloud=np.int64(40))
    assert (search.collections, search.bbox, search.datetime) == (("sentinel-2-l2a",), BERLIN, "2024-06")
    assert search.max_cloud == 40.0 and isinstance(search.max_cloud, float)
    assert Load(pixel_size=np.float32(20), chunks=np.int64(512)) == Load(pixel_size=20.0, chunks=512)
    job = Job(search, Store("m.zarr"))
    assert (job.load, job.predict) == (Load(), Predict())
    assert (job.load.pixel_size, job.predict.processing_resolution) == (10.0, None)


def test_a_job_of_untyped_parts_is_refused_with_the_parts_named():
    with pytest.raises(xs2mask.InputError, match=r"store must be a Store, got 'm.zarr'.*Store\(out\)"):
        Job(Search(URL, "c", BERLIN, "2024-06"), "m.zarr")  # type: ignore[arg-type]
