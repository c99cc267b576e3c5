"""Build the book into _build/html: ``python book/build.py [--no-execute] [--workers N] [--threads N]`` (``make
book`` / ``make test``).

Executed builds run in three steps:

1. every chapter notebook is checked without running it (``mmcourse.book.notebooks.glue_problems``: each glue key the
   prose uses is recorded, once, on every path; no later cell needs an exercise's solution);
2. every notebook is executed once by the book's executor (``mmcourse.book.notebooks.execute``: ``--workers`` at a
   time, ``--threads`` torch threads each), which also checks each exercise's student version and the glue keys
   this run recorded, writes a report per notebook to ``_build/execution/<profile>/``, and stores the executed
   notebooks in MyST-NB's execution cache (``_build/.jupyter_cache/<profile>``: the cache keys on the notebook's
   code only, not on ``MMCOURSE_PROFILE``, so each profile has its own);
3. Jupyter Book renders them from that cache with ``-W -n --keep-going`` (every warning fails the build).

A failure in step 1 or 2 stops the build before Sphinx starts and names the notebook, the cell and the error.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from mmcourse.book import notebooks
from mmcourse.book.profiles import current_profile
from mmcourse.book.results import results_dir
from mmcourse.checks import positive_int_argument

ROOT = Path(__file__).resolve().parents[1]


def write_config(profile: str, execute: bool) -> Path:
    """The book's config for this build: execute with a per-profile cache, or not at all."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "cache" if execute else "off"
    config["execute"]["cache"] = str(notebooks.cache_dir(ROOT, profile))
    # The derived config lives in _build/config: make the paths in it absolute, as they were meant from the root.
    sphinx = config["sphinx"]
    sphinx["local_extensions"] = {name: str(ROOT / path) for name, path in sphinx["local_extensions"].items()}
    sphinx["config"]["html_static_path"] = [str(ROOT / path) for path in sphinx["config"]["html_static_path"]]
    config["bibtex_bibfiles"] = [str(ROOT / path) for path in config["bibtex_bibfiles"]]
    if not execute:
        # Unexecuted notebooks have no glued values; the executed build (`make book`) keeps these as errors.
        sphinx["config"]["suppress_warnings"] += ["mystnb.glue", "mystnb.glue_ref"]
    path = ROOT / "_build" / "config" / f"{profile}-{'execute' if execute else 'no-execute'}.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


def reports_dir(profile: str) -> Path:
    return ROOT / "_build" / "execution" / profile


def expected_seconds(profile: str) -> dict[str, float]:
    """How long each chapter took on this machine in this profile, from its committed runbook file ({} if none)."""
    from mmcourse.book.device import machine_name
    from mmcourse.book.runbook import runbook_times

    runs = runbook_times(ROOT / "book" / "runbook", machine_name(), profile)
    return {chapter: run.seconds for chapter, run in runs.items()}


def execute(profile: str, workers: int | None, threads: int | None) -> bool:
    """Steps 1 and 2: check, execute, report and cache every chapter notebook. True when all is well."""
    paths = notebooks.chapter_notebooks(ROOT)
    problems = notebooks.static_problems(paths)
    if problems:
        print("The notebooks would fail the book build:", *problems, sep="\n  ", file=sys.stderr)
        return False
    default_workers, default_threads = notebooks.default_workers(len(paths))
    workers, threads = workers or default_workers, threads or default_threads
    timeout = yaml.safe_load((ROOT / "_config.yml").read_text())["execute"]["timeout"]
    print(f"Executing {len(paths)} notebooks ({profile} profile, {workers} at a time, {threads} torch thread(s) each)")
    start = time.perf_counter()
    executions = notebooks.execute(
        paths,
        profile,
        workers=workers,
        threads=threads,
        timeout=timeout,
        results=results_dir(),
        expected_seconds=expected_seconds(profile),
    )
    problems = []
    for execution in executions:
        report = notebooks.write_report(execution, reports_dir(profile))
        if execution.ok:
            notebooks.cache(execution, notebooks.cache_dir(ROOT, profile))
        where = report.with_suffix(".traceback.txt") if execution.failure else report
        problems += [f"{problem} (see {where.relative_to(ROOT)})" for problem in execution.problems()]
    print(f"Executed in {time.perf_counter() - start:.0f} s; reports in {reports_dir(profile).relative_to(ROOT)}")
    if problems:
        print("The notebooks failed:", *problems, sep="\n  ", file=sys.stderr)
    return not problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-execute", action="store_true", help="build without executing notebooks")
    parser.add_argument("--workers", type=positive_int_argument, default=None, help="notebooks executed at a time")
    parser.add_argument("--threads", type=positive_int_argument, default=None, help="torch threads per notebook")
    args = parser.parse_args()
    profile = current_profile()
    if not args.no_execute and not execute(profile, args.workers, args.threads):
        print("The book build failed: a notebook failed (above); nothing was rendered.", file=sys.stderr)
        return 1
    config = write_config(profile, execute=not args.no_execute)
    environment = dict(os.environ, MMCOURSE_PROFILE=profile, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    command = [str(jupyter_book), "build", str(ROOT), "--config", str(config), "-W", "-n", "--keep-going"]
    mode = "unexecuted notebooks" if args.no_execute else "the executed notebooks"
    print(f"Rendering the book from {mode} (profile {profile})", flush=True)
    completed = subprocess.run(command, env=environment, cwd=ROOT)
    if completed.returncode != 0:
        print("The book build failed: see the warnings above (every warning is an error).", file=sys.stderr)
        return completed.returncode
    print(f"\nThe book is built. Open it in a browser: {ROOT / '_build' / 'html' / 'index.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
