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
