"""The xs2mask class codes (CloudSEN12 convention) and their CF metadata."""

from __future__ import annotations

from typing import TypedDict

CLEAR = 0
THICK_CLOUD = 1
THIN_CLOUD = 2
CLOUD_SHADOW = 3
NODATA = 255

CLASS_NAMES: dict[int, str] = {
    CLEAR: "clear",
    THICK_CLOUD: "thick_cloud",
    THIN_CLOUD: "thin_cloud",
    CLOUD_SHADOW: "cloud_shadow",
}

# RGBA colours for quick-looks and GeoTIFF colour tables.
CLASS_COLOURS: dict[int, tuple[int, int, int, int]] = {
    CLEAR: (34, 139, 34, 255),
    THICK_CLOUD: (255, 255, 255, 255),
    THIN_CLOUD: (0, 200, 255, 255),
    CLOUD_SHADOW: (60, 60, 60, 255),
    NODATA: (0, 0, 0, 255),
}


class MaskAttrs(TypedDict):
    """The CF attributes :func:`mask_attrs` gives."""

    long_name: str
    flag_values: list[int]
    flag_meanings: str
    valid_range: list[int]
    missing_value: int


def mask_attrs() -> MaskAttrs:
    """CF attributes of the ``mask`` variable.

    Examples
    --------
    >>> mask_attrs()["flag_meanings"]
    'clear thick_cloud thin_cloud cloud_shadow'
    """
    return {
        "long_name": "cloud and cloud shadow mask",
        "flag_values": list(CLASS_NAMES),
        "flag_meanings": " ".join(CLASS_NAMES.values()),
        "valid_range": [0, max(CLASS_NAMES)],
        "missing_value": NODATA,
    }
