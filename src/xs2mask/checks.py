"""Checks of user-given options, shared by the Python API and the command line.

Each function returns the value in its canonical form or raises
:class:`~xs2mask.exceptions.InputError` naming the value and the fix, so that a
typo fails at the call, before any network request or computation.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from .exceptions import InputError, OptionError

# RFC 3339 as STAC APIs take it, also the year / year-month / date shorthands pystac-client expands.
_INSTANT = re.compile(
    r"^\d{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01])"
    r"([Tt]([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d+)?([Zz]|[-+]\d{2}:\d{2})?)?)?)?$"
)


def check_datetime(text: str) -> str:
    """Check a STAC ``datetime``: one instant or ``start/end`` (``..`` or empty for an open end).

    Examples
    --------
    >>> check_datetime("2024-06-01/2024-06-30")
    '2024-06-01/2024-06-30'
    >>> check_datetime("../2024-06")
    '../2024-06'
    >>> check_datetime("yesterday")
    Traceback (most recent call last):
    ...
    xs2mask.exceptions.InputError: datetime 'yesterday' is not a date or a date range; ...
    """
    parts = str(text).strip().split("/")
    open_end = ("", "..")
    bad = (
        len(parts) > 2
        or all(p in open_end for p in parts)
        or any(p not in open_end and not _INSTANT.match(p) for p in parts)
        or (len(parts) == 1 and parts[0] in open_end)
    )
    if not bad and len(parts) == 2 and not any(p in open_end for p in parts):
        # Compare at the coarser of the two precisions: "2024-06/2024-06-15" is fine.
        n = min(len(parts[0]), len(parts[1]), 10)
        bad = parts[0][:n] > parts[1][:n]
    if bad:
        raise InputError(
            f"datetime {text!r} is not a date or a date range; write e.g. 2024-06-01/2024-06-30, "
            "2024-06 (a month), 2024-06-01T10:00:00Z, or ../2024-06-30 (open start), with start <= end"
        )
    return str(text).strip()


def check_bbox(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    """Check a lon/lat bounding box ``(west, south, east, north)`` in degrees.

    ``west > east`` is allowed: the box crosses the antimeridian, as STAC defines it.

    Examples
    --------
    >>> check_bbox([32.84, -2.57, 32.89, -2.52])
    (32.84, -2.57, 32.89, -2.52)
    >>> check_bbox([32.84, -2.57, 32.89, 95])
    Traceback (most recent call last):
    ...
    xs2mask.exceptions.InputError: bbox [32.84, -2.57, 32.89, 95.0]: north 95.0 is outside -90..90; ...
    """
    try:
        values = tuple(float(v) for v in bbox)
    except (TypeError, ValueError):
        raise InputError(f"bbox {bbox!r} must be four numbers: west south east north (degrees)") from None
    if len(values) != 4:
        raise InputError(f"bbox {list(values)} must be four numbers: west south east north (degrees)")
    west, south, east, north = values
    problem = None
    if not all(math.isfinite(v) for v in values):
        problem = "every value must be a finite number"
    elif not (-180 <= west <= 180 and -180 <= east <= 180):
        problem = f"longitudes {west}, {east} must lie in -180..180"
    elif not -90 <= south <= 90:
        problem = f"south {south} is outside -90..90"
    elif not -90 <= north <= 90:
        problem = f"north {north} is outside -90..90"
    elif south >= north:
        problem = f"south {south} must be below north {north}"
    elif west == east:
        problem = "west equals east: the box has no width"
    if problem:
        raise InputError(
            f"bbox {list(values)}: {problem}; give west south east north in degrees of longitude and "
            "latitude (EPSG:4326), e.g. 32.84 -2.57 32.89 -2.52"
        )
    return values


def check_integer(name: str, value: object, low: int, high: int | None = None, *, what: str = "") -> int:
    """``value`` as an int within ``[low, high]``: numpy integers count; bool and 2.0 do not.

    Examples
    --------
    >>> import numpy as np
    >>> check_integer("tta", np.int64(2), 0, 7)
    2
    """
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if integral and value >= low and (high is None or value <= high):  # type: ignore[operator]
        return int(value)  # type: ignore[call-overload]
    what = what or f"an integer of at least {low}"
    raise OptionError(f"{name} must be {what}, got {value!r}")


def check_real(name: str, value: object, within: Callable[[float], bool], what: str) -> float:
    """``value`` as a finite float for which ``within`` holds: numpy scalars count; bool does not.

    Examples
    --------
    >>> check_real("timeout", 5, lambda v: v > 0, "a positive number of seconds")
    5.0
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
        if math.isfinite(number) and within(number):
            return number
    raise OptionError(f"{name} must be {what}, got {value!r}")


def check_scene_paths(
    source: str | Path,
    out: str | Path,
    *,
    overwrite: bool,
    out_name: str = "out",
    overwrite_hint: str = "overwrite=True",
) -> tuple[Path, Path]:
    """Check a one-scene job's paths: the input exists; the output file is neither a folder, nor the
    input (even with ``overwrite``), nor an existing file (unless ``overwrite``).

    ``out_name`` and ``overwrite_hint`` are how the caller names the output and the way out
    (the command line says ``-o`` and ``--overwrite``).

    Examples
    --------
    >>> check_scene_paths("/", "/", overwrite=True)
    Traceback (most recent call last):
    ...
    xs2mask.exceptions.InputError: out / is a folder: give the mask's file name, e.g. out /mask.tif
    """
    source, out = Path(source), Path(out)
    if not source.exists():
        raise InputError(
            f"the input {source} does not exist: give a .SAFE folder, a folder of band files or a GeoTIFF"
        )
    if out.is_dir():
        raise InputError(
            f"{out_name} {out} is a folder: give the mask's file name, e.g. {out_name} {out / 'mask.tif'}"
        )
    if out.exists() and out.resolve() == source.resolve():
        raise InputError(f"{out_name} {out} is the input itself: choose another output name")
    if out.exists() and not overwrite:
        raise InputError(f"refusing to overwrite {out}: pass {overwrite_hint}, or choose another {out_name}")
    return source, out
