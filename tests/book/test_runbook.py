"""The runbook (mmcourse/runbook.py): each chapter's time and peak memory, measured by executing the notebook, kept
per machine and profile, and shown by the book's ``{runbook-table}``. Two synthetic notebooks are executed; the
rest works on files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from docutils import nodes

from mmcourse.book import runbook
from mmcourse.book.notebooks import PEAKS_MARKER, chapter_notebooks, read_marker
from mmcourse.book.runbook import (
    GIB,
    T4_MEMORY_BYTES,
    ChapterRun,
    load_runbooks,
    machine_slug,
    measure_notebook,
    read_runbook,
    runbook_path,
    write_runbook,
)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "book" / "_ext"))

import mmcourse_book  # noqa: E402
from conftest import uses_a_kernel  # noqa: E402

ARRAY_BYTES = 100_000_000  # what the synthetic chapter allocates on top of its baseline


def write_notebook(path: Path, *sources: str) -> Path:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, str(path))
    return path


def chapter_run(chapter: str, seconds: float = 60.0, **changes: object) -> ChapterRun:
    fields = dict(
        chapter=chapter,
        seconds=seconds,
        peak_gpu_bytes=None,
        peak_rss_bytes=2 * GIB,
        status="ok",
        date="2026-01-02",
        torch="2.5.1",
        torch_threads=2,
    )
    return ChapterRun(**(fields | changes))


@uses_a_kernel
def test_a_chapter_is_timed_and_its_peak_memory_read_from_the_appended_cell(tmp_path: Path) -> None:
    notebook = write_notebook(
        tmp_path / "01_memory.ipynb",
        "from pathlib import Path\n\nimport numpy as np\nimport torch\n\n"
        "resident = next(line for line in open('/proc/self/status') if line.startswith('VmRSS:'))\n"
        "Path('baseline.txt').write_text(str(int(resident.split()[1]) * 1024))  # resident memory now, in bytes",
        f"array = np.ones({ARRAY_BYTES // 8})  # written to: every page is resident",
    )
    run = measure_notebook(notebook, "fast", timeout=60)
    baseline = int((tmp_path / "baseline.txt").read_text())  # the notebook ran in its own folder
    assert run.chapter == "01_memory" and run.status == "ok" and run.ok
    assert run.seconds > 0
    assert run.peak_gpu_bytes is None  # no CUDA here
    assert run.peak_rss_bytes >= baseline + 0.9 * ARRAY_BYTES
    assert run.torch_threads >= 1 and run.torch
    assert len(nbformat.read(str(notebook), as_version=4).cells) == 2  # the file on disk is left as it was


@uses_a_kernel
def test_a_failing_chapter_is_reported_with_its_exception_and_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_notebook(tmp_path / "notebooks" / "01_broken.ipynb", "x = 1", "raise ValueError('the chapter broke')")
    write_notebook(tmp_path / "notebooks" / "02_other.ipynb", "x = 2")
    monkeypatch.setattr(runbook, "repository_root", lambda: tmp_path)
    output = tmp_path / "runbook"

    assert runbook.main(["--profile", "fast", "--chapters", "01", "--output", str(output), "--timeout", "60"]) == 1
    (path,) = output.glob("*.json")
    (run,) = read_runbook(path).chapters  # only the chapter asked for ran
    assert run.chapter == "01_broken"
    assert run.status == "failed: ValueError: the chapter broke (cell 1)"
    assert run.peak_rss_bytes > 0  # read after the failure, in the same kernel
    printed = capsys.readouterr()
    assert "01_broken" in printed.out and "failed: ValueError: the chapter broke (cell 1)" in printed.out
    assert "failed: 01_broken" in printed.err


def test_unknown_chapters_profiles_and_timeouts_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"chapters: no chapter notebook '19'.*known: 01, 02.*A1"):
        chapter_notebooks(ROOT, ["01", "19"])
    with pytest.raises(SystemExit) as exit_info:
        runbook.main(["--chapters", "Z9", "--output", str(tmp_path)])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        runbook.main(["--profile", "huge", "--output", str(tmp_path)])
    with pytest.raises(SystemExit):
        runbook.main(["--timeout", "0", "--output", str(tmp_path)])
    notebook = write_notebook(tmp_path / "01_x.ipynb", "x = 1")
    with pytest.raises(ValueError, match="timeout"):
        measure_notebook(notebook, "fast", timeout=0)
    with pytest.raises(ValueError, match="profile='huge'"):
        measure_notebook(notebook, "huge")
    assert not list(tmp_path.glob("*.json"))  # nothing was measured, nothing written


def test_chapters_come_in_book_order_and_filter_by_prefix_or_stem() -> None:
    stems = [path.stem for path in chapter_notebooks(ROOT)]
    assert stems[0].startswith("01_") and stems[-1].startswith("A1_")
    assert stems == sorted(stems[:-1]) + [stems[-1]]
    chosen = chapter_notebooks(ROOT, ["a1", "04", "01_attention"])
    assert [path.stem for path in chosen] == ["01_attention", "04_gpt", "A1_distributed"]


def test_machine_slug_makes_file_names() -> None:
    assert machine_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert machine_slug("Tesla T4") == "tesla-t4"
    assert machine_slug("x86_64 CPU, 2 cores") == "x86-64-cpu-2-cores"
    assert runbook_path(Path("book/runbook"), "NVIDIA H100 80GB HBM3", "gpu").name == "nvidia-h100-80gb-hbm3--gpu.json"
    with pytest.raises(ValueError, match="name"):
        machine_slug(" -- ")
    with pytest.raises(ValueError, match="profile"):
        runbook_path(Path("book/runbook"), "Tesla T4", "turbo")


def test_peaks_are_parsed_from_the_marker_line_only() -> None:
    outputs = [
        {"output_type": "stream", "name": "stdout", "text": "noise\n"},
        {"output_type": "stream", "name": "stdout", "text": 'MMCOURSE_RUNBOOK {"peak_gpu_bytes": 5}\n'},
    ]
    assert read_marker(outputs, PEAKS_MARKER) == {"peak_gpu_bytes": 5}
    assert read_marker([{"output_type": "error", "ename": "X"}], PEAKS_MARKER) is None


def test_runbooks_round_trip_and_a_subset_keeps_the_other_chapters(tmp_path: Path) -> None:
    path = runbook_path(tmp_path, "NVIDIA H100 80GB HBM3", "gpu")
    first = [chapter_run("01_attention", 30.0), chapter_run("A1_distributed", 90.0), chapter_run("04_gpt", 600.0)]
    written = write_runbook(first, path, "NVIDIA H100 80GB HBM3", "gpu")
    assert [run.chapter for run in written.chapters] == ["01_attention", "04_gpt", "A1_distributed"]
    assert load_runbooks(tmp_path) == [written]
    assert json.loads(path.read_text())["chapters"]["04_gpt"]["seconds"] == 600.0

    again = chapter_run("04_gpt", 450.0, date="2026-02-03", torch="2.6.0", peak_gpu_bytes=3 * GIB)
    updated = write_runbook([again], path, "NVIDIA H100 80GB HBM3", "gpu")
    assert updated.chapter("04_gpt") == again
    assert updated.chapter("01_attention") == first[0] and updated.chapter("A1_distributed") == first[1]
    assert (updated.date, updated.torch) == ("2026-02-03", "2.6.0")  # of the latest run
    assert load_runbooks(tmp_path) == [updated]

    with pytest.raises(ValueError, match="machine='Tesla T4'"):
        write_runbook([again], path, "Tesla T4", "gpu")
    assert load_runbooks(tmp_path / "missing") == []  # no folder: nothing measured yet
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json is not a runbook file"):
        load_runbooks(tmp_path)


def test_t4_budget_is_15_gb_and_flags_only_gpu_peaks_above_it() -> None:
    assert T4_MEMORY_BYTES == 15 * 10**9
    assert chapter_run("04_gpt", peak_gpu_bytes=T4_MEMORY_BYTES + 1).over_t4
    assert not chapter_run("04_gpt", peak_gpu_bytes=T4_MEMORY_BYTES).over_t4
    assert not chapter_run("04_gpt", peak_rss_bytes=10 * T4_MEMORY_BYTES).over_t4  # resident memory is not the GPU's
    line = runbook.format_run(chapter_run("04_gpt", 90.0, peak_gpu_bytes=16 * 10**9))
    assert line.split()[:4] == ["04_gpt", "1.5", "14.90", "2.00"] and "over the T4 budget" in line


def test_runbook_table_has_a_row_per_chapter_and_two_columns_per_file(tmp_path: Path) -> None:
    gpu = [chapter_run("01_attention", 30.0, peak_gpu_bytes=GIB // 2), chapter_run("04_gpt", 600.0, peak_gpu_bytes=0)]
    gpu.append(chapter_run("05_clip", 6.0, peak_gpu_bytes=16 * 10**9, status="failed: OutOfMemoryError: CUDA out"))
    write_runbook(gpu, runbook_path(tmp_path, "Tesla T4", "gpu"), "Tesla T4", "gpu")
    write_runbook(
        [chapter_run("01_attention", 2.0)], runbook_path(tmp_path, "x86_64 CPU", "fast"), "x86_64 CPU", "fast"
    )

    headers, rows = mmcourse_book.runbook_table(["01_attention", "04_gpt", "05_clip"], load_runbooks(tmp_path))
    assert headers == [
        "chapter",
        "x86_64 CPU, fast: minutes",
        "x86_64 CPU, fast: peak RSS (GiB)",
        "Tesla T4, gpu: minutes",
        "Tesla T4, gpu: peak GPU memory (GiB)",
    ]
    assert rows == [
        ["01_attention", "<0.1", "2.00", "0.5", "0.50"],
        ["04_gpt", "—", "—", "10.0", "0.00"],
        ["05_clip", "—", "—", "failed (OutOfMemoryError)", "14.90 (over the T4's budget)"],
    ]

    table, *captions = mmcourse_book.runbook_nodes(tmp_path, ["01_attention", "04_gpt", "05_clip"])
    assert isinstance(table, nodes.table) and len(list(table.findall(nodes.row))) == 4  # header and 3 chapters
    assert [caption.astext() for caption in captions] == [
        "x86_64 CPU, fast profile: measured 2026-01-02, torch 2.5.1, Python "
        + read_runbook(runbook_path(tmp_path, "x86_64 CPU", "fast")).python
        + ", 2 torch threads.",
        captions[1].astext(),
    ]
    assert captions[1].astext().startswith("Tesla T4, gpu profile: measured 2026-01-02, torch 2.5.1")


def test_runbook_table_without_files_says_how_to_fill_it(tmp_path: Path) -> None:
    (paragraph,) = mmcourse_book.runbook_nodes(tmp_path / "runbook", ["01_attention"])
    assert isinstance(paragraph, nodes.paragraph)
    assert paragraph.astext().startswith("No machine has been measured yet")
    text = paragraph.astext()
    assert "make runbook" in text and "python -m mmcourse.book.runbook --profile gpu" in text


def test_committed_runbook_files_all_load() -> None:
    for measured in load_runbooks(ROOT / "book" / "runbook"):  # committed files, if any, all load
        assert measured.chapters


@uses_a_kernel
def test_a_chapter_fails_on_what_fails_the_book_build(tmp_path: Path) -> None:
    twice = write_notebook(
        tmp_path / "01_twice.ipynb",
        "from mmcourse.book.results import record\nrecord('01_twice', 'loss', 1.0)",
        "record('01_twice', 'loss', 2.0)",
    )
    run = measure_notebook(twice, "fast", timeout=60)
    assert run.status.startswith("failed: ValueError: 01_twice: the result 'loss' was recorded already")
    unrecorded = write_notebook(tmp_path / "02_unrecorded.ipynb", "x = 1")
    notebook = nbformat.read(str(unrecorded), as_version=4)
    notebook.cells.append(nbformat.v4.new_markdown_cell("The loss is {glue:text}`loss`."))
    nbformat.write(notebook, str(unrecorded))
    run = measure_notebook(unrecorded, "fast", timeout=60)
    assert run.status == "failed: the prose uses glue key 'loss', which this run did not record"
