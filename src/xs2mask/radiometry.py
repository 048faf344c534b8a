"""Sentinel-2 radiometry: from digital numbers (DN) to reflectance, decided per item.

Sentinel-2 products store reflectance as 16-bit DN. Since processing baseline 04.00 (products
generated from 25 January 2022, and every Collection-1 reprocessed product whatever its acquisition
date) the DN carry an additive offset::

    reflectance = (DN + OFFSET) / QUANTIFICATION        OFFSET = -1000, QUANTIFICATION = 10000

``OFFSET`` is ``RADIO_ADD_OFFSET`` (L1C, ``MTD_MSIL1C.xml``) or ``BOA_ADD_OFFSET`` (L2A,
``MTD_MSIL2A.xml``), given per band. Older products: ``reflectance = DN / 10000``. In every product
DN 0 means no data; it becomes NaN. Saturated clouds may exceed 10000 DN (reflectance > 1): that is
not an error and is kept.

A :class:`Radiometry` holds ``scale`` (reflectance per DN, normally 1e-4) and ``offset`` (reflectance
added after scaling: -0.1 for raw DN of baseline >= 04.00, else 0.0) plus ``source``, a one-line
reason that goes into the output's attributes so that every result says how it was calibrated.

Decision rules of :func:`item_radiometry`, for one asset of one STAC item, first match wins:

1. ``harmonize=False``: DN / 10000, no offset, whatever the metadata says.
2. Earth Search flag ``earthsearch:boa_offset_applied`` (older name ``sentinel:boa_offset_applied``)
   is ``true`` and the asset is a COG (not a ``*-jp2`` asset, not a ``.jp2`` href): Element84 already
   removed the offset from the COG pixels, so offset 0 -- even though the asset's ``raster:bands``
   still says ``offset: -0.1`` (known Earth Search quirk, Element84/earth-search#66). The ``*-jp2``
   assets of the same item are ESA's original files and fall through to rule 3.
3. Raster metadata of the asset: ``raster:bands[0].scale/offset`` (STAC 1.0), or
   ``bands[0]["raster:scale"/"raster:offset"]`` / asset-level ``raster:scale/offset`` (STAC 1.1).
   The offset is in reflectance units (-0.1). Used only when an offset is given.
4. Processing baseline: property ``s2:processing_baseline`` (older ``sentinel:processing_baseline``),
   else parsed from the product name (``s2:product_uri``, ``sentinel:product_id``, ``s2:granule_id``,
   ``s2:datatake_id``, the item id: ``..._N0400_...``). ``>= 04.00`` means offset -0.1.
   Planetary Computer items are decided here (they carry no raster extension).
5. Only with ``harmonize="auto"``: the acquisition date (``>= 2022-01-25`` means offset -0.1), with a
   :class:`~xs2mask.exceptions.RadiometryWarning`, because reprocessed older products also carry the
   offset. ``harmonize=True`` refuses to guess and raises :class:`~xs2mask.exceptions.InputError`.

Provider metadata is sometimes wrong (Earth Search issue #71: ``boa_offset_applied: false`` on COGs
whose offset was in fact removed). Applying the offset twice shifts every pixel by -0.1, so a large
share of clearly negative reflectance betrays it: :func:`negative_fraction` measures that share
lazily, :func:`check_reflectance` turns it into a warning that names the item and the fix.

Local ``.SAFE`` products are read with :func:`product_radiometry`, which takes the quantification and
per-band offsets straight from the product's XML.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, SupportsFloat

import numpy as np
import xarray as xr

from .bands import BAND_NAMES, canonical_band
from .exceptions import BandError, InputError, RadiometryWarning

__all__ = [
    "OFFSET_DATE",
    "Radiometry",
    "baseline_from_name",
    "baseline_radiometry",
    "check_reflectance",
    "item_radiometry",
    "negative_fraction",
    "product_radiometry",
]

#: First day of processing baseline 04.00 (radiometric offset of -1000 DN).
OFFSET_DATE = _dt.date(2022, 1, 25)
_OFFSET_BASELINE = (4, 0)
_NO_OFFSET_SOURCE = "harmonize=False: DN/10000, no offset"

# Attributes that describe the DN encoding and are wrong once the values are reflectance.
_STALE_ATTRS = ("scale_factor", "add_offset", "scale", "offset", "scales", "offsets", "_FillValue", "nodata")


def _snap(value: float) -> float:
    """Round to the nearest integer when within float noise of it (1/1e-4 -> 10000.000000000002)."""
    nearest = round(value)
    if nearest != 0 and abs(value - nearest) <= 1e-9 * abs(nearest):
        return float(nearest)
    return float(value)


def _fmt(value: float) -> str:
    """Short number for messages: -1000, 0.0001, -0.1."""
    return f"{value:g}"


@dataclass(frozen=True)
class Radiometry:
    """How to turn one asset's DN into reflectance: ``reflectance = DN * scale + offset``.

    Attributes
    ----------
    scale : float
        Reflectance per DN, normally ``1e-4``.
    offset : float
        Reflectance added after scaling: ``-0.1`` for raw DN of baseline >= 04.00, else ``0.0``.
    source : str
        Short human-readable reason for the decision; record it in the output's attributes.

    Examples
    --------
    >>> import numpy as np
    >>> r = Radiometry(1e-4, -0.1, "example")
    >>> r.offset_dn
    -1000.0
    >>> r.apply(np.array([0, 1000, 3500], dtype="uint16"))
    array([ nan, 0.  , 0.25], dtype=float32)
    """

    scale: float
    offset: float
    source: str

    def __post_init__(self) -> None:
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise InputError(f"Radiometry scale must be a positive number, got {self.scale!r}")
        if not math.isfinite(self.offset):
            raise InputError(f"Radiometry offset must be a finite number, got {self.offset!r}")

    @property
    def offset_dn(self) -> float:
        """The offset in DN units (``offset / scale``), e.g. ``-1000.0``."""
        return _snap(self.offset / self.scale) if self.offset else 0.0

    def apply(self, dn: Any) -> Any:
        """Convert DN to float32 reflectance; DN 0 (no data) and NaN become NaN.

        Computed as ``(DN + offset_dn) / (1 / scale)`` in float32, which reproduces ESA's
        ``(DN + RADIO_ADD_OFFSET) / QUANTIFICATION_VALUE`` to the last bit for integer DN.

        Parameters
        ----------
        dn
            numpy array, dask array or :class:`xarray.DataArray` of DN (any integer or float dtype).
            Dask-backed input stays lazy.

        Returns
        -------
        Same kind as the input, dtype float32. A DataArray keeps its dims, coords and name; its
        attributes are kept except those describing the DN encoding (``scale_factor``,
        ``add_offset``, ``nodata``, ...).

        Examples
        --------
        >>> import numpy as np
        >>> import xarray as xr
        >>> dn = xr.DataArray(np.array([[0, 1500], [11000, 65535]], dtype="uint16"), dims=("y", "x"))
        >>> Radiometry(1e-4, -0.1, "example").apply(dn).values
        array([[   nan, 0.05  ],
               [1.    , 6.4535]], dtype=float32)
        """
        offset = np.float32(self.offset_dn)
        divisor = np.float32(_snap(1.0 / self.scale))
        if isinstance(dn, xr.DataArray):
            x = dn.astype(np.float32)
            # Dividing by the quantification (not multiplying by 1e-4) is what ESA specifies and is
            # exact to the last bit on the ground-truth crop; multiplying is off by up to 3e-8.
            out = ((x + offset) / divisor).where(x != 0)
            out.attrs = {k: v for k, v in dn.attrs.items() if k not in _STALE_ATTRS}
            out.name = dn.name
            return out
        if not hasattr(dn, "astype"):
            dn = np.asarray(dn)
        x = dn.astype(np.float32)
        # np.where dispatches to dask for dask arrays, so the result stays lazy.
        return np.where(x != 0, (x + offset) / divisor, np.float32(np.nan)).astype(np.float32)


# --------------------------------------------------------------------------- baselines

_NAME_BASELINE = re.compile(r"_N(\d{2})\.?(\d{2})(?!\d)")


def _parse_baseline(baseline: object) -> tuple[int, int]:
    text = str(baseline).strip().upper()
    text = text.removeprefix("N")
    m = re.fullmatch(r"(\d{2})(\d{2})", text) or re.fullmatch(r"(\d{1,2})\.(\d{1,2})", text)
    if m is None:
        raise InputError(f"cannot read processing baseline {baseline!r}: expected '04.00', 'N0400' or '4.0'")
    return int(m.group(1)), int(m.group(2))


def baseline_radiometry(
    baseline: str | None, *, quantification: float = 10000.0, offset_dn: float = -1000.0
) -> Radiometry:
    """Radiometry implied by a Sentinel-2 processing baseline.

    Parameters
    ----------
    baseline
        ``"04.00"``, ``"N0400"``, ``"4.0"``, ``"05.11"`` ...
    quantification
        DN per unit reflectance (``QUANTIFICATION_VALUE``), 10000 for every baseline so far.
    offset_dn
        The additive offset in DN used from baseline 04.00 on (``RADIO_ADD_OFFSET``).

    Returns
    -------
    Radiometry
        With ``offset = offset_dn / quantification`` from 04.00 on, else ``offset = 0``.

    Raises
    ------
    InputError
        If the baseline is None or cannot be read.

    Examples
    --------
    >>> baseline_radiometry("05.11").offset
    -0.1
    >>> baseline_radiometry("N0209").offset
    0.0
    >>> baseline_radiometry("4.0").source
    'processing baseline 04.00 >= 04.00'
    """
    if baseline is None:
        raise InputError(
            "processing baseline is None: cannot tell whether the DN carry the 04.00 offset; "
            "pass the baseline (e.g. '04.00') or decide with item_radiometry(..., harmonize=...)"
        )
    major, minor = _parse_baseline(baseline)
    norm = f"{major:02d}.{minor:02d}"
    scale = 1.0 / quantification
    if (major, minor) >= _OFFSET_BASELINE:
        return Radiometry(scale, offset_dn / quantification, f"processing baseline {norm} >= 04.00")
    return Radiometry(scale, 0.0, f"processing baseline {norm} < 04.00")


def baseline_from_name(name: str) -> str | None:
    """Processing baseline from a Sentinel-2 product, granule or datastrip name.

    Parameters
    ----------
    name
        e.g. ``"S2B_MSIL1C_20220615T101559_N0400_R065_T32UPC_20220615T122549.SAFE"`` or a granule id
        ending in ``_N04.00``; a path is fine too.

    Returns
    -------
    str or None
        ``"04.00"``, or None when the name carries no baseline.

    Examples
    --------
    >>> baseline_from_name("S2B_MSIL1C_20220615T101559_N0400_R065_T32UPC_20220615T122549.SAFE")
    '04.00'
    >>> baseline_from_name("S2A_OPER_MSI_L2A_TL_ESRI_20201007T214653_A018417_T60VUK_N02.12")
    '02.12'
    >>> baseline_from_name("S2B_20EPT_20250731_0_L2A") is None
    True
    """
    m = _NAME_BASELINE.search(str(name))
    return f"{m.group(1)}.{m.group(2)}" if m else None


# --------------------------------------------------------------------------- STAC items

_FLAG_KEYS = ("earthsearch:boa_offset_applied", "sentinel:boa_offset_applied")
_BASELINE_KEYS = ("s2:processing_baseline", "sentinel:processing_baseline")
_NAME_KEYS = ("s2:product_uri", "sentinel:product_id", "s2:granule_id", "s2:datatake_id")


def _item_dict(item: Any) -> dict[str, Any]:
    if isinstance(item, Mapping):
        return dict(item)
    to_dict = getattr(item, "to_dict", None)
    if callable(to_dict):
        try:  # pystac: do not resolve hrefs against a root catalog just to read metadata
            return to_dict(include_self_link=False, transform_hrefs=False)
        except TypeError:
            return to_dict()
    raise InputError(f"expected a STAC item (pystac.Item or dict), got {type(item).__name__}")


def _find_asset(d: dict[str, Any], item_id: str, asset_key: str) -> tuple[str, dict[str, Any]]:
    assets = d.get("assets") or {}
    if asset_key in assets:
        return asset_key, assets[asset_key]
    # Accept band aliases ("B04" for Earth Search's "red"), keeping the COG/jp2 flavour asked for.
    want_jp2 = asset_key.lower().endswith("-jp2")
    try:
        wanted = canonical_band(asset_key[:-4] if want_jp2 else asset_key)
    except BandError:
        wanted = None
    if wanted is not None:
        for key, asset in assets.items():
            try:
                band = canonical_band(key)
            except BandError:
                continue
            if band == wanted and key.lower().endswith("-jp2") == want_jp2:
                return key, asset
    have = ", ".join(sorted(assets)) or "none"
    raise InputError(f"item {item_id!r} has no asset {asset_key!r} (assets: {have})")


def _is_jp2(key: str, asset: Mapping[str, Any]) -> bool:
    href = str(asset.get("href", "")).lower().split("?")[0]
    return key.lower().endswith("-jp2") or href.endswith(".jp2") or "jp2" in str(asset.get("type", ""))


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _raster_scale_offset(asset: Mapping[str, Any]) -> tuple[float | None, float | None, str]:
    """(scale, offset, form) of the asset's first band, from any raster-extension form.

    The first form that gives an offset wins; without any offset, the first scale found is returned
    (it still tells the quantification) with offset None.
    """
    forms: list[tuple[Any, str, str, str]] = [
        ((asset.get("raster:bands") or [None])[0], "scale", "offset", "raster:bands"),  # STAC 1.0
        ((asset.get("bands") or [None])[0], "raster:scale", "raster:offset", "bands"),  # STAC 1.1
        (asset, "raster:scale", "raster:offset", "asset raster:"),  # STAC 1.1, shared by all bands
    ]
    first_scale = None
    for obj, skey, okey, form in forms:
        if not isinstance(obj, Mapping):
            continue
        scale, offset = obj.get(skey), obj.get(okey)
        if offset is not None:
            return (float(scale) if scale is not None else None), float(offset), form
        if scale is not None and first_scale is None:
            first_scale = float(scale)
    return first_scale, None, ""


def _item_date(props: Mapping[str, Any]) -> _dt.date | None:
    for key in ("datetime", "start_datetime"):
        value = props.get(key)
        if value:
            try:
                return _dt.date.fromisoformat(str(value)[:10])
            except ValueError:
                continue
    return None


def item_radiometry(item: Any, asset_key: str, *, harmonize: bool | str = "auto") -> Radiometry:
    """Decide how to turn one asset of one STAC item into reflectance.

    Parameters
    ----------
    item
        A :class:`pystac.Item` or its dict (any STAC version, 1.0.0-beta to 1.1).
    asset_key
        The asset that will be read, e.g. ``"B04"`` (Planetary Computer), ``"red"`` or ``"red-jp2"``
        (Earth Search). A band alias finds the provider's key (``"B04"`` -> ``"red"``).
    harmonize
        ``"auto"`` (default): metadata, else the acquisition date with a warning. ``True``: metadata
        only, raise when there is none. ``False``: DN / 10000 without offset.

    Returns
    -------
    Radiometry
        See the module docstring for the order of evidence.

    Raises
    ------
    InputError
        Bad ``harmonize`` value, unknown asset, or ``harmonize=True`` without metadata evidence.

    Warns
    -----
    RadiometryWarning
        With ``harmonize="auto"`` when the offset had to be assumed from the acquisition date.

    Examples
    --------
    >>> item = {"id": "S2B_MSIL2A_20230101", "properties": {"s2:processing_baseline": "05.09"},
    ...         "assets": {"B04": {"href": "B04.tif"}}}
    >>> item_radiometry(item, "B04")
    Radiometry(scale=0.0001, offset=-0.1, source='s2:processing_baseline 05.09 >= 04.00')
    >>> item_radiometry(item, "B04", harmonize=False).offset
    0.0
    """
    if isinstance(harmonize, str) and harmonize.strip().lower() == "auto":
        mode: bool | str = "auto"
    elif isinstance(harmonize, (bool, np.bool_)):
        mode = bool(harmonize)
    else:
        raise InputError(f"harmonize must be True, False or 'auto', got {harmonize!r}")
    if mode is False:
        return Radiometry(1e-4, 0.0, _NO_OFFSET_SOURCE)

    d = _item_dict(item)
    item_id = str(d.get("id", "<item without id>"))
    props = d.get("properties") or {}
    key, asset = _find_asset(d, item_id, asset_key)
    scale, offset, where = _raster_scale_offset(asset)

    # 2. Earth Search harmonised its COGs itself; the flag beats the (stale) raster offset.
    if not _is_jp2(key, asset):
        for flag in _FLAG_KEYS:
            if _as_bool(props.get(flag)) is True:
                return Radiometry(
                    scale or 1e-4, 0.0, f"{flag}=true on COG asset {key!r}: offset already removed"
                )

    # 3. Explicit raster scale/offset of the asset.
    if offset is not None:
        s = scale if scale is not None else 1e-4
        return Radiometry(s, offset, f"{where} scale {_fmt(s)} offset {_fmt(offset)} on asset {key!r}")

    # 4. Processing baseline, from a property or from a product name.
    quantification = _snap(1.0 / scale) if scale else 10000.0
    found: tuple[str, str] | None = None
    for prop in _BASELINE_KEYS:
        if props.get(prop):
            found = (str(props[prop]), prop)
            break
    if found is None:
        for prop in _NAME_KEYS:
            b = baseline_from_name(str(props.get(prop, "")))
            if b:
                found = (b, f"{prop} baseline")
                break
    if found is None and (b := baseline_from_name(item_id)):
        found = (b, "item id baseline")
    if found is not None:
        r = baseline_radiometry(found[0], quantification=quantification)
        return dataclasses.replace(r, source=r.source.replace("processing baseline", found[1], 1))

    # 5. No metadata at all.
    if mode is True:
        raise InputError(
            f"item {item_id!r} (asset {key!r}) carries no radiometric metadata (no "
            "earthsearch:boa_offset_applied, raster scale/offset or processing baseline), so "
            "harmonize=True cannot tell whether the DN carry the baseline-04.00 offset; pass "
            "harmonize=False if the pixels are plain DN/10000, or harmonize='auto' to decide by date"
        )
    date = _item_date(props)
    if date is None:
        raise InputError(
            f"item {item_id!r} carries neither radiometric metadata nor a datetime; pass "
            "harmonize=False if the pixels are plain DN/10000"
        )
    with_offset = date >= OFFSET_DATE
    cmp = ">=" if with_offset else "<"
    warnings.warn(
        f"item {item_id!r} (asset {key!r}) has no radiometric metadata: the offset was assumed from its "
        f"acquisition date {date} {cmp} {OFFSET_DATE} (offset {'-0.1' if with_offset else '0'}); "
        "reprocessed older products also carry the offset, so check the result or pass "
        "harmonize=False for items whose pixels are plain DN/10000",
        RadiometryWarning,
        stacklevel=2,
    )
    s = 1.0 / quantification
    return Radiometry(
        s,
        -1000.0 / quantification if with_offset else 0.0,
        f"assumed from acquisition date {date} {cmp} {OFFSET_DATE} (no metadata)",
    )


# --------------------------------------------------------------------------- SAFE products

_XML_NAMES = ("MTD_MSIL1C.xml", "MTD_MSIL2A.xml")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def product_radiometry(xml_path: str | Path) -> dict[str, Radiometry]:
    """Per-band radiometry of a local Sentinel-2 product, read from its metadata XML.

    Parameters
    ----------
    xml_path
        ``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml``, or the ``.SAFE`` folder containing it.

    Returns
    -------
    dict
        ESA band name (``"B01"`` ... ``"B12"``, band_id 0..12 in :data:`~xs2mask.bands.BAND_NAMES`
        order) -> :class:`Radiometry` with ``scale = 1 / QUANTIFICATION_VALUE`` (L2A:
        ``BOA_QUANTIFICATION_VALUE``) and ``offset = RADIO_ADD_OFFSET / QUANTIFICATION_VALUE`` (L2A:
        ``BOA_ADD_OFFSET``); offset 0 when the XML has no offset list (baselines before 04.00).

    Raises
    ------
    InputError
        If the file is missing or is not readable Sentinel-2 product metadata.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> xml = '''<n1:Level-1C_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int">
    ... <PROCESSING_BASELINE>04.00</PROCESSING_BASELINE>
    ... <QUANTIFICATION_VALUE unit="none">10000</QUANTIFICATION_VALUE><Radiometric_Offset_List>
    ... ''' + "".join(f'<RADIO_ADD_OFFSET band_id="{i}">-1000</RADIO_ADD_OFFSET>' for i in range(13)) + '''
    ... </Radiometric_Offset_List></n1:Level-1C_User_Product>'''
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "MTD_MSIL1C.xml"
    >>> _ = path.write_text(xml)
    >>> rad = product_radiometry(path)
    >>> rad["B8A"].offset_dn, rad["B8A"].source
    (-1000.0, 'MTD_MSIL1C.xml RADIO_ADD_OFFSET -1000 (baseline 04.00)')
    """
    path = Path(xml_path)
    if path.is_dir():
        found = [path / n for n in _XML_NAMES if (path / n).is_file()]
        if not found:
            raise InputError(f"{path} holds no {' or '.join(_XML_NAMES)}: not a Sentinel-2 .SAFE product")
        path = found[0]
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as err:
        raise InputError(f"cannot read Sentinel-2 product metadata {path}: {err}") from None

    texts: dict[str, str] = {}
    offsets: dict[str, dict[int, float]] = {"RADIO_ADD_OFFSET": {}, "BOA_ADD_OFFSET": {}}
    try:
        for el in root.iter():
            tag = _local(el.tag)
            if tag in offsets:
                offsets[tag][int(el.attrib["band_id"])] = float((el.text or "").strip())
            elif tag in (
                "QUANTIFICATION_VALUE",
                "BOA_QUANTIFICATION_VALUE",
                "PROCESSING_BASELINE",
                "PRODUCT_URI",
            ):
                texts.setdefault(tag, (el.text or "").strip())
    except (KeyError, ValueError) as err:
        raise InputError(f"malformed radiometric offset list in {path}: {err!r}") from None

    # L2A metadata also carries AOT/WVP quantification values: only the BOA one scales reflectance.
    l2a = "BOA_QUANTIFICATION_VALUE" in texts or bool(offsets["BOA_ADD_OFFSET"])
    q_tag, o_tag = (
        ("BOA_QUANTIFICATION_VALUE", "BOA_ADD_OFFSET")
        if l2a
        else ("QUANTIFICATION_VALUE", "RADIO_ADD_OFFSET")
    )
    try:
        quantification = float(texts[q_tag])
    except (KeyError, ValueError):
        raise InputError(f"{path} has no readable {q_tag}: not Sentinel-2 product metadata") from None
    if not quantification > 0:
        raise InputError(f"{path}: {q_tag} is {quantification}, expected a positive number")
    band_offsets = offsets[o_tag]
    if band_offsets and set(band_offsets) != set(range(len(BAND_NAMES))):
        raise InputError(
            f"{path}: {o_tag} given for band_id {sorted(band_offsets)}, "
            f"expected all of 0..{len(BAND_NAMES) - 1}"
        )
    baseline = (
        texts.get("PROCESSING_BASELINE") or baseline_from_name(texts.get("PRODUCT_URI", "")) or "unknown"
    )

    result: dict[str, Radiometry] = {}
    for band_id, band in enumerate(BAND_NAMES):
        if band_offsets:
            off = band_offsets[band_id]
            source = f"{path.name} {o_tag} {_fmt(off)} (baseline {baseline})"
        else:
            off = 0.0
            source = f"{path.name} no {o_tag} (baseline {baseline}): DN/{_fmt(quantification)}"
        result[band] = Radiometry(1.0 / quantification, off / quantification, source)
    return result


# --------------------------------------------------------------------------- sanity check


def negative_fraction(reflectance: xr.DataArray, *, threshold: float = -0.05) -> xr.DataArray:
    """Fraction of valid pixels, over all bands, with reflectance below ``threshold``.

    After a correct conversion hardly any pixel is far below 0; if the offset was applied to data
    that were already harmonised, every dark pixel (water, shadow, the cirrus band B10) lands near
    -0.1. Lazy input gives a lazy result.

    Parameters
    ----------
    reflectance
        DataArray with dims ``band``, ``y``, ``x`` and possibly others (e.g. ``time``); NaN = no data.
    threshold
        Reflectance below which a pixel counts as implausibly negative.

    Returns
    -------
    xarray.DataArray
        Over the remaining dims (e.g. ``(time,)``), float64; NaN where no pixel is valid.

    Raises
    ------
    InputError
        If ``reflectance`` is not a DataArray with ``band``, ``y`` and ``x`` dims.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> r = xr.DataArray(np.array([[[-0.08, 0.1], [0.2, np.nan]]]), dims=("band", "y", "x"))
    >>> round(float(negative_fraction(r)), 4)
    0.3333
    """
    dims = ("band", "y", "x")
    if not isinstance(reflectance, xr.DataArray) or not set(dims) <= set(reflectance.dims):
        got = getattr(reflectance, "dims", type(reflectance).__name__)
        raise InputError(f"negative_fraction needs a DataArray with dims band, y, x; got {got}")
    valid = reflectance.notnull().sum(dims)
    below = (reflectance < threshold).sum(dims)
    # where() rather than a bare 0/0 so that all-NaN slices give NaN without a RuntimeWarning.
    fraction = below / valid.where(valid > 0)
    fraction.name = "negative_fraction"
    fraction.attrs = {"threshold": threshold}
    return fraction


def check_reflectance(fraction: SupportsFloat, *, label: str, limit: float = 0.01) -> str | None:
    """Warn when too many pixels are far below 0: the offset was probably applied twice.

    Parameters
    ----------
    fraction
        Result of :func:`negative_fraction` for one item / date (a 0-d array is fine).
    label
        What to name in the message: item id or date.
    limit
        Largest acceptable fraction (0.01 = 1 %).

    Returns
    -------
    str or None
        The warning message (also issued as :class:`~xs2mask.exceptions.RadiometryWarning`), or None
        when the data look fine.

    Examples
    --------
    >>> check_reflectance(0.0, label="S2B_33UXP_20250302_0_L2A") is None
    True
    """
    value = float(fraction)
    if math.isnan(value) or value <= limit:
        return None
    message = (
        f"{label}: {value:.1%} of valid pixels have reflectance far below 0 (limit {limit:.1%}); "
        "the radiometric offset (-0.1) was probably applied to data the provider had already "
        "harmonised (provider metadata wrong, see Earth Search issue #71, "
        "https://github.com/Element84/earth-search/issues/71). Fix: pass harmonize=False for these items."
    )
    warnings.warn(message, RadiometryWarning, stacklevel=2)
    return message
