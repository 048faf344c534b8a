"""Installing without torch: the CPU path never imports it; torch models say what to install.
Installed, xs2mask's annotations reach a user's type checker (``py.typed``).

The wheel itself (its files, a fresh environment without torch, ``xs2mask demo`` offline) is
checked by ``python3 dev.py test``, which builds and installs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import xs2mask
from xs2mask import models
from xs2mask.models.backends import Runtime

TORCH_MODULES = ("torch", "safetensors", "segmentation_models_pytorch")
# Runs the command line in a fresh interpreter where the torch modules cannot be imported
# (a None entry in sys.modules makes `import` fail and `find_spec` find nothing), as without the extra.
WITHOUT_TORCH = (
    f"import sys; sys.modules.update(dict.fromkeys({TORCH_MODULES!r})); "
    "from xs2mask.cli import main; sys.exit(main(sys.argv[1:]))"
)
# Runs the command line, then prints the torch modules that got imported.
IMPORTED_TORCH = (
    "import sys; from xs2mask.cli import main; code = main(sys.argv[1:]); "
    f"print('imported:', [m for m in {TORCH_MODULES!r} if m in sys.modules]); sys.exit(code)"
)


@pytest.fixture
def without_torch(monkeypatch):
    for name in TORCH_MODULES:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda cube: xs2mask.predict(cube, model="xs2mask-4b-torch"), id="predict-auto"),
        pytest.param(
            lambda cube: cube.s2mask.predict(model="xs2mask-4b-torch", device="cpu"), id="predict-cpu"
        ),
        # a runtime no other test uses: a model loaded earlier in this process would come from the cache
        pytest.param(lambda cube: models.load(models.get("xs2mask-4b-torch"), Runtime(threads=5)), id="load"),
    ],
)
def test_a_torch_model_without_torch_names_the_extra(without_torch, call):
    cube = xs2mask.data.demo_scene()
    with pytest.raises(xs2mask.DependencyError) as caught:
        call(cube)
    message = str(caught.value)
    assert isinstance(caught.value, ImportError)
    assert "model 'xs2mask-4b-torch' needs the torch backend" in message
    assert "pip install 'xs2mask[torch]'" in message
    assert "--index-url https://download.pytorch.org/whl/cpu" in message


def test_training_without_torch_names_the_extra(without_torch):
    from xs2mask.training.train import TrainConfig, train

    config = TrainConfig.from_toml(Path(__file__).parents[1] / "configs" / "xs2mask-4b.toml")
    with pytest.raises(xs2mask.DependencyError, match=r"training needs the torch backend.*xs2mask\[torch\]"):
        train(config)


def test_the_command_line_without_torch_is_one_error_line(tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, "demo", "--model", "xs2mask-4b-torch", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2, run.stderr
    (line,) = run.stderr.splitlines()
    assert line.startswith("xs2mask: error: model 'xs2mask-4b-torch' needs the torch backend")
    assert "pip install 'xs2mask[torch]'" in line
    assert not (tmp_path / "demo_mask.tif").exists()


def test_the_cpu_path_never_imports_torch(tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", IMPORTED_TORCH, "demo", "--model", "xs2mask-4b", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "imported: []" in run.stdout.splitlines()
    assert (tmp_path / "demo_mask.tif").is_file()


@pytest.mark.slow
def test_a_type_checker_reads_the_annotations_of_the_installed_package(tmp_path):
    pytest.importorskip("mypy")
    script = tmp_path / "user.py"
    script.write_text('import xs2mask\n\nmasks = xs2mask.predict(xs2mask.data.demo_scene(), tta="seven")\n')
    # xs2mask found on the interpreter's path, as an installed package: mypy reads it only with py.typed.
    env = {**os.environ, "PYTHONPATH": str(Path(xs2mask.__file__).parents[1])}
    env.pop("MYPYPATH", None)
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "user.py"],
        cwd=tmp_path,  # no project config: a user's bare mypy
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    wrong = 'user.py:3: error: Argument "tta" to "predict" has incompatible type "str"; expected "int"'
    assert wrong in run.stdout
    assert "Found 1 error in 1 file" in run.stdout
