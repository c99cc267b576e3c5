"""Sphinx extension for the mmcourse book: tables of the recorded results, of each chapter's exercises, and of
each chapter's time and memory per machine (the runbook).

The pages with a results table (Results, and the instructor guide) are read after every other page, so they show
what this very build's notebooks recorded.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from docutils import nodes
from docutils.parsers.rst import Directive, directives
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

if TYPE_CHECKING:
    from mmcourse.book.results import Result
    from mmcourse.book.runbook import Runbook

RESULTS_DOCNAMES = ("book/instructor", "book/results")  # the pages that use {results-table}
MEASUREMENTS = Path(__file__).resolve().parents[1] / "measurements"  # book/measurements/<profile>/<chapter>.json
NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


class ResultsTable(Directive):
    """``{results-table}``: every recorded value (``mmcourse.book.results``), one row per figure and one column
    per profile side by side (fast, cpu, gpu), then a line per profile saying where its numbers come from (this
    build, or the committed measurements in book/measurements) and the machine, date and torch version.

    ``:chapter: 07_fusion`` keeps one chapter's figures (the Results page has a section per chapter); without it,
    a chapter column comes first. ``:names: "*_seconds parameters"`` keeps only the results whose name matches one
    of these glob patterns (quoted: MyST reads the options as YAML, where a leading ``*`` means something else).
    """

    has_content = False
    option_spec = {"names": directives.unchanged_required, "chapter": directives.unchanged_required}

    def run(self) -> list[nodes.Node]:
        from mmcourse.book.results import load, results_dir, with_measurements

        directory = results_dir()
        built = load(directory)
        patterns = self.options.get("names", "").split()
        chapter = self.options.get("chapter", "").strip().lower() or None
        results = matching(with_measurements(built, load(MEASUREMENTS)), patterns)
        if chapter is not None:
            results = [result for result in results if result.chapter == chapter]
        if not results:
            named = f" named {' or '.join(patterns)}" if patterns else ""
            of = f" for {chapter}" if chapter else ""
            paragraph = nodes.paragraph(text=f"No results{named}{of} have been recorded yet (looked in {directory}).")
            return [paragraph]
        profiles_built = {result.profile for result in built}
        headers, rows = results_rows(results, with_chapter=chapter is None)
        table = _table(headers, rows)
        table["classes"] += ["results-by-profile"] + (["with-chapter"] if chapter is None else [])
        sources = nodes.bullet_list(classes=["results-sources"])
        for profile in dict.fromkeys(result.profile for result in results):
            where = "this build" if profile in profiles_built else "committed measurements (book/measurements)"
            first = next(result for result in results if result.profile == profile)
            item = nodes.list_item()
            item += nodes.paragraph(text=f"{profile}: {where}, on {first.machine}, {first.date}, torch {first.torch}")
            sources += item
        return [table, sources]


@functools.cache
def _record_calls(chapter: str) -> tuple:
    """The record() calls of the notebook whose stem is ``chapter`` (in lower case, as results name chapters)."""
    import nbformat

    from mmcourse.book.notebooks import record_calls

    found = [path for path in NOTEBOOKS.glob("*.ipynb") if path.stem.lower() == chapter]
    return tuple(record_calls(nbformat.read(str(found[0]), as_version=4))) if found else ()


def recorded_at(chapter: str, name: str) -> tuple[float, ...]:
    """Where chapter ``chapter`` records ``name``: the first record() call in its notebook that makes it, as (cell,
    top-level statement, turn of its loop, line), so that a table lists the figures in the order the chapter
    measures them, a loop's figures one turn after another (names no call makes: last)."""
    for call in _record_calls(chapter):
        if call.matches(name):
            turn = call.names.index(name) if call.names is not None else 0
            return (call.cell, call.statement, turn, call.line)
    return (1e9, 0, 0, 0)


def figure_label(name: str) -> str:
    """A reader's label for a recorded name: "question_only_accuracy" → "question only accuracy"."""
    return name.replace("_", " ")


