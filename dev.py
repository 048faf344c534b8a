#!/usr/bin/env python3
"""Set up a virtual environment and run xs2mask's main job or its tests.

    python3 dev.py demo     # mask the shipped Sentinel-2 scene with the default model
    python3 dev.py test     # lint, type-check, run the test suite, check the wheel and build the docs

Needs only Python >= 3.10: the first run creates ``.venv`` and installs xs2mask
with its optional models, torch, the test tools and the docs tools; later runs
reuse it (reinstalling only when ``pyproject.toml`` changes). Extra arguments go
to the command (``python3 dev.py test -k chunk``, ``python3 dev.py demo --tta 7``);
``test`` with arguments runs only lint, the type check and pytest.

``test`` without arguments first also does what a user's install does: it builds the
wheel, installs it with no extras (so without torch) into a fresh virtual
environment, runs ``xs2mask demo`` there with the network cut off, and builds
the docs site (``site/``) with every warning an error.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".xs2mask-installed"
CONSTRAINTS = ROOT / ".ci" / "constraints.txt"
# --no-cache-dir: pip would otherwise keep a second copy of every wheel (torch's alone is GBs) in ~/.cache
PIP = ["-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-cache-dir"]
# What the development environment takes on disk, torch's CUDA build included (7.1 GB seen on Linux x86_64).
ENVIRONMENT_GB = 8
# Files the wheel must carry: the demo scene and the shipped models' weights (every file of these
# folders), and the marker that tells type checkers to read xs2mask's annotations (PEP 561).
PACKAGE_DATA = ("src/xs2mask/data", "src/xs2mask/models/weights")
PACKAGE_FILES = ("src/xs2mask/py.typed",)


def _python(bin_dir: Path = BIN) -> Path:
    return bin_dir / ("python.exe" if os.name == "nt" else "python")


def ensure_environment() -> None:
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + CONSTRAINTS.read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not _python().exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    free_gb = shutil.disk_usage(VENV).free / 1e9
    if free_gb < ENVIRONMENT_GB:
        # pip's own message, hundreds of lines into its output, is a bare "[Errno 28] No space left on device"
        print(
            f"warning: {free_gb:.1f} GB free on the disk of {VENV}; the environment takes about "
            f"{ENVIRONMENT_GB} GB (torch alone 5-6 GB). Free some space if the install stops.",
            flush=True,
        )
    print("installing xs2mask[all,test,docs] (first run only; torch is large)", flush=True)
    subprocess.run([str(_python()), *PIP, "-c", str(CONSTRAINTS), "-e", f"{ROOT}[all,test,docs]"], check=True)
    STAMP.write_text(wanted)


def _step(name: str, started: float, ok: bool) -> bool:
    print(f"{name}: {'ok' if ok else 'FAILED'} in {time.perf_counter() - started:.0f} s", flush=True)
    return ok


def _offline(command: list[str]) -> list[str]:
    """``command`` without network access where Linux lets an unprivileged user cut it off."""
    unshare = shutil.which("unshare")
    if unshare and subprocess.call([unshare, "-rn", "true"], stderr=subprocess.DEVNULL) == 0:
        return [unshare, "-rn", *command]
    print("(unshare -rn is not available here: the demo runs with the network on)", flush=True)
    return command


def check_wheel() -> bool:
    """Build the wheel, install it without extras into a fresh venv and run ``xs2mask demo`` offline."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xs2mask-wheel-") as tmp:
        work = Path(tmp)
        build = [str(_python()), "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work), str(ROOT)]
        subprocess.run(build, check=True)
        (wheel,) = work.glob("xs2mask-*.whl")
        inside = set(zipfile.ZipFile(wheel).namelist())
        files = [p for folder in PACKAGE_DATA for p in (ROOT / folder).iterdir() if p.is_file()]
        files += [ROOT / f for f in PACKAGE_FILES]
        shipped = {p.relative_to(ROOT / "src").as_posix() for p in files if p.suffix != ".pyc"}
        if not shipped <= inside:
            print(f"the wheel lacks {sorted(shipped - inside)}: list them in [tool.setuptools.package-data]")
            return _step("wheel", started, False)
        env_dir = work / "venv"
        venv.EnvBuilder(with_pip=True).create(env_dir)
        bin_dir = env_dir / BIN.name
        # --no-compile: this environment is thrown away, its byte-code would never be reused
        subprocess.run([str(_python(bin_dir)), *PIP, "--no-compile", str(wheel)], check=True)
        torch_check = "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"
        if subprocess.call([str(_python(bin_dir)), "-c", torch_check]) != 0:
            print("installing the wheel without extras pulled in torch: keep torch in the [torch] extra")
            return _step("wheel", started, False)
        demo = work / "demo"
        demo.mkdir()
        # A fresh home and model folder: nothing cached by earlier runs can stand in for the wheel's files.
        env = {**os.environ, "HOME": str(demo), "XS2MASK_MODEL_DIR": str(demo / "models")}
        code = subprocess.call(_offline([str(bin_dir / "xs2mask"), "demo"]), cwd=demo, env=env)
        ok = code == 0 and (demo / "xs2mask-demo" / "demo_mask.tif").is_file()
        return _step(f"wheel {wheel.name} -> fresh venv without torch -> xs2mask demo offline", started, ok)


def type_check() -> bool:
    """mypy over the package, with the settings in ``pyproject.toml``; any error fails the step."""
    started = time.perf_counter()
    run = subprocess.run([str(BIN / "mypy")], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    print(run.stdout, end="", flush=True)
    # mypy's last line counts: "Found 3 errors in 2 files (...)" or "Success: no issues found in ..."
    summary = (run.stdout.strip().splitlines() or [f"exit status {run.returncode}"])[-1]
    return _step(f"types (mypy: {summary})", started, run.returncode == 0)


def build_docs() -> bool:
    """Build the docs site into ``site/``, every warning (broken link, bad docstring) an error."""
    started = time.perf_counter()
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's banner about MkDocs 2
    # Not --quiet: it drops the warnings before --strict can count them, and the build passes.
    code = subprocess.call([str(BIN / "mkdocs"), "build", "--strict"], cwd=ROOT, env=env)
    return _step("docs (mkdocs build --strict)", started, code == 0)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test"}:
        print(__doc__)
        return 2
    ensure_environment()
    command, rest = argv[0], argv[1:]
    if command == "demo":
        return subprocess.call([str(BIN / "xs2mask"), "demo", *rest])
    # Lint and format over everything ruff reads: code, notebooks and the python blocks of the docs.
    lint = subprocess.call([str(BIN / "ruff"), "check", "."], cwd=ROOT)
    lint |= subprocess.call([str(BIN / "ruff"), "format", "--check", "."], cwd=ROOT)
    typed = type_check()
    # Before pytest, so that its summary stays the last line a CI log shows.
    packaged = True if rest else all([check_wheel(), build_docs()])
    tests = subprocess.call([str(_python()), "-m", "pytest", *rest], cwd=ROOT)
    return lint or tests or (0 if typed and packaged else 1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
