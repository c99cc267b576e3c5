"""The set-up cell every chapter notebook starts with: on Colab it installs mmcourse and its data; elsewhere
it does nothing (``make`` has already set up ``.venv``).

The repository URL lives in one place, ``_config.yml`` (``repository.url``); ``python -m mmcourse.book.colab``
rewrites the first cell of each notebook from it, and a test checks that every notebook carries it unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

MARKER = "# mmcourse set-up cell"

_TEMPLATE = """{marker}: on Colab it installs mmcourse and its offline data;
# elsewhere it does nothing.
import subprocess
import sys

if "google.colab" in sys.modules:
    package = "mmcourse[colab] @ git+{url}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], check=True)
    subprocess.run([sys.executable, "-m", "mmcourse.data", "install"], check=True)"""


def setup_cell_source(repository_url: str) -> str:
    """The exact source of the shared first code cell."""
    if not re.match(r"^https://[\w.-]+/[\w.-]+/[\w.-]+$", repository_url):
        raise ValueError(f"repository_url must look like https://github.com/OWNER/NAME, got {repository_url!r}")
    return _TEMPLATE.format(marker=MARKER, url=repository_url)


def repository_url(config_path: Path) -> str:
    """``repository.url`` from the book's ``_config.yml``."""
    import yaml

    config = yaml.safe_load(Path(config_path).read_text())
    try:
        return str(config["repository"]["url"])
    except (KeyError, TypeError):
        raise ValueError(f"{config_path} has no repository.url") from None


def first_code_cell(notebook: dict) -> dict | None:
    return next((cell for cell in notebook.get("cells", []) if cell.get("cell_type") == "code"), None)


def write_setup_cell(notebook_path: Path, source: str) -> bool:
    """Make the notebook's first code cell the set-up cell (replace or insert). Returns True if it changed."""
    notebook = json.loads(notebook_path.read_text())
    cell = first_code_cell(notebook)
    if cell is not None and "".join(cell["source"]) == source:
        return False
    new_cell = {
        "cell_type": "code",
        "execution_count": None,
        "metadata": {"tags": ["remove-cell"]},
        "outputs": [],
        "source": source.splitlines(keepends=True),
    }
    if cell is not None and (MARKER in "".join(cell["source"]) or not "".join(cell["source"]).strip()):
        cell.update(new_cell)  # an older set-up cell, or an empty placeholder for it
    else:
        cells = notebook["cells"]
        cells.insert(cells.index(cell) if cell is not None else len(cells), new_cell)
    notebook_path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Write the shared set-up cell into chapter notebooks.")
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--config", type=Path, default=Path("_config.yml"))
    args = parser.parse_args(argv)
    source = setup_cell_source(repository_url(args.config))
    for path in args.notebooks:
        print(f"{path}: {'updated' if write_setup_cell(path, source) else 'already current'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
