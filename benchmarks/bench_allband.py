"""Speed of the all-band models beside ukis-csmask-6b-l1c and s2cloudless on 2048² of real L1C pixels.

The cube: four SEN12MS-CR patches (256 px, 13 L1C bands) as a 2 x 2 mosaic, tiled 4 x 4 to 2048 x 2048,
as reflectance. One model per process; "cold" includes loading the model, "warm" is a second call.

Run::

    for m in xs2mask-13b xs2mask-12b ukis-csmask-6b-l1c s2cloudless; do
        python benchmarks/bench_allband.py $m --data ../shared/data
    done

Prints one markdown row per model: cold s, cold Mpx/s, warm s, warm Mpx/s.
"""

import argparse
from pathlib import Path

import numpy as np
import rasterio
import xarray as xr
from harness import DEFAULT_DATA, Stopwatch

import xs2mask

NAMES = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]


def cube(data: Path) -> xr.DataArray:
    files = sorted((data / "sen12ms_cr").glob("*.tif"))[:4]
    tiles = [rasterio.open(f).read().astype(np.float32) / 10000 for f in files]
    block = np.concatenate([np.concatenate(tiles[:2], 2), np.concatenate(tiles[2:4], 2)], 1)
    return xr.DataArray(np.tile(block, (1, 4, 4)), dims=("band", "y", "x"), coords={"band": NAMES})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    if not (args.data / "sen12ms_cr").is_dir():
        raise SystemExit(f"no SEN12MS-CR patches under {args.data}: pass --data ../shared/data")
    da = cube(args.data)
    if "B10" not in xs2mask.models.get(args.model).bands:
        da = da.drop_sel(band="B10")  # an L2A model: no cirrus band
    mpx = da.sizes["y"] * da.sizes["x"] / 1e6
    times = []
    for _ in range(2):
        with Stopwatch() as watch:
            xs2mask.predict(da, model=args.model).mask.compute()
        times.append(watch.seconds)
    cold, warm = times
    print(f"| `{args.model}` | {cold:.2f} | {mpx / cold:.2f} | {warm:.2f} | {mpx / warm:.2f} |", flush=True)


if __name__ == "__main__":
    main()
