"""The numpy kernel (xs2mask.kernel) imports no xarray and runs a block on its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

import xs2mask
from xs2mask.inference import predict_block as reexported
from xs2mask.kernel import ModelRun, Plan, block_halo, predict_block
from xs2mask.models import Runtime, get

# In a fresh interpreter: any import of xarray fails; the xs2mask package is a bare namespace (its
# __init__ imports xarray for the accessor), so only what xs2mask.kernel imports gets imported. Then
# one block is predicted, running the kernel's own lazy imports too.
WITHOUT_XARRAY = """
import importlib.abc, sys, types

class NoXarray(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "xarray":
            raise ImportError(f"xarray imported: {name}")

sys.meta_path.insert(0, NoXarray())
package = types.ModuleType("xs2mask")
package.__path__ = [sys.argv[1]]
sys.modules["xs2mask"] = package

import numpy as np
from xs2mask.kernel import ModelRun, Plan, block_halo, predict_block
from xs2mask.models import Runtime, get

spec = get("xs2mask-4b")
run = ModelRun(spec, patch_size=64, overlap=16, band_index=(0, 1, 2, 3))
plan = Plan(runs=(run,), runtime=Runtime(), classes=spec.classes, bands=spec.bands, height=64, width=96,
            factor=1, halo=block_halo(run, 1), tta=0, batch_size=0, offset=0.0, integer_input=True,
            output="both", probability_dtype="uint8")
block = np.random.default_rng(0).integers(1, 3000, (1, 4, 64, 96)).astype(np.uint16)
print("shape", predict_block(block, plan, (0, 64), (0, 96)).shape)
try:
    import xarray
except ImportError:
    print("xarray blocked")
"""


def test_the_kernel_imports_no_xarray() -> None:
    package = Path(xs2mask.__file__).parent
    run = subprocess.run(
        [sys.executable, "-c", WITHOUT_XARRAY, str(package)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    # the guard works (xarray cannot be imported there), and the kernel ran a block without it
    assert run.stdout.split("\n")[:2] == [
        f"shape {(1, 1 + len(get('xs2mask-4b').classes), 64, 96)}",
        "xarray blocked",
    ]


def test_a_numpy_block_gives_what_predict_gives() -> None:
    """The kernel on a numpy block, with a plan made by hand, is predict's core: same mask."""
    cube = xs2mask.data.demo_scene().isel(y=slice(0, 96), x=slice(0, 128))
    spec = get("xs2mask-4b")
    run = ModelRun(spec, patch_size=64, overlap=16, band_index=(0, 1, 2, 3))
    plan = Plan(runs=(run,), runtime=Runtime(), classes=spec.classes, bands=spec.bands, height=96, width=128,
                factor=1, halo=block_halo(run, 1), tta=0, batch_size=0, offset=0.0, integer_input=True,
                output="mask", probability_dtype="uint8")  # fmt: skip
    block = cube.sel(band=list(spec.bands)).values[None]
    mask = predict_block(block, plan, (0, 96), (0, 128))[0, 0]
    expected = xs2mask.predict(cube, model=spec, patch_size=64, overlap=16, device="cpu").mask.values
    np.testing.assert_array_equal(mask, expected)
    assert reexported is predict_block  # pipelines that import it from xs2mask.inference keep working
