"""DN -> reflectance: ESA ground truth, every real STAC item variant, laziness and the sanity check."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import dask.array as dsa
import numpy as np
import pystac
import pytest
import rasterio
import xarray as xr
from dask.callbacks import Callback
from support.sources import TEMPLATES

from xs2mask.bands import BAND_NAMES, canonical_band
from xs2mask.exceptions import BandError, InputError, RadiometryWarning
from xs2mask.radiometry import (
    Radiometry,
    baseline_from_name,
    baseline_radiometry,
    check_reflectance,
    item_radiometry,
    negative_fraction,
    product_radiometry,
)

N0400 = "S2B_MSIL1C_20220615T101559_N0400_R065_T32UPC_20220615T122549"
N0209 = "S2B_MSIL1C_20200406T101559_N0209_R065_T32UPC_20200406T130159"

PC = "planetarycomputer_microsoft_com__sentinel-2-l2a.json"
ES_L1C = "earth-search_aws_element84_com__sentinel-2-l1c.json"
ES_L2A = "earth-search_aws_element84_com__sentinel-2-l2a.json"
ES_C1 = "earth-search_aws_element84_com__sentinel-2-c1-l2a.json"
ES_LEGACY = "earth-search_aws_element84_com__sentinel-s2-l2a-cogs.json"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def l1c(real_data: Path) -> Path:
    return real_data / "l1c_radiometry"


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def _features(data: Path, name: str) -> list[dict]:
    """Real items of one provider file that have assets (some c1-l2a search hits carry none).

    ``data``: ``real_data`` (``../shared/data`` or ``tests/data``), or the shipped
    :data:`support.sources.TEMPLATES` (their first item only).
    """
    folder = "api_responses" if name.startswith(("earth-search", "planetarycomputer")) else "odc_stac"
    path = data / "stac_items" / folder / name
    data = json.loads(path.read_text())
    feats = data["features"] if data.get("type") == "FeatureCollection" else [data]
    return [f for f in feats if f.get("assets")]


def _reflectance_assets(item: dict) -> list[str]:
    """Asset keys of the 13 spectral bands (ESA or common names, COG or -jp2)."""
    keys = []
    for key in item["assets"]:
        try:
            canonical_band(key)
        except BandError:
            continue
        keys.append(key)
    return keys


def _to_stac11(item: dict, *, asset_level: bool = False) -> dict:
    """Rewrite STAC 1.0 ``raster:bands`` into the STAC 1.1 ``bands`` form (or asset-level fields)."""
    item = copy.deepcopy(item)
    item["stac_version"] = "1.1.0"
    for asset in item["assets"].values():
        raster = asset.pop("raster:bands", None)
        eo = asset.pop("eo:bands", None)
        if raster is None:
            continue
        bands = []
        for i, rb in enumerate(raster):
            band = {k: v for k, v in rb.items() if k not in ("scale", "offset")}
            if eo:
                band["name"] = eo[i].get("name")
            if not asset_level:
                band.update({f"raster:{k}": rb[k] for k in ("scale", "offset") if k in rb})
            bands.append(band)
        asset["bands"] = bands
        if asset_level and raster:
            asset.update({f"raster:{k}": raster[0][k] for k in ("scale", "offset") if k in raster[0]})
    return item


# --------------------------------------------------------------------------- ESA ground truth


def test_n0400_matches_esa_toa(l1c: Path) -> None:
    rad = product_radiometry(l1c / f"{N0400}_MTD.xml")
    assert list(rad) == list(BAND_NAMES)
    for r in rad.values():
        assert (r.scale, r.offset_dn) == (1e-4, -1000.0)
        assert r.source.endswith("RADIO_ADD_OFFSET -1000 (baseline 04.00)")
    # The crop stores the 13 bands in band_id order (B8A 9th, B10 11th), like the XML.
    dn = _read(l1c / f"{N0400}.tif")
    expected = _read(l1c / f"{N0400}_toa.tif")
    got = np.stack([rad[b].apply(dn[i]) for i, b in enumerate(BAND_NAMES)])
    assert got.dtype == np.float32
    # Measured: bit-identical to ESA's (DN - 1000) / 10000 (max abs error 0.0).
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert np.abs(got - expected).max() == 0.0


def test_n0209_has_no_offset(l1c: Path) -> None:
    rad = product_radiometry(l1c / f"{N0209}_MTD.xml")
    dn = _read(l1c / f"{N0209}.tif")
    for i, b in enumerate(BAND_NAMES):
        r = rad[b]
        assert (r.scale, r.offset) == (1e-4, 0.0)
        assert "no RADIO_ADD_OFFSET (baseline 02.09)" in r.source
        expected = np.where(dn[i] == 0, np.nan, dn[i] / 10000).astype(np.float32)
        np.testing.assert_array_equal(r.apply(dn[i]), expected)
    # Pre-04.00 dark water is clipped to DN 0 (B08, B11, B12 here), which is no data: NaN.
    assert int(np.isnan(rad["B08"].apply(dn[7])).sum()) == 3


def test_l2a_xml_and_safe_folder(l1c: Path, tmp_path: Path) -> None:
    """L2A tag names (rewritten from the real L1C XML), read through a .SAFE folder."""
    text = (l1c / f"{N0400}_MTD.xml").read_text()
    text = (
        text.replace("Level-1C", "Level-2A")
        .replace("Radiometric_Offset_List", "BOA_ADD_OFFSET_VALUES_LIST")
        .replace("RADIO_ADD_OFFSET", "BOA_ADD_OFFSET")
        .replace(
            '<QUANTIFICATION_VALUE unit="none">10000</QUANTIFICATION_VALUE>',
            '<QUANTIFICATION_VALUES_LIST><BOA_QUANTIFICATION_VALUE unit="none">10000'
            '</BOA_QUANTIFICATION_VALUE><AOT_QUANTIFICATION_VALUE unit="none">1000.0'
            "</AOT_QUANTIFICATION_VALUE></QUANTIFICATION_VALUES_LIST>",
        )
        .replace('<BOA_ADD_OFFSET band_id="8">-1000<', '<BOA_ADD_OFFSET band_id="8">-900<')
    )
    assert "RADIO_ADD_OFFSET" not in text and "<QUANTIFICATION_VALUE " not in text
    safe = tmp_path / N0400.replace("MSIL1C", "MSIL2A")
    safe = safe.with_suffix(".SAFE")
    safe.mkdir()
    (safe / "MTD_MSIL2A.xml").write_text(text)
    rad = product_radiometry(safe)
    assert rad["B04"].offset_dn == -1000.0 and rad["B04"].scale == 1e-4
    assert rad["B8A"].offset_dn == -900.0  # band_id 8 is B8A, not B09
    assert rad["B09"].offset_dn == -1000.0
    assert rad["B04"].source == "MTD_MSIL2A.xml BOA_ADD_OFFSET -1000 (baseline 04.00)"


def test_product_radiometry_errors(tmp_path: Path) -> None:
    missing = tmp_path / "MTD_MSIL1C.xml"
    with pytest.raises(InputError, match=r"MTD_MSIL1C\.xml"):
        product_radiometry(missing)
    with pytest.raises(InputError, match=r"not a Sentinel-2 \.SAFE"):
        product_radiometry(tmp_path)
    bad = tmp_path / "bad.xml"
    bad.write_text("<not-closed>")
    with pytest.raises(InputError, match=r"bad\.xml"):
        product_radiometry(bad)
    other = tmp_path / "other.xml"
    other.write_text("<root><x>1</x></root>")
    with pytest.raises(InputError, match="QUANTIFICATION_VALUE"):
        product_radiometry(other)


def test_baseline_from_name() -> None:
    assert baseline_from_name(f"{N0400}.SAFE") == "04.00"
    assert baseline_from_name(f"{N0209}.tif") == "02.09"
    assert baseline_from_name(f"/data/{N0209}_MTD.xml") == "02.09"
    assert baseline_from_name("S2A_OPER_MSI_L2A_TL_ESRI_20201007T214653_A018417_T60VUK_N02.12") == "02.12"
    assert baseline_from_name("S2B_20EPT_20250731_0_L2A") is None
    assert baseline_from_name("S2A_MSIL2A_20190101T000001_R116_T60VUK_20201007T214652") is None


@pytest.mark.parametrize(
    ("baseline", "offset"),
    [
        ("02.09", 0.0),
        ("03.01", 0.0),
        ("04.00", -0.1),
        ("05.11", -0.1),
        ("N0400", -0.1),
        ("N0399", 0.0),
        ("4.0", -0.1),
        (" 04.00 ", -0.1),
    ],
)
def test_baseline_edge(baseline: str, offset: float) -> None:
    r = baseline_radiometry(baseline)
    assert (r.scale, r.offset) == (1e-4, offset)
    assert r.offset_dn == (-1000.0 if offset else 0.0)


@pytest.mark.parametrize("bad", [None, "", "latest", "4", "04-00"])
def test_baseline_unreadable(bad: str | None) -> None:
    with pytest.raises(InputError):
        baseline_radiometry(bad)


# --------------------------------------------------------------------------- STAC items


def _check_pc(item: dict, key: str, r: Radiometry) -> None:
    assert (r.scale, r.offset) == (1e-4, 0.0)
    assert r.source == "s2:processing_baseline 02.12 < 04.00"


def _check_raster(item: dict, key: str, r: Radiometry) -> None:
    assert (r.scale, r.offset, r.offset_dn) == (1e-4, -0.1, -1000.0)
    assert r.source.startswith("raster:bands scale 0.0001 offset -0.1")


def _check_es_l2a(item: dict, key: str, r: Radiometry) -> None:
    if key.endswith("-jp2"):  # ESA's original files: not harmonised, the raster offset holds
        _check_raster(item, key, r)
    else:
        assert (r.scale, r.offset) == (1e-4, 0.0)
        assert r.source.startswith("earthsearch:boa_offset_applied=true on COG asset")


def _check_legacy(item: dict, key: str, r: Radiometry) -> None:
    # The real legacy item does carry sentinel:boa_offset_applied=true (and sentinel:processing_baseline).
    assert (r.scale, r.offset) == (1e-4, 0.0)
    assert r.source.startswith("sentinel:boa_offset_applied=true")


CHECKS = {
    PC: (_check_pc, 33),
    ES_L1C: (_check_raster, 5),
    ES_L2A: (_check_es_l2a, 7),
    ES_C1: (_check_raster, 6),
    ES_LEGACY: (_check_legacy, 1),
    "site1-20200606-tall-strip-africa.geojson": (_check_pc, 9),
    "site2-2020_jun_jul-35MNM.geojson": (_check_pc, 13),
    "S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json": (_check_pc, 1),
    # raster:bands with nodata only (no scale/offset): decided by the baseline.
    "S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531_raster_ext.json": (_check_pc, 1),
}


@pytest.mark.parametrize("provider", list(CHECKS))
def test_every_real_item(real_data: Path, provider: str) -> None:
    check, n_items = CHECKS[provider]
    items = _features(real_data, provider)
    assert len(items) == n_items
    n_assets = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", RadiometryWarning)  # metadata decides: no guessing
        for item in items:
            keys = _reflectance_assets(item)
            assert len(keys) >= 12
            for key in keys:
                check(item, key, item_radiometry(item, key))
                check(item, key, item_radiometry(item, key, harmonize=True))
                assert item_radiometry(item, key, harmonize=False).offset == 0.0
                n_assets += 1
    assert n_assets >= 12 * n_items


@pytest.mark.parametrize("provider", [ES_L1C, ES_L2A, ES_C1])
@pytest.mark.parametrize("asset_level", [False, True], ids=["bands", "asset-level"])
def test_stac11_bands_form(real_data: Path, provider: str, asset_level: bool) -> None:
    for item in _features(real_data, provider)[:2]:
        new = _to_stac11(item, asset_level=asset_level)
        assert "raster:bands" not in json.dumps(new)
        for key in _reflectance_assets(item):
            old, r = item_radiometry(item, key), item_radiometry(new, key)
            assert (r.scale, r.offset) == (old.scale, old.offset)
            if r.offset:
                assert r.source.startswith("asset raster:" if asset_level else "bands scale 0.0001")


def test_pystac_items() -> None:
    pc = pystac.Item.from_dict(_features(TEMPLATES, PC)[0])
    props = pc.to_dict(transform_hrefs=False)["properties"]
    assert "proj:code" in props and "proj:epsg" not in props  # migrated by pystac
    assert item_radiometry(pc, "B04").source == "s2:processing_baseline 02.12 < 04.00"
    es = pystac.Item.from_dict(_features(TEMPLATES, ES_L2A)[0])
    assert item_radiometry(es, "red").offset == 0.0
    assert item_radiometry(es, "red-jp2").offset == -0.1


def test_band_alias_finds_asset() -> None:
    item = _features(TEMPLATES, ES_L2A)[0]
    assert "'red'" in item_radiometry(item, "B04").source
    assert item_radiometry(item, "B04-jp2").offset == -0.1
    with pytest.raises(InputError, match="no asset 'B99'"):
        item_radiometry(item, "B99")


def test_flag_false_falls_back_to_raster() -> None:
    """boa_offset_applied=false (Earth Search #66/#71): metadata says offset; the pixel check decides."""
    item = copy.deepcopy(_features(TEMPLATES, ES_L2A)[0])
    item["properties"]["earthsearch:boa_offset_applied"] = False
    _check_raster(item, "red", item_radiometry(item, "red"))


def _strip(item: dict, *keys: str) -> dict:
    item = copy.deepcopy(item)
    for k in keys:
        item["properties"].pop(k, None)
    return item


def test_no_metadata_2025_item(real_data: Path) -> None:
    """The legacy sentinel-s2-l2a-cogs item without its sentinel:* radiometric properties."""
    real = _features(real_data, ES_LEGACY)[0]
    item = _strip(real, "sentinel:boa_offset_applied", "sentinel:processing_baseline", "sentinel:product_id")
    with pytest.warns(RadiometryWarning, match=r"S2B_20EPT_20250731_0_L2A.*assumed") as rec:
        r = item_radiometry(item, "B04")
    assert len(rec) == 1
    assert (r.scale, r.offset) == (1e-4, -0.1)
    assert "2025-07-31 >= 2022-01-25" in r.source
    with pytest.raises(InputError, match=r"S2B_20EPT_20250731_0_L2A.*harmonize=False"):
        item_radiometry(item, "B04", harmonize=True)
    assert item_radiometry(item, "B04", harmonize=False) == Radiometry(
        1e-4, 0.0, "harmonize=False: DN/10000, no offset"
    )
    # The product id alone is enough evidence (sentinel:product_id ..._N0511_...).
    item = _strip(real, "sentinel:boa_offset_applied", "sentinel:processing_baseline")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RadiometryWarning)
        r = item_radiometry(item, "B04", harmonize=True)
    assert (r.offset, r.source) == (-0.1, "sentinel:product_id baseline 05.11 >= 04.00")


