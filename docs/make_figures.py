"""Regenerate the pictures in docs/img: true colour beside the xs2mask mask.

    .venv/bin/python docs/make_figures.py

Uses the scene shipped in the package, plus real scenes from ../shared/data
when that folder exists.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import xarray as xr

import xs2mask
from xs2mask.export import quicklook

OUT = Path(__file__).parent / "img"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BANDS4 = ["B02", "B03", "B04", "B08"]


def _figure(cube: xr.DataArray, name: str, title: str, model: str = "default") -> None:
    ds = xs2mask.predict(cube, model=model)
    rgb = cube.sel(band=["B04", "B03", "B02"]).values.astype("float32") / 10_000
    quicklook(rgb, ds.mask.values, OUT / f"{name}.png", title=f"{title} - {ds.attrs['xs2mask_model']}")
    print("wrote", OUT / f"{name}.png")


def main() -> None:
    OUT.mkdir(exist_ok=True)
    _figure(xs2mask.data.demo_scene(), "demo_quicklook", "demo scene, Chifunfu 2020-04-29 (L2A)")
    if not SHARED.is_dir():
        return
    for chip, title in [("kgxp", "Eswatini 2020-09-12 (L2A)"), ("khcp", "Eswatini 2020-09-12, no-data edge")]:
        folder = SHARED / "cloud_cover_chips" / chip
        arr = np.stack([rasterio.open(folder / f"{b}.tif").read(1) for b in BANDS4])
        _figure(xr.DataArray(arr, dims=("band", "y", "x"), coords={"band": BANDS4}), chip, title)
    with rasterio.open(SHARED / "sen12ms_cr" / "cloudy_ROIs1868_summer_19_p30.tif") as src:
        arr = src.read()  # 13 L1C bands, B01 ... B12 with B8A after B08
    names = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
    sen12ms = xr.DataArray(arr, dims=("band", "y", "x"), coords={"band": names})
    _figure(sen12ms, "sen12ms_cloudy", "SEN12MS-CR (L1C)")
    # xs2mask's own 4-class model on real cloudy scenes with shadows (validation chips: never trained on).
    _figure(xs2mask.data.demo_scene(), "xs2mask-4b_adwp", "Chifunfu 2020-04-29 (L2A)", "xs2mask-4b")
    folder = SHARED / "cloud_cover_chips" / "ijgr"
    arr = np.stack([rasterio.open(folder / f"{b}.tif").read(1) for b in BANDS4])
    ijgr = xr.DataArray(arr, dims=("band", "y", "x"), coords={"band": BANDS4})
    _figure(ijgr, "xs2mask-4b_ijgr", "On Cloud N chip ijgr, overcast (L2A)", "xs2mask-4b")
    _figure(sen12ms, "xs2mask-4b_sen12ms_cloudy", "SEN12MS-CR (L1C)", "xs2mask-4b")
    # The all-band models: the only real cloudy all-band scene here is a training scene.
    _figure(sen12ms, "xs2mask-13b_sen12ms_cloudy", "SEN12MS-CR (L1C, a training scene)", "xs2mask-13b")
    _figure(
        sen12ms.drop_sel(band="B10"), "xs2mask-12b_sen12ms_cloudy", "SEN12MS-CR without B10", "xs2mask-12b"
    )


if __name__ == "__main__":
    main()
