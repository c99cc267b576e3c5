import json
import re
from collections import Counter
from pathlib import Path

import nbformat
import pytest
import torch
from conftest import solution_metadata

from mmcourse.exercises import (
    Hint,
    expect,
    expect_close,
    expect_shape,
    is_solution_cell,
    make_student_notebook,
    run_check,
)

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_pass_and_hint(capsys) -> None:
    assert run_check("sum", lambda: expect(1 + 1 == 2, "unused"))
    assert "[sum] correct" in capsys.readouterr().out

    def wrong() -> None:
        raise Hint("you forgot the scaling by sqrt(d_k).")

    assert not run_check("scaling", wrong)
    assert "[scaling] not yet: you forgot the scaling by sqrt(d_k)." in capsys.readouterr().out


def test_a_check_result_shows_nothing_in_a_notebook() -> None:
    """A checker cell's last expression is the check's result: IPython must not print ``True`` under the pass line."""
    from IPython.core.formatters import DisplayFormatter

    result = run_check("quiet", lambda: None)
    assert result and result.passed and result.name == "quiet"
    assert DisplayFormatter().format(result) == ({}, {})


def test_unanswered_and_raising_answers_are_reported_not_raised(capsys) -> None:
    def unanswered() -> None:
        raise NotImplementedError()

    assert not run_check("mask", unanswered)
    assert "not answered yet" in capsys.readouterr().out

    def broken() -> None:
        torch.zeros(2, 3) @ torch.zeros(2, 3)

    assert not run_check("matmul", broken)
    out = capsys.readouterr().out
    assert "your code raised RuntimeError" in out and "line" in out


def test_expect_close_never_shows_the_expected_values() -> None:
    expected = torch.tensor([0.123456, 0.654321])
    with pytest.raises(Hint) as error:
        expect_close(torch.tensor([0.0, 0.0]), expected, "Check the softmax axis.")
    message = str(error.value)
    assert "wrong values" in message and "Check the softmax axis." in message
    assert "0.1234" not in message and "0.6543" not in message
    with pytest.raises(Hint, match=r"has shape \(3,\), but the expected shape is \(2,\)"):
        expect_close(torch.zeros(3), expected, "")
    with pytest.raises(Hint, match="should be a torch.Tensor, but it is a list"):
        expect_shape([1, 2], (2,))
    expect_close(expected + 1e-7, expected, "")


def exercise_notebook(path: Path) -> Path:
    notebook = nbformat.v4.new_notebook()
    solution = nbformat.v4.new_code_cell(
        "def answer():\n    ### BEGIN SOLUTION\n    return 42\n    ### END SOLUTION",
        metadata={"nbgrader": solution_metadata("ex-answer")},
    )
    solution.outputs = [nbformat.v4.new_output("stream", text="42\n")]
    solution.execution_count = 3
    notebook.cells = [nbformat.v4.new_markdown_cell("# Title"), solution, nbformat.v4.new_code_cell("answer()")]
    nbformat.write(notebook, str(path))
    return path


def test_student_notebook_has_stub_and_no_outputs(tmp_path: Path) -> None:
    source = exercise_notebook(tmp_path / "chapter.ipynb")
    assert make_student_notebook(source, tmp_path / "student" / "chapter.ipynb") == 1
    student = json.loads((tmp_path / "student" / "chapter.ipynb").read_text())
    code = "".join(student["cells"][1]["source"])
    assert "raise NotImplementedError()" in code and "return 42" not in code and "def answer():" in code
    assert all(
        not cell.get("outputs") and cell.get("execution_count") is None
        for cell in student["cells"]
        if cell["cell_type"] == "code"
    )


def test_unmarked_solution_region_is_refused(tmp_path: Path) -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("### BEGIN SOLUTION\nx = 1\n### END SOLUTION")]
    nbformat.write(notebook, str(tmp_path / "bad.ipynb"))
    with pytest.raises(ValueError, match="bad.ipynb: cell 0 has '### BEGIN SOLUTION' but no nbgrader solution"):
        make_student_notebook(tmp_path / "bad.ipynb", tmp_path / "out.ipynb")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_chapter_student_notebooks_hide_every_solution(path: Path, tmp_path: Path) -> None:
    cleared = make_student_notebook(path, tmp_path / path.name)
    assert cleared >= 1, f"{path.name} has no exercise"
    text = (tmp_path / path.name).read_text()
    assert "BEGIN SOLUTION" not in text and text.count("raise NotImplementedError()") >= cleared


# ----------------------------------------------------------------------------------------------------------------
# The exercise convention of every chapter (book/instructor.md lists the exercises from it)

EXERCISE_BLOCK = re.compile(r"^```\{exercise\}[^\n]*\n:label: (?P<label>\S+)\n(?P<body>.*?)^```", re.M | re.S)
CODE_ANSWER = re.compile(r"^def my_\w+\(", re.M)  # the student writes a function my_...()
MEASUREMENT_PLACEHOLDER = re.compile(r"^\w+( = \w+)* = None  # replace None with your measurements\n")


def exercises(chapter: Path) -> list[tuple[str, str, str]]:
    """(label, text of the exercise block, source of its solution cell) for each exercise of a chapter notebook."""
    cells = json.loads(chapter.read_text(encoding="utf-8"))["cells"]
    solutions = {
        cell["metadata"]["nbgrader"]["grade_id"]: "".join(cell["source"]) for cell in cells if is_solution_cell(cell)
    }
    blocks = [
        (block["label"], block["body"])
        for cell in cells
        if cell["cell_type"] == "markdown"
        for block in EXERCISE_BLOCK.finditer("".join(cell["source"]))
    ]
    labels = [label for label, _ in blocks]
    assert sorted(solutions) == sorted(labels), f"{chapter.name}: solution cells' grade_ids differ from the labels"
    return [(label, body, solutions[label]) for label, body in blocks]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[path.stem for path in CHAPTERS])
def test_every_chapter_has_code_and_experiment_exercises(chapter: Path) -> None:
    found = exercises(chapter)
    assert len(found) >= 4, f"{chapter.name} has {len(found)} exercises; every chapter has at least four"
    kinds = Counter()
    for label, body, solution in found:
        assert re.fullmatch(rf"ex-{chapter.name[:2]}-[a-z0-9]+(-[a-z0-9]+)*", label), f"{label} in {chapter.name}"
        assert "*Objective:*" in body, f"{label} states no *Objective:*"
        assert re.search(r"\*Time:\* \d+ minutes", body), f"{label} states no *Time:* N minutes"
        code, experiment = bool(CODE_ANSWER.search(solution)), bool(MEASUREMENT_PLACEHOLDER.match(solution))
        assert code != experiment, f"{label}: a solution either defines my_...() or starts from measurements = None"
        kinds["code" if code else "experiment"] += 1
    assert kinds["code"] >= 1 and kinds["experiment"] >= 1, f"{chapter.name} has exercises of one kind only: {kinds}"


def test_exercise_labels_are_unique_across_the_book() -> None:
    labels = Counter(label for chapter in CHAPTERS for label, _, _ in exercises(chapter))
    assert not [label for label, count in labels.items() if count > 1], f"labels used twice: {labels.most_common(3)}"


def test_instructor_guide_covers_every_chapter() -> None:
    guide = (ROOT / "book" / "instructor.md").read_text(encoding="utf-8")
    for chapter in CHAPTERS:
        for expected in (f"{{doc}}`../notebooks/{chapter.stem}`", f"```{{exercise-table}} {chapter.stem}\n"):
            assert expected in guide, f"book/instructor.md has no {expected.strip()}: a new chapter needs its section"
