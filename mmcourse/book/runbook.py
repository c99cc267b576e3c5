"""The runbook: how long each chapter takes and how much memory it needs, measured per machine and profile.

``python -m mmcourse.book.runbook [--profile fast|cpu|gpu] [--chapters 01 A1 ...] [--output DIR] [--timeout S]``
(``make runbook``) executes the chapter notebooks one at a time, top to bottom, with the book's executor
(``mmcourse.book.notebooks``, which fails a chapter on what fails the book build), and measures each:

- wall-clock seconds, kernel start included;
- peak memory, read by one extra cell appended to the notebook (in memory only): the CUDA allocator's
  ``torch.cuda.max_memory_allocated()`` since the kernel started, i.e. the chapter's peak on the GPU, and the
  kernel's peak resident memory (``ru_maxrss``). Both count the kernel process only: worker processes that a
  chapter launches (the appendix's ``torchrun``) are not in them.

It writes ``book/runbook/<machine>--<profile>.json``, which the book's Runbook page shows (``{runbook-table}``).
Running some chapters again updates their entries and keeps the others. On CUDA, a chapter whose peak exceeds
what a Colab T4 offers is flagged, and the exit code is 1, as it is when a chapter fails.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from mmcourse.book.notebooks import (
    DEFAULT_TIMEOUT,
    Execution,
    chapter_notebooks,
    chapter_order,
    check_profile,
    execute,
    static_problems,
)
from mmcourse.book.profiles import PROFILES, current_profile
from mmcourse.book.results import repository_root
from mmcourse.checks import check_positive_int, positive_int_argument
from mmcourse.memory import T4_MEMORY_BYTES

GIB = 2**30


@dataclass(frozen=True)
class ChapterRun:
    """One chapter notebook executed once: how long it took, its peak memory, and whether it ran to the end."""

    chapter: str  # the notebook's file stem, e.g. 01_attention
    seconds: float  # wall clock, kernel start included
    peak_gpu_bytes: int | None  # torch.cuda.max_memory_allocated(); None without CUDA or when not read
    peak_rss_bytes: int | None  # the kernel's peak resident memory; None when not read
    status: str  # "ok" or "failed: <ExceptionName>: <last line>"
    date: str
    torch: str
    torch_threads: int | None = None

    @property
    def ok(self) -> bool:
        """The notebook ran to its end."""
        return self.status == "ok"

    @property
    def over_t4(self) -> bool:
        """The chapter's GPU peak exceeds what a Colab T4 offers."""
        return self.peak_gpu_bytes is not None and self.peak_gpu_bytes > T4_MEMORY_BYTES


@dataclass(frozen=True)
class Runbook:
    """What one machine measured in one profile: a ``book/runbook/<slug>--<profile>.json`` file."""

    machine: str
    profile: str
    date: str  # of the latest run written into it
    torch: str
    python: str
    chapters: tuple[ChapterRun, ...]

    @property
    def on_gpu(self) -> bool:
        """Measured on CUDA: the memory to show is the GPU peak, not the resident memory."""
        return any(run.peak_gpu_bytes is not None for run in self.chapters)

    def chapter(self, name: str) -> ChapterRun | None:
        """The run of the chapter with file stem ``name``; None when it was not measured."""
        return next((run for run in self.chapters if run.chapter == name), None)


