"""HTTP servers on 127.0.0.1 that misbehave on demand, for the network and read-fault tests.

* :class:`FaultServer` answers each path as its :class:`Fault` says (status, body, delay, a slow
  loris), any other path with its ``default`` (404, or e.g. a 503 on every request): a STAC API or a
  weights host that fails in every way met in the wild, over HTTP or HTTPS (:func:`self_signed_cert`).
* :class:`FlakyFileServer` serves COGs with ranges and, on demand, 503s, truncated answers, stalls past
  a timeout, a slow loris, or 404s.
* :func:`exception_texts`: every text an error carries (where a test looks for leaked secrets).

Example (needs files and servers, so not a doctest)::

    with FaultServer(default=Fault.error(503)) as server:
        stac.search(server.url, collections="sentinel-2-l2a", retries=2)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http
import http.server
import json
import re
import ssl
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

__all__ = ["Fault", "FaultServer", "FlakyFileServer", "exception_texts", "self_signed_cert"]


class _ThreadedServer:
    """A ``ThreadingHTTPServer`` on a free port of 127.0.0.1 in a daemon thread; a context manager."""

    _httpd: http.server.ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _scheme = "http"
    _url = ""

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        raise NotImplementedError

    def _wrap(self, httpd: http.server.ThreadingHTTPServer) -> None:
        """Hook to wrap the listening socket (TLS)."""

    @property
    def url(self) -> str:
        """Root URL; it stays readable after the server stops (for messages that name it)."""
        if not self._url:
            raise RuntimeError("server not started")
        return self._url

    def __enter__(self) -> Self:
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._wrap(self._httpd)
        self._url = f"{self._scheme}://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name=type(self).__name__, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._httpd = None


@dataclass(frozen=True)
class Fault:
    """How :class:`FaultServer` answers one path: status, content type and body, at a pace.

    ``{root}`` in the body becomes the server's URL (for links back to it). ``delay_s`` waits before
    answering. ``drip_s`` > 0 sends the answer one byte per ``drip_s`` seconds (a slow loris): the
    whole answer, status line and headers included, or only the body with ``drip_body_only``.
    """

    body: bytes = b""
    status: int = 200
    content_type: str = "application/json"
    delay_s: float = 0.0
    drip_s: float = 0.0
    drip_body_only: bool = False

    @classmethod
    def json(cls, doc: Any, **kw: Any) -> Fault:
        return cls(json.dumps(doc).encode(), **kw)

    @classmethod
    def error(cls, status: int) -> Fault:
        """An error answer as a STAC API gives one: ``status`` with a small JSON body."""
        return cls.json({"code": status, "description": "test fault server"}, status=status)


_NOT_FOUND = Fault(b"not found", status=404, content_type="text/plain")


class FaultServer(_ThreadedServer):
    """Threaded HTTP server on 127.0.0.1 answering each request as the :class:`Fault` of its path says.

    ``routes`` maps a path (with its query, else without) to a fault; other paths get ``default``
    (404 unless told). Every method is answered alike. A dripping answer stops after ``max_s``
    seconds or when the client hangs up, so no thread outlives a test for long. ``paths`` lists
    (method, path) of every request, ``requests`` counts them, :meth:`reset` forgets them; ``routes``
    and ``default`` may change while it runs. ``tls``: (certificate, key) PEM files
    (:func:`self_signed_cert`) to serve HTTPS. Use as a context manager.
    """

    def __init__(
        self,
        routes: Mapping[str, Fault] | None = None,
        *,
        default: Fault = _NOT_FOUND,
        max_s: float = 10.0,
        tls: tuple[Path, Path] | None = None,
    ):
        self.routes: dict[str, Fault] = dict(routes or {})
        self.default, self.max_s, self.tls = default, max_s, tls
        self.paths: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._scheme = "https" if tls is not None else "http"

    @property
    def requests(self) -> int:
        with self._lock:
            return len(self.paths)

    def reset(self) -> None:
        with self._lock:
            self.paths.clear()

    def _wrap(self, httpd: http.server.ThreadingHTTPServer) -> None:
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True)

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with owner._lock:
                    owner.paths.append((self.command, self.path))
                fault = owner.routes.get(self.path) or owner.routes.get(self.path.split("?", 1)[0])
                fault = fault or owner.default
                body = fault.body.replace(b"{root}", owner.url.encode())
                head = (
                    f"HTTP/1.1 {fault.status} {http.HTTPStatus(fault.status).phrase}\r\n"
                    f"Content-Type: {fault.content_type}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n"
                ).encode()
                data = head + (b"" if self.command == "HEAD" else body)
                slow = data if not fault.drip_body_only else data[len(head) :]
                fast = data[: len(data) - len(slow)] if fault.drip_s > 0 else data
                self.close_connection = True
                time.sleep(min(fault.delay_s, owner.max_s))
                with contextlib.suppress(OSError):  # the client hung up (a deadline passed)
                    self.wfile.write(fast)
                    self.wfile.flush()
                    if fault.drip_s <= 0:
                        return
                    end = time.monotonic() + owner.max_s
                    for i in range(len(slow)):
                        if time.monotonic() > end:
                            return
                        self.wfile.write(slow[i : i + 1])
                        self.wfile.flush()
                        time.sleep(fault.drip_s)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, its own authority, and its key: ``(cert.pem, key.pem)`` in ``folder``.

    Clients trust it through ``REQUESTS_CA_BUNDLE`` (requests) or ``SSL_CERT_FILE`` (urllib).
    """
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = Path(folder) / "cert.pem", Path(folder) / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def exception_texts(err: BaseException) -> list[str]:
    """Every text an error shows or carries: ``str`` and ``repr`` of it and of each error in its chain
    (causes and contexts), and of their arguments; what a test searches for leaked secrets."""
    texts: list[str] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        texts += [str(e), repr(e), *(repr(a) for a in e.args)]
        texts += [repr(v) for v in vars(e).values() if isinstance(v, str)]
        todo += [e.__cause__, e.__context__]
    return texts


