"""MkDocs hook: publish the executed notebooks of the top-level ``examples/`` folder as docs pages.

The notebooks live beside the code (``tests/test_examples.py`` runs them), not under ``docs/``; each
``examples/NAME.ipynb`` becomes the page ``examples/NAME.ipynb`` of the site, rendered with its stored
outputs by the ``mkdocs-jupyter`` plugin. Listed under ``hooks`` in ``mkdocs.yml``.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]


# Before mkdocs-jupyter's on_files (default priority 0), which turns the notebooks into pages.
@event_priority(100)
def on_files(files: Files, config: MkDocsConfig) -> Files:
    for notebook in sorted((ROOT / "examples").glob("*.ipynb")):
        # A plain file whose source folder is the repository root (not File.generated: mkdocs-jupyter
        # reads the path through src_dir, which a generated file lacks).
        files.append(
            File(
                f"examples/{notebook.name}",
                src_dir=str(ROOT),
                dest_dir=config.site_dir,
                use_directory_urls=config.use_directory_urls,
            )
        )
    return files
