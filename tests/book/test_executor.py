"""The book's one notebook executor (mmcourse/notebooks.py): the static glue checks, the student-version probes, the
strict results, progress bars kept out of the pages, and the execution cache that the book build reads. A few
small synthetic notebooks are executed."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from conftest import solution_metadata, uses_a_kernel

from mmcourse.book import notebooks
from mmcourse.book.notebooks import (
    chapter_notebooks,
    exercise_problems,
    glue_problems,
    record_calls,
    solution_names_used_later,
    strip_progress_bars,
)
from mmcourse.book.results import STRICT_ENV_VAR, record

ROOT = Path(__file__).resolve().parents[2]


def notebook(*cells: str | tuple[str, str]) -> nbformat.NotebookNode:
    """Code cells from strings; ("md", text) is a markdown cell; ("solution", code) an exercise's solution cell."""
    made = nbformat.v4.new_notebook()
    made.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for cell in cells:
        if isinstance(cell, str):
            made.cells.append(nbformat.v4.new_code_cell(cell))
        elif cell[0] == "md":
            made.cells.append(nbformat.v4.new_markdown_cell(cell[1]))
        else:
            made.cells.append(nbformat.v4.new_code_cell(cell[1], metadata={"nbgrader": solution_metadata("ex-1")}))
    return made


def write(path: Path, made: nbformat.NotebookNode) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(made, str(path))
    return path


def bound(chapter: str) -> str:
    return f"from mmcourse.book.results import chapter_results\n\nresults = chapter_results({chapter!r})\n"


def test_a_name_recorded_in_two_cells_is_found_without_running_anything() -> None:
    """Chapter 7's old bug: a loop over a dict of slugs recorded what a cell before it had recorded already."""
    made = notebook(
        bound("07_fusion") + 'results.record("question_only_accuracy", 0.3)',
        'slugs = {"question only": "question_only", "early fusion": "early_fusion"}\n'
        'for name, slug in slugs.items():\n    results.record(f"{slug}_accuracy", 0.5)',
        ("md", "The question alone: {glue:text}`question_only_accuracy:.1%`."),
    )
    (problem,) = glue_problems(made, "07_fusion")
    assert "'question_only_accuracy' is recorded twice: cell 0 line 4 and cell 1 line 3" in problem
    loop = record_calls(made)[1]
    assert loop.names == ("question_only_accuracy", "early_fusion_accuracy")  # from the dict, in its order


def test_glue_keys_the_prose_uses_must_be_recorded_on_every_path() -> None:
    made = notebook(
        bound("01_x") + 'if config.big:\n    results.record("only_sometimes", 1.0)',
        'glue("shown", 2.0, display=False)',
        'for k in config.shots:\n    results.record(f"shot_{k}_mean", 1.0)',
        'other = chapter_results("02_other")\nother.record("elsewhere", 1.0)\nrecord("02_other", "too", 1.0)',
        ("md", "{glue:text}`only_sometimes` {glue:text}`shown` {glue:text}`never_made` {glue:text}`shot_4_mean`"),
    )
    problems = glue_problems(made, "01_x")
    assert any("'only_sometimes', which only a conditional record() makes (cell 0 line 5)" in p for p in problems)
    assert any("'never_made', which no record() call makes" in p for p in problems)
    assert sum("results of chapter '02_other' recorded in 01_x" in p for p in problems) == 2  # both forms
    assert len(problems) == 4, problems  # glue() makes a key; an f-string over a config's values matches by pattern
    assert record_calls(made)[2].names is None and record_calls(made)[2].matches("shot_4_mean")


def test_every_chapter_passes_the_static_glue_check() -> None:
    for path in chapter_notebooks(ROOT):
        made = nbformat.read(str(path), as_version=4)
        assert glue_problems(made, path.stem) == [], path.name
        assert solution_names_used_later(made, path.name) == [], path.name


def test_a_later_cell_that_needs_a_solution_is_found() -> None:
    made = notebook(
        "x = 1",
        ("solution", "answer = None\n### BEGIN SOLUTION\nhelper = 2\nanswer = helper * x\n### END SOLUTION"),
        "check(answer)",
        "print(helper + answer)",  # answer is the stub's too; helper only the solution's
    )
    assert solution_names_used_later(made) == ["cell 3 reads helper, which only the solution in cell 1 defines"]


