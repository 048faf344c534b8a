"""Sentinel-2 from any STAC API: search (pystac-client) and lazy loading (stackstac).

:func:`search` wraps :class:`pystac_client.Client` with bounded retries and clear
errors, and signs Planetary Computer hrefs. :func:`load` turns the items into one
lazy ``(time, band, y, x)`` float32 reflectance cube, whatever the provider:

- assets are found by band, whatever the provider calls them (``B04``, ``red``,
  ``red-jp2``; a COG is preferred over a JPEG2000 copy), and renamed to ESA names;
- DN become reflectance per item and band, as :mod:`xs2mask.radiometry` decides
  from the item's metadata (processing baseline, ``raster:bands``, Earth Search's
  ``boa_offset_applied``); stackstac's own rescaling is off so nothing is applied twice;
- items are grouped into solar days (:func:`group_days`: the local date at the scene,
  the newest of reprocessed duplicates only); each day's items, any mix of MGRS tiles,
  orbits and baselines, are mosaicked into one time step on one grid; items in other
  UTM zones are reprojected onto it;
- coordinates are pixel centres, the CRS is attached (rioxarray), no-data is NaN,
  and stackstac's object-dtype coordinates are dropped so the cube goes to Zarr.

Per time step the cube records the offset applied (``radiometric_offset``, in
reflectance; NaN when the day's items differ) and, in ``attrs["xs2mask_radiometry"]``,
each item's decision by solar day.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .bands import canonical_band
from .checks import check_bbox, check_datetime, check_integer, check_real
from .exceptions import BandError, InputError, StacError
from .redaction import describe, redact_url

Signer = Callable[[Any], Any]
_RETRY_STATUS = (429, 500, 502, 503, 504)
_PC_HOSTS = (".blob.core.windows.net",)


def search(
    url: str,
    *,
    collections: str | Sequence[str],
    bbox: Sequence[float] | None = None,
    intersects: dict | None = None,
    datetime: str | None = None,
    query: dict | None = None,
    max_items: int | None = None,
    sign: bool | Signer | None = None,
    retries: int = 3,
    timeout: float = 30.0,
):
    """Search a STAC API for Sentinel-2 items.

    Parameters
    ----------
    url
        STAC API root, e.g. ``https://planetarycomputer.microsoft.com/api/stac/v1``
        or ``https://earth-search.aws.element84.com/v1``.
    collections, bbox, intersects, datetime, query, max_items
        As in :meth:`pystac_client.Client.search` (``bbox`` in lon/lat,
        ``datetime`` like ``"2024-06-01/2024-06-30"``).
    sign
        ``None`` signs Planetary Computer hrefs when the ``planetary-computer``
        package is installed; ``False`` never signs; a callable ``item -> item``
        signs with it. Signatures expire after about 45 minutes: long jobs
        re-sign per slab (:func:`resign`).
    retries
        Retries of a failing request (HTTP 429/5xx, connection errors, timeouts), with
        exponential back-off, before :class:`~xs2mask.exceptions.StacError`.
    timeout
        Seconds for each answer, from sending the request to its last byte: a server that
        trickles its answer is cut off as surely as a silent one. An answer cut off before
        its headers are in is retried like a failure; one cut off in its body is not (requests
        reads the body after urllib3's retries are over).

    Returns
    -------
    pystac.ItemCollection
        Possibly empty: :func:`load` explains what to change when nothing matched.

    Raises
    ------
    StacError
        When the API cannot be reached, keeps failing, does not answer in time, or answers
        what a STAC API does not (not JSON, an HTML page, no FeatureCollection, items without
        geometry, bbox, datetime or assets, ``next`` links that go round in circles). The
        message names the URL, with credentials and signatures masked
        (:func:`xs2mask.redaction.redact_url`).

    Examples
    --------
    >>> items = search(  # doctest: +SKIP
    ...     "https://earth-search.aws.element84.com/v1", collections="sentinel-2-l2a",
    ...     bbox=[13.3, 52.4, 13.5, 52.6], datetime="2024-06-01/2024-06-30",
    ... )

    Arguments are checked before any request is sent:

    >>> search("https://earth-search.aws.element84.com/v1", collections="sentinel-2-l2a",
    ...        datetime="June 2024")
    Traceback (most recent call last):
    ...
    xs2mask.exceptions.InputError: datetime 'June 2024' is not a date or a date range; write e.g. ...
    """
    import pystac
    import pystac_client
    import requests
    from pystac_client.errors import ClientTypeError
    from pystac_client.exceptions import APIError
    from pystac_client.warnings import DoesNotConformTo
    from urllib3.util.retry import Retry

    retry = Retry(
        total=retries,
        backoff_factor=0.5,
        status_forcelist=_RETRY_STATUS,
        allowed_methods=None,  # POST searches are idempotent too
        raise_on_status=False,
    )
    collections = [collections] if isinstance(collections, str) else list(collections)
    # Checked here, before any request: pystac-client would raise a bare Exception for a bad date.
    if datetime is not None:
        datetime = check_datetime(datetime)
    if bbox is not None:
        bbox = check_bbox(bbox)
    retries = check_integer("retries", retries, 0, what="a whole number >= 0")
    timeout = check_real("timeout", timeout, lambda v: v > 0, "a positive number of seconds")
    stac_io = _checked_stac_io()(url, max_retries=retry, timeout=timeout)
    failure: Exception
    try:
        # timeout again: Client.open hands its own (default None) to the IO, replacing the one given.
        client = pystac_client.Client.open(url, stac_io=stac_io, modifier=_signer(sign), timeout=timeout)
        found = client.search(
            collections=collections,
            bbox=bbox,
            intersects=intersects,
            datetime=datetime,
            query=query,
            max_items=max_items,
        ).item_collection()
    except StacError:
        raise
    except (requests.exceptions.RequestException, APIError, OSError) as err:
        failure, not_stac = err, False
    except (pystac.errors.STACTypeError, pystac.STACError, ClientTypeError, DoesNotConformTo) as err:
        failure, not_stac = err, True
    else:
        return found
    # Raised out here, with no chain: the library errors hold the URL and its secrets.
    raise _search_error(url, failure, not_stac=not_stac, retries=retries, timeout=timeout)


def resign(items: Iterable[Any], sign: bool | Signer | None = None) -> list:
    """Return copies of ``items`` with freshly signed hrefs (old signatures stripped first).

    Examples
    --------
    >>> import pystac, datetime as dt
    >>> item = pystac.Item("a", None, None, dt.datetime(2024, 1, 1), {})
    >>> item.add_asset("B04", pystac.Asset("https://x.blob.core.windows.net/b04.tif?se=old&sig=1"))
    >>> resign([item], sign=False)[0].assets["B04"].href
    'https://x.blob.core.windows.net/b04.tif'
    """
    signer = _signer(sign)
    fresh = []
    for item in items:
        item = item.clone()
        for asset in item.assets.values():
            if any(h in asset.href for h in _PC_HOSTS):
                asset.href = asset.href.split("?", 1)[0]
        if signer is not None:
            item = signer(item) or item
        fresh.append(item)
    return fresh


def load(
    items: Iterable[Any],
    *,
    bands: Sequence[str] | None = None,
    resolution: float = 10,
    epsg: int | None = None,
    bounds: Sequence[float] | None = None,
    bounds_latlon: Sequence[float] | None = None,
    chunks: int | None = None,
    harmonize: bool | str = "auto",
    model: str = "default",
    read_retries: int = 3,
    read_timeout: float = 30.0,
) -> xr.DataArray:
    """Load items as a lazy ``(time, band, y, x)`` float32 reflectance cube.

    Parameters
    ----------
    items
        pystac Items (an ItemCollection, a list, or dicts) of Sentinel-2 L1C/L2A.
    bands
        Bands in any naming (``"B04"``, ``"red"``). ``None``: the bands ``model`` needs.
    resolution
        Output pixel size in metres of the (UTM) grid.
    epsg
        Output CRS; default the most common CRS of the items (others are reprojected).
    bounds, bounds_latlon
        Output extent in the output CRS or in lon/lat; default the union of the
        items' footprints. Grids snap to multiples of ``resolution`` like
        Sentinel-2 tiles do, so neighbouring tiles share one grid.
    chunks
        Dask chunk size in pixels along y and x (default 2048; one time step and all
        bands per chunk).
    harmonize
        ``"auto"`` decides the baseline-04.00 offset per item from its metadata
        (falling back to the date, with a warning); ``True`` requires metadata
        evidence; ``False`` never applies an offset (DN / 10000).
    model
        Model whose bands are loaded when ``bands`` is None.
    read_retries, read_timeout
        Retries of a failing read (HTTP 5xx, timeouts, truncated answers), with
        exponential back-off, and seconds per HTTP request; then the computation
        raises :class:`~xs2mask.exceptions.ReadError` naming the item and asset.
        HTTP 404 fails at once. See :mod:`xs2mask.reading`.

    Returns
    -------
    xarray.DataArray
        Reflectance with NaN no-data, pixel-centre coordinates, CRS attached.

    Examples
    --------
    >>> cube = load(items, bounds_latlon=[13.3, 52.4, 13.5, 52.6])  # doctest: +SKIP
    >>> masks = cube.s2mask.predict()  # doctest: +SKIP

    A search that matched nothing is told with what to change:

    >>> load([])
    Traceback (most recent call last):
    ...
    xs2mask.exceptions.StacError: no items to load: the search matched nothing. Widen the bbox or ...
    """
    import dask.array
    import rioxarray  # noqa: F401  (registers .rio)
    import stackstac

    from .radiometry import item_radiometry
    from .reading import ReadPolicy, read_env, reader

    chunks = chunks or 2048
    items = [_as_item(i) for i in items]
    if not items:
        raise StacError(
            "no items to load: the search matched nothing. Widen the bbox or the dates, "
            "check the collection name, or raise the cloud-cover limit."
        )
    if harmonize not in ("auto", True, False):
        raise InputError(f"harmonize must be 'auto', True or False, got {harmonize!r}")
    wanted = _wanted_bands(bands, model, items)
    days = group_days(items)
    items = [item for members in days.values() for item in members]  # stacked in mosaic order
    epsg = epsg or _common_epsg(items)
    policy = ReadPolicy(retries=read_retries, timeout=read_timeout)

    renamed, scales, offsets, records, names = [], [], [], {}, {}
    for item in items:
        keys = _asset_keys(item, wanted)
        decisions = {b: item_radiometry(item, keys[b], harmonize=harmonize) for b in wanted}
        renamed.append(_renamed(item, keys))
        names.update({item.assets[key].href: (item.id, key) for key in keys.values()})
        scales.append([decisions[b].scale for b in wanted])
        offsets.append([decisions[b].offset for b in wanted])
        records[item.id] = sorted({d.source for d in decisions.values()})

    stack = stackstac.stack(
        renamed,
        assets=list(wanted),
        epsg=epsg,
        resolution=resolution,
        bounds=bounds,
        bounds_latlon=bounds_latlon,
        chunksize=(1, -1, chunks, chunks),
        dtype=np.dtype("float32"),
        fill_value=np.float32(np.nan),
        rescale=False,
        sortby_date=False,
        xy_coords="center",
        properties=False,
        band_coords=False,
        reader=reader(policy, names),
        gdal_env=read_env(policy),
        # stackstac's default reads a 404 as no-data with a mere warning: masks of missing pixels.
        errors_as_nodata=(),
    )
    # stackstac leaves out the items that miss the bounds: each day mosaics the items left, and a day
    # with none left is no-data.
    position = {item.id: i for i, item in enumerate(items)}
    kept = [position[str(i)] for i in stack["id"].values] if stack.sizes["band"] else []
    left = {items[i].id for i in kept}
    nodata = xr.DataArray(
        dask.array.full(
            (len(wanted), stack.sizes["y"], stack.sizes["x"]), np.nan, dtype=np.float32,
            chunks=(len(wanted), chunks, chunks),
        ),
        dims=("band", "y", "x"),
        coords={"band": list(wanted), "y": stack["y"].values, "x": stack["x"].values},
    )  # fmt: skip
    counts = [sum(m.id in left for m in members) for members in days.values()]
    layers: list[xr.DataArray] = [nodata] * len(days)
    if kept:
        # (DN + offset_dn) / quantification, as ESA defines it: exact in float32, unlike DN * 1e-4.
        quantification = 1 / np.asarray(scales, np.float64)[kept]
        offset_dn = np.asarray(offsets, np.float64)[kept] * quantification
        refl = stack.copy(
            data=stack.data.map_blocks(
                _dn_to_reflectance,
                offset_dn.astype(np.float32),
                quantification.astype(np.float32),
                dtype=np.float32,
                token="xs2mask-reflectance",
            )
        )
        # stackstac's per-item coordinates (object dtype among them) cannot follow the mosaic nor go to Zarr.
        refl = refl.drop_vars([n for n in refl.coords if n not in ("y", "x")]).assign_coords(
            band=list(wanted)
        )
        layers = _day_layers(refl, counts, nodata)
    cube = _mosaic_days(layers, days, _per_item_offset(offsets))
    by_day = {str(day): {i.id: records[i.id] for i in members} for day, members in days.items()}
    cube.attrs = {"xs2mask_radiometry": json.dumps(by_day, sort_keys=True)}
    cube.name = "reflectance"
    return cube.rio.write_crs(epsg)


# --------------------------------------------------------------------------- helpers


def _search_error(url: str, err: BaseException, *, not_stac: bool, retries: int, timeout: float) -> StacError:
    from .deadline import exceeded

    where = redact_url(url)
    if exceeded(err):
        return StacError(
            f"the STAC API at {where} did not answer in full within {timeout:g} s (timeout=, per answer; "
            f"retries={retries}). The server is overloaded or trickles its answer: retry later, "
            "raise timeout=, or use another provider."
        )
    if not_stac:
        return StacError(
            f"{where} is not a STAC API with item search: {describe(err)}. Pass the API root (e.g. "
            "https://earth-search.aws.element84.com/v1), not a collection, a static catalogue or a web page."
        )
    return StacError(
        f"the STAC API at {where} failed after {retries} retries: {describe(err)}. "
        "Check the URL (it must be the API root), your network, and the provider's status page."
    )


#: Pages followed for one search at most: far more than any real search needs (10 000 pages of
#: at least one item), and a bound on an API whose ``next`` links never end.
_MAX_PAGES = 10_000


def _malformed(url: str, problem: str) -> StacError:
    return StacError(
        f"the STAC API answered {redact_url(url)} with {problem}. Check that the URL is the API root "
        "(not a web page or a login page) and that the provider follows the STAC API specification; "
        "if it does, report the answer to the provider."
    )


@functools.cache
def _checked_stac_io() -> type:
    """pystac-client's IO with a deadline per answer, and every answer checked before pystac sees it."""
    from pystac.link import Link
    from pystac_client.stac_api_io import StacApiIO

    from . import deadline

    class CheckedStacApiIO(StacApiIO):
        timeout: float  # xs2mask gives one number of seconds, never a (connect, read) pair

        def __init__(self, root: str, *, max_retries: Any, timeout: float) -> None:
            super().__init__(max_retries=None, timeout=timeout)
            self.session = deadline.session(max_retries)
            self.root = root

        def request(self, href: str, *args: Any, **kwargs: Any) -> str:
            with deadline.answers_within(self.timeout):
                return super().request(href, *args, **kwargs)

        def read_json(self, source: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
            href = source.href if isinstance(source, Link) else str(source)
            text = self.read_text(source, *args, **kwargs)
            doc, problem = _parse_json(text)
            if problem is not None:
                raise _malformed(href, problem)
            return doc

        def get_pages(self, url: str, method: str | None = None, parameters: dict[str, Any] | None = None):
            source: Any = url
            seen_requests: set[str] = set()
            seen_items: set[str] = set()
            while True:
                href = source.href if isinstance(source, Link) else source
                key = json.dumps([href, method, parameters], sort_keys=True, default=str)
                if key in seen_requests:
                    raise _malformed(href, "a 'next' link to a page it sent before (a paging loop)")
                if len(seen_requests) >= _MAX_PAGES:
                    raise _malformed(href, f"more than {_MAX_PAGES} pages (a 'next' link that never ends)")
                seen_requests.add(key)
                if isinstance(source, Link):
                    page = self.read_json(source, parameters=parameters)
                else:
                    page = self.read_json(source, method=method, parameters=parameters)
                problem = _page_problem(page)
                if problem is not None:
                    raise _malformed(href, problem)
                ids = {f["id"] for f in page["features"]}
                if not ids:
                    return
                if ids <= seen_items:
                    raise _malformed(href, "the same items as a page before (a paging loop)")
                seen_items |= ids
                yield page
                link = next((li for li in page.get("links") or [] if li.get("rel") == "next"), None)
                if link is None:
                    return
                source = Link.from_dict(link)
                # pystac-client's way: a POST next link carries its own body (merged or not)
                method = link.get("method", "GET")
                if method == "POST":
                    body = link.get("body") or {}
                    parameters = {**(parameters or {}), **body} if link.get("merge") else body

    return CheckedStacApiIO


def _parse_json(text: str) -> tuple[dict[str, Any], str | None]:
    """The JSON object in ``text``, or what else it is."""
    try:
        doc = json.loads(text)
    except ValueError:
        start = text.lstrip()[:200].lower()
        if start.startswith(("<!doctype html", "<html")) or "<html" in start:
            return {}, "an HTML page instead of JSON"
        return {}, f"text that is not JSON: {redact_url(repr(text[:60]))}"
    if not isinstance(doc, dict):
        kind = {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(doc), "number")
        return {}, f"a JSON {kind} instead of an object"
    return doc, None


def _page_problem(page: dict[str, Any]) -> str | None:
    """What makes an item search page unusable, or None."""
    if page.get("type") != "FeatureCollection":
        return f"a JSON object of type {page.get('type')!r} instead of a FeatureCollection"
    features = page.get("features")
    if not isinstance(features, list):
        return "a FeatureCollection without a list of features"
    links = page.get("links", [])
    if not isinstance(links, list) or not all(isinstance(li, dict) and "href" in li for li in links):
        return "a FeatureCollection whose links are not a list of objects with an href"
    for n, feature in enumerate(features):
        problem = _feature_problem(feature)
        if problem is not None:
            name = feature.get("id") if isinstance(feature, dict) else None
            which = f"{n} ({name})" if isinstance(name, str) else str(n)
            return f"a FeatureCollection whose feature {which} {problem}"
    return None


def _feature_problem(feature: Any) -> str | None:
    from pystac.utils import str_to_datetime

    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        return "is not a GeoJSON Feature"
    if not isinstance(feature.get("id"), str) or not feature["id"]:
        return "has no id"
    geometry = feature.get("geometry")
    if not isinstance(geometry, dict) or "type" not in geometry or "coordinates" not in geometry:
        return "has no geometry"
    bbox = feature.get("bbox")
    if (
        not isinstance(bbox, list)
        or len(bbox) not in (4, 6)
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)
    ):
        return "has no bbox of 4 or 6 numbers"
    properties = feature.get("properties")
    when = properties.get("datetime") if isinstance(properties, dict) else None
    try:
        str_to_datetime(when)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return "has no datetime (properties.datetime)"
    assets = feature.get("assets")
    if not isinstance(assets, dict) or not assets:
        return "has no assets"
    if not all(isinstance(a, dict) and isinstance(a.get("href"), str) for a in assets.values()):
        return "has an asset without an href"
    return None


def _signer(sign: bool | Signer | None) -> Signer | None:
    if sign is False:
        return None
    if callable(sign):
        return sign
    try:
        import planetary_computer
    except ImportError:
        if sign is True:
            raise InputError(
                "sign=True needs the planetary-computer package: pip install 'xs2mask[pc]'"
            ) from None
        return None

    def pc_sign(obj):
        # Only Planetary Computer blobs need a token; signing others would call its API for nothing.
        text = json.dumps(obj if isinstance(obj, dict) else obj.to_dict(), default=str)
        if sign is True or any(h in text for h in _PC_HOSTS):
            return planetary_computer.sign(obj)
        return obj

    return pc_sign


def _as_item(item: Any):
    import pystac

    if isinstance(item, pystac.Item):
        return item
    if isinstance(item, dict):
        return pystac.Item.from_dict(item)
    raise InputError(f"expected pystac Items or item dicts, got {type(item).__name__}")


def resolve_model(items: Iterable[Any], model: str = "default") -> str:
    """The model that masks these items: ``model`` itself, or for ``"default"`` the best installed
    model whose bands every item has (L1C variants first when the items carry B10, as L1C does).

    Examples
    --------
    >>> import pystac, datetime as dt
    >>> item = pystac.Item("a", None, None, dt.datetime(2024, 1, 1), {})
    >>> for band in ("B02", "B03", "B04", "B08"):
    ...     item.add_asset(band, pystac.Asset(f"{band}.tif"))
    >>> resolve_model([item], "xs2mask-4b")
    'xs2mask-4b'
    """
    from .models import registry

    if model != "default":
        return model
    found: set[str] | None = None
    for item in map(_as_item, items):
        bands = set(_band_assets(item))
        found = bands if found is None else found & bands
    return registry.resolve_default(sorted(found or ())).name


def _wanted_bands(bands: Sequence[str] | None, model: str, items: Sequence[Any]) -> tuple[str, ...]:
    if bands is None:
        from .models import registry

        return tuple(registry.get(resolve_model(items, model)).bands)
    if isinstance(bands, str):
        bands = [bands]
    wanted = tuple(canonical_band(b) for b in bands)
    if len(set(wanted)) != len(wanted):
        raise BandError(f"bands {list(bands)} name a band twice")
    return wanted


# A band at one of the resolutions ESA resamples it to, e.g. "B02_10m", "B02_20m", "B8A_20m": the asset
# keys of the Copernicus Data Space Ecosystem's STAC.
_AT_RESOLUTION = re.compile(r"(?i)(B\d{2}|B8A)_(\d+)m")


def _band_assets(item) -> dict[str, list[str]]:
    """The item's asset keys of each band, best first: COG before JPEG2000, and of a band offered at
    several resolutions ("B02_10m", "B02_20m"), the finest (its native one: the others are resampled)."""
    found: dict[str, list[tuple[int, bool, str]]] = {}
    for key in item.assets:
        resampled = _AT_RESOLUTION.fullmatch(key)
        try:
            band = canonical_band(resampled.group(1) if resampled else key)
        except BandError:
            continue
        metres = int(resampled.group(2)) if resampled else 0
        found.setdefault(band, []).append((metres, key.endswith("-jp2"), key))
    return {band: [key for *_, key in sorted(keys)] for band, keys in found.items()}


def _asset_keys(item, wanted: Sequence[str]) -> dict[str, str]:
    """Asset key of each wanted band in this item (:func:`_band_assets`' best)."""
    found = _band_assets(item)
    keys = {}
    for band in wanted:
        candidates = found.get(band, [])
        if not candidates:
            raise BandError(
                f"item {item.id} has no asset for band {band} (its assets: {', '.join(item.assets)}). "
                "Choose a collection with that band (B10 is L1C only), or a model that does not need it "
                "(model=; `xs2mask models` lists the bands of each)."
            )
        keys[band] = candidates[0]
    return keys


def _renamed(item, keys: dict[str, str]) -> dict:
    """A copy of ``item`` (as a dict) whose assets are the wanted bands under their ESA names.

    Raster scale/offset are removed (xs2mask applies radiometry itself) and the
    EPSG code is restored where pystac migrated it to ``proj:code``, which
    stackstac 0.5 does not read.
    """
    clone = item.clone()
    epsg = _item_epsg(item)
    clone.assets = {}
    for band, key in keys.items():
        asset = item.assets[key].clone()
        asset.extra_fields.pop("raster:bands", None)
        asset.extra_fields.pop("bands", None)
        code = asset.extra_fields.pop("proj:code", None)
        if code and "proj:epsg" not in asset.extra_fields:
            asset.extra_fields["proj:epsg"] = _epsg_of(code)
        clone.add_asset(band, asset)
    clone.properties.pop("proj:code", None)
    if epsg is not None:
        clone.properties["proj:epsg"] = epsg
    # Links are dropped: serialising them would try to resolve the catalogue root over the network.
    clone.clear_links()
    return clone.to_dict(transform_hrefs=False)


def _epsg_of(code: Any) -> int | None:
    if isinstance(code, int):
        return code
    match = re.fullmatch(r"EPSG:(\d+)", str(code))
    return int(match.group(1)) if match else None


def _item_epsg(item) -> int | None:
    props = item.properties
    return _epsg_of(props.get("proj:epsg")) or _epsg_of(props.get("proj:code"))


def _common_epsg(items: Sequence[Any]) -> int:
    codes = Counter(e for e in (_item_epsg(i) for i in items) if e)
    if not codes:
        raise InputError(
            "the items carry no projection (proj:epsg / proj:code); pass epsg= (e.g. 32633) to load()"
        )
    return codes.most_common(1)[0][0]


def _dn_to_reflectance(
    block: np.ndarray, offset_dn: np.ndarray, quantification: np.ndarray, block_info=None
) -> np.ndarray:
    """``(DN + offset_dn) / quantification`` of one item's chunk, DN 0 (no-data) to NaN.

    In place: the chunk is a fresh read that nothing else holds, and each full-size temporary
    of the same steps written as xarray arithmetic costs a pass over memory (measured: a third
    of the read's CPU time).
    """
    items = slice(*block_info[0]["array-location"][0])
    if not block.flags.writeable:  # stackstac's broadcast fill for a window no item covers
        block = block.copy()
    block[block == 0] = np.nan
    block += offset_dn[items, :, None, None]
    block /= quantification[items, :, None, None]
    return block


def _per_item_offset(offsets: list[list[float]]) -> np.ndarray:
    """One offset per item when all its bands share it (always so far), else NaN."""
    rows = np.asarray(offsets, np.float64)
    return np.where(np.isclose(rows, rows[:, :1]).all(axis=1), rows[:, 0], np.nan).astype(np.float32)


def _day_layers(refl: xr.DataArray, counts: list[int], nodata: xr.DataArray) -> list[xr.DataArray]:
    """Each day's items (``counts[i]`` consecutive time steps of ``refl``) mosaicked; ``nodata``: none."""
    layers, start = [], 0
    for count in counts:
        layers.append(_first_valid(refl.isel(time=slice(start, start + count))) if count else nodata)
        start += count
    return layers


def _mosaic_days(
    layers: list[xr.DataArray], days: dict[np.datetime64, list], offsets: np.ndarray
) -> xr.DataArray:
    """One time step per day, its offset recorded (NaN when the day's items differ)."""
    day_offsets, start = [], 0
    for members in days.values():
        stop = start + len(members)
        same = np.isclose(offsets[start:stop], offsets[start]).all()
        day_offsets.append(offsets[start] if same else np.nan)
        start = stop
    times = pd.Index(np.array(list(days), "datetime64[ns]"), name="time")
    cube = xr.concat(layers, dim=times, coords="minimal", compat="override", join="override")
    return cube.assign_coords(radiometric_offset=("time", np.asarray(day_offsets, np.float32)))


def _first_valid(part: xr.DataArray) -> xr.DataArray:
    """The first non-NaN pixel along ``time`` (the first item on top): ``stackstac.mosaic(reverse=True)``.

    One task per chunk that takes the items' chunks together and fills the first in place: what
    stackstac's tree reduction spends on copies (``np.take`` of each item, a ``where`` per pair) was
    a quarter of the read's CPU time.
    """
    import dask.array as da

    first = part.isel(time=0)
    if part.sizes["time"] == 1:
        return first
    layers = [part.data[i] for i in range(part.sizes["time"])]
    return first.copy(data=da.map_blocks(_fill_from, *layers, dtype=part.dtype, token="xs2mask-mosaic"))


def _fill_from(top: np.ndarray, *below: np.ndarray) -> np.ndarray:
    # `top` is the item's fresh reflectance chunk, held by nothing else (see _dn_to_reflectance)
    out = top if top.flags.writeable else top.copy()
    for layer in below:
        holes = np.isnan(out)
        if not holes.any():
            break
        np.copyto(out, layer, where=holes)
    return out


# --------------------------------------------------------------------------- solar days and duplicates

_TILE = re.compile(r"(\d{1,2})([C-HJ-NP-X])([A-HJ-NP-Z]{2})")
# Tile in a product name, e.g. S2B_MSIL2A_20250731T131909_N0511_R095_T20EPT_20250731T143919.SAFE.
_NAME_TILE = re.compile(r"_T(\d{2}[A-Z]{3})_")
# Platform and datatake start: GS2B_20250731T131909_043879_N05.11 or S2B_MSIL2A_20250731T131909_...
_DATATAKE = re.compile(r"G?(S2[A-Z])_(?:MSIL\w{2}_)?(\d{8}T\d{6})")
# The newest product of a scene (generation time) is the last field of its name.
_GENERATED = re.compile(r"_(\d{8}T\d{6})(?:\.SAFE)?$")


def group_days(items: Iterable[Any]) -> dict[np.datetime64, list]:
    """Group Sentinel-2 items into solar days, keeping the newest of reprocessed duplicates.

    This is how :func:`load` builds its time axis (one step per key, in this order, each
    the mosaic of its items), and how :func:`xs2mask.pipeline.mask_stac` reloads a day.

    * **Solar day**: the local date at the scene, ``datetime`` (UTC) + longitude / 15 hours,
      the longitude being the centre of the item's footprint (its geometry, else its bbox;
      both may cross the antimeridian). One overpass is one day wherever it crosses UTC
      midnight or UTM zones; an item with neither geometry nor bbox falls back to its UTC date.
    * **Duplicates**: items of one scene (same MGRS tile and datatake: ``s2:mgrs_tile``,
      ``grid:code`` or ``mgrs:*``; ``s2:datatake_id`` or ``s2:product_uri``; else platform
      and ``datetime``) reprocessed or served by several collections. The one kept has the
      highest ``s2:processing_baseline``, then the latest ``s2:generation_time`` (or product
      name), then the latest ``created``, then the greatest id. An item listed twice is kept
      once.
    * **Mosaic order**: within a day, by ``datetime`` then id; the first item's valid pixel
      wins where items overlap (tiles of one overpass hold the same pixels there).

    Days hold at least one item: a day that filtering (e.g. by cloud cover) emptied is absent.

    Parameters
    ----------
    items
        pystac Items or item dicts.

    Returns
    -------
    dict
        Solar day (``numpy.datetime64``, unit ``D``) -> its items, days in increasing order.

    Examples
    --------
    >>> import pystac, datetime as dt
    >>> def item(id, lon, when):  # two tiles of one overpass over Fiji, around UTC midnight
    ...     return pystac.Item(id, None, [lon - 0.5, -17, lon + 0.5, -16], when, {})
    >>> days = group_days([item("b", 178.5, dt.datetime(2024, 1, 1, 22, 41)),
    ...                    item("a", 179.5, dt.datetime(2024, 1, 1, 22, 40))])
    >>> {str(day): [i.id for i in members] for day, members in days.items()}
    {'2024-01-02': ['a', 'b']}
    """
    scenes: dict[tuple[str, ...], Any] = {}
    for item in map(_as_item, items):
        key = _scene(item)
        if key not in scenes or _version(item) > _version(scenes[key]):
            scenes[key] = item
    days: dict[np.datetime64, list] = {}
    for item in sorted(scenes.values(), key=lambda i: (_utc(_acquired(i)), i.id)):
        days.setdefault(_solar_day(item), []).append(item)
    return dict(sorted(days.items()))


def _acquired(item) -> _dt.datetime:
    when = item.datetime or item.common_metadata.start_datetime
    if when is None:
        raise InputError(f"item {item.id} has no datetime nor start_datetime; give it one to load it")
    return when


def _utc(when: _dt.datetime) -> _dt.datetime:
    """Naive UTC (STAC datetimes are UTC; a naive one is taken as UTC)."""
    return when.astimezone(_dt.timezone.utc).replace(tzinfo=None) if when.tzinfo else when


def _solar_day(item) -> np.datetime64:
    # 240 s of local time per degree of longitude, as odc-stac's groupby="solar_day".
    local = _utc(_acquired(item)) + _dt.timedelta(seconds=240 * _centre_lon(item))
    return np.datetime64(local.date(), "D")


def _centre_lon(item) -> float:
    """Circular mean of the footprint's longitudes: right across the antimeridian too."""
    lons: list[float] = []
    _collect_lons((item.geometry or {}).get("coordinates", []), lons)
    if not lons and item.bbox:
        lons = [item.bbox[0], item.bbox[len(item.bbox) // 2]]
    if not lons:
        return 0.0
    rad = np.radians(lons)
    return float(np.degrees(np.arctan2(np.sin(rad).mean(), np.cos(rad).mean())))


def _collect_lons(coords: Any, out: list[float]) -> None:
    if coords and isinstance(coords[0], (int, float)):
        out.append(float(coords[0]))
        return
    for part in coords:
        _collect_lons(part, out)


def _scene(item) -> tuple[str, ...]:
    """Tile and datatake of the item: equal for every product of one scene."""
    props = item.properties
    tile = _tile(props)
    if tile is None:
        return ("id", item.id)
    for text in (props.get("s2:datatake_id"), props.get("s2:product_uri")):
        match = _DATATAKE.match(str(text or ""))
        if match:
            return (tile, *match.groups())
    platform = re.sub(r"(?i)^sentinel-?2", "S2", str(props.get("platform", ""))).upper()
    return (tile, platform, _utc(_acquired(item)).isoformat(timespec="seconds"))


def _tile(props: dict[str, Any]) -> str | None:
    mgrs = "".join(str(props.get(k, "")) for k in ("mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square"))
    name = _NAME_TILE.search(str(props.get("s2:product_uri", "")))
    candidates = (
        props.get("s2:mgrs_tile"),
        str(props.get("grid:code", "")).removeprefix("MGRS-"),
        mgrs,
        name.group(1) if name else None,
    )
    for text in candidates:
        match = _TILE.fullmatch(str(text or "").upper())
        if match:
            return f"{int(match.group(1)):02d}{match.group(2)}{match.group(3)}"
    return None


def _version(item) -> tuple:
    """Sort key of one scene's products: the greatest is the newest processing."""
    from .radiometry import _parse_baseline, baseline_from_name

    props = item.properties
    uri = str(props.get("s2:product_uri", "")).rstrip("/")
    baseline = props.get("s2:processing_baseline") or baseline_from_name(uri)
    try:
        processing = _parse_baseline(baseline) if baseline else (-1, -1)
    except InputError:
        processing = (-1, -1)
    generated = _timestamp(props.get("s2:generation_time"))
    if generated is None and (match := _GENERATED.search(uri)):
        generated = _dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%S")
    created = _timestamp(props.get("created"))
    never = _dt.datetime.min
    return (processing, generated or never, created or never, item.id)


def _timestamp(value: Any) -> _dt.datetime | None:
    from pystac.utils import str_to_datetime

    if not value:
        return None
    try:
        return _utc(str_to_datetime(str(value)))
    except ValueError:
        return None
