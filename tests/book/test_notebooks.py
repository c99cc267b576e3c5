"""Notebook hygiene, the table of contents, and what a failing notebook reports."""

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_chapter_notebooks() -> None:
    assert NOTEBOOKS, "no notebooks in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    notebook = nbformat.read(str(path), as_version=4)
    nbformat.validate(notebook)
    dirty = [
        index
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"


def _toc_files(entries: list) -> list[str]:
    files = []
    for entry in entries:
        if "file" in entry:
            files.append(entry["file"])
        for key in ("chapters", "sections", "parts"):
            files += _toc_files(entry.get(key, []))
    return files


def test_every_notebook_is_in_the_table_of_contents() -> None:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"], *_toc_files(toc["parts"])]
    assert sorted(f for f in files if f.startswith("notebooks/")) == [f"notebooks/{p.stem}" for p in NOTEBOOKS]
    for name in files:
        assert any((ROOT / f"{name}{suffix}").is_file() for suffix in (".md", ".ipynb")), f"{name} in _toc.yml"


@pytest.mark.slow
def test_a_failing_notebook_names_the_notebook_and_the_cell(tmp_path: Path) -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise ValueError('boom')")]
    nbformat.write(notebook, str(tmp_path / "broken_chapter.ipynb"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval-lax",
            "--nbval-current-env",
            "-p",
            "no:cacheprovider",
            "broken_chapter.ipynb",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"),
    )
    output = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)  # without terminal colours
    assert result.returncode == 1
    assert "broken_chapter.ipynb::Cell 1" in output
    assert "ValueError: boom" in output


def _widget_cells(notebook: nbformat.NotebookNode) -> list[int]:
    """Indices of the code cells that show an ipywidgets explorer (a call to mmcourse.book.widgets' ``*_explorer``)."""
    calls = re.compile(r"^\s*\w*_explorer\(", re.M)
    return [
        index for index, cell in enumerate(notebook.cells) if cell.cell_type == "code" and calls.search(cell.source)
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_widget_has_a_static_fallback_for_the_book(path: Path) -> None:
    """A widget needs a kernel, which the static book does not have: its cell is hidden there (remove-output), and
    the code cell just before it draws the same thing as a figure or a table, which the book shows instead."""
    notebook = nbformat.read(str(path), as_version=4)
    for index in _widget_cells(notebook):
        assert "remove-output" in notebook.cells[index].metadata.get("tags", []), f"{path.name} cell {index}"
        previous = [cell for cell in notebook.cells[:index] if cell.cell_type == "code"][-1].source
        last_line = previous.strip().splitlines()[-1]
        draws = "plt.show()" in previous or "display(" in previous or re.match(r"^[\w.]+(\(.*\))?$", last_line)
        assert draws, f"{path.name} cell {index}: the cell before a widget must show its static figure or table"