def test_earth_search_v0_item(real_data: Path) -> None:
    """A 2020 sentinel-s2-l2a-cogs item (STAC 1.0.0-beta.1): baseline only in sentinel:product_id."""
    item = _features(real_data, "S2A_28QCH_20200714_0_L2A.json")[0]
    r = item_radiometry(item, "B04")
    assert (r.offset, r.source) == (0.0, "sentinel:product_id baseline 02.14 < 04.00")
    with pytest.warns(RadiometryWarning, match="2020-07-14 < 2022-01-25"):
        r = item_radiometry(_strip(item, "sentinel:product_id"), "B04")
    assert r.offset == 0.0


@pytest.mark.parametrize(("baseline", "offset"), [("03.01", 0.0), ("04.00", -0.1), ("05.11", -0.1)])
def test_item_baseline_property(baseline: str, offset: float) -> None:
    item = {"id": "x", "properties": {"sentinel:processing_baseline": baseline}, "assets": {"B02": {}}}
    assert item_radiometry(item, "B02").offset == offset


@pytest.mark.parametrize("bad", ["yes", "true", 1, None, "off"])
def test_bad_harmonize(bad: object) -> None:
    item = {"id": "x", "properties": {"s2:processing_baseline": "05.11"}, "assets": {"B02": {}}}
    with pytest.raises(InputError, match="harmonize must be"):
        item_radiometry(item, "B02", harmonize=bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- apply


def test_apply_numpy() -> None:
    r = Radiometry(1e-4, -0.1, "t")
    out = r.apply(np.array([0, 1000, 1500, 11000], dtype=np.uint16))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([np.nan, 0.0, 0.05, 1.0], dtype=np.float32))
    out = Radiometry(1e-4, 0.0, "t").apply(np.array([np.nan, 0.0, 2500.0]))
    np.testing.assert_array_equal(out, np.array([np.nan, np.nan, 0.25], dtype=np.float32))


