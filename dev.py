#!/usr/bin/env python3
"""Set up a virtual environment and run xs2mask's main job or its tests.

    python3 dev.py demo     # mask the shipped Sentinel-2 scene with the default model
    python3 dev.py test     # lint and run the test suite

Needs only Python >= 3.10: the first run creates ``.venv`` and installs xs2mask
with its optional models and test tools; later runs reuse it (reinstalling
only when ``pyproject.toml`` changes). Extra arguments go to the command
(``python3 dev.py test -k chunk``, ``python3 dev.py demo --tta 7``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".xs2mask-installed"
CONSTRAINTS = ROOT / ".ci" / "constraints.txt"


def _python() -> Path:
    return BIN / ("python.exe" if os.name == "nt" else "python")


def ensure_environment() -> None:
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + CONSTRAINTS.read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not _python().exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [str(_python()), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    print("installing xs2mask[all,test] (first run only; torch is large)", flush=True)
    subprocess.run([*pip, "-c", str(CONSTRAINTS), "-e", f"{ROOT}[all,test]"], check=True)
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"demo", "test"}:
        print(__doc__)
        return 2
    ensure_environment()
    command, rest = argv[0], argv[1:]
    if command == "demo":
        return subprocess.call([str(BIN / "xs2mask"), "demo", *rest])
    lint = subprocess.call([str(BIN / "ruff"), "check", "src", "tests", "benchmarks", "dev.py"], cwd=ROOT)
    tests = subprocess.call([str(_python()), "-m", "pytest", *rest], cwd=ROOT)
    return lint or tests


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
