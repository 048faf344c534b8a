"""The reader's fast path: a file on the output grid is read as stored, with exactly the pixels that
stackstac's warper gives; files off the grid still go through the warper."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window
from stackstac.raster_spec import RasterSpec
from stackstac.rio_reader import AutoParallelRioReader

import xs2mask
from xs2mask.reading import ReadPolicy, RetryingReader, _grid_shift, read_env


@pytest.fixture(scope="module")
def band_file(tmp_path_factory):
    """Band B04 of the shipped demo scene as a single-band tiled GeoTIFF with nodata 0, some of it 0."""
    with rasterio.open(xs2mask.data.demo_path()) as src:
        data, profile = src.read(3), src.profile
    data[:40, :] = 0  # a swath edge: no data
    profile.update(
        count=1,
        nodata=0,
        width=2048,
        height=2048,
        tiled=True,
        blockxsize=128,
        blockysize=128,
        compress="deflate",
    )
    path = tmp_path_factory.mktemp("reading") / "B04.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


def _readers(path, spec):
    kw = dict(
        url=str(path), spec=spec, resampling=Resampling.nearest, dtype=np.dtype("float32"),
        fill_value=np.float32(np.nan), scale_offset=(1, 0), gdal_env=read_env(ReadPolicy()),
    )  # fmt: skip
    return RetryingReader(**kw), AutoParallelRioReader(**kw)


@pytest.mark.parametrize("shift", [(0, 0), (7, -13), (-100, 250), (300, 300)])
@pytest.mark.parametrize(
    "window", [(0, 0, 128, 128), (50, 300, 200, 200), (0, 0, 512, 512), (416, 416, 96, 96)]
)
def test_a_file_on_the_grid_reads_as_the_warper_would(band_file, shift, window):
    with rasterio.open(band_file) as ds:
        left, top = ds.transform.c + 10 * shift[1], ds.transform.f - 10 * shift[0]
        epsg = ds.crs.to_epsg()
    spec = RasterSpec(epsg, (left, top - 5120, left + 5120, top), (10, 10))
    fast, warped = _readers(band_file, spec)
    win = Window(window[1], window[0], window[3], window[2])
    got, want = fast.read(win), warped.read(win)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)  # NaN where no data or outside the file, alike
    with rasterio.open(band_file) as ds:
        assert _grid_shift(ds, spec) == shift


def test_a_file_off_the_grid_goes_through_the_warper(band_file):
    with rasterio.open(band_file) as ds:
        left, top, epsg = ds.transform.c + 5, ds.transform.f, ds.crs.to_epsg()  # half a pixel off
        spec = RasterSpec(epsg, (left, top - 5120, left + 5120, top), (10, 10))
        assert _grid_shift(ds, spec) is None
        assert _grid_shift(ds, RasterSpec(epsg, (left - 5, top - 5120, left + 5115, top), (20, 20))) is None
        assert _grid_shift(ds, RasterSpec(32735, (left - 5, top - 5120, left + 5115, top), (10, 10))) is None
    fast, warped = _readers(band_file, spec)
    win = Window(0, 0, 256, 256)
    np.testing.assert_array_equal(fast.read(win), warped.read(win))


def test_the_reader_travels_and_reopens(band_file):
    import pickle

    with rasterio.open(band_file) as ds:
        spec = RasterSpec(ds.crs.to_epsg(), tuple(ds.bounds), (10, 10))
    fast, _ = _readers(band_file, spec)
    first = fast.read(Window(0, 0, 64, 64))
    fast.close()
    again = pickle.loads(pickle.dumps(fast)).read(Window(0, 0, 64, 64))
    np.testing.assert_array_equal(first, again)


def test_the_reader_travels_to_workers_with_its_policy_and_names(band_file):
    """stackstac rebuilds a pickled reader from its own arguments: the retry policy and the names its
    errors give must survive the trip to a Dask worker, and the GDAL options come from stackstac's
    public ``LayeredEnv.updated``."""
    import pickle

    from xs2mask.reading import reader

    with rasterio.open(band_file) as ds:
        left, top, epsg = ds.transform.c, ds.transform.f, ds.crs.to_epsg()
    spec = RasterSpec(epsg, (left, top - 5120, left + 5120, top), (10, 10))
    policy = ReadPolicy(retries=1, timeout=7)
    made = reader(policy, {str(band_file): ("item-1", "B04")})(
        url=str(band_file), spec=spec, resampling=Resampling.nearest, dtype=np.dtype("float32"),
        fill_value=np.float32(np.nan), scale_offset=(1, 0), gdal_env=read_env(policy), errors_as_nodata=(),
    )  # fmt: skip
    travelled = pickle.loads(pickle.dumps(made))
    assert travelled.policy == policy and travelled.names == {str(band_file): ("item-1", "B04")}
    assert "'GDAL_HTTP_TIMEOUT': '7'" in repr(travelled.gdal_env)
    np.testing.assert_array_equal(travelled.read(Window(0, 0, 64, 64)), made.read(Window(0, 0, 64, 64)))
