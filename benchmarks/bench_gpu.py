"""GPU benchmark: model-only time per 20 m Sentinel-2 scene (5490 x 5490 px), and end to end from Zarr / COG.

The scene is ``bench_predict``'s mosaic of real Sentinel-2 patches (SEN12MS-CR and BigEarthNet,
reflectance) mirror-tiled to ``--size`` px, bands B02 B03 B04 B08 for xs2mask's own torch model
``xs2mask-4b-torch`` (the torch build of xs2mask-4b, which the GPU path runs). Cases:

* ``model``: ``xs2mask.predict`` on the numpy scene (one block) with ``device``/``dtype``; one warm-up
  call (model load, cuDNN autotuning, ``torch.compile`` when asked), then ``--repeat`` timed calls; the
  best is the figure. The batch size the loaded model chose from the GPU's free memory is reported.
* ``zarr``: the scene written once to a local Zarr store (1830 px chunks, a third of a tile), then
  ``xr.open_zarr`` -> ``predict`` -> ``xs2mask.to_zarr`` into a new store, timed whole (reads, model,
  writes; the model already loaded in this process).
* ``cog``: the same from a local 4-band tiled GeoTIFF (COG layout, deflate) opened with rioxarray.

Usage (on a GPU machine)::

    python benchmarks/bench_gpu.py --json gpu.json [--compile] [--dtype bfloat16] [--cases model zarr cog]

Without CUDA it says so and exits 0, unless ``--device cpu`` asks for a CPU run (a smoke test: use a
small ``--size``, e.g. 1024).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from harness import DEFAULT_CACHE, DEFAULT_DATA, data_missing, source_version, write_json
from inputs import CUBE_BANDS, cached_cube

MODEL = "xs2mask-4b-torch"
BANDS = ["B02", "B03", "B04", "B08"]
ZARR_CHUNK = 1830
CASES = ("model", "zarr", "cog")


def scene(data: Path, size: int):
    """The real-pixel scene as a ``(band, y, x)`` float32 DataArray on a 20 m UTM grid."""
    import rioxarray  # noqa: F401
    import xarray as xr

    cube = np.load(cached_cube(data, DEFAULT_CACHE, size), mmap_mode="r")
    refl = np.ascontiguousarray(cube[[CUBE_BANDS.index(b) for b in BANDS]])
    x = 600_000.0 + 20.0 * (np.arange(size) + 0.5)
    y = 9_800_000.0 - 20.0 * (np.arange(size) + 0.5)
    da = xr.DataArray(refl, dims=("band", "y", "x"), coords={"band": BANDS, "y": y, "x": x})
    return da.rio.write_crs(32736)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def model_case(da, args: argparse.Namespace) -> dict[str, Any]:
    import xs2mask
    from xs2mask.models import Runtime, get, load
    from xs2mask.models.backends import resolve_dtype

    options = {"model": MODEL, "device": args.device, "dtype": args.dtype, "compile": args.compile}
    start = time.perf_counter()
    xs2mask.predict(da, **options)
    _sync(args.device)
    warm = time.perf_counter() - start
    seconds = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        xs2mask.predict(da, **options)
        _sync(args.device)
        seconds.append(time.perf_counter() - start)
    spec = get(MODEL)
    dtype = resolve_dtype(args.dtype, args.device, (spec,))
    predictor = load(spec, Runtime(args.device, dtype, compile=args.compile))
    return {
        "first_call_s": warm,
        "seconds": seconds,
        "best_s": min(seconds),
        "mpx_per_s": da.sizes["y"] * da.sizes["x"] / min(seconds) / 1e6,
        "dtype": dtype,
        "batch_size": predictor.batch_size,
    }


def e2e_case(case: str, da, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    import rioxarray
    import xarray as xr

    import xs2mask

    if case == "zarr":
        source = folder / "scene.zarr"
        if not source.exists():
            da.to_dataset(name="reflectance").chunk({"y": ZARR_CHUNK, "x": ZARR_CHUNK}).to_zarr(source)
        opened = xr.open_zarr(source)["reflectance"]
    else:
        source = folder / "scene.tif"
        if not source.exists():
            da.rio.to_raster(source, tiled=True, blockxsize=512, blockysize=512, compress="deflate")
        opened = rioxarray.open_rasterio(source, chunks={"y": ZARR_CHUNK, "x": ZARR_CHUNK})
        opened = opened.assign_coords(band=BANDS)
    cube = opened.expand_dims(time=[np.datetime64("2024-06-01")])
    out = folder / f"masks-{case}-{time.time_ns()}.zarr"
    start = time.perf_counter()
    masks = xs2mask.predict(cube, model=MODEL, device=args.device, dtype=args.dtype, compile=args.compile)
    xs2mask.to_zarr(masks, str(out))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "mpx_per_s": da.sizes["y"] * da.sizes["x"] / seconds / 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=5490, help="scene edge in px (default 5490: a 20 m tile)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, or cpu for a smoke test")
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16/float16 on a GPU), float32, ...")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--repeat", type=int, default=3, help="timed model-only calls (best is kept)")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: nothing to benchmark (pass --device cpu for a smoke test)")
        return 0
    if data_missing(args.data, "sen12ms_cr"):
        return 0
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    results: dict[str, Any] = {
        "device": gpu,
        "torch": torch.__version__,
        "size": args.size,
        "compile": args.compile,
        "source": source_version(),
    }
    print(f"{gpu}; torch {torch.__version__}; scene {args.size} x {args.size} px; compile={args.compile}")
    da = scene(args.data, args.size)
    with tempfile.TemporaryDirectory(prefix="xs2mask-bench-gpu-") as tmp:
        for case in args.cases:
            if case == "model":
                result = model_case(da, args)
                print(
                    f"  model only: best {result['best_s']:.3f} s per scene "
                    f"({result['mpx_per_s']:.1f} Mpx/s), first call {result['first_call_s']:.1f} s, "
                    f"{result['dtype']}, batch {result['batch_size']}",
                    flush=True,
                )
            else:
                result = e2e_case(case, da, Path(tmp), args)
                print(
                    f"  end to end from {case}: {result['seconds']:.2f} s ({result['mpx_per_s']:.1f} Mpx/s)"
                )
            results[case] = result
    if args.device.startswith("cuda"):
        results["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
