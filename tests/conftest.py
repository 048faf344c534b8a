"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The real test data live beside the project (../shared/data); a fresh clone has none, but it has
# tests/data: the few files of it (byte-identical, same layout) that most tests need (see its README).
_SHARED_DATA = Path(
    os.environ.get("XS2MASK_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
_SHIPPED_DATA = Path(__file__).resolve().parent / "data"
#: ``../shared/data`` when present, else the shipped subset ``tests/data``.
REAL_DATA = _SHARED_DATA if _SHARED_DATA.is_dir() else _SHIPPED_DATA


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of all the real Sentinel-2 test data, or skip the test when it is absent: for tests of
    files that ``tests/data`` does not ship (the other tests take :func:`real_data`)."""
    if not _SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {_SHARED_DATA} (set XS2MASK_SHARED_DATA)")
    return _SHARED_DATA


@pytest.fixture(scope="session")
def real_data() -> Path:
    """``../shared/data``, or without it the shipped subset ``tests/data`` (same layout): for tests of
    the files listed in ``tests/data/README.md``."""
    return REAL_DATA


# --------------------------------------------------------------------------------------------------
# Real servers on 127.0.0.1 for the STAC -> Zarr pipeline tests (helpers in tests/support).
# tests/ is not a package and pytest runs with --import-mode=importlib: put this folder on sys.path
# so that conftest and the tests can ``from support import ...``.
# --------------------------------------------------------------------------------------------------
import sys  # noqa: E402

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from support import faults, s3, stac_api, variants  # noqa: E402


def _serve(name: str, tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("rasterio")
    pytest.importorskip("rustac", reason="rustac (STAC API server) is not installed")
    catalogue = variants.build_catalogue(name, tmp_path_factory.mktemp(f"stac_{name}"), shared=REAL_DATA)
    with stac_api.serve_catalogue(catalogue) as served:
        yield served


@pytest.fixture(scope="session")
def stac_pc(tmp_path_factory: pytest.TempPathFactory):
    """Planetary Computer-like STAC API (``rustac serve``) over local COGs of real pixels.

    Returns a :class:`support.variants.StacCatalogue` (url, collections, bbox, datetime, ids by role,
    groups, truth per item id, items, collection_docs, folder); its table of roles is in
    :mod:`support.variants`. Built from the demo scene of the package and, for the role ``multires``
    (a BigEarthNet patch), from ``tests/data`` when ``../shared/data`` is absent.

    The time series is honest about one thing only: its dates. Dates 1 and 2 carry REAL pixels of
    windows of the demo scene (adwp-clear: 3 % cloud; adwp-overcast: 100 % cloud) mirrored to its
    size, on its footprint; there is no real multi-date stack. Every item's expected reflectance is
    ``truth[item_id].reflectance(band)``, computed from the source files.
    """
    yield from _serve("pc", tmp_path_factory)


@pytest.fixture(scope="session")
def stac_es(tmp_path_factory: pytest.TempPathFactory):
    """Earth Search-like STAC API (``rustac serve``) over local COGs/JP2 of real pixels.

    Same :class:`support.variants.StacCatalogue` fields as ``stac_pc``. Collections
    ``sentinel-2-l2a``, ``sentinel-2-l1c``, ``sentinel-2-c1-l2a``; items rewritten from real Earth
    Search items (common-name asset keys, ``raster:bands`` scale 1e-4 offset -0.1). The roles
    ``lying`` (chip khas, dark water) and ``multires`` take their files from ``../shared/data`` or,
    without it, from ``tests/data``.
    """
    yield from _serve("es", tmp_path_factory)


@pytest.fixture
def http_error_server():
    """:class:`support.faults.FaultServer` on 127.0.0.1 answering every request with 503 (set
    ``.default`` to change it); ``.url``, ``.requests`` (count), ``.paths`` ((method, path) list),
    ``.reset()``."""
    with faults.FaultServer(default=faults.Fault.error(503)) as server:
        yield server


@pytest.fixture
def unreachable_url() -> str:
    """``http://127.0.0.1:<port>`` with nothing listening: connections are refused."""
    return stac_api.unreachable_url()


@pytest.fixture(scope="session")
def s3_server():
    """moto S3 server on 127.0.0.1 with one bucket: :class:`support.s3.S3Server` (endpoint_url, bucket,
    key, secret, region, storage_options for s3fs/fsspec, ``url(path)`` -> ``s3://bucket/path``)."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed")
    pytest.importorskip("s3fs", reason="s3fs is not installed")
    with s3.moto_s3() as server:
        yield server


@pytest.fixture(scope="module")
def flaky(stac_pc):
    """:class:`support.faults.FlakyFileServer` over the PC catalogue's COGs, one per test module."""
    with faults.FlakyFileServer(stac_pc.folder) as server:
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
