"""The notebooks of ``examples/``: stored executed, with their figures, and they still run.

Each notebook is executed again in a temporary folder by a Jupyter kernel of this interpreter
(``ipykernel``'s ``python3``), so a change that breaks an example fails here. After changing a
notebook or the code it shows, store it executed again with::

    python tests/test_examples.py                     # every notebook
    python tests/test_examples.py examples/evaluate.ipynb
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import xs2mask

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
#: Every notebook, with the figures (PNG outputs) it shows as stored, i.e. run offline.
FIGURES = {
    "quickstart.ipynb": 2,
    "stac_time_series.ipynb": 2,
    "evaluate.ipynb": 1,
    "local_cluster.ipynb": 0,
    "published_models.ipynb": 0,  # it masks, and plots, only where OmniCloudMask's weights are
}
#: Seconds a cell may run; each notebook takes well under a minute on 2 cores.
CELL_TIMEOUT = 300


def execute(notebook: nbformat.NotebookNode, folder: Path) -> nbformat.NotebookNode:
    """Run ``notebook`` in place with ``folder`` as its working directory; raise on the first error."""
    client = NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=CELL_TIMEOUT,
        record_timing=False,  # no timestamps in the stored files: they change on every run
        resources={"metadata": {"path": str(folder)}},
    )
    return client.execute()


def _figures(notebook: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in output.get("data", {}) for cell in _code_cells(notebook) for output in cell.outputs
    )


def _code_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_every_notebook_is_listed():
    assert sorted(p.name for p in EXAMPLES.glob("*.ipynb")) == sorted(FIGURES)


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_stored_executed_with_figures(name):
    notebook = nbformat.read(EXAMPLES / name, as_version=4)
    nbformat.validate(notebook)
    cells = _code_cells(notebook)
    # Run top to bottom in one session: counts 1, 2, 3 ... with no cell skipped or rerun.
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1))
    outputs = [output for cell in cells for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert not [o for o in outputs if o.output_type == "stream" and "Traceback" in o.text]
    assert _figures(notebook) == FIGURES[name]


def _figures_here(name: str) -> int:
    """The figures ``name`` shows when run on this machine."""
    if name == "published_models.ipynb":
        return int(xs2mask.models.get("omnicloudmask-v4").is_available())
    return FIGURES[name]


@pytest.mark.parametrize("name", sorted(FIGURES))
def test_runs(name, tmp_path):
    notebook = execute(nbformat.read(EXAMPLES / name, as_version=4), tmp_path)
    assert _figures(notebook) == _figures_here(name)


if __name__ == "__main__":
    for path in [Path(p) for p in sys.argv[1:]] or sorted(EXAMPLES.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        with tempfile.TemporaryDirectory() as folder:
            execute(notebook, Path(folder))
        nbformat.write(notebook, path)
        print(f"executed and stored {path}")