def results_rows(results: list[Result], with_chapter: bool) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of a results table: one row per (chapter, name), the value with its unit in each profile's
    column ("—" where that profile has not measured it), and what the figure is (its notes; a note that differs
    between profiles is shown per profile)."""
    from mmcourse.book.profiles import PROFILES
    from mmcourse.book.results import format_value

    profiles = [profile for profile in PROFILES if any(result.profile == profile for result in results)]
    figures: dict[tuple[str, str], dict[str, Result]] = {}
    for result in sorted(results, key=lambda r: (r.chapter, recorded_at(r.chapter, r.name), r.name)):
        figures.setdefault((result.chapter, result.name), {})[result.profile] = result
    headers = (["chapter"] if with_chapter else []) + ["figure", *profiles, "what it is"]
    rows = []
    for (chapter, name), by_profile in figures.items():
        values = [
            f"{format_value(by_profile[p].value)} {by_profile[p].unit}".strip() if p in by_profile else "—"
            for p in profiles
        ]
        notes = {p: by_profile[p].note for p in profiles if p in by_profile and by_profile[p].note}
        if len(set(notes.values())) <= 1:
            note = next(iter(notes.values()), "")
        else:
            note = "; ".join(f"{p}: {text}" for p, text in notes.items())
        rows.append(([chapter] if with_chapter else []) + [figure_label(name), *values, note])
    return headers, rows


def matching(results: list[Result], patterns: list[str]) -> list[Result]:
    """The results whose name matches one of the glob ``patterns``; all of them when there is no pattern."""
    if not patterns:
        return list(results)
    return [result for result in results if any(fnmatch.fnmatchcase(result.name, p) for p in patterns)]


# ----------------------------------------------------------------------------------------------------------------
# Exercises, read from the chapter notebooks

EXERCISE = re.compile(r"^```\{exercise\}\s*(?P<title>.*?)\n:label:\s*(?P<label>\S+)\n(?P<body>.*?)^```", re.M | re.S)
OBJECTIVE = re.compile(r"\*Objective:\*\s*(?P<objective>.+?)\s*\*Time:\*\s*(?P<minutes>\d+) minutes")
CODE_ANSWER = re.compile(r"^def my_\w+\(", re.M)  # a code exercise: the student writes my_...()
MEASUREMENT_ANSWER = re.compile(r"^\w+( = \w+)* = None  # replace None with your measurements")  # an experiment


@dataclass(frozen=True)
class Exercise:
    label: str  # ex-NN-name, also the nbgrader grade_id of its solution cell
    title: str
    objective: str
    minutes: int
    kind: str  # "code", "experiment", or "unknown"


def chapter_exercises(notebook: Path) -> list[Exercise]:
    """Every ``{exercise}`` block of a chapter notebook, in order, with the kind of its solution cell."""
    cells = json.loads(Path(notebook).read_text(encoding="utf-8"))["cells"]
    solutions = {
        cell["metadata"]["nbgrader"]["grade_id"]: "".join(cell["source"])
        for cell in cells
        if cell.get("metadata", {}).get("nbgrader", {}).get("solution")
    }
    found = []
    for cell in cells:
        if cell["cell_type"] != "markdown":
            continue
        for block in EXERCISE.finditer("".join(cell["source"])):
            stated = OBJECTIVE.search(block["body"])
            found.append(
                Exercise(
                    label=block["label"],
                    title=block["title"].strip(),
                    objective=stated["objective"].rstrip(".") if stated else "",
                    minutes=int(stated["minutes"]) if stated else 0,
                    kind=answer_kind(solutions.get(block["label"], "")),
                )
            )
    return found


def answer_kind(solution: str) -> str:
    """The kind of exercise a solution cell answers: ``code`` when it defines ``my_...()``, ``experiment`` when it
    starts by setting the measurements to None, else ``unknown``."""
    if CODE_ANSWER.search(solution):
        return "code"
    return "experiment" if MEASUREMENT_ANSWER.match(solution) else "unknown"


class ExerciseTable(SphinxDirective):
    """``{exercise-table} 01_attention``: the exercises of one chapter (title, kind, objective, time), each
    linked to the exercise itself, and their total time."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        notebook = NOTEBOOKS / f"{self.arguments[0]}.ipynb"
        if not notebook.is_file():
            raise self.error(f"exercise-table: no chapter notebook {notebook}")
        self.env.note_dependency(str(notebook))
        exercises = chapter_exercises(notebook)
        if not exercises:
            raise self.error(f"exercise-table: {notebook.name} has no exercise")
        table = _table(["exercise", "kind", "objective", "time"], [])
        table["classes"] = ["exercise-table"]
        body = table.next_node(nodes.tbody)
        for exercise in exercises:
            link = addnodes.pending_xref(
                "", refdomain="std", reftype="ref", reftarget=exercise.label, refexplicit=True, refwarn=True
            )
            link["refdoc"] = self.env.docname
            link += nodes.inline(text=exercise.title)
            row = _row(["", exercise.kind, exercise.objective, f"{exercise.minutes} min"])
            row[0][0] += link
            body += row
        body += _row(["all exercises", "", "", f"{sum(e.minutes for e in exercises)} min"])
        return [table]


