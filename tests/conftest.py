"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The real test data live beside the project (../shared/data); a fresh clone has none.
_SHARED_DATA = Path(
    os.environ.get("XS2MASK_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of the real Sentinel-2 test data, or skip the test when it is absent."""
    if not _SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {_SHARED_DATA} (set XS2MASK_SHARED_DATA)")
    return _SHARED_DATA


# --------------------------------------------------------------------------------------------------
# Real servers on 127.0.0.1 for the STAC -> Zarr pipeline tests (helpers in tests/servers.py).
# tests/ is not a package and pytest runs with --import-mode=importlib: put this folder on sys.path
# so that conftest and the tests can ``import servers``.
# --------------------------------------------------------------------------------------------------
import sys  # noqa: E402

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

import servers  # noqa: E402


def _serve(name: str, data: Path, tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("rasterio")
    pytest.importorskip("rustac", reason="rustac (STAC API server) is not installed")
    catalogue = servers.build_catalogue(name, data, tmp_path_factory.mktemp(f"stac_{name}"))
    with servers.serve_catalogue(catalogue) as served:
        yield served


@pytest.fixture(scope="session")
def stac_pc(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """Planetary Computer-like STAC API (``rustac serve``) over local COGs of real pixels.

    Returns a :class:`servers.StacCatalogue` (url, collections, bbox, datetime, ids by role, groups,
    truth per item id, items, collection_docs, folder). Collection ``sentinel-2-l2a`` (the real PC
    collection JSON); items rewritten from a real PC item (asset keys B02...; no raster extension):

    ============== ========== ================================== =================================
    role           date       pixels / grid                      radiometry written
    ============== ========== ================================== =================================
    baseline_0212  2020-04-29 chip adwp, real grid (UTM 36S)     baseline 02.12: DN
    baseline_0511  2024-05-03 chip adwp, real grid               baseline 05.11: DN + 1000
    tile_edge_*    2020-05-04 adwp cols 0..299 (tile 36MVC) and  DN
                              cols 200..511 (tile 36MWC)
    other_utm      2020-05-09 adwp reprojected to UTM 35S        DN
    timeseries_0   2020-06-03 chip adwp, real grid               DN
    timeseries_1   2020-06-13 chip khas (Eswatini) ON adwp grid  DN
    timeseries_2   2020-06-23 chip adxp (overcast) ON adwp grid  DN
    multires       2017-09-24 BigEarthNet patch, 10/20/60 m,     DN
                              real grid (UTM 35N, Finland)
    ============== ========== ================================== =================================

    The time series is honest about one thing only: its dates. Dates 1 and 2 carry REAL pixels of
    other chips (khas: Eswatini, clear; adxp: Chifunfu, overcast) re-georeferenced onto chip adwp's
    footprint; there is no real multi-date stack of these chips. Every item's expected reflectance is
    ``truth[item_id].reflectance(band)``, computed from the original files.
    """
    yield from _serve("pc", shared_data, tmp_path_factory)


@pytest.fixture(scope="session")
def stac_es(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """Earth Search-like STAC API (``rustac serve``) over local COGs/JP2 of real pixels.

    Same :class:`servers.StacCatalogue` fields as ``stac_pc``. Collections ``sentinel-2-l2a``,
    ``sentinel-2-l1c``, ``sentinel-2-c1-l2a`` (minimal collection JSON); items rewritten from real
    Earth Search items (common-name asset keys, ``raster:bands`` scale 1e-4 offset -0.1):

    ============== ================= ========== =========================== ===========================
    role           collection        date       pixels / grid               radiometry written
    ============== ================= ========== =========================== ===========================
    harmonised     sentinel-2-l2a    2025-07-01 adwp, real grid              COG: DN (boa_offset_applied
                                                                            true); ``*-jp2``: DN + 1000
    l1c            sentinel-2-l1c    2025-07-01 adwp (L2A pixels as L1C),   JP2: DN + 1000
                                                real grid
    c1_l2a         sentinel-2-c1-l2a 2025-07-01 adwp, real grid              COG: DN + 1000
    lying          sentinel-2-l2a    2025-07-06 chip khas, real grid         COG: DN, but metadata says
                                                (Eswatini, dark water)      boa_offset_applied false
    tile_edge_*    sentinel-2-l2a    2025-07-11 adwp halves, 36MVC/36MWC     DN
    other_utm      sentinel-2-l2a    2025-07-16 adwp -> UTM 35S              DN
    timeseries_0-2 sentinel-2-l2a    07-21/26/31 adwp, khas, adxp on adwp    DN
    multires       sentinel-2-c1-l2a 2017-09-24 BigEarthNet 10/20/60 m       DN + 1000 (baseline 05.00)
    ============== ================= ========== =========================== ===========================
    """
    yield from _serve("es", shared_data, tmp_path_factory)


@pytest.fixture
def http_error_server():
    """:class:`servers.ErrorServer` on 127.0.0.1 answering every request with 503 (``.status`` is
    settable); ``.url``, ``.requests`` (count), ``.paths`` ((method, path) list), ``.reset()``."""
    with servers.ErrorServer() as server:
        yield server


@pytest.fixture
def unreachable_url() -> str:
    """``http://127.0.0.1:<port>`` with nothing listening: connections are refused."""
    return servers.unreachable_url()


@pytest.fixture(scope="session")
def s3_server():
    """moto S3 server on 127.0.0.1 with one bucket: :class:`servers.S3Server` (endpoint_url, bucket,
    key, secret, region, storage_options for s3fs/fsspec, ``url(path)`` -> ``s3://bucket/path``)."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed")
    pytest.importorskip("s3fs", reason="s3fs is not installed")
    with servers.moto_s3() as s3:
        yield s3


@pytest.fixture(scope="module")
def flaky(stac_pc):
    """:class:`servers.FlakyFileServer` over the PC catalogue's COGs, one per test module."""
    with servers.FlakyFileServer(stac_pc.folder) as server:
        yield server


@pytest.fixture
def cog_server(flaky):
    """The module's COG server, reset to behave (no faults, nothing missing, default stall)."""
    flaky.kind, flaky.faults, flaky.only, flaky.stall_s = "503", 0, "", 3.0
    flaky.missing.clear()
    flaky.paths.clear()
    return flaky


@pytest.fixture
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private user cache (platformdirs reads XDG_CACHE_HOME), no model dir, online."""
    from xs2mask.models import hub

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(hub.MODEL_DIR_ENV, raising=False)
    monkeypatch.delenv(hub.OFFLINE_ENV, raising=False)
    return tmp_path / "xdg" / "xs2mask" / "models"