def machine_slug(name: str) -> str:
    """A file-name slug of a machine's name: "NVIDIA H100 80GB HBM3" → "nvidia-h100-80gb-hbm3"."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")
    if not slug:
        raise ValueError(f"name must contain a letter or digit to make a file name from, got {name!r}")
    return slug


def runbook_path(folder: Path, machine: str, profile: str) -> Path:
    """``<folder>/<machine slug>--<profile>.json``."""
    check_profile(profile)
    return Path(folder) / f"{machine_slug(machine)}--{profile}.json"


def measure_notebook(path: Path, profile: str, timeout: int = DEFAULT_TIMEOUT) -> ChapterRun:
    """Execute one notebook top to bottom in ``profile`` with the book's executor (``mmcourse.book.notebooks``) and
    measure its time and peak memory. ``timeout``: seconds per cell. What the notebook records goes to a temporary
    folder (the book's results stay untouched). It fails on what fails the book build: a cell that raises, a glue
    key the prose uses that the run did not record, an exercise whose student version misbehaves, and what the
    static checks find (``mmcourse.book.notebooks.static_problems``: a glue key some profile would not record once).
    When a cell fails, the peaks are still read (the appended cell runs in the same kernel), so a chapter that runs
    out of memory shows how far it got."""
    import torch

    check_positive_int("timeout", timeout)
    checked = static_problems([Path(path)])  # what fails the book build in some profile, found without running
    (execution,) = execute([Path(path)], profile, timeout=timeout, progress=False)
    run = chapter_run(execution, torch.__version__)
    if run.ok and checked:
        return replace(run, status="failed: " + checked[0].removeprefix(f"{execution.name}: "))
    return run


def chapter_run(execution: Execution, torch_version: str) -> ChapterRun:
    """The runbook's entry for one execution: "ok", or "failed: " and the first problem (the failed cell's error
    and index, or the check that failed)."""
    if execution.failure is not None:
        status = f"failed: {execution.failure.message} (cell {execution.failure.cell})"
    else:
        problems = execution.problems()
        status = "ok" if not problems else "failed: " + problems[0].removeprefix(f"{execution.name}: ")
    peaks = execution.peaks
    return ChapterRun(
        chapter=Path(execution.path).stem,
        seconds=execution.seconds,
        peak_gpu_bytes=peaks.get("peak_gpu_bytes"),
        peak_rss_bytes=peaks.get("peak_rss_bytes"),
        status=status,
        date=_dt.date.today().isoformat(),
        torch=peaks.get("torch", torch_version),
        torch_threads=peaks.get("torch_threads"),
    )


def _as_json(runbook: Runbook) -> dict:
    fields = asdict(runbook)
    fields["chapters"] = {run.pop("chapter"): run for run in fields["chapters"]}
    return fields


def read_runbook(path: Path) -> Runbook:
    """One runbook file; ValueError naming the file when it is not one."""
    try:
        fields = json.loads(Path(path).read_text(encoding="utf-8"))
        chapters = tuple(ChapterRun(chapter=name, **run) for name, run in fields.pop("chapters").items())
        runbook = Runbook(chapters=chapters, **fields)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} is not a runbook file: {type(error).__name__}: {error}") from None
    check_profile(runbook.profile)
    return runbook


def write_runbook(runs: Sequence[ChapterRun], path: Path, machine: str, profile: str) -> Runbook:
    """Write ``runs`` into the runbook file at ``path``: the chapters run now replace their earlier entries, the
    others are kept. The file must be of the same machine and profile. Returns what was written."""
    import torch

    check_profile(profile)
    path = Path(path)
    kept: dict[str, ChapterRun] = {}
    if path.is_file():
        earlier = read_runbook(path)
        if (earlier.machine, earlier.profile) != (machine, profile):
            raise ValueError(
                f"path={str(path)!r} holds machine={earlier.machine!r}, profile={earlier.profile!r}, "
                f"not machine={machine!r}, profile={profile!r}"
            )
        kept = {run.chapter: run for run in earlier.chapters}
    kept |= {run.chapter: run for run in runs}
    chapters = tuple(sorted(kept.values(), key=lambda run: chapter_order(run.chapter)))
    latest = max(chapters, key=lambda run: run.date, default=None)
    runbook = Runbook(
        machine=machine,
        profile=profile,
        date=latest.date if latest else _dt.date.today().isoformat(),
        torch=latest.torch if latest else torch.__version__,
        python=platform.python_version(),
        chapters=chapters,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(_as_json(runbook), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    temporary.replace(path)
    return runbook


def load_runbooks(folder: Path) -> list[Runbook]:
    """Every runbook file ``<folder>/*.json``, by profile (fast, cpu, gpu) then machine; [] when there is none
    (a missing folder included)."""
    folder = Path(folder)
    runbooks = [read_runbook(path) for path in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    return sorted(runbooks, key=lambda runbook: (PROFILES.index(runbook.profile), runbook.machine))


def runbook_times(folder: Path, machine: str, profile: str) -> dict[str, ChapterRun]:
    """The chapters that ``make runbook`` measured on ``machine`` in ``profile`` and that ran to the end, by file
    stem, from the runbook files in ``folder``; {} when there are none."""
    for runbook in load_runbooks(folder):
        if (runbook.machine, runbook.profile) == (machine, profile):
            return {run.chapter: run for run in runbook.chapters if run.ok}
    return {}


def format_minutes(seconds: float) -> str:
    """Minutes with one decimal ("<0.1" below six seconds)."""
    minutes = seconds / 60
    return "<0.1" if minutes < 0.05 else f"{minutes:.1f}"


def format_gib(size: int | None) -> str:
    """Bytes in GiB with two decimals; "—" when not measured."""
    return "—" if size is None else f"{size / GIB:.2f}"


def default_output() -> Path:
    """``book/runbook`` in the checkout (or ``runbook`` under the working directory when not run from one)."""
    root = repository_root()
    return root / "book" / "runbook" if root is not None else Path.cwd() / "runbook"


def _table_line(values: Sequence[str]) -> str:
    chapter, *numbers = values
    return "  ".join([chapter.ljust(24), *(number.rjust(12) for number in numbers)])


def format_run(run: ChapterRun) -> str:
    """One line of the table printed while the runbook runs."""
    notes = [] if run.ok else [run.status]
    if run.over_t4:
        notes.append(f"over the T4 budget ({T4_MEMORY_BYTES / 10**9:.0f} GB)")
    numbers = [format_minutes(run.seconds), format_gib(run.peak_gpu_bytes), format_gib(run.peak_rss_bytes)]
    return "  ".join([_table_line([run.chapter, *numbers]), *notes])


TABLE_HEADER = _table_line(["chapter", "minutes", "peak GPU GiB", "peak RSS GiB"])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the runbook; 1 when a chapter failed or exceeded the T4's memory, else 0."""
    from tqdm.auto import tqdm

    from mmcourse.book.device import machine_name

    parser = argparse.ArgumentParser(
        prog="python -m mmcourse.book.runbook",
        description="Each chapter notebook executed on this machine: its time and peak memory, for the book's "
        "Runbook page.",
    )
    parser.add_argument(
        "--profile",
        choices=PROFILES,
        default=None,
        help="default: MMCOURSE_PROFILE, else the machine's default (gpu with CUDA, else cpu)",
    )
    parser.add_argument(
        "--chapters",
        nargs="+",
        default=None,
        metavar="CHAPTER",
        help="only these chapters, by prefix (01, A1) or file stem (default: all)",
    )
    parser.add_argument("--output", type=Path, default=None, help="the folder of runbook files (default: book/runbook)")
    parser.add_argument(
        "--timeout",
        type=positive_int_argument,
        default=DEFAULT_TIMEOUT,
        help=f"seconds a cell may run (default: {DEFAULT_TIMEOUT})",
    )
    args = parser.parse_args(argv)
    root = repository_root()
    if root is None:
        parser.error("mmcourse is not installed from a checkout of the book: there are no notebooks to run")
    try:
        notebooks = chapter_notebooks(root, args.chapters)
        profile = args.profile if args.profile is not None else current_profile()
    except ValueError as error:
        parser.error(str(error))
    output = args.output if args.output is not None else default_output()
    if output.exists() and not output.is_dir():
        parser.error(f"--output {output} is a file: give the folder of the runbook files")
    machine = machine_name()
    path = runbook_path(output, machine, profile)
    print(f"mmcourse runbook | {machine} | profile {profile} | {len(notebooks)} notebook(s) | {path}")
    print(TABLE_HEADER)
    runs = []
    for notebook in tqdm(notebooks, desc="chapters", unit="notebook"):
        run = measure_notebook(notebook, profile, args.timeout)
        runs.append(run)
        write_runbook([run], path, machine, profile)  # after each chapter: an interrupted run keeps what it did
        tqdm.write(format_run(run))
        sys.stdout.flush()  # the line shows at once when the output goes to a file
    failed = [run.chapter for run in runs if not run.ok]
    over = [run.chapter for run in runs if run.over_t4]
    print(f"\nJSON: {path}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    if over:
        print(f"over a Colab T4's {T4_MEMORY_BYTES / 10**9:.0f} GB of GPU memory: {', '.join(over)}", file=sys.stderr)
    return 1 if failed or over else 0


if __name__ == "__main__":
    raise SystemExit(main())
