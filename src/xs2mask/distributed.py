"""xs2mask on a Dask ``distributed`` cluster: models loaded once per worker, threads set, GPU routing.

:func:`register` installs a :class:`ModelPlugin` on every worker of a client's
cluster, present and future (a worker restarted by its nanny runs it again).
On each worker the plugin

- pins one :class:`~xs2mask.models.Runtime` for every model the process loads
  (:func:`xs2mask.models.backends.pin_runtime`): the device, the precision and
  the threads of each model call. The graph was built on the client, whose cores
  and devices say nothing about the worker's; the nanny sets OMP/MKL threads to
  1, so without this torch and onnxruntime would run single-threaded or, with
  several Dask threads, oversubscribe the cores;
- loads the named models before any task arrives, so the first tasks do not all
  wait for the same load and each worker loads each model exactly once.

With ``inference_workers`` (e.g. the GPU workers), only those workers load
models; every other worker reads and writes as usual and, for each block, hands
the model call to an inference worker (``client.submit(..., workers=...)`` from
inside the task) and waits for it with its thread seceded. This does not rely on
Dask resource annotations, which graph optimisation drops (dask #7036, #9541).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from distributed import WorkerPlugin

from .models import ModelSpec, Runtime

T = TypeVar("T")

# Set by ModelPlugin on workers that hand model calls to others: their names or addresses.
_inference_workers: tuple[str | int, ...] | None = None


@dataclass(frozen=True)
class ModelPlugin(WorkerPlugin):
    """Worker plugin: pin the runtime and load the models once per worker process.

    Build it with :func:`register`, which also resolves model names and checks
    the options on the client.

    Attributes
    ----------
    specs : the models to load.
    device, dtype : as in :func:`xs2mask.predict`; ``"auto"`` is resolved on each worker.
    threads : CPU cores per block (see ``threads`` of :func:`xs2mask.predict`); None: the
        worker's share of its host's cores (host cores / Dask threads of all workers on that host).
    compile : ``torch.compile`` torch models when loading them.
    inference_workers : names or addresses of the workers that run the models;
        None: every worker.
    """

    name: ClassVar[str] = "xs2mask-models"

    specs: tuple[ModelSpec, ...]
    device: str = "auto"
    dtype: str = "auto"
    threads: int | None = None
    compile: bool = False
    inference_workers: tuple[str | int, ...] | None = None

    async def setup(self, worker: Any) -> None:
        global _inference_workers
        from .models.backends import load, pin_runtime, resolve_device, resolve_dtype

        if self.inference_workers is not None and not _is_named(worker, self.inference_workers):
            _inference_workers = self.inference_workers
            return
        _inference_workers = None
        threads = self.threads or await _share_of_cores(worker)
        device = resolve_device(self.device, self.specs)
        runtime = Runtime(
            device=device,
            dtype=resolve_dtype(self.dtype, device, self.specs),
            threads=threads,
            compile=self.compile,
        )
        pin_runtime(runtime)
        for spec in self.specs:
            load(spec, runtime)

    def teardown(self, worker: Any) -> None:
        global _inference_workers
        from .models.backends import pin_runtime

        _inference_workers = None
        pin_runtime(None)


def register(
    client: Any,
    model: str | ModelSpec | Sequence[str | ModelSpec] = "default",
    *,
    device: str = "auto",
    dtype: str = "auto",
    threads: int | None = None,
    compile: bool = False,
    inference_workers: Sequence[str | int] | None = None,
) -> ModelPlugin:
    """Load ``model`` once on each worker of ``client``'s cluster and pin how it runs there.

    Parameters
    ----------
    client
        A ``distributed.Client``.
    model
        The model(s) the jobs use: registered names or specs. ``"default"`` is the
        default model for all 13 bands; name the model of a 4- or 6-band cube.
    device, dtype
        As in :func:`xs2mask.predict`, resolved on each worker (``"auto"``: its GPU if it has one).
    threads
        CPU cores per block (as in :func:`xs2mask.predict`); default: the worker's share of its
        host's cores.
    compile
        ``torch.compile`` torch models when they load (on a GPU the pass that measures
        memory at load compiles it, so no task waits for the compiler).
    inference_workers
        Names or addresses of the workers that run the models (e.g. the GPU
        workers); the others read, write and hand each block to one of them.

    Returns
    -------
    ModelPlugin
        The registered plugin.

    Examples
    --------
    >>> from distributed import Client, LocalCluster
    >>> client = Client(LocalCluster(n_workers=2, threads_per_worker=1))  # doctest: +SKIP
    >>> register(client, "ukis-csmask-4b-l2a", device="cpu")  # doctest: +SKIP
    >>> cube.s2mask.predict(model="ukis-csmask-4b-l2a").compute()  # doctest: +SKIP
    """
    from .bands import BAND_NAMES
    from .inference import _resolve_models

    specs = _resolve_models(model, list(BAND_NAMES))
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    workers = None if inference_workers is None else _worker_names(client, inference_workers)
    plugin = ModelPlugin(
        specs=specs,
        device=device,
        dtype=dtype,
        threads=threads,
        compile=bool(compile),
        inference_workers=workers,
    )
    client.register_plugin(plugin)
    return plugin


def run_model(function: Callable[..., T], *args: Any) -> T:
    """Call ``function(*args)`` here, or on an inference worker when this worker hands model calls on.

    Used by the engine's Dask kernel; outside a worker with routing it is a plain call.
    """
    if _inference_workers is None:
        return function(*args)
    from distributed import worker_client

    # worker_client secedes this task's thread: the worker reads the next block meanwhile.
    with worker_client() as client:
        future = client.submit(
            function, *args, workers=list(_inference_workers), allow_other_workers=False, pure=False
        )
        return future.result()


def _worker_names(client: Any, wanted: Sequence[str | int]) -> tuple[str | int, ...]:
    """The scheduler's own names (or addresses) of ``wanted``: ``workers=`` matches names by type."""
    info = client.scheduler_info()["workers"]
    by_name = {str(w["name"]): w["name"] for w in info.values()}
    found = tuple(w if w in info else by_name.get(str(w)) for w in wanted)
    missing = [w for w, f in zip(wanted, found, strict=True) if f is None]
    if missing or not found:
        raise ValueError(
            f"inference_workers {list(wanted)}: no worker named {missing or 'at all'} in this cluster "
            f"(its workers: {sorted(by_name)}). Name workers with `dask worker --name gpu-0`."
        )
    return tuple(f for f in found if f is not None)


def _is_named(worker: Any, names: tuple[str | int, ...]) -> bool:
    return worker.name in names or worker.address in names


async def _share_of_cores(worker: Any) -> int:
    """Host cores / Dask threads of every worker on the host (at least 1)."""
    from dask.system import CPU_COUNT  # affinity and cgroup limits counted
    from distributed.comm import get_address_host

    host = get_address_host(worker.address)
    identity = await worker.scheduler.identity()
    others = sum(
        info["nthreads"]
        for address, info in identity["workers"].items()
        if get_address_host(address) == host and address != worker.address
    )
    return max(1, CPU_COUNT // (others + worker.state.nthreads))
