"""The book's Sphinx extension (book/_ext/mmcourse_book.py): the results table's name filter, and the exercises
read from the chapter notebooks for the instructor guide."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
from conftest import solution_metadata
from docutils import nodes

from mmcourse.book.results import Result, record

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "book" / "_ext"))

import mmcourse_book  # noqa: E402

CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def result(name: str) -> Result:
    return Result("04_gpt", name, 1.0, "s", "fast", "a machine", "2026-01-01", "2.0")


def test_a_chapters_table_puts_profiles_side_by_side_in_the_order_the_chapter_measures(
    results_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    measurements = tmp_path / "measurements"
    monkeypatch.setattr(mmcourse_book, "MEASUREMENTS", measurements)
    (measurements / "gpu").mkdir(parents=True)
    gpu = Result(
        "07_fusion", "early_fusion_accuracy", 0.99, "", "gpu", "NVIDIA H200", "2026-11-26", "2.11", "8000 steps"
    )
    (measurements / "gpu" / "07_fusion.json").write_text(json.dumps({gpu.name: asdict(gpu)}))
    record("07_fusion", "question_only_right_kind", 0.5, "", "kind of answer")  # recorded in 7.4 ...
    record("07_fusion", "early_fusion_accuracy", 0.9, "", "40 steps")  # ... before the summary after 7.7
    record("04_gpt", "validation_loss", 1.5, "nats/char")  # another chapter: not in this table

    table, sources = run_results_table({"chapter": "07_fusion"})
    header, *rows = [[entry.astext() for entry in row] for row in table.findall(nodes.row)]
    assert header == ["figure", "fast", "gpu", "what it is"]
    assert rows == [
        ["question only right kind", "0.5", "—", "kind of answer"],
        ["early fusion accuracy", "0.9", "0.99", "fast: 40 steps; gpu: 8000 steps"],
    ]
    assert "gpu: committed measurements (book/measurements), on NVIDIA H200, 2026-11-26" in sources.astext()


def test_matching_keeps_the_names_that_match_a_pattern_in_order() -> None:
    results = [result(name) for name in ("parameters", "train_seconds", "train_tokens_per_second", "vit_train_seconds")]
    assert mmcourse_book.matching(results, []) == results
    assert [r.name for r in mmcourse_book.matching(results, ["*_seconds"])] == ["train_seconds", "vit_train_seconds"]
    both = mmcourse_book.matching(results, ["*_seconds", "parameters"])
    assert [r.name for r in both] == ["parameters", "train_seconds", "vit_train_seconds"]
    assert mmcourse_book.matching(results, ["*_Seconds"]) == []  # names are lowercase; matching is exact


def run_results_table(options: dict) -> list[nodes.Node]:
    state_machine = SimpleNamespace(reporter=None)  # the directive reports nothing; docutils wants the attribute
    directive = mmcourse_book.ResultsTable("results-table", [], options, [], 1, 0, "", None, state_machine)
    return directive.run()


def test_results_table_shows_only_the_names_asked_for(
    results_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mmcourse_book, "MEASUREMENTS", tmp_path / "no-measurements")
    record("04_gpt", "train_seconds", 12.5, "s")
    record("04_gpt", "validation_loss", 1.5, "nats/char")

    table, sources = run_results_table({"names": "*_seconds"})
    header, *rows = [[entry.astext() for entry in row] for row in table.findall(nodes.row)]
    assert header == ["chapter", "figure", "fast", "what it is"]
    assert rows == [["04_gpt", "train seconds", "12.5 s", ""]]
    assert sources.astext().startswith("fast: this build, on ")
    assert len(list(run_results_table({})[0].findall(nodes.row))) == 3  # no filter: both, and the header

    (message,) = run_results_table({"names": "*_ms"})
    assert message.astext().startswith("No results named *_ms have been recorded yet")


def test_chapter_exercises_reads_title_objective_time_and_kind(tmp_path: Path) -> None:
    def exercise(label: str, title: str, minutes: int) -> nbformat.NotebookNode:
        text = f"```{{exercise}} {title}\n:label: {label}\n\n*Objective:* learn {label}. *Time:* {minutes} minutes.\n"
        return nbformat.v4.new_markdown_cell(text + "\nThe task.\n```")

    def solution(label: str, source: str) -> nbformat.NotebookNode:
        return nbformat.v4.new_code_cell(source, metadata={"nbgrader": solution_metadata(label)})

    code = "import math\n\n\ndef my_thing(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION"
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        exercise("ex-09-code", "Write it", 5),
        solution("ex-09-code", code),
        exercise("ex-09-measure", "Measure it", 10),
        solution("ex-09-measure", "a = b = None  # replace None with your measurements\n### BEGIN SOLUTION\n"),
        exercise("ex-09-lost", "No solution cell", 15),
    ]
    path = tmp_path / "09_test.ipynb"
    nbformat.write(notebook, str(path))

    found = mmcourse_book.chapter_exercises(path)
    assert [(e.label, e.title, e.kind, e.minutes) for e in found] == [
        ("ex-09-code", "Write it", "code", 5),
        ("ex-09-measure", "Measure it", "experiment", 10),
        ("ex-09-lost", "No solution cell", "unknown", 15),
    ]
    assert found[0].objective == "learn ex-09-code"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[path.stem for path in CHAPTERS])
def test_every_chapter_exercise_is_complete_in_the_guide_table(chapter: Path) -> None:
    for exercise in mmcourse_book.chapter_exercises(chapter):
        assert exercise.kind in {"code", "experiment"} and exercise.minutes > 0 and exercise.objective, exercise
