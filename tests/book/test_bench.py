"""Cost measurement: timings summarise repeats; the explicit attention's score matrix shows up in peak memory;
`make bench` compares per repeat, names bad arguments, prints an aligned table and writes every section as JSON."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import uses_a_kernel

from mmcourse.book.bench import (
    QUICK,
    SECTIONS,
    Section,
    Summary,
    attention_cost,
    attention_function,
    attention_inputs,
    attention_section,
    bert_section,
    cached_execution_times,
    clip_section,
    compare,
    format_number,
    format_summary,
    format_table,
    generation_section,
    main,
    notebooks_section,
    ratios,
    reference_section,
    summarise,
    time_call,
    time_pair,
    training_section,
)


def test_time_call_summarises_repeats() -> None:
    calls = []
    timing = time_call(lambda: calls.append(1), repeats=4, warmup=2)
    assert len(calls) == 6 and timing.repeats == 4
    assert 0 <= timing.minimum <= timing.median <= timing.maximum
    with pytest.raises(ValueError, match="repeats"):
        time_call(lambda: None, repeats=0)


def test_both_implementations_compute_the_same_attention() -> None:
    q, k, v = attention_inputs(16, n_heads=2, head_dim=8)
    torch.testing.assert_close(attention_function("explicit", q, k, v)(), attention_function("fused", q, k, v)())
    with pytest.raises(ValueError, match="implementation"):
        attention_function("flash", q, k, v)
    with pytest.raises(ValueError, match="length=0"):
        attention_inputs(0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CPU peak memory is measured on Linux only")
def test_explicit_attention_materialises_the_score_matrix() -> None:
    explicit, fused = attention_cost((1024,), repeats=1, n_heads=4, progress=False)
    scores_bytes = 4 * 1024 * 1024 * 4  # (heads, L, L) float32
    assert explicit.peak_bytes is not None and explicit.peak_bytes >= scores_bytes
    assert fused.peak_bytes is not None and fused.peak_bytes < scores_bytes / 4
    with pytest.raises(ValueError, match="lengths"):
        attention_cost((), progress=False)


# ---------------------------------------------------------------------------------------------------------------
# make bench: ratios, validation, the table, the notebook times, the quick run
# ---------------------------------------------------------------------------------------------------------------


def test_ratio_is_taken_per_repeat_not_between_medians() -> None:
    assert summarise([3.0, 1.0, 2.0]) == Summary(median=2.0, minimum=1.0, maximum=3.0, repeats=3)
    # repeat by repeat: 2/1, 6/2, 3/3; the medians' ratio would be 3/2 = 1.5
    assert ratios([2.0, 6.0, 3.0], [1.0, 2.0, 3.0]) == Summary(median=2.0, minimum=1.0, maximum=3.0, repeats=3)
    row = compare("L=8", "time (ms)", [2.0, 4.0], [1.0, 1.0], "test")
    assert row.ours == Summary(3.0, 2.0, 4.0, 2) and row.ratio == Summary(3.0, 2.0, 4.0, 2)


def test_no_ratio_where_a_side_is_missing_or_zero() -> None:
    assert compare("c", "m", [1.0], None, "s").ratio is None
    assert compare("c", "m", None, [1.0], "s").ours is None
    zero = compare("c", "m", [1.0], [0.0], "s")
    assert zero.reference == Summary(0.0, 0.0, 0.0, 1) and zero.ratio is None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: summarise([]), "values must hold at least one measurement"),
        (lambda: summarise([1.0, float("nan")], "ours"), "ours must be finite numbers"),
        (lambda: summarise([True]), "values must be finite numbers"),
        (lambda: ratios([1.0], [1.0, 2.0]), "ours and reference must hold one value per repeat"),
        (lambda: ratios([1.0], [0.0]), "reference values must be > 0"),
        (lambda: time_pair(lambda: None, lambda: None, repeats=0), "repeats must be a positive int"),
        (lambda: time_pair(lambda: None, lambda: None, repeats=1, warmup=-1), "warmup must be an int >= 0"),
        (lambda: attention_section((), repeats=1), "lengths must be positive"),
        (lambda: attention_section((16,), repeats=0), "repeats must be a positive int"),
        (lambda: generation_section(QUICK.gpt, 10, (8,), repeats=1), r"prompt_length \+ new_tokens = 18"),
        (lambda: generation_section(QUICK.gpt, 4, (), repeats=1), "new_tokens must be positive ints"),
        (lambda: training_section(QUICK.gpt, batch=0, steps=1, repeats=1), "batch must be a positive int"),
        (lambda: reference_section(QUICK.gpt, batch=2, steps=0, repeats=1), "steps must be a positive int"),
        (lambda: bert_section(QUICK.bert, batch=1, length=17, repeats=1), "length=17 must be <= context_length=16"),
        (lambda: clip_section(QUICK.vit, QUICK.text, 16, batch=1, repeats=0), "repeats must be a positive int"),
        (lambda: replace(QUICK, train_steps=0), "train_steps must be a positive int"),
    ],
)
def test_bad_arguments_are_named(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_time_pair_interleaves_and_alternates_who_goes_first() -> None:
    calls: list[str] = []
    ours, reference = time_pair(lambda: calls.append("ours"), lambda: calls.append("ref"), repeats=3, warmup=1)
    assert len(ours) == len(reference) == 3 and all(seconds >= 0 for seconds in ours + reference)
    assert calls == ["ours", "ref", "ours", "ref", "ref", "ours", "ours", "ref"]  # warm-up, then repeats 0, 1, 2


@pytest.mark.parametrize(
    ("value", "text"),
    [(1234.4, "1,234"), (123.4, "123"), (12.34, "12.3"), (1.234, "1.23"), (0.01234, "0.0123"), (0, "0")],
)
def test_numbers_keep_three_significant_digits(value: float, text: str) -> None:
    assert format_number(value) == text


def test_table_names_both_sides_and_aligns_the_columns() -> None:
    rows = (
        compare("L=256", "time (ms)", [2.0, 3.0, 4.0], [1.0, 1.0, 1.0], "this run"),
        compare("a longer case", "tokens/s", [5.0], None, "cpu: not measured"),
    )
    section = Section("attention", "Attention", "explicit", "fused", rows, note="batch 1", errors=("boom: failed",))
    table = format_table([section], header="mmcourse bench (test)")
    lines = table.splitlines()
    assert lines[0] == "mmcourse bench (test)"
    assert "Attention — ours: explicit; reference: fused" in table and "  (batch 1)" in lines
    assert "3.00 [2.00–4.00]" in table and "3.00× [2.00–4.00]" in table  # median [min–max], ratio marked ×
    assert "  ERROR: boom: failed" in lines
    header = next(line for line in lines if line.lstrip().startswith("case"))
    body = [line for line in lines if "L=256" in line or "a longer case" in line]
    columns = [header.index(name) for name in ("metric", "ours", "source")]
    for line, values in ((body[0], ("time (ms)", "3.00 [", "this run")), (body[1], ("tokens/s", "5.00", "cpu:"))):
        assert [line.index(value) for value in values] == columns, line
    assert "[" not in body[1] and body[1].count("—") == 2  # one repeat: no spread; not measured: —
    assert format_summary(None) == "—"


def _write_notebook(path: Path, *sources: str) -> Path:
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, str(path))
    return path


@pytest.mark.slow  # jupyter-cache imports SQLAlchemy: about a second
def test_cpu_times_come_from_the_book_builds_execution_cache(tmp_path: Path) -> None:
    import nbformat
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    first = _write_notebook(tmp_path / "notebooks" / "01_first.ipynb", "x = 1")
    second = _write_notebook(tmp_path / "notebooks" / "02_second.ipynb", "y = 2")
    cache_dir = tmp_path / "_build" / ".jupyter_cache" / "cpu"
    assert cached_execution_times(cache_dir, [first]) == {}
    assert not cache_dir.exists(), "looking must not create a cache"

    cache = get_cache(str(cache_dir))  # what MyST-NB stores after executing a notebook in cache mode
    bundle = CacheBundleIn(nbformat.read(str(first), as_version=4), str(first), data={"execution_seconds": 12.5})
    cache.cache_notebook_bundle(bundle, check_validity=False)
    times = cached_execution_times(cache_dir, [first, second])
    assert list(times) == ["01_first.ipynb"] and times["01_first.ipynb"].seconds == 12.5
    assert times["01_first.ipynb"].current and times["01_first.ipynb"].recorded.endswith("UTC")

    _write_notebook(first, "x = 2")  # the code changed after the build: the old time is still shown, marked
    assert not cached_execution_times(cache_dir, [first])["01_first.ipynb"].current

    section = notebooks_section(tmp_path, execute=False)
    assert [row.case for row in section.rows] == ["01_first", "02_second"]
    assert section.rows[0].reference == Summary(12.5, 12.5, 12.5, 1) and section.rows[0].ours is None
    assert "notebook changed since" in section.rows[0].source and "--quick" in section.rows[0].source
    assert section.rows[1].reference is None and "no record of this notebook" in section.rows[1].source


def test_cpu_times_fall_back_to_this_machines_runbook(tmp_path: Path) -> None:
    from mmcourse.book.device import machine_name
    from mmcourse.book.runbook import ChapterRun, write_runbook

    _write_notebook(tmp_path / "notebooks" / "01_first.ipynb", "x = 1")
    _write_notebook(tmp_path / "notebooks" / "02_second.ipynb", "y = 2")
    folder = tmp_path / "book" / "runbook"

    def run(chapter: str, seconds: float, status: str = "ok") -> ChapterRun:
        return ChapterRun(chapter, seconds, None, 10**9, status, "2026-11-26", "2.13.0", 1)

    write_runbook(
        [run("01_first", 321.0), run("02_second", 5.0, "failed: ValueError: x")],
        folder / "a.json",
        machine_name(),
        "cpu",
    )
    write_runbook([run("02_second", 99.0)], folder / "b.json", "another machine", "cpu")
    rows = notebooks_section(tmp_path, execute=False).rows
    assert rows[0].reference == Summary(321.0, 321.0, 321.0, 1) and "book/runbook, 2026-11-26" in rows[0].source
    assert rows[1].reference is None, "a failed run, and another machine's, are not this machine's time"
    assert "no finished run in this machine's book/runbook file" in rows[1].source


@uses_a_kernel
def test_notebooks_execute_in_the_fast_profile_and_failures_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MMCOURSE_PROFILE", "cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    monkeypatch.delenv("MMCOURSE_RESULTS", raising=False)
    check = "import os\nassert os.environ['MMCOURSE_PROFILE'] == 'fast' and os.environ['MMCOURSE_RESULTS']\n"
    check += "assert os.environ['OMP_NUM_THREADS'] == '1'"
    _write_notebook(tmp_path / "notebooks" / "01_ok.ipynb", check)
    _write_notebook(tmp_path / "notebooks" / "02_broken.ipynb", "raise ValueError('boom')")
    section = notebooks_section(tmp_path, execute=True)
    ok, broken = section.rows
    assert ok.ours is not None and ok.ours.median > 0 and "executed now" in ok.source
    assert broken.ours is None and "failed (ValueError)" in broken.source
    assert section.errors == ("02_broken.ipynb: cell 0: ValueError: boom",)
    assert os.environ["MMCOURSE_PROFILE"] == "cpu" and "MMCOURSE_RESULTS" not in os.environ  # restored
    assert os.environ["OMP_NUM_THREADS"] == "4"


def test_command_line_errors_name_the_argument(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in [
        (["--repeats", "0"], "argument --repeats: must be a positive int, got '0'"),
        (["--repeats", "two"], "argument --repeats: must be a positive int, got 'two'"),
        (["--output", str(tmp_path)], "--output"),
        (["--device", "tpu"], "argument --device: invalid choice"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["--device", "cuda"])
        assert "--device cuda: CUDA is not available" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_run_writes_every_section_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out" / "bench.json"
    assert main(["--quick", "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert report["mode"] == "quick" and "device=" in report["device"] and report["sizes"]["repeats"] == 1
    assert report["load_average_start"] is None or report["load_average_start"] >= 0
    assert list(report["sections"]) == list(SECTIONS)
    for name in ("attention", "generation", "training", "reference", "compile", "bert", "clip"):
        rows = report["sections"][name]["rows"]
        assert rows and all(row["ours"] and row["reference"] and row["ratio"] for row in rows), name
    assert report["sections"]["notebooks"]["rows"], "one row per chapter, even when nothing was executed"
    printed = capsys.readouterr().out
    assert "mmcourse bench (quick" in printed and f"JSON: {output}" in printed