def test_strict_results_refuse_a_second_place_for_one_name(results_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for _ in range(2):  # one place (a loop, a cell run again) may record a name as often as it likes
        record("99_strict", "repeated", 1.0)
    record("99_strict", "relaxed", 1.0)
    record("99_strict", "relaxed", 2.0)  # outside the executor (Jupyter): a second place is allowed
    monkeypatch.setenv(STRICT_ENV_VAR, "1")
    with pytest.raises(ValueError, match=r"99_strict: the result 'relaxed' was recorded already"):
        record("99_strict", "relaxed", 3.0)
    saved = json.loads((results_dir / "fast" / "99_strict.json").read_text())
    assert saved["relaxed"]["value"] == 2.0  # the refused value was not stored


def test_progress_bars_leave_the_outputs_and_everything_else_stays() -> None:
    made = notebook("x")
    made.metadata["widgets"] = {
        "application/vnd.jupyter.widget-state+json": {
            "state": {
                "box": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_label", "IPY_MODEL_bar"]}},
                "bar": {"model_name": "FloatProgressModel", "state": {}},
                "label": {"model_name": "HTMLModel", "state": {}},
            }
        }
    }
    view = {"application/vnd.jupyter.widget-view+json": {"model_id": "box"}, "text/plain": "train: 0%| | 0/3"}
    made.cells[0].outputs = [
        nbformat.v4.new_output("display_data", data=view),
        nbformat.v4.new_output("stream", name="stderr", text="train:  50%|█████     | 1/2 [00:01<00:01]\r"),
        nbformat.v4.new_output("stream", name="stdout", text="kept\n"),
    ]
    explorer = nbformat.v4.new_output(
        "display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "0a"}}
    )
    made.cells[0].outputs.append(explorer)  # a widget that stays: its models stay, the bar's go
    state = made.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    state["0a"] = {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_0b"]}}
    state["0b"] = {"model_name": "IntSliderModel", "state": {}}
    assert strip_progress_bars(made) == 2
    assert [output.get("text") for output in made.cells[0].outputs] == ["kept\n", None]
    assert sorted(made.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]) == ["0a", "0b"]
    made.cells[0].outputs.pop()
    assert strip_progress_bars(made) == 0 and "widgets" not in made.metadata  # no widget is left to show


def test_exercise_problems_name_what_a_student_would_meet() -> None:
    probe = notebooks.ExerciseProbe
    problems = exercise_problems(
        [
            probe(5, 7, "NotImplementedError", None, "[x] not answered yet: ..."),  # fine
            probe(9, 11, "NameError: name 'y' is not defined", None, "[y] not answered yet"),
            probe(13, 15, "ran", "TypeError: boom", ""),
            probe(17, 19, "ran", None, "[z] correct. Well done."),
            probe(21, None, "ran", None, ""),
        ]
    )
    assert problems == [
        "exercise in cell 9: the student's cell raises NameError: name 'y' is not defined "
        "(only NotImplementedError may)",
        "exercise in cell 13: its checker (cell 15) raises TypeError: boom",
        "exercise in cell 17: its checker does not say 'not answered yet' (it said '[z] correct. Well done.')",
        "exercise in cell 21: no checker cell follows it",
    ]


@uses_a_kernel
def test_one_execution_checks_cells_exercises_glue_and_caches_for_the_book(tmp_path: Path) -> None:
    checker = (
        "from mmcourse.exercises import run_check\n"
        "def check(value):\n"
        "    def test():\n"
        "        if value is None:\n"
        "            raise NotImplementedError\n"
        "        assert value == 2\n"
        "    return run_check('double', test)\n"
    )
    good = write(
        tmp_path / "notebooks" / "01_good.ipynb",
        notebook(
            bound("01_good") + checker + "from tqdm.auto import tqdm\nfor _ in tqdm(range(3), desc='train'):\n    pass",
            'x = results.record("one", 1.0)',
            ("md", "One is {glue:text}`one`."),
            ("solution", "answer = None\n### BEGIN SOLUTION\nanswer = 2 * x\n### END SOLUTION"),
            "check(answer)",
        ),
    )
    broken = write(
        tmp_path / "notebooks" / "02_broken.ipynb",
        notebook(
            bound("02_broken") + 'results.record("a", 1.0)', 'results.record("a", 2.0)', "print('not reached')"
        ),
    )
    missing = write(
        tmp_path / "notebooks" / "03_missing.ipynb", notebook("x = 1", ("md", "{glue:text}`never_recorded`"))
    )
    results = tmp_path / "results"
    first, second, third = notebooks.execute(
        [good, broken, missing],
        "fast",
        workers=2,
        threads=1,
        timeout=120,
        results=results,
        progress=False,
        expected_seconds={"03_missing": 60.0},  # started first; the results still come in the order given
    )
    assert [Path(run.path).stem for run in (first, second, third)] == ["01_good", "02_broken", "03_missing"]

    assert first.ok and first.problems() == [] and first.glued == ["one"] and first.referenced == ["one"]
    (probe,) = first.exercises
    assert (probe.solution_cell, probe.checker_cell, probe.stub) == (3, 4, "NotImplementedError")
    assert "[double] not answered yet" in probe.said
    executed = first.notebook
    assert len(executed.cells) == 5, "the probe and the peaks cell are taken out again"
    assert "[double] correct" in executed.cells[4].outputs[0]["text"], "the solution itself ran after the probe"
    assert all("widget-view" not in json.dumps(output) for output in executed.cells[0].outputs), "no progress bar"
    assert first.peaks["peak_rss_bytes"] > 0 and first.peaks["torch_threads"] == 1
    assert json.loads((results / "fast" / "01_good.json").read_text())["one"]["value"] == 1.0

    assert second.failure.cell == 1 and second.failure.ename == "ValueError"
    assert "02_broken: the result 'a' was recorded already" in second.failure.evalue
    assert second.cell_seconds[2] is None, "a notebook stops at its first failing cell"
    assert third.ok and third.problems() == [
        "03_missing.ipynb: the prose uses glue key 'never_recorded', which this run did not record"
    ]

    report = notebooks.write_report(first, tmp_path / "reports")
    assert notebooks.read_report(report).report() == first.report()
    notebooks.write_report(second, tmp_path / "reports")
    traceback = (tmp_path / "reports" / "02_broken.traceback.txt").read_text()
    assert traceback.startswith("02_broken.ipynb, cell 1: ValueError") and "record(" in traceback
    cache_dir = tmp_path / "cache"
    notebooks.cache(first, cache_dir)  # and MyST-NB finds it for the notebook on disk (checked inside)
    from jupyter_cache import get_cache

    assert get_cache(str(cache_dir)).match_cache_notebook(nbformat.read(str(good), as_version=4)).data == {
        "execution_seconds": first.seconds
    }
    with pytest.raises(ValueError, match="02_broken.ipynb: only a notebook that ran to its end is cached"):
        notebooks.cache(second, cache_dir)


def test_progress_says_what_started_what_ended_and_how_long_the_rest_takes(capsys: pytest.CaptureFixture[str]) -> None:
    watch = notebooks.Progress(["01_a", "02_b", "03_c"], {"01_a": 600.0, "02_b": 60.0, "03_c": 30.0}, 2, "cpu")
    watch.start("01_a")
    watch.start("02_b")
    assert watch.remaining(watch.started["02_b"]) == pytest.approx((600 + 60 + 30) / 2, abs=1)
    done = notebooks.Execution("x/02_b.ipynb", "cpu", 58.0, None, [], [], [], [], {}, 1)
    watch.finish(done)
    watch.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("01_a: started (1/3, cpu profile; 10.0 min last time)")
    assert "02_b: ok in 58 s (1/3 done; about " in lines[2] and lines[2].endswith(" left)")
    assert notebooks.Progress(["01_a"], {}, 1, "cpu", enabled=False).remaining(0.0) is None
    assert [notebooks.format_duration(s) for s in (45, 738, 6540)] == ["45 s", "12.3 min", "1 h 49 min"]


def test_bad_arguments_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="profile='slow'"):
        notebooks.execute([], "slow")
    with pytest.raises(ValueError, match="workers must be a positive int"):
        notebooks.execute([], "fast", workers=0)
    with pytest.raises(ValueError, match="threads must be a positive int"):
        notebooks.execute([], "fast", threads=0)
    with pytest.raises(ValueError, match=r"chapters: no chapter notebook '19'.*known: 01, 02.*A1"):
        chapter_notebooks(ROOT, ["01", "19"])


@uses_a_kernel
def test_a_cell_that_runs_past_the_timeout_is_named(tmp_path: Path) -> None:
    slow = write(tmp_path / "01_slow.ipynb", notebook("x = 1", ("md", "text"), "import time\ntime.sleep(30)", "y = 2"))
    (execution,) = notebooks.execute([slow], "fast", timeout=2, progress=False)
    assert execution.failure.cell == 2 and "Timeout" in execution.failure.ename
    assert execution.cell_seconds[3] is None and execution.peaks == {}