class _CountComputes(Callback):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def _start(self, dsk) -> None:
        self.n += 1


def test_apply_stays_lazy(l1c: Path) -> None:
    dn = _read(l1c / f"{N0400}.tif")
    dn[:, 0, 0] = 0  # a no-data pixel
    cube = xr.DataArray(
        dsa.from_array(dn, chunks=(4, 4, 4)),
        dims=("band", "y", "x"),
        coords={"band": list(BAND_NAMES)},
        name="dn",
        attrs={"scale_factor": 1.0, "crs": "EPSG:32632"},
    )
    r = product_radiometry(l1c / f"{N0400}_MTD.xml")["B04"]
    with _CountComputes() as counter:
        out = r.apply(cube)
        assert isinstance(out.data, dsa.Array)
        assert counter.n == 0
        values = out.compute()
        assert counter.n == 1
    assert values.dtype == np.float32 and out.dtype == np.float32
    assert out.dims == cube.dims and out.name == "dn"
    assert out.attrs == {"crs": "EPSG:32632"}  # the DN encoding's scale_factor no longer applies
    assert np.isnan(values[:, 0, 0]).all()
    np.testing.assert_array_equal(values.values, r.apply(dn))
    # A bare dask array stays lazy too.
    assert isinstance(r.apply(cube.data), dsa.Array)


