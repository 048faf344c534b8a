"""Exceptions raised by xs2mask. All derive from :class:`XS2MaskError`."""

from __future__ import annotations


class XS2MaskError(Exception):
    """Base class of every error xs2mask raises on purpose."""


class BandError(XS2MaskError, ValueError):
    """A band is unknown, missing, or the band axis is malformed."""


class InputError(XS2MaskError, ValueError):
    """The input array has the wrong dims, dtype, scale or chunking."""


class ModelNotFoundError(XS2MaskError, KeyError):
    """No model of that name is registered or installed."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class WeightsError(XS2MaskError, OSError):
    """A weights file is missing, unreadable or fails its checksum."""


class DeviceError(XS2MaskError, RuntimeError):
    """The requested device or precision is not available."""


class StacError(XS2MaskError, RuntimeError):
    """A STAC API does not answer, answers with errors, or finds no usable items."""


class StoreError(XS2MaskError, ValueError):
    """A Zarr store exists with another layout, or cannot be written as asked."""


class RadiometryWarning(UserWarning):
    """Pixel values contradict an item's radiometric metadata (e.g. a wrong offset flag)."""
