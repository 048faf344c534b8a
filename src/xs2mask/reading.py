"""Reading COGs that survive transient faults: GDAL's HTTP retries plus a retrying stackstac reader.

Two layers, because they catch different faults:

- GDAL retries HTTP 429/5xx answers itself (``GDAL_HTTP_MAX_RETRY``, with the
  delay doubling from ``GDAL_HTTP_RETRY_DELAY``) and gives up on an answer not
  complete after ``GDAL_HTTP_TIMEOUT`` seconds: GDAL hands it to curl as
  ``CURLOPT_TIMEOUT``, the limit on the whole transfer (connection, headers and
  body), so a server trickling its answer byte by byte is cut off as surely as a
  silent one (``test_network_faults.py`` checks it). The limit holds per HTTP
  request: a read that needs several ranges (header, then blocks) may take
  several timeouts, and each retry another;
- :class:`RetryingReader` retries what reaches rasterio as an error (a timeout,
  a truncated answer, a 5xx left after GDAL's retries) with exponential
  back-off, reopening the file with GDAL's ``/vsicurl/`` cache off for it
  (``CPL_VSIL_CURL_NON_CACHED``), so a truncated header or block cached by the
  failed attempt is not read again. A 4xx (404: the file is not there) is not
  transient and fails at once.

When the retries are spent the reader raises
:class:`~xs2mask.exceptions.ReadError` naming the item, the asset and the href
(signatures masked, and without the library error in its chain, whose text holds
the signed href): a read never returns pixels it did not get.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from stackstac.rio_reader import DEFAULT_GDAL_ENV, AutoParallelRioReader, LayeredEnv

from .exceptions import ReadError
from .redaction import describe

_STATUS = re.compile(r"HTTP (?:response )?code:? ?(\d{3})", re.IGNORECASE)
_TRANSIENT_4XX = (408, 429)


@dataclass(frozen=True)
class ReadPolicy:
    """How hard to try reading a file: retries, back-off and the per-request timeout.

    Examples
    --------
    >>> ReadPolicy(retries=2, timeout=10).gdal_options()["GDAL_HTTP_TIMEOUT"]
    '10'
    """

    retries: int = 3
    timeout: float = 30.0
    backoff: float = 0.5  # seconds before the first retry; doubled at each

    def __post_init__(self) -> None:
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"read retries must be a non-negative integer, got {self.retries!r}")
        if not self.timeout > 0:
            raise ValueError(f"read timeout must be positive seconds, got {self.timeout!r}")

    def gdal_options(self) -> dict[str, str]:
        return {
            "GDAL_HTTP_MAX_RETRY": str(self.retries),
            "GDAL_HTTP_RETRY_DELAY": str(self.backoff),
            "GDAL_HTTP_TIMEOUT": str(max(1, round(self.timeout))),
            "GDAL_HTTP_CONNECTTIMEOUT": str(max(1, round(self.timeout))),
        }


class RetryingEnv(LayeredEnv):
    """stackstac's GDAL options plus the read policy and, per href, its item id and asset key.

    It travels in the graph with every reader, so the reader knows how to retry
    and what to call a file in its error.
    """

    def __init__(
        self,
        policy: ReadPolicy,
        names: Mapping[str, tuple[str, str]],
        extra: Mapping[str, str] | None = None,
    ) -> None:
        always = {**DEFAULT_GDAL_ENV._always, **policy.gdal_options(), **(extra or {})}
        super().__init__(
            always=always,
            open=DEFAULT_GDAL_ENV._open,
            open_vrt=DEFAULT_GDAL_ENV._open_vrt,
            read=DEFAULT_GDAL_ENV._read,
        )
        self.policy = policy
        self.names = dict(names)
        self.extra = dict(extra or {})

    def uncached(self, href: str) -> RetryingEnv:
        """The same options with GDAL's HTTP cache off for ``href``."""
        return RetryingEnv(self.policy, self.names, {**self.extra, "CPL_VSIL_CURL_NON_CACHED": _vsi(href)})

    def __getstate__(self) -> dict[str, Any]:
        return {"policy": self.policy, "names": self.names, "extra": self.extra}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)


class RetryingReader(AutoParallelRioReader):
    """stackstac's reader, retrying transient failures and raising :class:`ReadError` after them."""

    def read(self, window: Any, **kwargs: Any) -> np.ndarray:
        attempt = 0
        while True:
            try:
                return super().read(window, **kwargs)
            except Exception as err:  # rasterio, GDAL and stackstac raise many types
                reason = describe(err)
            # Out of the except block, so that the ReadError carries no chain holding the signed href.
            env = self.gdal_env
            policy = getattr(env, "policy", ReadPolicy())
            status = _status(reason)
            permanent = status is not None and 400 <= status < 500 and status not in _TRANSIENT_4XX
            if permanent or attempt >= policy.retries:
                item, asset = getattr(env, "names", {}).get(self.url, (None, None))
                raise ReadError.of(
                    self.url, reason, attempts=attempt + 1, item=item, asset=asset, permanent=permanent
                )
            time.sleep(policy.backoff * 2**attempt)
            attempt += 1
            self.close()  # the next attempt reopens the file, uncached
            if isinstance(env, RetryingEnv):
                self.gdal_env = env.uncached(self.url)


def _vsi(href: str) -> str:
    return href if href.startswith("/vsi") else f"/vsicurl/{href}"


def _status(reason: str) -> int | None:
    match = _STATUS.search(reason)
    return int(match.group(1)) if match else None