class FlakyFileServer(_ThreadedServer):
    """Threaded HTTP file server on 127.0.0.1 (HEAD, GET with ``Range``) that misbehaves on demand.

    Serves the files under ``root`` as a COG host does (``206 Partial Content`` for ranges). The next
    ``faults`` GET requests whose path contains ``only`` (every GET when ``only`` is "") misbehave as
    ``kind`` says, then it serves normally again; ``faults=-1`` misbehaves for ever:

    * ``"503"``: answer ``503 Service Unavailable``;
    * ``"truncate"``: announce the full ``Content-Length`` but send half the bytes and close;
    * ``"stall"``: wait ``stall_s`` seconds before answering (past the client's timeout);
    * ``"drip"``: send the body one byte per ``stall_s`` seconds (a slow loris; for 10 s at most).

    A path under ``missing`` answers 404. ``paths`` lists (method, path, status) of every request;
    :meth:`faulty` counts the misbehaving answers. Set the fields while it runs; use as a context
    manager. :meth:`href` maps a local file under ``root`` to its URL.
    """

    def __init__(self, root: Path, kind: str = "503", faults: int = 0, only: str = "", stall_s: float = 3.0):
        self.root = Path(root).resolve()
        self.kind, self.faults, self.only, self.stall_s = kind, faults, only, stall_s
        self.missing: set[str] = set()
        self.paths: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()

    def href(self, path: str | Path) -> str:
        return f"{self.url}/{Path(path).resolve().relative_to(self.root).as_posix()}"

    def faulty(self) -> int:
        with self._lock:
            return sum(1 for _, _, status in self.paths if status < 0)

    def _misbehave(self, method: str, path: str) -> str | None:
        """The fault to play on this request, if any (and spend one)."""
        with self._lock:
            if method != "GET" or self.faults == 0 or self.only not in path:
                return None
            if self.faults > 0:
                self.faults -= 1
            return self.kind

    def _log(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.paths.append((method, path, status))

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                path = urllib.request.url2pathname(self.path.split("?", 1)[0]).lstrip("/")
                file = (owner.root / path).resolve()
                if path in owner.missing or not file.is_file() or owner.root not in file.parents:
                    owner._log(self.command, self.path, 404)
                    return self._send(404, b"not found")
                fault = owner._misbehave(self.command, self.path)
                if fault == "503":
                    owner._log(self.command, self.path, -503)
                    return self._send(503, b"busy")
                if fault == "stall":
                    owner._log(self.command, self.path, -408)
                    time.sleep(owner.stall_s)
                data = file.read_bytes()
                status, headers = 200, {}
                match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if match:
                    start = int(match.group(1))
                    end = min(int(match.group(2) or len(data) - 1), len(data) - 1)
                    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                    data, status = data[start : end + 1], 206
                if fault == "truncate":
                    owner._log(self.command, self.path, -206)
                    return self._send(status, data, headers, cut=max(1, len(data) // 2))
                if fault == "drip":
                    owner._log(self.command, self.path, -200)
                    return self._send(status, data, headers, drip=owner.stall_s)
                if fault is None:
                    owner._log(self.command, self.path, status)
                return self._send(status, data, headers)

            def _send(
                self,
                status: int,
                body: bytes,
                headers: Mapping[str, str] | None = None,
                cut: int = 0,
                drip: float = 0.0,
            ):
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if cut:
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    # the client may have given up already (a timeout)
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        end = time.monotonic() + 10
                        while drip and body and time.monotonic() < end:
                            self.wfile.write(body[:1])
                            self.wfile.flush()
                            body = body[1:]
                            time.sleep(drip)
                        self.wfile.write(body[:cut] if cut else body)
                if cut or drip:
                    self.close_connection = True

            do_GET = do_HEAD = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
