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

import functools
import re
import threading
import time
from collections.abc import Callable, Mapping
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


def read_env(policy: ReadPolicy) -> LayeredEnv:
    """stackstac's GDAL options plus the read policy's HTTP retries and timeouts.

    Examples
    --------
    >>> "GDAL_HTTP_MAX_RETRY" in repr(read_env(ReadPolicy(retries=1)))
    True
    """
    return DEFAULT_GDAL_ENV.updated(always=policy.gdal_options())


def reader(policy: ReadPolicy, names: Mapping[str, tuple[str, str]]) -> Callable[..., RetryingReader]:
    """The ``reader=`` for ``stackstac.stack``: :class:`RetryingReader` with the read policy and, per
    href, the item id and asset key its errors name (stackstac passes a reader only its own options).

    Examples
    --------
    >>> make = reader(ReadPolicy(), {"https://x/b04.tif": ("item-1", "B04")})
    >>> make.keywords["names"]["https://x/b04.tif"]
    ('item-1', 'B04')
    """
    return functools.partial(RetryingReader, policy=policy, names=dict(names))


class RetryingReader(AutoParallelRioReader):
    """stackstac's reader, retrying transient failures and raising :class:`ReadError` after them.

    A file already on the output grid (same CRS and pixel size, shifted by whole
    pixels: the tiles of one UTM zone on a snapped grid) is read as stored, its
    window clipped to the file, instead of through the GDAL warper that stackstac
    sets up for any file whose extent differs from the output's: the same pixels
    (nearest resampling of an aligned grid is the identity) at a fraction of the
    cost. Other files (another zone, another pixel size) go through the warper.
    """

    gdal_env: LayeredEnv  # set by stackstac's reader; replaced by an uncached one to retry

    def __init__(
        self,
        *,
        policy: ReadPolicy | None = None,
        names: Mapping[str, tuple[str, str]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.policy = policy or ReadPolicy()
        self.names = dict(names or {})
        self._local = threading.local()  # per thread, a rasterio dataset is not thread-safe
        self._opened: list[Any] = []
        self._opened_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # stackstac rebuilds a pickled reader from its constructor arguments: ours travel too (Dask workers).
        return {**super().__getstate__(), "policy": self.policy, "names": self.names}

    def read(self, window: Any, **kwargs: Any) -> np.ndarray:
        attempt = 0
        while True:
            try:
                if kwargs:
                    return super().read(window, **kwargs)
                return self._read_own(window)
            except Exception as err:  # rasterio, GDAL and stackstac raise many types
                reason = describe(err)
            # Out of the except block, so that the ReadError carries no chain holding the signed href.
            status = _status(reason)
            permanent = status is not None and 400 <= status < 500 and status not in _TRANSIENT_4XX
            if permanent or attempt >= self.policy.retries:
                item, asset = self.names.get(self.url, (None, None))
                raise ReadError.of(
                    self.url, reason, attempts=attempt + 1, item=item, asset=asset, permanent=permanent
                )
            time.sleep(self.policy.backoff * 2**attempt)
            attempt += 1
            self.close()  # the next attempt reopens the file with GDAL's HTTP cache off for it
            self.gdal_env = self.gdal_env.updated(always={"CPL_VSIL_CURL_NON_CACHED": _vsi(self.url)})

    def _read_own(self, window: Any) -> np.ndarray:
        """The window on the output grid: as stored when the file lies on that grid, else warped."""
        import rasterio
        from rasterio.vrt import WarpedVRT

        ds = getattr(self._local, "ds", None)
        if ds is None:
            with self.gdal_env.open:
                ds = rasterio.open(self.url, sharing=False)
            if ds.count != 1:
                count = ds.count
                ds.close()
                raise RuntimeError(f"assets must have exactly one band, but this file has {count}")
            shift = _grid_shift(ds, self.spec)
            vrt = None
            if shift is None:
                lattice = _lattice(ds, self.spec)
                with self.gdal_env.open_vrt:
                    vrt = WarpedVRT(
                        ds, sharing=False, resampling=self.resampling, add_alpha=ds.nodata is None,
                        **(self.spec.vrt_params if lattice is None else lattice.vrt_params),
                    )  # fmt: skip
                vrt.lattice = lattice
            with self._opened_lock:
                self._opened.extend(d for d in (vrt, ds) if d is not None)
            self._local.ds, self._local.shift, self._local.vrt = ds, shift, vrt
        if self._local.vrt is not None:
            return self._read_warped(self._local.vrt, window)
        return self._read_aligned(ds, self._local.shift, window)

    def _read_warped(self, vrt: Any, window: Any) -> np.ndarray:
        """The window warped onto the output grid, the same pixels whatever the window.

        GDAL's approximate transformer interpolates source positions along each row of the region
        it warps, so nearest-neighbour picks depend on that region: warping each requested window
        gave other pixels for other chunkings (1 % of a tile's). On a lattice of the output CRS
        (see :class:`_Lattice`) each block is warped alone, so any window, chunking or bounds that
        cover a pixel give it the same value.
        """
        from rasterio.windows import Window

        lattice: _Lattice | None = vrt.lattice
        if lattice is None:
            return self._warp(vrt, window)
        rows, cols = ((round(a), round(b)) for a, b in window.toranges())
        out = np.full((rows[1] - rows[0], cols[1] - cols[0]), self.fill_value, self.dtype)
        dy, dx = lattice.offset(self.spec.transform)
        r0, r1 = max(rows[0] + dy, 0), min(rows[1] + dy, lattice.height)
        c0, c1 = max(cols[0] + dx, 0), min(cols[1] + dx, lattice.width)
        sy, sx = _WARP_BLOCK
        for br in range(r0 - r0 % sy, r1, sy):
            for bc in range(c0 - c0 % sx, c1, sx):
                window = Window(bc, br, min(sx, lattice.width - bc), min(sy, lattice.height - br))
                block = self._warp(vrt, window)
                ys, xs = slice(max(r0, br), min(r1, br + sy)), slice(max(c0, bc), min(c1, bc + sx))
                out[
                    ys.start - dy - rows[0] : ys.stop - dy - rows[0],
                    xs.start - dx - cols[0] : xs.stop - dx - cols[0],
                ] = block[ys.start - br : ys.stop - br, xs.start - bc : xs.stop - bc]
        return out

    def _warp(self, vrt: Any, window: Any) -> np.ndarray:
        with self.gdal_env.read:
            result = vrt.read(window=window, out_dtype=self.dtype, masked=True)
        # Without a nodata value the VRT's alpha band says which pixels the file covers.
        data = np.ma.masked_array(result[0], mask=result[1] == 0) if result.shape[0] == 2 else result[0]
        scale, offset = self.scale_offset
        if scale != 1 or offset != 0:
            data = data * scale + offset
        return np.ma.filled(data, fill_value=self.fill_value).astype(self.dtype, copy=False)

    def _read_aligned(self, ds: Any, shift: tuple[int, int], window: Any) -> np.ndarray:
        """The window read as stored, clipped to the file: the file lies on the output grid."""
        from rasterio.windows import Window

        rows, cols = ((round(a), round(b)) for a, b in window.toranges())
        shape = (rows[1] - rows[0], cols[1] - cols[0])
        r0, r1 = max(rows[0] + shift[0], 0), min(rows[1] + shift[0], ds.height)
        c0, c1 = max(cols[0] + shift[1], 0), min(cols[1] + shift[1], ds.width)
        if r0 >= r1 or c0 >= c1:
            return np.full(shape, self.fill_value, self.dtype)
        with self.gdal_env.read:
            # GDAL converts to the output type as it copies the pixels out: no temporary of the stored type
            data = ds.read(1, window=Window(c0, r0, c1 - c0, r1 - r0), out_dtype=self.dtype)
        missing = np.isnan(data) if np.isnan(ds.nodata) else data == ds.nodata
        scale, offset = self.scale_offset
        if scale != 1 or offset != 0:
            valid = ~missing
            data[valid] = data[valid] * scale + offset
        data[missing] = self.fill_value
        if data.shape == shape:  # the window lies inside the file: the read is the answer
            return data
        out = np.full(shape, self.fill_value, self.dtype)
        out[
            r0 - rows[0] - shift[0] : r1 - rows[0] - shift[0],
            c0 - cols[0] - shift[1] : c1 - cols[0] - shift[1],
        ] = data
        return out

    def close(self) -> None:
        super().close()
        with self._opened_lock:
            opened, self._opened = self._opened, []
            self._local = threading.local()
        for ds in opened:
            ds.close()


def _grid_shift(ds: Any, spec: Any) -> tuple[int, int] | None:
    """(rows, columns) from the output grid's origin to the file's, when both are one grid.

    One grid: the same CRS and pixel size, no rotation, origins whole pixels apart; and a
    single band whose only mask is its nodata value (what stackstac's masked read would use).
    """
    from rasterio.enums import MaskFlags

    out, src = spec.transform, ds.transform
    if ds.count != 1 or ds.nodata is None or ds.mask_flag_enums != ([MaskFlags.nodata],):
        return None
    if ds.crs is None or ds.crs.to_epsg() != spec.epsg:
        return None
    if (src.a, src.b, src.d, src.e) != (out.a, out.b, out.d, out.e):
        return None
    cols, rows = (out.c - src.c) / src.a, (out.f - src.f) / src.e
    if abs(cols - round(cols)) > 1e-6 or abs(rows - round(rows)) > 1e-6:
        return None
    return round(rows), round(cols)


# Edge of the lattice, in output pixels: the warped VRT's extent lies on its multiples, so its blocks
# lie on the same grid whatever the load's bounds.
_LATTICE = 128
# Rows and columns warped per read: one block of GDAL's warped VRT (128 rows x 512 columns) on its
# block grid. The same pixels as 128 x 128 reads (tests), with a quarter of the calls: a warped
# 2048 px window took 0.57 s instead of 0.98 s.
_WARP_BLOCK = (128, 512)


@dataclass(frozen=True)
class _Lattice:
    """A file's footprint on the output CRS and pixel size, its edges on multiples of ``_LATTICE`` pixels
    counted from the CRS origin: the same VRT for this file whatever the load's bounds."""

    crs: int
    res_x: float
    res_y: float  # negative: rows go south
    left: float
    top: float
    width: int
    height: int

    @property
    def vrt_params(self) -> dict[str, Any]:
        from affine import Affine

        transform = Affine(self.res_x, 0.0, self.left, 0.0, self.res_y, self.top)
        return {"crs": self.crs, "transform": transform, "width": self.width, "height": self.height}

    def offset(self, transform: Any) -> tuple[int, int]:
        """(rows, columns) from an output grid's origin to the lattice's."""
        return round((transform.f - self.top) / self.res_y), round((transform.c - self.left) / self.res_x)


def _lattice(ds: Any, spec: Any) -> _Lattice | None:
    """The lattice VRT of ``ds`` on ``spec``'s CRS and pixel size; None when the output grid is not
    on whole pixels of its CRS origin (a grid that is not snapped: warped as requested)."""
    import math

    from rasterio.warp import transform_bounds

    out = spec.transform
    if out.b or out.d or out.a <= 0 or out.e >= 0:
        return None
    gx, gy = out.c / out.a, out.f / out.e
    if abs(gx - round(gx)) > 1e-6 or abs(gy - round(gy)) > 1e-6:
        return None
    west, south, east, north = transform_bounds(ds.crs, f"EPSG:{spec.epsg}", *ds.bounds, densify_pts=21)
    edge_x, edge_y = _LATTICE * out.a, _LATTICE * -out.e
    # one block of margin: the densified footprint is a polygon approximation
    left = (math.floor(west / edge_x) - 1) * edge_x
    right = (math.ceil(east / edge_x) + 1) * edge_x
    bottom = (math.floor(south / edge_y) - 1) * edge_y
    top = (math.ceil(north / edge_y) + 1) * edge_y
    return _Lattice(
        crs=spec.epsg, res_x=out.a, res_y=out.e, left=left, top=top,
        width=round((right - left) / out.a), height=round((top - bottom) / -out.e),
    )  # fmt: skip


def _vsi(href: str) -> str:
    return href if href.startswith("/vsi") else f"/vsicurl/{href}"


def _status(reason: str) -> int | None:
    match = _STATUS.search(reason)
    return int(match.group(1)) if match else None
