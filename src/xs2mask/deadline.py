"""A wall-clock deadline on each whole HTTP answer, however slowly the server sends it.

A socket timeout bounds each read, not the answer: a server that sends one byte a second never
trips a 5-second timeout, and requests, urllib3 and urllib offer nothing else. Here the
connections of :func:`session` (requests, for pystac-client) and of :func:`urlopen` (urllib, for
weights downloads) read through a socket that knows by when the answer must be complete: the
deadline starts when a request is sent (its status line, headers and body all count), each read
waits at most for the time left, and once none is left the read fails with
:class:`DeadlineExceeded`, a :class:`TimeoutError`, so the libraries report it as the timeout it is.

The seconds come from :func:`answers_within`, for the requests the current thread sends inside
it; outside, the connections behave like plain ones.

Examples
--------
>>> with answers_within(5.0):  # doctest: +SKIP
...     text = session().get("https://earth-search.aws.element84.com/v1", timeout=5).text

A passed deadline is told from other failures however deeply the libraries wrap it:

>>> import requests
>>> exceeded(requests.ConnectionError(DeadlineExceeded("answer not complete within 5 s")))
True
>>> exceeded(requests.ConnectionError(ConnectionRefusedError()))
False
"""

from __future__ import annotations

import contextlib
import http.client
import io
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any, cast

import requests
import urllib3
from requests.adapters import HTTPAdapter

__all__ = ["DeadlineExceeded", "answers_within", "exceeded", "session", "urlopen"]

_budget = threading.local()


class DeadlineExceeded(TimeoutError):
    """An answer was not complete within its deadline."""


@contextlib.contextmanager
def answers_within(seconds: float | None) -> Iterator[None]:
    """Each request this thread sends inside the block must be answered in full within ``seconds``.

    Only connections of :func:`session` and :func:`urlopen` obey it; ``None`` lifts the deadline.
    """
    previous = getattr(_budget, "seconds", None)
    _budget.seconds = seconds
    try:
        yield
    finally:
        _budget.seconds = previous


def exceeded(err: BaseException) -> bool:
    """Whether ``err`` or an error it wraps (cause or context) is a passed deadline."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, DeadlineExceeded):
            return True
        # urllib3 and requests keep the original error in their arguments too (MaxRetryError.reason).
        linked = [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
        todo += [x for x in linked if isinstance(x, BaseException)]
    return False


class _Socket:
    """A connected socket whose reads stop at the owning connection's deadline."""

    def __init__(self, sock: socket.socket, conn: _Deadline) -> None:
        self._sock, self._conn = sock, conn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def makefile(self, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if mode not in ("r", "rb"):
            # passed through as given: typeshed's overloads take only literal modes
            return self._sock.makefile(mode, *args, **kwargs)  # type: ignore[call-overload]
        # As socket.makefile does: the socket closes only once its files are closed too.
        self._sock._io_refs += 1  # type: ignore[attr-defined]  # CPython's private count, not in typeshed
        # SocketIO reads through recv_into (ours) and reaches the rest through __getattr__
        return io.BufferedReader(socket.SocketIO(cast(socket.socket, self), "rb"))

    def recv_into(self, buffer: Any, *args: Any) -> int:
        deadline = self._conn.deadline
        if deadline is None:
            return self._sock.recv_into(buffer, *args)
        due, seconds = deadline
        left = due - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded(f"the answer was not complete within {seconds:g} s")
        saved = self._sock.gettimeout()
        self._sock.settimeout(left if saved is None else min(saved, left))
        try:
            return self._sock.recv_into(buffer, *args)
        except TimeoutError:
            if time.monotonic() < due:
                raise
        finally:
            self._sock.settimeout(saved)
        raise DeadlineExceeded(f"the answer was not complete within {seconds:g} s")


class _Deadline:
    """Mixin for http.client and urllib3 connections: reads stop at the deadline of the last request."""

    deadline: tuple[float, float] | None = None
    # the connection's socket, then its _Socket stand-in
    sock: Any

    # super(): the connection class this is mixed into, which mypy cannot see from the mixin
    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self.sock = _Socket(self.sock, self)

    def request(self, *args: Any, **kwargs: Any) -> Any:
        seconds = getattr(_budget, "seconds", None)
        self.deadline = None if seconds is None else (time.monotonic() + seconds, seconds)
        return super().request(*args, **kwargs)  # type: ignore[misc]


class _HTTPConnection(_Deadline, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_Deadline, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _Adapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        if type(manager) is urllib3.ProxyManager:  # SOCKS managers bring their own pools
            manager.pool_classes_by_scheme = _POOLS
        return manager


def session(max_retries: Any = 0) -> requests.Session:
    """A requests session whose answers obey :func:`answers_within`; ``max_retries`` as in requests.

    Examples
    --------
    >>> type(session().get_adapter("https://example.org")).__name__
    '_Adapter'
    """
    s = requests.Session()
    for prefix in ("http://", "https://"):
        s.mount(prefix, _Adapter(max_retries=max_retries))
    return s


class _PlainHTTP(_Deadline, http.client.HTTPConnection):
    pass


class _PlainHTTPS(_Deadline, http.client.HTTPSConnection):
    pass


class _Handler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """urllib's HTTP and HTTPS handlers, on connections that obey :func:`answers_within`."""

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        plain = http_class is http.client.HTTPConnection
        return super().do_open(_PlainHTTP if plain else _PlainHTTPS, req, **kwargs)


def urlopen(request: urllib.request.Request, *, timeout: float, within: float) -> Any:
    """:func:`urllib.request.urlopen` whose answer (headers and body) must be complete within ``within`` s.

    ``timeout`` still bounds each read. The deadline starts when the request is sent, here: reading
    the body later still counts against it.
    """
    with answers_within(within):
        return urllib.request.build_opener(_Handler()).open(request, timeout=timeout)
