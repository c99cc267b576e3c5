"""Every chapter notebook as ``make test`` executed it, once, in the fast profile (``book/build.py`` writes a report
per notebook to ``_build/execution/fast/``): it ran to its end, each exercise's student version behaves (the cleared
cell raises only NotImplementedError and its checker says "not answered yet"), and every glue key the prose uses
was recorded. Without a build they skip, unless MMCOURSE_REQUIRE_BOOK=1 (as in make test), when they fail."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

from mmcourse.book.notebooks import Execution, chapter_notebooks, code_hash, read_report, report_path
from mmcourse.exercises import is_solution_cell

pytestmark = pytest.mark.book  # make test runs these after building the book

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = chapter_notebooks(ROOT)
REPORTS = ROOT / "_build" / "execution" / "fast"


def report_of(path: Path) -> Execution:
    report = report_path(REPORTS, path)
    if not report.is_file():
        if os.environ.get("MMCOURSE_REQUIRE_BOOK") == "1":
            pytest.fail(f"{report} is missing: `make test` executes every notebook before these tests")
        pytest.skip("the notebooks were not executed (make test executes them)")
    execution = read_report(report)
    assert execution.profile == "fast"
    assert execution.code_hash == code_hash(nbformat.read(str(path), as_version=4)), (
        f"{report.name} is of an older version of {path.name}: run make test again"
    )
    return execution


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs_to_its_end(path: Path) -> None:
    execution = report_of(path)
    assert execution.failure is None, f"{path.name} failed at {execution.failure}\n{execution.failure.traceback}"
    code_cells = [i for i, cell in enumerate(nbformat.read(str(path), as_version=4).cells) if cell.cell_type == "code"]
    assert all(execution.cell_seconds[index] is not None for index in code_cells), "every code cell ran"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_every_glue_key_the_prose_uses_was_recorded(path: Path) -> None:
    execution = report_of(path)
    assert execution.referenced, f"{path.name} glues no number into its prose"
    assert not execution.missing_glue(), f"{path.name}: used in the prose, not recorded: {execution.missing_glue()}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_student_version_fails_only_in_its_exercises(path: Path) -> None:
    execution = report_of(path)
    solutions = [i for i, cell in enumerate(nbformat.read(str(path), as_version=4).cells) if is_solution_cell(cell)]
    assert len(solutions) >= (4 if path.stem[:2].isdigit() else 2), "every chapter has at least four exercises"
    assert [probe.solution_cell for probe in execution.exercises] == solutions, "each exercise was probed"
    assert not execution.problems(), "\n".join(execution.problems())
