"""Sphinx extension for the mmcourse book: the Results page's table, built from the recorded JSON files.

The Results page is read after every other page, so it shows what this very build's notebooks recorded.
"""

from __future__ import annotations

from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive
from sphinx.application import Sphinx

RESULTS_DOCNAME = "book/results"
MEASUREMENTS = Path(__file__).resolve().parents[1] / "measurements"  # book/measurements/<profile>/<chapter>.json


class ResultsTable(Directive):
    """``{results-table}``: one table per profile of every value recorded with ``mmcourse.results.record``."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from mmcourse.results import format_value, load, results_dir, with_measurements

        directory = results_dir()
        built = load(directory)
        results = with_measurements(built, load(MEASUREMENTS))
        if not results:
            paragraph = nodes.paragraph(text=f"No results have been recorded yet (looked in {directory}).")
            return [paragraph]
        profiles_built = {result.profile for result in built}
        output: list[nodes.Node] = []
        for profile in dict.fromkeys(result.profile for result in results):
            rows = [result for result in results if result.profile == profile]
            source = (
                "measured by this build" if profile in profiles_built else "committed measurements (book/measurements)"
            )
            section_title = nodes.rubric(text=f"Profile: {profile} — {source}")
            headers = ["chapter", "name", "value", "unit", "note", "machine", "date", "torch"]
            body = [
                [r.chapter, r.name, format_value(r.value), r.unit, r.note, r.machine, r.date, r.torch] for r in rows
            ]
            output += [section_title, _table(headers, body)]
        return output


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
    """Read the Results page after the chapters, whose execution records the values it shows."""
    if RESULTS_DOCNAME in docnames:
        docnames.remove(RESULTS_DOCNAME)
        docnames.append(RESULTS_DOCNAME)


def results_always_outdated(app: Sphinx, env: object, added: set, changed: set, removed: set) -> list[str]:
    """The Results page depends on files outside Sphinx's view: rebuild it every time."""
    return [RESULTS_DOCNAME] if RESULTS_DOCNAME in getattr(env, "found_docs", set()) else []


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
    app.add_js_file(None, body=WIDGETS_REQUIRE_CONFIG, priority=100)
    app.connect("env-get-outdated", results_always_outdated)
    app.connect("env-before-read-docs", read_results_last)
    app.connect("html-page-context", drop_thebe_scripts)
    return {"version": "0.1", "parallel_read_safe": False, "parallel_write_safe": True}
