"""Student notebooks: with the solutions cleared, every chapter still runs top to bottom in the fast profile;
the only failures are the exercise cells themselves (NotImplementedError), and each checker says "not answered
yet" instead of raising."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmcourse.exercises import is_solution_cell, make_student_notebook

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.enable_socket  # the Jupyter kernel talks to this process over localhost ...
@pytest.mark.allow_hosts(["127.0.0.1"])  # ... and nowhere else
@pytest.mark.parametrize("chapter", CHAPTERS, ids=[path.stem for path in CHAPTERS])
def test_student_notebook_fails_only_in_its_exercises(
    chapter: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("MMCOURSE_PROFILE", "fast")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the kernel runs beside another test worker: one thread each
    monkeypatch.setenv("MMCOURSE_RESULTS", str(tmp_path / "results"))  # keep the book's results untouched
    student = tmp_path / chapter.name
    assert make_student_notebook(chapter, student) >= 4, "every chapter has at least four exercises"
    notebook = nbformat.read(str(student), as_version=4)
    NotebookClient(
        notebook, allow_errors=True, timeout=600, resources={"metadata": {"path": str(chapter.parent)}}
    ).execute()

    solution_cells = [index for index, cell in enumerate(notebook.cells) if is_solution_cell(cell)]
    unanswered = 0
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        errors = [output for output in cell.outputs if output.output_type == "error"]
        text = "".join(output.get("text", "") for output in cell.outputs if output.output_type == "stream")
        if errors:
            assert index in solution_cells, f"{chapter.name} cell {index} failed: {errors[0].ename}: {errors[0].evalue}"
            assert errors[0].ename == "NotImplementedError", f"{chapter.name} cell {index}: {errors[0].ename}"
        unanswered += "not answered yet" in text
    assert unanswered == len(solution_cells), "each exercise's checker reports it as not answered yet"
