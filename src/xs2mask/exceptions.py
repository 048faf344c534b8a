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
