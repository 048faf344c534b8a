"""The real Sentinel-2 scenes training and validation draw on, read into one shape.

Every source of ``../shared/data`` (see its README) becomes :class:`Scene` objects:
reflectance ``(band, y, x)`` float32 with NaN no-data, ESA band names, the product
level, and human labels where they exist. Which scenes are for validation is fixed
here, in one place, so that nothing trains on them:

* **validation**: the six ``trusted`` On Cloud N chips (human cloud labels) -- never
  trained on, neither their labels nor their pixels;
* **train**: every other scene: the 21 On Cloud N chips with bad labels (pixels only), the
  5 chips of ``cloud_cover_chips_more`` (pixels and human labels), EuroSAT-MS, BigEarthNet,
  SEN12MS-CR, the eo-learn and Wright scenes.

Whether a training scene is clear (a background for simulated clouds) or cloudy (a
source of pseudo-labels) is decided later from a teacher model, not here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_QUANTIFICATION = 10_000.0


@dataclass(frozen=True, eq=False)
class Scene:
    """One real scene.

    Attributes
    ----------
    name : unique name, ``"<source>/<id>"``.
    reflectance : ``(band, y, x)`` float32, NaN where no data.
    bands : ESA names in the order of ``reflectance``.
    level : ``"L1C"`` or ``"L2A"``.
    split : ``"train"`` or ``"validation"``.
    labels : ``(y, x)`` uint8 human labels (0 not cloud, 1 cloud) or None; on a training scene
        they override the teacher's cloud (:func:`~xs2mask.training.pseudo.with_human_labels`).
    licence : licence of the source data.
    """

    name: str
    reflectance: np.ndarray = field(repr=False)
    bands: tuple[str, ...]
    level: str
    split: str
    labels: np.ndarray | None = field(default=None, repr=False)
    licence: str = ""

    def select(self, bands: tuple[str, ...]) -> np.ndarray:
        """Reflectance of ``bands`` in that order."""
        index = [self.bands.index(b) for b in bands]
        return self.reflectance[index]

    def has(self, bands: tuple[str, ...]) -> bool:
        return set(bands) <= set(self.bands)


def _from_dn(dn: np.ndarray) -> np.ndarray:
    refl = dn.astype(np.float32) / np.float32(_QUANTIFICATION)
    refl[dn == 0] = np.nan
    return refl


def _read_tif(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        return src.read()


def cloud_cover_chips(data: Path) -> Iterator[Scene]:
    """On Cloud N chips: 4 bands, L2A DN without offset (2019-2020), labels 0/1."""
    folder = data / "cloud_cover_chips"
    quality = {c["chip"]: c["label_quality"] for c in json.loads((folder / "chips.json").read_text())}
    bands = ("B02", "B03", "B04", "B08")
    for chip in sorted(quality):
        dn = np.concatenate([_read_tif(folder / chip / f"{b}.tif") for b in bands])
        trusted = quality[chip] == "trusted"
        labels = _read_tif(folder / chip / "label.tif")[0].astype(np.uint8) if trusted else None
        yield Scene(
            f"cloud_cover_chips/{chip}",
            _from_dn(dn),
            bands,
            "L2A",
            "validation" if trusted else "train",
            labels,
            "CC BY 4.0",
        )


def cloud_cover_chips_more(data: Path) -> Iterator[Scene]:
    """Five more On Cloud N chips (``cloud_cover_chips_more/chip_N``): 4 bands, L2A DN, labels 0/1.

    Human labels from five other places, trained on (pixels and labels: the labels override the
    teacher's cloud). The labels follow the clouds generously (a dilated outline) and label cloud
    shadows 0.

    Examples
    --------
    >>> chips = list(cloud_cover_chips_more(Path("../shared/data")))  # doctest: +SKIP
    >>> [c.name for c in chips][:2], chips[0].reflectance.shape  # doctest: +SKIP
    (['cloud_cover_chips_more/chip_1', 'cloud_cover_chips_more/chip_2'], (4, 512, 512))
    """
    folder = data / "cloud_cover_chips_more"
    bands = ("B02", "B03", "B04", "B08")
    chips = sorted(folder.glob("chip_*"), key=lambda p: int(p.name.removeprefix("chip_")))
    for chip in chips:
        dn = np.concatenate([_read_tif(chip / f"{b}.tif") for b in bands])
        labels = _read_tif(chip / "label.tif")[0].astype(np.uint8)
        yield Scene(
            f"cloud_cover_chips_more/{chip.name}", _from_dn(dn), bands, "L2A", "train", labels, "CC BY 4.0"
        )


def eurosat(data: Path) -> Iterator[Scene]:
    """EuroSAT-MS 64 x 64 patches: 13 bands L1C DN (B8A stored last)."""
    npz = np.load(data / "eurosat_ms" / "patches.npz")
    order = tuple(str(b) for b in npz["band_order"])
    dn = npz["s2"]  # an NpzFile decompresses on every access: read once
    for i, name in enumerate(npz["names"]):
        yield Scene(f"eurosat/{name}", _from_dn(dn[i]), order, "L1C", "train", licence="MIT")


def bigearthnet(data: Path) -> Iterator[Scene]:
    """BigEarthNet 120 x 120 patches: 12 bands L2A DN (2017-2018, no offset)."""
    npz = np.load(data / "bigearthnet" / "configilm_patches.npz")
    order = tuple(str(b) for b in npz["band_order"])
    for i, name in enumerate(npz["names"]):
        yield Scene(
            f"bigearthnet/{name}",
            _from_dn(npz["s2"][i]),
            order,
            "L2A",
            "train",
            licence="CDLA-Permissive-1.0",
        )


def sen12ms(data: Path) -> Iterator[Scene]:
    """SEN12MS-CR 256 x 256 patches: 13 bands L1C DN in ESA order with B8A after B08."""
    order = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
    for path in sorted((data / "sen12ms_cr").glob("*.tif")):
        yield Scene(
            f"sen12ms_cr/{path.stem}", _from_dn(_read_tif(path)), order, "L1C", "train", licence="CC BY 4.0"
        )


def eolearn(data: Path) -> Iterator[Scene]:
    """eo-learn reference scenes: 13 bands L1C reflectance 0-1, (scene, y, x, band)."""
    npz = np.load(data / "eolearn_reference_scenes" / "scenes.npz")
    order = tuple(str(b) for b in npz["band_order"])
    for i, scene in enumerate(npz["reflectance"]):
        refl = np.moveaxis(scene, -1, 0).astype(np.float32)
        yield Scene(f"eolearn/{i}", refl, order, "L1C", "train", licence="MIT")


def wright(data: Path) -> Iterator[Scene]:
    """Wright et al.'s 30-date stack (DN) and its clear scene (reflectance): 10 bands."""
    folder = data / "wright_time_series"
    stack = np.load(folder / "stack.npz")
    order = tuple(str(b) for b in stack["band_order"])
    dns = stack["dn"]
    for t in range(dns.shape[-1]):
        dn = np.moveaxis(dns[..., t], -1, 0)
        yield Scene(f"wright/stack_{t:02d}", _from_dn(dn), order, "L1C", "train", licence="Apache-2.0")
    clear = np.load(folder / "clear_20160101.npz")
    refl = np.moveaxis(clear["reflectance"], -1, 0).astype(np.float32)
    yield Scene("wright/clear_20160101", refl, order, "L1C", "train", licence="Apache-2.0")


SOURCES = {
    f.__name__: f
    for f in (cloud_cover_chips, cloud_cover_chips_more, eurosat, bigearthnet, sen12ms, eolearn, wright)
}


def scenes(
    data: Path,
    *,
    split: str | None = None,
    bands: tuple[str, ...] | None = None,
    only: tuple[str, ...] | None = None,
) -> list[Scene]:
    """All real scenes of ``data`` (``../shared/data``), optionally of one split, with ``bands``,
    from the sources named in ``only`` (keys of :data:`SOURCES`).

    Examples
    --------
    >>> val = scenes(Path("../shared/data"), split="validation")  # doctest: +SKIP
    >>> [s.name for s in val][:2]  # doctest: +SKIP
    ['cloud_cover_chips/adwp', 'cloud_cover_chips/adwz']

    The names ``only`` takes:

    >>> sorted(SOURCES)
    ['bigearthnet', 'cloud_cover_chips', 'cloud_cover_chips_more', 'eolearn', 'eurosat', 'sen12ms', 'wright']
    """
    out = []
    for name, source in SOURCES.items():
        if only is not None and name not in only:
            continue
        for scene in source(Path(data)):
            if split is not None and scene.split != split:
                continue
            if bands is not None and not scene.has(bands):
                continue
            out.append(scene)
    return out
