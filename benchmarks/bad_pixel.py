"""How far one bad value in one band of one pixel reaches into the mask (xs2mask issue 16).

On the shipped demo scene (512 x 512 px, B02 B03 B04 B08, as float reflectance = DN / 10000), for
every installed model the demo's 4 bands can feed: mask the clean scene, then the scene with one
value of band ``--band`` at pixel ``--pixel`` replaced by +inf, -inf, 3e38 or NaN, and count the
pixels whose class changed, in brackets those within 8 pixels of the bad one (Chebyshev distance).
``reach`` is the largest distance of a changed pixel from the bad one; ``-`` when nothing changed.
The models the 4 bands cannot feed are listed with the bands they lack.

Usage::

    python benchmarks/bad_pixel.py [--band B08] [--pixel 100 100]

Runs with any version of xs2mask (to compare before and after a change): it uses only
``xs2mask.predict`` and ``xs2mask.models``.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
from harness import Stopwatch

import xs2mask

BAD_VALUES = {"+inf": np.inf, "-inf": -np.inf, "3e38": 3e38, "NaN": np.nan}


NEAR = 8


def changed(clean: np.ndarray, dirty: np.ndarray, pixel: tuple[int, int]) -> str:
    """``changed (near) / reach`` for the pixels whose class differs."""
    ys, xs = np.nonzero(clean != dirty)
    distance = np.maximum(np.abs(ys - pixel[0]), np.abs(xs - pixel[1]))
    reach = str(int(distance.max())) if ys.size else "-"
    return f"{ys.size} ({int((distance <= NEAR).sum())}) / {reach}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--band", default="B08")
    parser.add_argument("--pixel", type=int, nargs=2, default=(100, 100), metavar=("Y", "X"))
    args = parser.parse_args()
    pixel = tuple(args.pixel)

    cube = xs2mask.data.demo_scene().astype(np.float32) / 10_000
    bands = [str(b) for b in cube["band"].values]
    band = bands.index(args.band)
    fed, unfed = [], []
    for name in xs2mask.models.available():
        lacks = [b for b in xs2mask.models.get(name).bands if b not in bands]
        (unfed if lacks else fed).append((name, lacks))

    print(f"xs2mask {xs2mask.__version__} ({xs2mask.__file__})")
    print(f"demo scene 512 x 512, one bad value in band {args.band} at pixel (y, x) = {pixel}")
    print(f"{'model':<22}{'clean s':>8}" + "".join(f"{k:>22}" for k in BAD_VALUES))
    print(f"{'':<30}" + "".join(f"{f'changed (<={NEAR}) / reach':>22}" for _ in BAD_VALUES))
    for name, _ in fed:
        with Stopwatch() as watch:
            clean = xs2mask.predict(cube, model=name)["mask"].values
        cells = []
        for value in BAD_VALUES.values():
            dirty = cube.copy()
            dirty[band, pixel[0], pixel[1]] = value
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the fixed engine warns about the bad value: expected
                try:
                    mask = xs2mask.predict(dirty, model=name)["mask"].values
                except Exception as err:  # an error is a result here: print it
                    cells.append(type(err).__name__)
                    continue
            cells.append(changed(clean, mask, pixel))
        print(f"{name:<22}{watch.seconds:>8.2f}" + "".join(f"{c:>22}" for c in cells))
    for name, lacks in unfed:
        print(f"{name:<22}  not run: needs {', '.join(lacks)}")


if __name__ == "__main__":
    main()
