import json
from pathlib import Path

import pytest

from mmcourse.book.colab import MARKER, first_code_cell, repository_url, setup_cell_source, write_setup_cell

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_notebook_starts_with_the_shared_setup_cell(path: Path) -> None:
    expected = setup_cell_source(repository_url(ROOT / "_config.yml"))
    cell = first_code_cell(json.loads(path.read_text()))
    assert cell is not None and "".join(cell["source"]) == expected, (
        f"{path.name}: first code cell is not the shared set-up cell; run "
        f"`.venv/bin/python -m mmcourse.book.colab notebooks/*.ipynb`"
    )


def test_setup_cell_installs_only_on_colab() -> None:
    source = setup_cell_source("https://github.com/owner/book")
    assert source.startswith(MARKER)
    assert max(len(line) for line in source.splitlines()) <= 88  # notebooks/ruff.toml
    assert 'if "google.colab" in sys.modules:' in source
    assert "git+https://github.com/owner/book" in source and "mmcourse.data" in source
    namespace: dict = {}
    exec(compile(source, "setup-cell", "exec"), namespace)  # off Colab it does nothing


def test_write_setup_cell_inserts_then_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "n.ipynb"
    path.write_text(
        json.dumps(
            {
                "cells": [
                    {"cell_type": "markdown", "metadata": {}, "source": ["# T"]},
                    {"cell_type": "code", "metadata": {}, "source": ["x = 1"], "outputs": [], "execution_count": None},
                ],
                "metadata": {},
                "nbformat": 4,
                "nbformat_minor": 5,
            }
        )
    )
    source = setup_cell_source("https://github.com/owner/book")
    assert write_setup_cell(path, source) is True
    cells = json.loads(path.read_text())["cells"]
    assert [c["cell_type"] for c in cells] == ["markdown", "code", "code"]
    assert "".join(cells[1]["source"]) == source and "".join(cells[2]["source"]) == "x = 1"
    assert write_setup_cell(path, source) is False


def test_bad_repository_url() -> None:
    with pytest.raises(ValueError, match="repository_url must look like"):
        setup_cell_source("github.com/owner")