# --------------------------------------------------------------------------- sanity check


def test_double_offset_is_caught(l1c: Path) -> None:
    dn = _read(l1c / f"{N0400}.tif")
    right = product_radiometry(l1c / f"{N0400}_MTD.xml")["B04"]
    # Earth Search COGs hold harmonised DN (offset already removed); applying -0.1 again is wrong.
    harmonised = (dn.astype(np.int32) - 1000).astype(np.uint16)
    cube = xr.concat(
        [
            right.apply(xr.DataArray(dsa.from_array(dn, chunks=4), dims=("band", "y", "x"))),
            right.apply(xr.DataArray(dsa.from_array(harmonised, chunks=4), dims=("band", "y", "x"))),
        ],
        dim="time",
    ).assign_coords(time=["good", "twice"])
    frac = negative_fraction(cube)
    assert frac.dims == ("time",) and isinstance(frac.data, dsa.Array)
    frac = frac.compute()
    assert float(frac.sel(time="good")) == 0.0
    assert float(frac.sel(time="twice")) > 0.05  # about 10 %: B10 and dark pixels
    with warnings.catch_warnings():
        warnings.simplefilter("error", RadiometryWarning)
        assert check_reflectance(frac.sel(time="good"), label="good item") is None
    with pytest.warns(RadiometryWarning, match="S2B_33UXP_20250302_0_L2A") as rec:
        msg = check_reflectance(frac.sel(time="twice"), label="S2B_33UXP_20250302_0_L2A")
    assert msg == str(rec[0].message)
    assert "%" in msg and "#71" in msg and "harmonize=False" in msg and "already" in msg


def test_pre_0400_dn_with_offset_is_caught(l1c: Path) -> None:
    """N0209 DN read as if baseline >= 04.00 (the issue #71 situation)."""
    dn = _read(l1c / f"{N0209}.tif")
    refl = baseline_radiometry("05.11").apply(xr.DataArray(dn, dims=("band", "y", "x")))
    frac = float(negative_fraction(refl))
    with pytest.warns(RadiometryWarning, match=r"2020-04-06: \d+\.\d%"):
        assert check_reflectance(frac, label="2020-04-06") is not None


def test_negative_fraction_edges() -> None:
    empty = xr.DataArray(np.full((2, 1, 3, 3), np.nan), dims=("time", "band", "y", "x"))
    frac = negative_fraction(empty)
    assert frac.dims == ("time",) and np.isnan(frac).all()
    assert check_reflectance(float(frac[0]), label="x") is None
    with pytest.raises(InputError, match="band, y, x"):
        negative_fraction(xr.DataArray(np.zeros((3, 3)), dims=("y", "x")))
    with pytest.raises(InputError):
        negative_fraction(np.zeros((1, 3, 3)))  # type: ignore[arg-type]
