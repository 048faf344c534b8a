"""Categorical plots of masks: class colours, a legend, one panel per date.

Nothing here calls ``matplotlib.use``: :func:`plot_masks` draws through ``pyplot`` so that
notebooks show the figure inline with whatever backend they run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from .analysis import as_mask
from .classes import CLASS_COLOURS, CLASS_NAMES, NODATA
from .exceptions import InputError
from .export import colour_mask, date_labels

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.legend import Legend
    from matplotlib.patches import Patch


@dataclass(frozen=True)
class MaskPlot:
    """What :func:`plot_masks` drew: the figure, one axes per date (in time order), the legend."""

    figure: Figure
    axes: tuple[Axes, ...]
    legend: Legend


def legend_handles(labels: Mapping[int, str]) -> list[Patch]:
    """Legend patches in the class colours, one per ``{class code: label}``.

    Examples
    --------
    >>> [h.get_label() for h in legend_handles({0: "clear", 255: "no data"})]
    ['clear', 'no data']
    """
    from matplotlib.patches import Patch

    return [
        Patch(facecolor=_rgba(CLASS_COLOURS[code]), edgecolor="0.5", label=label)
        for code, label in labels.items()
    ]


def _rgba(colour: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
    r, g, b, a = colour
    return r / 255, g / 255, b / 255, a / 255


def plot_masks(
    masks: xr.DataArray | xr.Dataset, col_wrap: int = 4, size: float = 3.0, max_pixels: int | None = 1024
) -> MaskPlot:
    """Plot masks in their class colours with a legend, one panel per date titled by the date.

    Parameters
    ----------
    masks
        Mask Dataset or DataArray, ``(y, x)`` or ``(time, y, x)``; computed here (lazy masks run
        their model on every pixel, but only the pixels drawn are kept).
    col_wrap
        Panels per row.
    size
        Height of a panel in inches.
    max_pixels
        A panel's longest side at most this many pixels: a bigger scene is drawn from every
        n-th row and column (nearest, as classes must be), its extent unchanged. ``None``: every
        pixel (a 10980 px tile is 480 MB of colour per panel).

    Returns
    -------
    MaskPlot
        ``figure``, ``axes`` (one per date) and ``legend``, to adjust or save
        (``result.figure.savefig("masks.png")``).

    Examples
    --------
    >>> import xs2mask
    >>> masks = xs2mask.predict(xs2mask.data.demo_scene(), model="xs2mask-4b")
    >>> drawn = plot_masks(masks)
    >>> [t.get_text() for t in drawn.legend.get_texts()]
    ['clear', 'thick cloud', 'thin cloud', 'cloud shadow']
    >>> import matplotlib.pyplot as plt; plt.close(drawn.figure)
    """
    import matplotlib.pyplot as plt

    if isinstance(col_wrap, bool) or not isinstance(col_wrap, int) or col_wrap < 1:
        raise InputError(f"col_wrap (panels per row) must be a positive integer, got {col_wrap!r}")
    if max_pixels is not None and (
        isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1
    ):
        raise InputError(f"max_pixels must be a positive integer or None, got {max_pixels!r}")
    mask = as_mask(masks)
    if "time" not in mask.dims:
        mask = mask.expand_dims("time")  # a scalar time coordinate becomes the panel's date
    mask = mask.transpose("time", "y", "x")
    if max_pixels is not None:
        step = -(-max(mask.sizes["y"], mask.sizes["x"]) // max_pixels)
        if step > 1:
            # Every step-th pixel from the middle of the first window, so the drawn pixels sit where
            # their windows are and the extent below (from their coordinates) stays the scene's.
            mask = mask.isel(y=slice(step // 2, None, step), x=slice(step // 2, None, step))
    titles = date_labels(mask["time"].values) if "time" in mask.coords else [""]
    values = np.asarray(mask.values, np.uint8)
    n = values.shape[0]
    ncols = min(col_wrap, n)
    nrows = math.ceil(n / ncols)
    aspect = values.shape[2] / values.shape[1]
    fig = plt.figure(figsize=(ncols * size * aspect, nrows * size + 0.5), layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False).ravel()
    extent = _extent(mask)
    for ax, panel, title in zip(grid, values, titles, strict=False):
        ax.imshow(colour_mask(panel), interpolation="nearest", extent=extent)
        ax.set_title(title)
        ax.set_axis_off()
    for ax in grid[n:]:
        fig.delaxes(ax)
    labels = {code: name.replace("_", " ") for code, name in CLASS_NAMES.items()}
    if (values == NODATA).any():
        labels[NODATA] = "no data"
    legend = fig.legend(
        handles=legend_handles(labels), loc="outside lower center", ncol=len(labels), frameon=False
    )
    return MaskPlot(fig, tuple(grid[:n]), legend)


def _extent(mask: xr.DataArray) -> tuple[float, float, float, float] | None:
    """Pixel-edge extent in the grid's coordinates, so panels share the map's axes; None without them."""
    if "x" not in mask.coords or "y" not in mask.coords:  # `coords.get` would give positions
        return None
    x, y = mask.coords["x"], mask.coords["y"]
    if any(c.size < 2 or not np.issubdtype(c.dtype, np.number) for c in (x, y)):
        return None
    (x0, x1), (y0, y1) = ((float(c[0]), float(c[-1])) for c in (x, y))
    dx = (x1 - x0) / (x.size - 1) / 2
    dy = (y1 - y0) / (y.size - 1) / 2
    return x0 - dx, x1 + dx, y1 + dy, y0 - dy
