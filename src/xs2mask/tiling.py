"""Patch grids and blending windows (pure numpy).

Patches sit on a grid anchored to the *global* array, not to the Dask chunk, so
every chunk computes exactly the patches the whole array would: the mask does
not depend on the chunking. Each patch's blending weight is zero on a thin
border (``margin`` pixels, where convolutions see padding) and ramps up
linearly across the rest of the overlap, as CloudS2Mask and OmniCloudMask
blend their patches.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from .exceptions import OptionError

ALIGN = 32  # U-Net encoders downsample 5 times


def margin(overlap: int) -> int:
    """Border of a patch that gets zero weight."""
    return overlap // 4


@dataclass(frozen=True)
class AxisGrid:
    """Patches along one axis of length ``n``: origins ``k * stride - margin``."""

    n: int
    patch: int
    overlap: int

    @property
    def margin(self) -> int:
        return margin(self.overlap)

    @property
    def stride(self) -> int:
        return self.patch - self.overlap

    def origins(self, start: int, stop: int) -> np.ndarray:
        """Origins of the patches whose non-zero weight touches ``[start, stop)``."""
        m, s = self.margin, self.stride
        first = np.arange(-(-self.n // s)) * s  # first pixel of non-zero weight
        hit = (first < stop) & (first + self.patch - 2 * m > start)
        return first[hit] - m

    def window(self) -> np.ndarray:
        """1-D blending weights of one patch."""
        m, ramp = self.margin, self.overlap - 2 * self.margin
        i = np.arange(self.patch, dtype=np.float32)
        if ramp <= 0:
            w = np.ones(self.patch, np.float32)
        else:
            w = np.minimum((i - m + 0.5) / ramp, (self.patch - m - i - 0.5) / ramp)
            w = np.clip(w, 0.0, 1.0)
        w[:m] = 0.0
        w[self.patch - m :] = 0.0
        return w


def axis_grid(n: int, patch: int, overlap: int, *, fixed: bool) -> AxisGrid:
    """Grid for an axis of ``n`` pixels; small axes get a smaller patch unless ``fixed``.

    Examples
    --------
    >>> g = axis_grid(1000, 512, 64, fixed=False)
    >>> g.origins(0, 1000).tolist()
    [-16, 432, 880]
    """
    if not fixed:
        needed = n + 2 * margin(overlap)
        patch = min(patch, -(-needed // ALIGN) * ALIGN)
        overlap = min(overlap, patch // 2)
    return AxisGrid(n=n, patch=patch, overlap=overlap)


def check_patch(patch: object, overlap: object) -> tuple[int, int]:
    """Validate a user-supplied patch size and overlap; return them as ints.

    Numpy integers count as integers; ``True`` and ``64.0`` do not.

    Examples
    --------
    >>> check_patch(np.int64(256), 32)
    (256, 32)
    """
    if not _is_integer(patch) or patch < ALIGN or patch % ALIGN:  # type: ignore[operator]
        raise OptionError(
            f"patch_size must be a positive multiple of {ALIGN}, got {patch!r}: the U-Nets halve a "
            f"patch 5 times. Pass e.g. patch_size=256, or None for the model's own."
        )
    limit = int(patch) // 2  # type: ignore[call-overload]
    if not _is_integer(overlap) or not 0 <= overlap <= limit:  # type: ignore[operator]
        raise OptionError(
            f"overlap must be between 0 and patch_size/2 ({limit}), got {overlap!r}: an integer "
            "number of processing pixels. Pass e.g. overlap=32, or None for the model's own."
        )
    return int(patch), int(overlap)  # type: ignore[call-overload]


def _is_integer(value: object) -> bool:
    """Python or numpy integer; bool is not a number of pixels."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# The 8 symmetries of the square used for test-time augmentation; identity first.
# Each is (number of 90-degree rotations, flip last axis first).
TTA_TRANSFORMS: tuple[tuple[int, bool], ...] = (
    (0, False),
    (0, True),
    (2, True),
    (1, False),
    (2, False),
    (3, False),
    (1, True),
    (3, True),
)


def forward(x: np.ndarray, transform: tuple[int, bool]) -> np.ndarray:
    """Apply a TTA transform to ``(..., H, W)``."""
    k, flip = transform
    if flip:
        x = x[..., ::-1]
    return np.rot90(x, k, axes=(-2, -1))


def inverse(x: np.ndarray, transform: tuple[int, bool]) -> np.ndarray:
    """Undo :func:`forward`."""
    k, flip = transform
    x = np.rot90(x, -k, axes=(-2, -1))
    if flip:
        x = x[..., ::-1]
    return x
