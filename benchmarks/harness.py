"""What every benchmark here shares: fresh-process cases, their measurement, the run options, the report.

A case runs in a fresh Python process so that its peak resident memory is its own and every run is
cold. The parent calls :func:`spawn` with a JSON spec; the child is the same script started with
``--child SPEC`` (from :func:`add_run_options`), whose :func:`parse_args` hands the spec to
:func:`child`, which calls the script's case function with it and prints the result on a ``RESULT``
line. The child imports the same xs2mask as the parent (its package root goes first on ``PYTHONPATH``).

Measured: wall time, CPU time (user + system, every thread) and peak resident memory (``ru_maxrss``) of
a section in the child (:class:`Stopwatch`), and the cores other processes kept busy meanwhile (from
``/proc/stat``, in :func:`spawn`), since the machine may be shared; ``--max-busy`` waits for it to be
idle before each case (:func:`interleave`). Reported as JSON (:func:`write_json`) and markdown tables
(:func:`markdown_table`, :func:`summarise`).

Example (the parent and the child are one script)::

    def run_case(case: str, size: int) -> dict[str, Any]:
        with Stopwatch() as watch:
            ...
        return {"case": case, "megapixels": size**2 / 1e6, **watch.figures()}

    add_run_options(parser, cases=("a", "b"))
    args = parse_args(parser, None, run_case, needs="sen12ms_cr")
    if args is None:  # this process was a child, or the shared data is missing
        return 0
    runs = []
    for turn in interleave(args.cases, args.repeat, args):
        result = spawn(__file__, {"case": turn.case, "size": 512}, args.timeout)
        print_run(turn, args.repeat, result)
        runs.append(result)
    print(markdown_table(["case", "wall s"], [[r["case"], f"{r['seconds']:.1f}"] for r in summarise(runs)]))
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from types import ModuleType
from typing import Any, Generic, TypeVar

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "xs2mask-bench"
RESULT = "RESULT "  # the child's result line starts with this

K = TypeVar("K", bound=Hashable)


# --------------------------------------------------------------------------- run options


def add_run_options(
    parser: argparse.ArgumentParser,
    cache: Path | None = DEFAULT_CACHE,
    cache_help: str = "where the inputs are cached",
    *,
    cases: Sequence[str] = (),
    extra_cases: Sequence[str] = (),
    repeat: int = 1,
    repeat_help: str = "fresh-process runs per case; the best is kept",
    data: bool = True,
    timeout: float | None = 1800,
) -> None:
    """Add the options the benchmarks share: cases, repeats, output, data, cache, time limit, idle wait.

    ``--cases`` (when ``cases`` are given) chooses among ``cases`` and ``extra_cases``, all of ``cases``
    by default; ``--repeat`` defaults to ``repeat``. ``cache=None`` leaves out ``--cache``,
    ``data=False`` leaves out ``--data`` (for a benchmark that needs neither); ``timeout=None``: no
    limit per case unless ``--timeout`` asks for one. ``--child`` (hidden) runs one case: see
    :func:`child`.

    Examples
    --------
    >>> parser = argparse.ArgumentParser()
    >>> add_run_options(parser, cases=("a", "b"), extra_cases=("c",))
    >>> args = parser.parse_args(["--max-busy", "0.3"])
    >>> args.cases, args.repeat, args.max_busy
    (['a', 'b'], 1, 0.3)
    """
    if cases:
        parser.add_argument("--cases", nargs="+", choices=[*cases, *extra_cases], default=list(cases))
    parser.add_argument("--repeat", type=int, default=repeat, help=repeat_help)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    if data:
        parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    if cache is not None:
        parser.add_argument("--cache", type=Path, default=cache, help=cache_help)
    parser.add_argument("--timeout", type=float, default=timeout, help="seconds allowed per case")
    parser.add_argument(
        "--max-busy",
        type=float,
        help="before each case, wait until other processes use fewer than this many cores",
    )
    parser.add_argument("--idle-timeout", type=float, default=300, help="longest wait for --max-busy")
    parser.add_argument("--child", help=argparse.SUPPRESS)


def parse_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    run_case: Callable[..., dict[str, Any]],
    needs: str | None = None,
) -> argparse.Namespace | None:
    """The parent's options, or None when there is nothing more to do: this process was a child (it
    ran its case with ``run_case``, see :func:`child`) or the shared data lacks ``needs``.

    Examples
    --------
    >>> parser = argparse.ArgumentParser()
    >>> add_run_options(parser, data=False)
    >>> parse_args(parser, ["--child", '{"case": "a"}'], lambda case: {"case": case})
    RESULT {"case": "a"}
    """
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, run_case)
        return None
    if needs is not None and data_missing(args.data, needs):
        return None
    return args


def data_missing(data: Path, needed: str) -> bool:
    """True, after saying so, when the shared data folder ``data`` lacks ``needed`` (nothing to measure).

    Examples
    --------
    >>> data_missing(Path("/nowhere"), "sen12ms_cr")
    shared data not found at /nowhere: nothing to benchmark (pass --data)
    True
    """
    if (data / needed).exists():
        return False
    print(f"shared data not found at {data}: nothing to benchmark (pass --data)")
    return True


# --------------------------------------------------------------------------- machine and source


def cpu_name() -> str:
    """CPU model and logical core count, e.g. ``"AMD EPYC, 2 logical cores"``."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} logical cores"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def source_version() -> str:
    """The measured code: ``src`` tree hash (``-dirty`` with local changes) and the commit it is at.

    The tree hash changes only when the package source does, not with commits to tests or docs.

    Examples
    --------
    >>> source_version()  # doctest: +SKIP
    'src d3c3142 (commit 572b53b)'
    """
    try:
        tree = _git("rev-parse", "--short", "HEAD:src")
        dirty = _git("status", "--porcelain", "src")
        commit = _git("rev-parse", "--short", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"src {tree}{'-dirty' if dirty else ''} (commit {commit})"


def source_warning(runs: Iterable[Mapping[str, Any]]) -> str | None:
    """A warning when the xs2mask source changed between the runs (their ``source``), else None."""
    sources = sorted({r["source"] for r in runs})
    if len({src.split(" (commit")[0] for src in sources}) > 1:
        return f"WARNING: the xs2mask source changed during the benchmark: {', '.join(sources)}"
    return None


def versions(*modules: str) -> dict[str, str]:
    """``{module: __version__}`` of modules, imported here (in a child: already imported by the case)."""
    return {name: importlib.import_module(name).__version__ for name in modules}


def environment(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the JSON report says about the machine and the software: CPU, sources, Python and versions."""
    return {
        "cpu": cpu_name(),
        "source": sorted({r["source"] for r in runs}),
        "python": platform.python_version(),
        "numpy": np.__version__,
        **(runs[0].get("versions", {}) if runs else {}),
    }


def tests_module(name: str) -> ModuleType:
    """A helper module of the test suite (``tests/servers.py``, ``tests/support``...), imported from here.

    Examples
    --------
    >>> tests_module("servers").serve_items  # doctest: +SKIP
    <function serve_items at 0x...>
    """
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return importlib.import_module(name)


def warm_memory(gib: float) -> float:
    """Allocate and touch ``gib`` GiB in a child process that then exits; return its seconds.

    On a virtual machine that hands freed memory back to its host (free page reporting, a balloon),
    the first process to use that memory again pays the host's page faults: here a child touching
    4 GiB took 8.6 s on a cold VM, and the first job of a round spent 3 s more in the kernel (sys
    time 4.5 s against 1.5 s) than the same job a minute later. Warming once before the cases makes
    the first case pay what the others pay. The memory is touched, not kept: the child exits.

    Examples
    --------
    >>> warm_memory(0.01) >= 0
    True
    """
    code = f"import numpy as np; np.ones(int({gib} * 2**30) // 8).sum()"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t


# --------------------------------------------------------------------------- measuring in the child


def cpu_seconds() -> float:
    """CPU time of this process so far: user + system, every thread."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far in MiB (``ru_maxrss``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def rss_mb(pid: int | None = None) -> float:
    """Current resident memory of a process (this one by default) in MiB; 0 without ``psutil``."""
    try:
        import psutil
    except ImportError:
        return 0.0
    return psutil.Process(pid).memory_info().rss / 2**20


class Stopwatch:
    """Wall time, CPU time and memory of a section of this process.

    After the ``with`` block: ``seconds``, ``cpu_seconds``, ``rss_before_mb`` (resident memory at the
    start) and ``peak_rss_mb`` (the process's high-water mark at the end); ``start`` is the
    ``time.perf_counter()`` reading the wall time counts from.

    Examples
    --------
    >>> with Stopwatch() as watch:
    ...     _ = sum(range(1000))
    >>> sorted(watch.figures())
    ['cpu_seconds', 'peak_rss_mb', 'rss_before_mb', 'seconds']
    """

    def __enter__(self) -> Stopwatch:
        self.rss_before_mb = rss_mb()
        self._cpu = cpu_seconds()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
        self.cpu_seconds = cpu_seconds() - self._cpu
        self.peak_rss_mb = peak_rss_mb()

    def figures(self) -> dict[str, float]:
        """The section's figures, as a case reports them."""
        return {
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "peak_rss_mb": self.peak_rss_mb,
            "rss_before_mb": self.rss_before_mb,
        }


def child(spec: str, run: Callable[..., dict[str, Any]]) -> None:
    """The child's side of :func:`spawn`: ``run(**spec)`` and its result on a ``RESULT`` line.

    Examples
    --------
    >>> child('{"case": "a"}', lambda case: {"case": case, "seconds": 1.0})
    RESULT {"case": "a", "seconds": 1.0}
    """
    print(RESULT + json.dumps(run(**json.loads(spec))), flush=True)


# --------------------------------------------------------------------------- the parent


def cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU jiffies of the whole machine since boot, from ``/proc/stat`` (Linux only)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def busy_cores(seconds: float = 2.0) -> float | None:
    """How many cores the machine keeps busy over the next ``seconds`` (None where unknown)."""
    before = cpu_jiffies()
    time.sleep(seconds)
    after = cpu_jiffies()
    if before is None or after is None or after[1] == before[1]:
        return None
    return (os.cpu_count() or 1) * (after[0] - before[0]) / (after[1] - before[1])


def wait_for_idle(max_busy: float, timeout: float) -> float | None:
    """Wait until other processes keep fewer than ``max_busy`` cores busy; return the last reading."""
    deadline = time.monotonic() + timeout
    busy = busy_cores()
    while busy is not None and busy > max_busy and time.monotonic() < deadline:
        busy = busy_cores(5.0)
    if busy is not None and busy > max_busy:
        print(f"  machine still busy ({busy:.2f} cores) after {timeout:.0f} s; running anyway", flush=True)
    return busy


@dataclass(frozen=True)
class Turn(Generic[K]):
    """One run of a case: its round (0-based), the case, the busy cores measured before (or None)."""

    round: int
    case: K
    busy: float | None


def interleave(cases: Sequence[K], repeat: int, args: argparse.Namespace) -> Iterator[Turn[K]]:
    """Every case once per round, ``repeat`` rounds, so drift hits every case alike.

    Before each turn it waits for the machine to be idle when ``args.max_busy`` asks for it.

    Examples
    --------
    >>> args = argparse.Namespace(max_busy=None, idle_timeout=0)
    >>> [(t.round, t.case) for t in interleave(["a", "b"], 2, args)]
    [(0, 'a'), (0, 'b'), (1, 'a'), (1, 'b')]
    """
    for i in range(repeat):
        for case in cases:
            busy = None if args.max_busy is None else wait_for_idle(args.max_busy, args.idle_timeout)
            yield Turn(i, case, busy)


def _child_env() -> dict[str, str]:
    """The environment of a child: this xs2mask's package root first on ``PYTHONPATH``."""
    env = dict(os.environ)
    found = importlib.util.find_spec("xs2mask")
    if found is not None and found.origin is not None:
        root = str(Path(found.origin).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def spawn(script: str | Path, spec: Mapping[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run one case of ``script`` in a fresh interpreter (``script --child SPEC``); return its result.

    Adds ``source`` (:func:`source_version` at the start), ``process_wall_s`` (the child's whole life,
    imports included) and ``other_cores``: the cores other processes kept busy meanwhile (the whole
    machine's CPU time less the child's and its own children's, per second; None where unknown).

    Examples
    --------
    >>> spawn(__file__, {"case": "xs2mask-numpy", "size": 512}, timeout=600)  # doctest: +SKIP
    {'case': 'xs2mask-numpy', 'seconds': 1.4, ..., 'other_cores': 0.02}
    """
    source = source_version()
    cmd = [sys.executable, str(script), "--child", json.dumps(spec, default=str)]
    jiffies = cpu_jiffies()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(), timeout=timeout, check=False)
    wall = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode or not lines:
        raise RuntimeError(f"case {spec.get('case')} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix(RESULT))
    after = cpu_jiffies()
    result.update(source=source, process_wall_s=wall, other_cores=None)
    if jiffies is not None and after is not None and after[1] > jiffies[1]:
        # A child's own workers are reaped by the child, so their CPU is in RUSAGE_CHILDREN too.
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        child_cpu = (usage.ru_utime + usage.ru_stime) - (children.ru_utime + children.ru_stime)
        machine_cpu = (os.cpu_count() or 1) * wall * (after[0] - jiffies[0]) / (after[1] - jiffies[1])
        result["other_cores"] = max(0.0, (machine_cpu - child_cpu) / wall)
    return result


# --------------------------------------------------------------------------- report


def fmt(value: float | None, spec: str, missing: str = "") -> str:
    """``spec.format(value)``, or ``missing`` for None.

    Examples
    --------
    >>> fmt(0.5, "{:.2f}"), fmt(None, "{:.2f}", "?")
    ('0.50', '?')
    """
    return missing if value is None else spec.format(value)


def print_run(
    turn: Turn[Any],
    repeat: int,
    result: Mapping[str, Any],
    label: str | None = None,
    *,
    seconds: str = "{:.1f}",
    unit: str = "MB",
    after_seconds: str = "",
    after_rss: str = "",
) -> None:
    """The progress line of one run: wall time, peak RSS, the cores other processes used.

    Examples
    --------
    >>> print_run(Turn(0, "a", None), 1, {"seconds": 1.23, "peak_rss_mb": 500, "other_cores": None})
      run 1/1 a: 1.2 s, peak RSS 500 MB, other processes ? cores
    """
    print(
        f"  run {turn.round + 1}/{repeat} {turn.case if label is None else label}: "
        f"{seconds.format(result['seconds'])} s{after_seconds}, peak RSS {result['peak_rss_mb']:.0f} {unit}"
        f"{after_rss}, other processes {fmt(result['other_cores'], '{:.2f}', '?')} cores",
        flush=True,
    )


def summarise(
    runs: Sequence[Mapping[str, Any]],
    key: Callable[[Mapping[str, Any]], Hashable] = itemgetter("case"),
    extra: Callable[[list[Mapping[str, Any]]], Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per ``key`` (the case by default), in the order of the first runs.

    A row is the fastest run (its times, its outside load) with ``all_seconds``, ``mpx_per_s`` (from the
    runs' ``megapixels``) and the largest ``peak_rss_mb`` over the repeats; ``extra(runs)`` adds fields
    computed from all of the key's runs.

    Examples
    --------
    >>> runs = [{"case": "a", "seconds": s, "megapixels": 1.0, "peak_rss_mb": m} for s, m in ((2, 5), (1, 4))]
    >>> row = summarise(runs)[0]
    >>> row["seconds"], row["all_seconds"], row["mpx_per_s"], row["peak_rss_mb"]
    (1, [2, 1], 1.0, 5)
    """
    rows = []
    for k in dict.fromkeys(key(r) for r in runs):
        mine = [r for r in runs if key(r) == k]
        best = min(mine, key=itemgetter("seconds"))
        rows.append(
            {
                **best,
                "all_seconds": [r["seconds"] for r in mine],
                "mpx_per_s": best["megapixels"] / best["seconds"],
                "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
                **(extra(mine) if extra else {}),
            }
        )
    return rows


def figure_cells(row: Mapping[str, Any]) -> list[str]:
    """A :func:`summarise` row's wall time, Mpx/s, CPU time and peak RSS as table cells.

    Examples
    --------
    >>> figure_cells({"seconds": 2.04, "mpx_per_s": 0.5, "cpu_seconds": 3.96, "peak_rss_mb": 512.4})
    ['2.0', '0.500', '4.0', '512']
    """
    return [
        f"{row['seconds']:.1f}",
        f"{row['mpx_per_s']:.3f}",
        f"{row['cpu_seconds']:.1f}",
        f"{row['peak_rss_mb']:.0f}",
    ]


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1) -> str:
    """A markdown table: the first ``left`` columns aligned left, the others (figures) right.

    Examples
    --------
    >>> print(markdown_table(["case", "s"], [["a", "1.0"]]))
    | case | s |
    |---|---:|
    | a | 1.0 |
    """
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * left + "---:|" * (len(columns) - left)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path | None, doc: Mapping[str, Any] | Sequence[Any]) -> None:
    """Write the results to ``path`` (nothing when None) and say so."""
    if path is None:
        return
    path.write_text(json.dumps(doc, indent=2, default=str))
    print(f"wrote {path}")