# ----------------------------------------------------------------------------------------------------------------
# The runbook: each chapter's time and peak memory per machine, from the committed files of `make runbook`

RUNBOOK = Path(__file__).resolve().parents[1] / "runbook"  # book/runbook/<machine>--<profile>.json


class RunbookTable(SphinxDirective):
    """``{runbook-table}``: one row per chapter notebook, and for each machine and profile measured with
    ``python -m mmcourse.book.runbook`` its minutes and peak memory, read from the files in book/runbook."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from mmcourse.book.notebooks import chapter_notebooks

        for path in sorted(RUNBOOK.glob("*.json")):
            self.env.note_dependency(str(path))
        # Not a file, so Sphinx counts it as changed: the page is read again each build and a new file shows up.
        self.env.note_dependency(str(RUNBOOK))
        return runbook_nodes(RUNBOOK, [path.stem for path in chapter_notebooks(NOTEBOOKS.parent)])


def runbook_table(chapters: list[str], runbooks: list[Runbook]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the runbook table: a row per chapter, two columns (minutes, peak memory in GiB) per
    runbook. Memory is the GPU peak when measured on a GPU, else the peak resident memory; "—": not measured."""
    from mmcourse.book.runbook import format_gib, format_minutes

    headers = ["chapter"]
    for runbook in runbooks:
        measured = f"{runbook.machine}, {runbook.profile}"
        memory = "peak GPU memory (GiB)" if runbook.on_gpu else "peak RSS (GiB)"
        headers += [f"{measured}: minutes", f"{measured}: {memory}"]
    rows = []
    for chapter in chapters:
        row = [chapter]
        for runbook in runbooks:
            run = runbook.chapter(chapter)
            if run is None:
                row += ["—", "—"]
                continue
            minutes = format_minutes(run.seconds) if run.ok else f"failed ({run.status.split(':')[1].strip()})"
            memory = format_gib(run.peak_gpu_bytes if runbook.on_gpu else run.peak_rss_bytes)
            row += [minutes, f"{memory} (over the T4's budget)" if run.over_t4 else memory]
        rows.append(row)
    return headers, rows


def runbook_caption(runbook: Runbook) -> str:
    """One line saying where and with what a runbook was measured."""
    dates = sorted({run.date for run in runbook.chapters}) or [runbook.date]
    torch_versions = sorted({run.torch for run in runbook.chapters}) or [runbook.torch]
    threads = sorted({run.torch_threads for run in runbook.chapters if run.torch_threads is not None})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    caption = f"{runbook.machine}, {runbook.profile} profile: measured {when}, torch {', '.join(torch_versions)}"
    caption += f", Python {runbook.python}"
    if threads:
        caption += f", {'/'.join(map(str, threads))} torch thread{'s' if threads != [1] else ''}"
    return caption + "."


