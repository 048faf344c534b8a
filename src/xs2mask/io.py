"""Deprecated: the former name of :mod:`xs2mask.export` (GeoTIFF and PNG output).

Every name still resolves, with a :class:`DeprecationWarning` naming its new home.

Examples
--------
>>> from xs2mask.export import write_geotiff  # not: from xs2mask.io import write_geotiff
"""

from __future__ import annotations

import warnings
from typing import Any

from . import export as _export


def __getattr__(name: str) -> Any:
    value = getattr(_export, name)
    warnings.warn(
        f"xs2mask.io is renamed xs2mask.export: use xs2mask.export.{name}", DeprecationWarning, stacklevel=2
    )
    return value
