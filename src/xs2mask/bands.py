"""Sentinel-2 band table and band-name normalisation.

Every provider names bands differently (ESA ``B8A``, STAC common name ``nir08``,
Earth Search ``nir08`` / ``nir08-jp2``, lower-case ``b8a`` ...). xs2mask works
internally with ESA names only; :func:`canonical_band` maps any accepted alias
to the ESA name.
"""

from __future__ import annotations

from dataclasses import dataclass

from .exceptions import BandError


@dataclass(frozen=True)
class Band:
    """One Sentinel-2 MSI band.

    Attributes
    ----------
    name : ESA name, e.g. ``"B8A"``.
    common_name : STAC ``eo:common_name``, e.g. ``"nir08"``.
    wavelength_nm : central wavelength in nanometres.
    resolution_m : native ground sampling distance in metres.
    l2a : whether Level-2A products carry the band (B10 is L1C only).
    """

    name: str
    common_name: str
    wavelength_nm: int
    resolution_m: int
    l2a: bool = True


BANDS: tuple[Band, ...] = (
    Band("B01", "coastal", 443, 60),
    Band("B02", "blue", 490, 10),
    Band("B03", "green", 560, 10),
    Band("B04", "red", 665, 10),
    Band("B05", "rededge1", 705, 20),
    Band("B06", "rededge2", 740, 20),
    Band("B07", "rededge3", 783, 20),
    Band("B08", "nir", 842, 10),
    Band("B8A", "nir08", 865, 20),
    Band("B09", "nir09", 945, 60),
    Band("B10", "cirrus", 1375, 60, l2a=False),
    Band("B11", "swir16", 1610, 20),
    Band("B12", "swir22", 2190, 20),
)
BAND_NAMES: tuple[str, ...] = tuple(b.name for b in BANDS)

_ALIASES: dict[str, str] = {}
for _b in BANDS:
    for _alias in (_b.name, _b.common_name, f"{_b.common_name}-jp2", _b.name.replace("B0", "B")):
        _ALIASES[_alias.lower()] = _b.name
# Names seen in the wild that are not STAC common names.
_ALIASES.update({"nir08": "B8A", "b8a": "B8A", "swir1": "B11", "swir2": "B12", "nir1": "B08"})


def canonical_band(name: object) -> str:
    """Return the ESA name of a Sentinel-2 band given any accepted alias.

    Parameters
    ----------
    name
        ``"B02"``, ``"b2"``, ``"blue"``, ``"nir08"``, ``"swir16-jp2"`` ...

    Returns
    -------
    str
        The ESA name, e.g. ``"B8A"``.

    Raises
    ------
    BandError
        If the name is not a Sentinel-2 band.

    Examples
    --------
    >>> canonical_band("nir08")
    'B8A'
    >>> canonical_band("b2")
    'B02'

    Bytes, as netCDF and Zarr v2 files often hold names, are read as text:

    >>> canonical_band(b"B8A")
    'B8A'
    """
    key = as_text(name).strip().lower()
    try:
        return _ALIASES[key]
    except KeyError:
        raise BandError(
            f"unknown band name {as_text(name)!r}: use Sentinel-2 names ({', '.join(BAND_NAMES)}) "
            "or STAC common names (coastal, blue, green, red, rededge1-3, nir, nir08, nir09, "
            "cirrus, swir16, swir22)"
        ) from None


def as_text(name: object) -> str:
    """A band name as text: bytes (numpy ``S3`` from netCDF or Zarr v2 files) decoded, not ``"b'B02'"``.

    Examples
    --------
    >>> as_text(b"B02"), as_text("red")
    ('B02', 'red')
    """
    return name.decode("ascii", errors="replace") if isinstance(name, bytes) else str(name)
