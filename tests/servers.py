"""``python tests/servers.py pc|es [SHARED]``: serve a test catalogue on 127.0.0.1 until Ctrl-C, to try
the CLI offline. It prints the ``xs2mask mask-stac`` command to try.

The catalogue is that of the ``stac_pc`` / ``stac_es`` fixtures (:mod:`support.variants`, built from
the demo scene of the package, plus the roles ``lying`` and ``multires`` from ``SHARED``: by default
``../shared/data`` where it exists, else the shipped subset ``tests/data``). The helpers live in
``tests/support``; ``serve_items`` and ``write_raster`` are importable from here too, for
``benchmarks/bench_pipeline.py`` and ``bench_scale.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import tempfile
import threading
from pathlib import Path

from support.items import write_raster
from support.stac_api import serve_catalogue, serve_items
from support.variants import build_catalogue

__all__ = ["serve_items", "write_raster"]

_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
_SHIPPED = Path(__file__).resolve().parent / "data"


def _serve_forever(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=("pc", "es"))
    parser.add_argument("shared", nargs="?", type=Path, default=_SHARED if _SHARED.is_dir() else _SHIPPED)
    args = parser.parse_args(argv)
    shared = args.shared
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"xs2mask-{args.name}-")))
        served = stack.enter_context(serve_catalogue(build_catalogue(args.name, tmp, shared=shared)))
        w, s, e, n = served.bbox
        print(f"STAC API {served.url}  collections {', '.join(served.collections)}", flush=True)
        print(
            f"try: xs2mask mask-stac --stac-url {served.url} --collection {served.collections[0]} "
            f"--bbox {w} {s} {e} {n} --datetime {served.datetime} --out masks.zarr",
            flush=True,
        )
        # Ctrl-C, or a plain `kill` (SIGTERM) of a server started in the background: either way
        # the context managers stop rustac and remove the catalogue.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    _serve_forever()
