"""Dask checks shared by the tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dask

__all__ = ["raise_if_dask_computes"]


@contextlib.contextmanager
def raise_if_dask_computes(what: str = "the graph was computed while it was being built") -> Iterator[None]:
    """Fail the test with ``AssertionError(what)`` if anything is computed inside the block.

    Dask hands every compute to the configured scheduler; this one refuses, so a call that must only
    build a graph (lazy loading, lazy prediction) proves that it read nothing.

    Examples
    --------
    >>> import dask.array as da
    >>> with raise_if_dask_computes():
    ...     total = da.ones(4).sum()  # building a graph is fine
    >>> with raise_if_dask_computes():
    ...     total.compute()
    Traceback (most recent call last):
    AssertionError: the graph was computed while it was being built
    """

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(what)

    with dask.config.set(scheduler=refuse):
        yield
