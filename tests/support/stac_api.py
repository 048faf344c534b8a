"""A real STAC API on 127.0.0.1 for the tests: ``rustac serve`` over item and collection JSON.

Why ``rustac serve``
--------------------
It is a real STAC API server (core, collections, OGC features, item-search: GET and POST ``/search``
with ``bbox``, ``intersects``, ``datetime``, ``ids``, ``collections``, ``limit`` and ``next`` paging)
that ships as a wheel on PyPI (``rustac``), loads items and collections from JSON files into an
in-memory backend and starts in well under a second, with no database and no network. The
alternatives need more: stac-fastapi-pgstac needs a PostgreSQL server with the PostGIS and pgstac
extensions (not pip-installable; a test would need Docker or a system database), and
stac-fastapi-geoparquet needs the items converted to stac-geoparquet first plus a DuckDB/uvicorn
stack. Limits of rustac 0.9.18 (CLI 0.2.18), memory backend, measured here: it does NOT implement the
query, filter (CQL2), sort or fields extensions and does not advertise them in ``/conformance``:
``sortby`` and ``fields`` and a ``filter`` without ``filter-lang`` are silently ignored, while a POST
body with ``query`` or with ``filter-lang`` returns ZERO items (no error), and ``GET /search?sortby=``
answers 500. So ``eo:cloud_cover`` selection must be done on the client side against this server.
Results come in insertion order (items are written sorted by datetime, then id); the default page
size is 10 and ``next`` links carry ``skip``. rustac keeps the item's own links and appends its own
(``self``, ``root``, ``parent``, ``collection``), so the builders keep only the ``license`` link.

Example (needs files and servers, so not a doctest)::

    with serve_items(items, collections) as url:
        stac.search(url, collections="sentinel-2-l2a")
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

__all__ = ["free_port", "serve_catalogue", "serve_items", "unreachable_url"]


class _Servable(Protocol):
    """A built catalogue (a frozen dataclass): its items, collections, folder and ``url``."""

    url: str
    items: tuple[dict[str, Any], ...]
    collection_docs: tuple[dict[str, Any], ...]
    folder: Path


_C = TypeVar("_C", bound=_Servable)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unreachable_url() -> str:
    """URL of a port on 127.0.0.1 where nothing listens (connections are refused)."""
    return f"http://127.0.0.1:{free_port()}"


def _wait_http(
    url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            text = log.read_text(errors="replace") if log and log.exists() else ""
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}:\n{text}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s (last error: {last})")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# rustac's CLI entry point parses the process arguments after the first one (like its console script
# does), so it must run from a script file, not from ``python -c``; this works whatever PATH holds.
_RUSTAC = "import sys\n\nfrom rustac import main\n\nsys.exit(main())\n"


@contextlib.contextmanager
def serve_items(
    items: Iterable[Mapping[str, Any]],
    collections: Iterable[Mapping[str, Any]],
    *,
    workdir: Path | None = None,
    startup_timeout: float = 20.0,
) -> Iterator[str]:
    """Serve ``items`` and ``collections`` with ``rustac serve`` on 127.0.0.1; yield the API root URL.

    Every item's ``collection`` must be one of ``collections``. The server is terminated on exit.
    """
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rustac-")))
        workdir.mkdir(parents=True, exist_ok=True)
        hrefs = []
        for c in collections:
            p = workdir / f"collection-{c['id']}.json"
            p.write_text(json.dumps(c, indent=1, sort_keys=True))
            hrefs.append(str(p))
        p = workdir / "items.json"
        p.write_text(
            json.dumps({"type": "FeatureCollection", "features": list(items)}, indent=1, sort_keys=True)
        )
        hrefs.append(str(p))
        log = workdir / "rustac.log"
        script = workdir / "rustac_cli.py"
        script.write_text(_RUSTAC)
        for attempt in range(3):  # the free port may be taken between probing and binding
            url = f"http://127.0.0.1:{free_port()}"
            with log.open("w") as fh:
                proc = subprocess.Popen(
                    [sys.executable, str(script), "serve", "--addr", url.removeprefix("http://"), *hrefs],
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            try:
                _wait_http(url + "/", startup_timeout, proc, log)
            except RuntimeError:
                _stop(proc)
                if attempt == 2 or "in use" not in log.read_text(errors="replace").lower():
                    raise
                continue
            except BaseException:
                _stop(proc)
                raise
            break
        try:
            yield url
        finally:
            _stop(proc)


@contextlib.contextmanager
def serve_catalogue(cat: _C, *, startup_timeout: float = 20.0) -> Iterator[_C]:
    """Serve a built catalogue (of :mod:`support.catalogue` or :mod:`support.variants`); yield it with
    ``url`` set."""
    with serve_items(
        cat.items, cat.collection_docs, workdir=cat.folder / "_api", startup_timeout=startup_timeout
    ) as url:
        yield replace(cat, url=url)
