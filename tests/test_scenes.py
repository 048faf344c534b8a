"""Reading one scene from files (``.SAFE``, band folder, multi-band GeoTIFF) and ``xs2mask mask``.

Every input here is built from real Sentinel-2 pixels and real product metadata: the demo scene of
the package and ``l1c_radiometry/`` of ``../shared/data`` or, without it, of the shipped ``tests/data``.
The tests of ``l1c_jp2_partial/`` (not shipped) skip when ``../shared/data`` is absent.

How the SAFE products are built: the N0400 crop in ``l1c_radiometry/`` is stored with all
13 bands on its 10 m grid, but its 20 m and 60 m bands are constant over the 2x2 and 6x6
blocks of the tile's 20 m / 60 m grids (checked in :func:`_native`), i.e. they were
upsampled by pixel replication from the native bands. Taking one value per block therefore
recovers the native 20 m / 60 m pixels exactly ("honest" coarsening); where a native pixel
reaches past the crop, its value is known from the part inside. The N0209 crop is stored at
60 m only, so every band of that product is written at 60 m: nothing finer can be recovered.
"""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import dask.array as dsa
import numpy as np
import pytest
import rasterio
import xarray as xr
from rasterio.transform import Affine

import xs2mask
from xs2mask import cli
from xs2mask.bands import BAND_NAMES
from xs2mask.exceptions import BandError, InputError, RadiometryWarning
from xs2mask.scenes import band_from_name, mask_scene, read_scene

UKIS4 = "ukis-csmask-4b-l2a"
N0400 = "S2B_MSIL1C_20220615T101559_N0400_R065_T32UPC_20220615T122549"
N0209 = "S2B_MSIL1C_20200406T101559_N0209_R065_T32UPC_20200406T130159"
NATIVE = {"B01": 60, "B09": 60, "B10": 60, "B05": 20, "B06": 20, "B07": 20, "B8A": 20, "B11": 20, "B12": 20}
JP2 = {"driver": "JP2OpenJPEG", "QUALITY": "100", "REVERSIBLE": "YES"}  # lossless

needs_ukis = pytest.mark.skipif(UKIS4 not in xs2mask.models.available(), reason=f"{UKIS4} is not installed")


# --------------------------------------------------------------------------- building inputs


def _write(path: Path, data: np.ndarray, transform, crs, *, descriptions=None, nodata=None, **opts) -> Path:
    data = data[None] if data.ndim == 2 else data
    profile = {"driver": "GTiff", "count": data.shape[0], "height": data.shape[1], "width": data.shape[2]}
    profile.update(dtype=data.dtype.name, crs=crs, transform=transform, nodata=nodata, **opts)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions or []):
            dst.set_band_description(i + 1, d)
    return path


def _native(band: np.ndarray, transform: Affine, res: int) -> tuple[np.ndarray, Affine]:
    """Native ``res`` pixels of a band stored by replication on a finer grid (see module notes)."""
    fine = transform.a
    h, w = band.shape
    y = transform.f - (np.arange(h) + 0.5) * fine
    x = transform.c + (np.arange(w) + 0.5) * fine
    by, bx = np.floor(y / res).astype(int), np.floor(x / res).astype(int)
    rows, cols = np.unique(by)[::-1], np.unique(bx)  # north-up: the top row has the largest y
    out = np.zeros((rows.size, cols.size), band.dtype)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            block = band[np.ix_(by == r, bx == c)]
            assert np.unique(block).size == 1, "the crop's coarse band is not a replicated native band"
            out[i, j] = block.flat[0]
    return out, Affine(res, 0, cols[0] * res, 0, -res, (rows[0] + 1) * res)


def _crop(shared: Path, name: str) -> tuple[np.ndarray, Affine, object]:
    with rasterio.open(shared / "l1c_radiometry" / f"{name}.tif") as src:
        return src.read(), src.transform, src.crs


def _tile_name(name: str) -> str:
    """T32UPC_20220615T101559 from the product name: the prefix of ESA's band file names."""
    parts = name.split("_")
    return f"{parts[5]}_{parts[2]}"


