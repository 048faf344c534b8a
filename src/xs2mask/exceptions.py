"""Exceptions raised by xs2mask. All derive from :class:`XS2MaskError`."""

from __future__ import annotations

from functools import partial

from .redaction import redact_url


class XS2MaskError(Exception):
    """Base class of every error xs2mask raises on purpose."""


class BandError(XS2MaskError, ValueError):
    """A band is unknown, missing, or the band axis is malformed."""


class InputError(XS2MaskError, ValueError):
    """The input array has the wrong dims, dtype, scale or chunking."""


class OptionError(XS2MaskError, ValueError):
    """An option of a call has the wrong type or is out of range (checked before any work)."""


class ModelNotFoundError(XS2MaskError, KeyError):
    """No model of that name is registered or installed."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class WeightsError(XS2MaskError, OSError):
    """A weights file is missing, unreadable or fails its checksum."""


class DependencyError(XS2MaskError, ImportError):
    """An optional package the chosen model or task needs is not installed; the message names the extra."""


class BackendError(XS2MaskError, ValueError):
    """A model names a backend nobody registered, or a backend is registered twice."""


class DeviceError(XS2MaskError, RuntimeError):
    """The requested device or precision is not available."""


class StacError(XS2MaskError, RuntimeError):
    """A STAC API does not answer, answers with errors, or finds no usable items."""


class StoreError(XS2MaskError, ValueError):
    """A Zarr store exists with another layout, or cannot be written as asked."""


class RadiometryWarning(UserWarning):
    """Pixel values contradict an item's radiometric metadata (e.g. a wrong offset flag)."""


class InputWarning(UserWarning):
    """Some input values cannot come from Sentinel-2 (e.g. +-inf, 3e38): those pixels became no-data."""


class ReadError(XS2MaskError, RuntimeError):
    """A raster could not be read, after the retries a transient fault deserves.

    The message, ``href`` and ``reason`` have credentials and signatures masked
    (:func:`xs2mask.redaction.redact_url`): they go into logs and into the store's
    ``xs2mask_read_errors``.

    Attributes
    ----------
    href : the file (secrets masked).
    item, asset : the STAC item id and asset key it belongs to, when known.
    reason : the underlying error, one line.
    permanent : True for an answer no retry changes (HTTP 404 and other 4xx).
    """

    def __init__(
        self,
        message: str,
        *,
        href: str,
        reason: str,
        item: str | None = None,
        asset: str | None = None,
        permanent: bool = False,
    ) -> None:
        super().__init__(redact_url(message))
        self.href, self.reason = redact_url(href), redact_url(reason)
        self.item, self.asset, self.permanent = item, asset, permanent

    @classmethod
    def of(
        cls,
        href: str,
        reason: str,
        *,
        attempts: int,
        item: str | None = None,
        asset: str | None = None,
        permanent: bool = False,
    ) -> ReadError:
        """The error for ``href``, with what to do about it."""
        what = f"asset {asset} of item {item} ({href})" if item else href
        if permanent:
            fix = (
                "The file is not there or not readable with these credentials: no retry will help. "
                "Drop the item (or its date) from the job, or fix its href."
            )
        else:
            fix = (
                "Rerun the job to retry (finished slabs are kept), raise read_retries / read_timeout "
                "(--read-retries / --read-timeout), or pass on_read_error='nodata' "
                "(--on-read-error nodata) to write no-data for this slab and record it in the store."
            )
        return cls(
            f"cannot read {what} after {attempts} attempt(s): {reason}. {fix}",
            href=href,
            reason=reason,
            item=item,
            asset=asset,
            permanent=permanent,
        )

    def __reduce__(self):
        # Keyword-only fields: the default pickling (args only) would drop them between processes.
        fields = {"href": self.href, "reason": self.reason, "item": self.item, "asset": self.asset}
        return (partial(ReadError, **fields, permanent=self.permanent), (str(self),))


class ReadWarning(UserWarning):
    """A mask store holds slabs written as no-data because their inputs could not be read."""
