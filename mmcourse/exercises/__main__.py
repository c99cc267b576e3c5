"""``python -m mmcourse.exercises SOURCE_DIR DEST_DIR``: write the student notebooks (``make student``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from mmcourse.exercises import make_student_notebook


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mmcourse.exercises SOURCE_DIR DEST_DIR``: write the student notebooks."""

    parser = argparse.ArgumentParser(description="Write student notebooks with solutions cleared.")
    parser.add_argument("source", type=Path, help="folder of chapter notebooks")
    parser.add_argument("destination", type=Path, help="folder for the student notebooks")
    args = parser.parse_args(argv)
    notebooks = sorted(args.source.glob("*.ipynb"))
    if not notebooks:
        parser.error(f"no notebooks in {args.source}")
    for path in notebooks:
        count = make_student_notebook(path, args.destination / path.name)
        print(f"{args.destination / path.name}: {count} solution cell(s) cleared")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
