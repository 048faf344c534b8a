"""Doctests of ``src/xs2mask`` run in a fresh temporary folder: their examples write files such as
``mask.tif`` or ``masks.zarr`` by a relative path, as a user would, and must not litter the checkout."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _doctests_in_a_temporary_folder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if isinstance(request.node, pytest.DoctestItem):
        monkeypatch.chdir(request.getfixturevalue("tmp_path"))