def _build_l1c_safe(shared: Path, root: Path, name: str) -> Path:
    dn, transform, crs = _crop(shared, name)
    safe = root / f"{name}.SAFE"
    img = safe / "GRANULE" / f"L1C_{name.split('_')[5]}_A000000_{name.split('_')[2]}" / "IMG_DATA"
    stored_at = transform.a
    for i, band in enumerate(BAND_NAMES):
        res = NATIVE.get(band, 10)
        data, t = (dn[i], transform) if res <= stored_at else _native(dn[i], transform, res)
        _write(img / f"{_tile_name(name)}_{band}.jp2", data, t, crs, **JP2)
    # A true-colour quick-look sits beside the bands in every L1C product; it must be ignored.
    _write(img / f"{_tile_name(name)}_TCI.jp2", (dn[[3, 2, 1]] // 40).astype(np.uint8), transform, crs, **JP2)
    shutil.copy(shared / "l1c_radiometry" / f"{name}_MTD.xml", safe / "MTD_MSIL1C.xml")
    return safe


def _l2a_xml(l1c_xml: str) -> str:
    """The real L1C metadata with the L2A names of its radiometry tags."""
    xml = l1c_xml.replace("RADIO_ADD_OFFSET", "BOA_ADD_OFFSET").replace("MSIL1C", "MSIL2A")
    xml = re.sub(r"(</?)QUANTIFICATION_VALUE", r"\1BOA_QUANTIFICATION_VALUE", xml)
    return xml.replace("Level-1C", "Level-2A")


def _build_l2a_safe(shared: Path, root: Path) -> Path:
    dn, transform, crs = _crop(shared, N0400)
    name = N0400.replace("MSIL1C", "MSIL2A")
    safe = root / f"{name}.SAFE"
    img = safe / "GRANULE" / "L2A_T32UPC_A027494_20220615T101557" / "IMG_DATA"
    prefix = _tile_name(name)
    for i, band in enumerate(BAND_NAMES):
        if band == "B10":
            continue  # L2A has no cirrus band
        res = NATIVE.get(band, 10)
        data, t = (dn[i], transform) if res == 10 else _native(dn[i], transform, res)
        _write(img / f"R{res}m" / f"{prefix}_{band}_{res}m.jp2", data, t, crs, **JP2)
        if res == 10:
            # ESA also ships the 10 m bands at 20 m (block averages): the reader must take the 10 m ones.
            h, w = (data.shape[0] + 1) // 2 * 2, (data.shape[1] + 1) // 2 * 2
            padded = np.pad(data.astype(float), ((0, h - data.shape[0]), (0, w - data.shape[1])), mode="edge")
            coarse = padded.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)).round().astype(np.uint16)
            t20 = Affine(20, 0, transform.c, 0, -20, transform.f)
            _write(img / "R20m" / f"{prefix}_{band}_20m.jp2", coarse, t20, crs, **JP2)
    scl, t20 = _native(dn[4], transform, 20)
    _write(img / "R20m" / f"{prefix}_SCL_20m.jp2", (scl % 12).astype(np.uint8), t20, crs, **JP2)
    xml = (shared / "l1c_radiometry" / f"{N0400}_MTD.xml").read_text(encoding="utf-8")
    (safe / "MTD_MSIL2A.xml").write_text(_l2a_xml(xml), encoding="utf-8")
    return safe


@pytest.fixture(scope="module")
def toa(real_data) -> xr.DataArray:
    """ESA's expected top-of-atmosphere reflectance of the N0400 crop (13 bands, 10 m)."""
    with rasterio.open(real_data / "l1c_radiometry" / f"{N0400}_toa.tif") as src:
        return xr.DataArray(src.read(), dims=("band", "y", "x"), coords={"band": list(BAND_NAMES)})


@pytest.fixture(scope="module")
def l1c_safe(real_data, tmp_path_factory) -> Path:
    return _build_l1c_safe(real_data, tmp_path_factory.mktemp("l1c"), N0400)


@pytest.fixture(scope="module")
def chip_tif(tmp_path_factory) -> Path:
    """A 4-band GeoTIFF (B02 B03 B04 B08, L2A DN) cut from a real cloud cover chip, bands named: the
    demo scene of the package is chip adwp, the same pixels and grid as its band files."""
    with rasterio.open(xs2mask.data.demo_path()) as src:
        window = rasterio.windows.Window(128, 64, 256, 192)
        bands = [src.descriptions.index(b) + 1 for b in ("B02", "B03", "B04", "B08")]
        stack, transform, crs = src.read(bands, window=window), src.window_transform(window), src.crs
    path = tmp_path_factory.mktemp("chip") / "adwp_chip.tif"
    return _write(path, stack, transform, crs, descriptions=["B02", "B03", "B04", "B08"], nodata=0)