def runbook_nodes(folder: Path, chapters: list[str]) -> list[nodes.Node]:
    """The runbook table and a caption line per file of ``folder``; a paragraph saying how to fill it when there
    is no file."""
    from mmcourse.book.runbook import load_runbooks

    runbooks = load_runbooks(folder)
    if not runbooks:
        paragraph = nodes.paragraph(text="No machine has been measured yet: book/runbook/ holds no file. ")
        paragraph += nodes.Text("Run ")
        paragraph += nodes.literal(text="make runbook")
        paragraph += nodes.Text(" (or ")
        paragraph += nodes.literal(text="python -m mmcourse.book.runbook --profile gpu")
        paragraph += nodes.Text(") on a machine and commit the file it writes: the table then shows that machine.")
        return [paragraph]
    headers, rows = runbook_table(chapters, runbooks)
    table = _table(headers, rows)
    table["classes"].append("runbook-table")
    return [table, *(nodes.paragraph(text=runbook_caption(runbook)) for runbook in runbooks)]


def _table(headers: list[str], rows: list[list[str]]) -> nodes.table:
    table = nodes.table(classes=["results-table"])
    group = nodes.tgroup(cols=len(headers))
    table += group
    group += [nodes.colspec(colwidth=1) for _ in headers]
    head = nodes.thead()
    group += head
    head += _row(headers)
    body = nodes.tbody()
    group += body
    for row in rows:
        body += _row(row)
    return table


def _row(cells: list[str]) -> nodes.row:
    row = nodes.row()
    for text in cells:
        entry = nodes.entry()
        entry += nodes.paragraph(text=text)
        row += entry
    return row


def read_results_last(app: Sphinx, env: object, docnames: list[str]) -> None:
    """Read the pages with a results table after the chapters, whose execution records the values they show."""
    for docname in RESULTS_DOCNAMES:
        if docname in docnames:
            docnames.remove(docname)
            docnames.append(docname)


def results_always_outdated(app: Sphinx, env: object, added: set, changed: set, removed: set) -> list[str]:
    """The pages with a results table depend on files outside Sphinx's view: rebuild them every time."""
    return [docname for docname in RESULTS_DOCNAMES if docname in getattr(env, "found_docs", set())]


def drop_thebe_scripts(app: Sphinx, pagename: str, templatename: str, context: dict, doctree: object) -> None:
    """Live code (thebe) is off in this book, yet sphinx-thebe adds its config script twice (a console error)
    and names a CDN: drop its scripts from every page."""
    scripts = context.get("script_files", [])
    context["script_files"] = [
        script
        for script in scripts
        if "sphinx-thebe.js" not in str(script) and "THEBE_JS_URL" not in str(getattr(script, "attributes", {}))
    ]


# The ipywidgets HTML manager finds its fonts relative to the AMD module's URL. Unconfigured, require.js puts
# that URL next to the page (notebooks/@jupyter-widgets/...: 404). Point the module's path at the vendored copy;
# a global ``require`` object defined before require.js loads is its configuration.
WIDGETS_REQUIRE_CONFIG = (
    'var require = {paths: {"@jupyter-widgets/html-manager/dist": '
    'document.documentElement.dataset.content_root + "_static/vendor/html-manager"}};'
)


def setup(app: Sphinx) -> dict:
    app.add_directive("results-table", ResultsTable)
    app.add_directive("exercise-table", ExerciseTable)
    app.add_directive("runbook-table", RunbookTable)
    app.add_js_file(None, body=WIDGETS_REQUIRE_CONFIG, priority=100)
    app.connect("env-get-outdated", results_always_outdated)
    app.connect("env-before-read-docs", read_results_last)
    app.connect("html-page-context", drop_thebe_scripts)
    return {"version": "0.1", "parallel_read_safe": False, "parallel_write_safe": True}