def _quiet_read(*args, **kwargs) -> xr.DataArray:
    """read_scene for inputs without baseline metadata: the warning is tested elsewhere."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RadiometryWarning)
        return read_scene(*args, **kwargs)


# --------------------------------------------------------------------------- .SAFE products


def test_l1c_safe_equals_esa_toa(l1c_safe, toa):
    cube = read_scene(l1c_safe)
    assert list(cube.band.values) == list(BAND_NAMES)
    assert cube.dtype == np.float32 and cube.dims == ("band", "y", "x")
    # Every band, the 20 m and 60 m ones too, since they were put back on the 10 m grid by replication.
    np.testing.assert_array_equal(cube.values, toa.values)
    assert cube.attrs["xs2mask_radiometry"] == "MTD_MSIL1C.xml RADIO_ADD_OFFSET -1000 (baseline 04.00)"
    assert cube.attrs["xs2mask_offset_dn"] == "-1000"
    assert "B05: nearest 20 m -> 10 m" in cube.attrs["xs2mask_resampling"]
    assert "B01: nearest 60 m -> 10 m" in cube.attrs["xs2mask_resampling"]


def test_l1c_safe_grid_and_crs(l1c_safe, real_data):
    cube = read_scene(l1c_safe, bands=["B04", "B8A"])
    assert list(cube.band.values) == ["B04", "B8A"]  # the order asked for
    with rasterio.open(real_data / "l1c_radiometry" / f"{N0400}.tif") as src:
        assert cube.rio.crs == src.crs
        assert cube.rio.transform() == src.transform
        assert cube.shape[1:] == (src.height, src.width)
    assert float(cube.x[0]) == src.transform.c + 5  # pixel centres
    assert float(cube.y[0]) == src.transform.f - 5


def test_l1c_safe_lazy_equals_eager(l1c_safe):
    eager = read_scene(l1c_safe)
    lazy = read_scene(l1c_safe, chunks=4)
    assert isinstance(lazy.data, dsa.Array)
    assert lazy.chunks[1][0] == 4 and lazy.chunks[2][0] == 4
    np.testing.assert_array_equal(lazy.values, eager.values)
    assert lazy.attrs == eager.attrs


def test_l1c_safe_at_20m_averages_the_10m_bands(l1c_safe, toa):
    cube = read_scene(l1c_safe, bands=["B02", "B05"], resolution=20)
    assert cube.rio.resolution() == (20.0, -20.0)
    assert cube.shape == (2, 4, 5)  # 80 m x 90 m footprint: the last column is half a pixel
    b02 = toa.sel(band="B02").values
    np.testing.assert_allclose(cube.sel(band="B02").values[0, 0], b02[:2, :2].mean(), rtol=1e-6)
    np.testing.assert_allclose(cube.sel(band="B02").values[0, 4], b02[:2, 8].mean(), rtol=1e-6)


def test_n0209_safe_has_no_offset(real_data, tmp_path):
    safe = _build_l1c_safe(real_data, tmp_path, N0209)
    dn, transform, _ = _crop(real_data, N0209)
    cube = read_scene(safe, resolution=None)
    assert cube.rio.resolution() == (60.0, -60.0) and cube.rio.transform() == transform
    expected = np.where(dn == 0, np.nan, dn / np.float32(10000)).astype(np.float32)
    np.testing.assert_array_equal(cube.values, expected)
    assert cube.attrs["xs2mask_offset_dn"] == "0"
    assert "no RADIO_ADD_OFFSET (baseline 02.09)" in cube.attrs["xs2mask_radiometry"]
    assert np.isnan(cube.values).any()  # DN 0 of the real crop is no-data


def test_l2a_safe_takes_each_band_at_its_finest(real_data, tmp_path, toa):
    safe = _build_l2a_safe(real_data, tmp_path)
    cube = read_scene(safe)
    assert list(cube.band.values) == [b for b in BAND_NAMES if b != "B10"]  # SCL ignored, no B10
    np.testing.assert_array_equal(cube.values, toa.drop_sel(band="B10").values)
    assert cube.attrs["xs2mask_radiometry"] == "MTD_MSIL2A.xml BOA_ADD_OFFSET -1000 (baseline 04.00)"
    # The IMG_DATA folder alone still finds the product's XML two levels up.
    img = next(safe.glob("GRANULE/*/IMG_DATA"))
    np.testing.assert_array_equal(read_scene(img, bands=["B02"]).values, cube.sel(band=["B02"]).values)


def test_harmonize_false_and_user_offset(l1c_safe, toa):
    raw = read_scene(l1c_safe, bands=["B02"], harmonize=False)
    np.testing.assert_allclose(raw.values, toa.sel(band=["B02"]).values + 0.1, atol=1e-6)
    assert raw.attrs["xs2mask_offset_dn"] == "0"
    with pytest.warns(
        RadiometryWarning,
        match=r"offset=0 DN overrides the metadata of B02 \(MTD_MSIL1C.xml RADIO_ADD_OFFSET .*: -1000 DN\)",
    ):
        user = read_scene(l1c_safe, bands=["B02"], offset=0)
    np.testing.assert_array_equal(user.values, raw.values)
    assert user.attrs["xs2mask_radiometry"] == "offset=0 DN given by the user"


# --------------------------------------------------------------------------- folder of band files


def test_folder_of_real_jp2_bands(shared_data):
    folder = shared_data / "l1c_jp2_partial"
    with pytest.warns(RadiometryWarning, match=r"cannot tell .*pass --offset -1000"):
        cube = read_scene(folder, resolution=None)
    assert list(cube.band.values) == ["B01", "B05", "B8A", "B10", "B11", "B12"]
    # The grid is the 20 m bands' footprint; the 60 m bands are sampled onto it.
    with rasterio.open(folder / "s2_B05.jp2") as src:
        assert cube.rio.transform() == src.transform and cube.rio.crs == src.crs
        b05 = src.read(1)
    np.testing.assert_array_equal(
        cube.sel(band="B05").values, np.where(b05 == 0, np.nan, b05 / np.float32(1e4))
    )
    with rasterio.open(folder / "s2_B01.jp2") as src:
        b01 = src.read(1) / np.float32(1e4)
    # 20 m pixel (row 1 .. , col 0) lies in 60 m pixel (row 0, col 0): B01 starts 20 m higher.
    assert cube.sel(band="B01").values[1, 0] == b01[0, 0]
    assert cube.sel(band="B01").values[2, 3] == b01[1, 1]
    assert np.isnan(cube.sel(band="B01").values[-1]).all()  # below B01's footprint
    assert cube.attrs["xs2mask_radiometry"] == "baseline unknown: assumed no offset, DN / 10000"


def test_folder_lazy_at_10m(shared_data):
    cube = _quiet_read(shared_data / "l1c_jp2_partial", bands=["B8A", "B01"], chunks=512)
    assert isinstance(cube.data, dsa.Array)
    assert cube.shape == (2, 1946, 1934) and cube.rio.resolution() == (10.0, -10.0)
    window = cube.isel(y=slice(0, 4), x=slice(0, 4)).values
    with rasterio.open(shared_data / "l1c_jp2_partial" / "s2_B8A.jp2") as src:
        b8a = src.read(1, window=rasterio.windows.Window(0, 0, 2, 2)) / np.float32(1e4)
    np.testing.assert_array_equal(window[0], np.kron(b8a, np.ones((2, 2), np.float32)))


def test_folder_offset_from_name_and_user(real_data, tmp_path):
    folder = tmp_path / N0400
    dn, transform, crs = _crop(real_data, N0400)
    for i, name in enumerate(("blue", "green", "red", "nir")):  # STAC common names
        _write(folder / f"{name}.tif", dn[i + 1], transform, crs)
    (folder / "label.tif").write_bytes(b"not a band")  # ignored: no band in its name
    cube = read_scene(folder)
    assert list(cube.band.values) == ["B02", "B03", "B04", "B08"]
    assert cube.attrs["xs2mask_radiometry"] == f"baseline 04.00 in the name {N0400}: offset -1000 DN"
    assert cube.attrs["xs2mask_offset_dn"] == "-1000"
    renamed = folder.rename(tmp_path / "bands")
    with pytest.raises(InputError, match="pass --offset -1000"):
        read_scene(renamed, harmonize=True)
    cube2 = read_scene(renamed, offset=-1000)
    np.testing.assert_array_equal(cube2.values, cube.values)


def test_folder_uses_a_product_xml(real_data, tmp_path, toa):
    dn, transform, crs = _crop(real_data, N0400)
    _write(tmp_path / "B03.tif", dn[2], transform, crs)
    shutil.copy(real_data / "l1c_radiometry" / f"{N0400}_MTD.xml", tmp_path / "MTD_MSIL1C.xml")
    cube = read_scene(tmp_path)
    np.testing.assert_array_equal(cube.values, toa.sel(band=["B03"]).values)


# --------------------------------------------------------------------------- multi-band GeoTIFF


def test_multiband_geotiff_with_descriptions(chip_tif):
    cube = _quiet_read(chip_tif)
    with rasterio.open(chip_tif) as src:
        dn = src.read()
        assert cube.rio.transform() == src.transform and cube.rio.crs == src.crs
    assert list(cube.band.values) == ["B02", "B03", "B04", "B08"]
    np.testing.assert_array_equal(cube.values, np.where(dn == 0, np.nan, dn / np.float32(1e4)))
    assert list(_quiet_read(chip_tif, bands=["nir", "red"]).band.values) == ["B08", "B04"]


def test_multiband_geotiff_without_descriptions(chip_tif, tmp_path):
    with rasterio.open(chip_tif) as src:
        plain = _write(tmp_path / "plain.tif", src.read(), src.transform, src.crs)
    with pytest.raises(BandError, match=r"has 4 bands but no band names .*pass bands="):
        read_scene(plain)
    with pytest.raises(BandError, match=r"has 4 bands but bands= names 3"):
        read_scene(plain, bands=["B02", "B03", "B04"])
    cube = _quiet_read(plain, bands="B02 B03 B04 B08", offset=0)
    np.testing.assert_array_equal(cube.values, _quiet_read(chip_tif).values)


def test_a_geotiff_from_rioxarray_says_how_to_keep_its_band_names(tmp_path):
    """rioxarray's to_raster writes the array's name as every band's description: the error says so,
    and the way it gives keeps the names."""
    import rioxarray  # noqa: F401

    demo = xs2mask.data.demo_scene().isel(y=slice(0, 64), x=slice(0, 64))
    demo.rio.to_raster(tmp_path / "saved.tif")
    with pytest.raises(BandError, match=r"one name for all: rioxarray's to_raster .*da.attrs\['long_name'\]"):
        read_scene(tmp_path / "saved.tif")
    named = demo.assign_attrs(long_name=list(demo.band.values))
    named.rio.to_raster(tmp_path / "named.tif")
    assert list(_quiet_read(tmp_path / "named.tif", offset=0).band.values) == list(demo.band.values)


def test_float_geotiff_is_taken_as_reflectance(real_data, toa):
    # ESA's expected TOA file: float32, bands described as Band_1 ... (not band names), nodata -3.4e38.
    tif = real_data / "l1c_radiometry" / f"{N0400}_toa.tif"
    with pytest.raises(BandError, match="Band_1"):
        read_scene(tif)
    cube = read_scene(tif, bands=BAND_NAMES)
    np.testing.assert_array_equal(cube.values, toa.values)
    assert cube.attrs["xs2mask_radiometry"] == "float values taken as reflectance as they are"
    with pytest.raises(InputError, match="offset= applies to integer DN"):
        read_scene(tif, bands=BAND_NAMES, offset=-1000)


def test_offset_applied_twice_is_flagged(real_data, tmp_path):
    # Harmonised DN (offset already removed) with the product's XML beside them: removing the offset
    # again drives the dark pixels (B10 cirrus here) far below 0.
    dn, transform, crs = _crop(real_data, N0400)
    _write(tmp_path / "B10.tif", (dn[10] - 1000 + 5).astype(np.uint16), transform, crs)
    shutil.copy(real_data / "l1c_radiometry" / f"{N0400}_MTD.xml", tmp_path / "MTD_MSIL1C.xml")
    with pytest.warns(RadiometryWarning, match="far below 0"):
        read_scene(tmp_path)


# --------------------------------------------------------------------------- bad inputs


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match=r"does not exist: pass a \.SAFE folder"):
        read_scene(tmp_path / "nothing.SAFE")


def test_no_band_files(tmp_path):
    chip = tmp_path / "chip"
    chip.mkdir()
    (chip / "label.tif").write_bytes(b"x")
    (chip / "notes.txt").write_text("x")
    with pytest.raises(BandError, match=r"no band files recognised in .*found: label\.tif\)"):
        read_scene(chip)


def test_duplicate_band_files(shared_data, tmp_path):
    shutil.copy(shared_data / "l1c_jp2_partial" / "s2_B05.jp2", tmp_path / "T18_B05.jp2")
    shutil.copy(shared_data / "l1c_jp2_partial" / "s2_B05.jp2", tmp_path / "rededge1.jp2")
    with pytest.raises(BandError, match=r"band B05 is in several files .*keep one"):
        read_scene(tmp_path)


def test_mixed_crs(real_data, tmp_path):
    dn, transform, crs = _crop(real_data, N0400)
    _write(tmp_path / "B02.tif", dn[1], transform, crs)
    _write(tmp_path / "B03.tif", dn[2], transform, "EPSG:32633")
    with pytest.raises(InputError, match=r"different CRSs \(B02: EPSG:32632, B03: EPSG:32633\)"):
        read_scene(tmp_path, offset=0)
    assert read_scene(tmp_path, bands=["B02"], offset=0).rio.crs == crs


def test_unreadable_band_file(tmp_path):
    (tmp_path / "B02.tif").write_bytes(b"II*\x00 this is not a TIFF")
    with pytest.raises(InputError, match=r"cannot read .*B02\.tif"):
        read_scene(tmp_path)


def test_missing_and_unknown_bands(l1c_safe):
    with pytest.raises(BandError, match=r"unknown band name 'B13'"):
        read_scene(l1c_safe, bands=["B02", "B13"])
    with pytest.raises(BandError, match=r"bands= names \['B02'\] more than once"):
        read_scene(l1c_safe, bands=["B02", "blue"])


def test_bad_arguments(l1c_safe):
    with pytest.raises(ValueError, match="harmonize must be"):
        read_scene(l1c_safe, harmonize="yes")
    with pytest.raises(ValueError, match="contradict"):
        read_scene(l1c_safe, harmonize=False, offset=-1000)
    with pytest.raises(InputError, match="zip archive"):
        read_scene(_touch(l1c_safe.parent / "product.zip"))


def _touch(path: Path) -> Path:
    path.write_bytes(b"PK")
    return path


def test_band_from_name():
    assert band_from_name("T32UPC_20220615T101559_B02_10m.jp2") == "B02"
    assert band_from_name("S2A_MSIL2A_20170613T101031_87_48_B8A.tif") == "B8A"
    assert band_from_name("swir16.tif") == "B11"
    assert band_from_name("B2.tif") == "B02"
    assert band_from_name("T32UPC_20220615T101559_SCL_20m.jp2") is None
    assert band_from_name("B02_B03.tif") is None  # ambiguous


# --------------------------------------------------------------------------- mask_scene, xs2mask mask


@needs_ukis
def test_mask_scene_writes_and_returns_the_mask_of_predict(chip_tif, tmp_path):
    out = tmp_path / "new" / "mask.tif"
    done = mask_scene(chip_tif, out, model=UKIS4, offset=0)
    expected = xs2mask.predict(read_scene(chip_tif, offset=0), model=UKIS4).mask.values
    assert done.out == out and done.source == chip_tif
    assert (done.model, done.bands) == (UKIS4, ("B02", "B03", "B04", "B08"))
    assert "offset=0 DN given by the user" in done.radiometry
    np.testing.assert_array_equal(done.mask.values, expected)
    with rasterio.open(out) as dst:
        np.testing.assert_array_equal(dst.read(1), expected)
        assert float(dst.tags()["PCT_CLEAR"]) == done.percentages["clear"]


@needs_ukis
def test_mask_scene_refuses_to_overwrite_unless_told_and_never_the_input(chip_tif, tmp_path):
    out = tmp_path / "mask.tif"
    out.write_bytes(b"a user's file")
    with pytest.raises(InputError, match=r"refusing to overwrite .*pass overwrite=True"):
        mask_scene(chip_tif, out, model=UKIS4, offset=0)
    assert out.read_bytes() == b"a user's file"
    with pytest.raises(InputError, match="is the input itself"):
        mask_scene(chip_tif, chip_tif, model=UKIS4, offset=0, overwrite=True)
    with pytest.raises(InputError, match="is a folder"):
        mask_scene(chip_tif, tmp_path, model=UKIS4, offset=0, overwrite=True)
    assert mask_scene(chip_tif, out, model=UKIS4, offset=0, overwrite=True).out == out
    with rasterio.open(out) as dst:
        assert dst.shape == (192, 256) and dst.nodata == 255


@needs_ukis
def test_cli_mask_end_to_end(chip_tif, tmp_path, capsys):
    out = tmp_path / "mask.tif"
    assert cli.main(["mask", str(chip_tif), "-o", str(out), "--model", UKIS4, "--offset", "0"]) == 0
    printed = capsys.readouterr().out
    assert UKIS4 in printed and "clear" in printed and "offset=0 DN given by the user" in printed
    expected = xs2mask.predict(read_scene(chip_tif, offset=0), model=UKIS4).mask.values
    with rasterio.open(out) as dst, rasterio.open(chip_tif) as src:
        assert dst.nodata == 255 and dst.dtypes[0] == "uint8"
        assert dst.colormap(1)[0][:3] != dst.colormap(1)[1][:3]
        assert {"PCT_CLEAR", "PCT_CLOUD_SHADOW"} <= set(dst.tags())
        assert dst.crs == src.crs and dst.transform == src.transform
        np.testing.assert_array_equal(dst.read(1), expected)


@needs_ukis
def test_cli_masks_a_geotiff_in_degrees_and_refuses_metres_on_it(chip_tif, tmp_path):
    """A scene warped to EPSG:4326 (gdalwarp's default) masks on its own grid, its pixel size said in
    degrees; --processing-resolution in metres on it is refused with the way out, in the CLI's terms."""
    import subprocess
    import sys

    import rioxarray

    degrees = tmp_path / "chip_4326.tif"
    rioxarray.open_rasterio(chip_tif).rio.reproject("EPSG:4326").rio.to_raster(degrees)
    env = {"PYTHONWARNINGS": "ignore", "PATH": "/usr/bin:/bin"}
    run = [sys.executable, "-m", "xs2mask.cli", "mask", str(degrees), "--bands", "B02", "B03", "B04", "B08"]
    done = subprocess.run([*run, "-o", str(tmp_path / "m.tif")], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert re.search(r"px at [\d.e-]+°, EPSG:4326", done.stdout), done.stdout
    with rasterio.open(tmp_path / "m.tif") as dst, rasterio.open(degrees) as src:
        # the same grid: the y step comes back from coordinates, equal to 1e-13 of a pixel
        assert dst.crs == src.crs and dst.shape == src.shape
        assert dst.transform.almost_equals(src.transform, precision=1e-9 * src.res[0])
    refused = subprocess.run(
        [*run, "-o", str(tmp_path / "m20.tif"), "--processing-resolution", "20"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert refused.returncode == 2
    assert (
        "needs a grid in metres" in refused.stderr and "leave out --processing-resolution" in refused.stderr
    )
    assert not (tmp_path / "m20.tif").exists()


@needs_ukis
def test_cli_refuses_to_overwrite(chip_tif, tmp_path, capsys):
    out = tmp_path / "mask.tif"
    out.write_bytes(b"a user's file")
    args = ["mask", str(chip_tif), "-o", str(out), "--model", UKIS4, "--offset", "0"]
    assert cli.main(args) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"a user's file"
    assert cli.main([*args, "--overwrite", "--chunks", "128", "--processing-resolution", "20"]) == 0
    with rasterio.open(out) as dst:
        assert dst.shape == (192, 256) and dst.nodata == 255


@needs_ukis
def test_cli_warns_about_an_unknown_offset(chip_tif, tmp_path, capsys):
    assert cli.main(["mask", str(chip_tif), "-o", str(tmp_path / "m.tif"), "--model", UKIS4]) == 0
    captured = capsys.readouterr()
    assert "xs2mask: warning: cannot tell whether the DN" in captured.err
    assert "--offset -1000" in captured.err
    assert "radiometry: baseline unknown: assumed no offset" in captured.out


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert cli.main(["mask", str(tmp_path / "missing.SAFE"), "-o", str(tmp_path / "m.tif")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xs2mask: error: ") and "does not exist" in err
    assert not (tmp_path / "m.tif").exists()
