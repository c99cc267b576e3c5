"""The book's chapter notebooks, and the one way they are executed (``make test``, ``make book``, ``make runbook``,
``make bench``).

:func:`execute` runs each notebook once, top to bottom, in a fresh kernel, several notebooks at a time, and returns
one :class:`Execution` per notebook. From that one run come every check the book needs:

- the cell outcomes: the first cell that raises stops the notebook, and is named with its error;
- the student version: just before each exercise's solution cell, the cell as a student receives it
  (``make student``: the solution cleared to ``raise NotImplementedError()``) and the exercise's checker run in a
  *copy* of the kernel's namespace, so the chapter's own state is untouched. The stub may raise nothing but
  ``NotImplementedError``, and the checker must say "not answered yet" (:func:`exercise_problems`). Together with
  the static :func:`solution_names_used_later`, this is what executing the student notebook separately checked;
- the glue keys: what the cells recorded (``mmcourse.book.results.record``) against what the prose uses
  (``{glue:text}`name```); a second record of one name from another cell raises in the kernel (the executor sets
  ``MMCOURSE_STRICT_RESULTS``). :func:`glue_problems` checks the same statically, for every profile at once;
- the time of every cell and the kernel's peak memory (an appended cell reads it), for the runbook.

The probe and peak cells are taken out again, and so are the progress bars (they belong in Jupyter, not in the
printed book): :func:`cache` then stores the executed notebook where MyST-NB's cache mode finds it, so the book
build renders it without executing it a second time.

``python -m mmcourse.book.notebooks [--profile P] [--workers N] [--threads N] [NOTEBOOK ...]`` executes and reports.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import copy
import datetime as _dt
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mmcourse.book.profiles import PROFILES, current_profile
from mmcourse.book.results import STRICT_ENV_VAR, repository_root
from mmcourse.checks import check_positive_int, positive_int_argument

DEFAULT_TIMEOUT = 1800  # seconds per cell, as the book's build allows (_config.yml: execute.timeout)
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # terminal colours in a kernel's traceback
PEAKS_MARKER = "MMCOURSE_RUNBOOK "  # the line the appended cell prints, followed by JSON
PROBE_MARKER = "MMCOURSE_EXERCISE "  # the line an exercise probe prints, followed by JSON
NOT_ANSWERED = "not answered yet"  # what every checker says of an unanswered exercise (exercises.run_check)
GLUE_REFERENCE = re.compile(r"\{glue(?::[a-z]+)?\}`([A-Za-z0-9_]+)")

PEAKS_CELL = f"""\
def _mmcourse_runbook_peaks() -> str:
    import json
    import resource
    import sys
    import torch
    cuda = torch.cuda.is_available()
    kib = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    peaks = {{
        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if cuda else None,  # since the kernel started
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * kib,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }}
    return {PEAKS_MARKER!r} + json.dumps(peaks)
print(_mmcourse_runbook_peaks())
del _mmcourse_runbook_peaks"""

PROBE_CELL = """\
def _mmcourse_exercise_probe(stub, checker):
    import contextlib, io, json
    namespace = dict(globals())  # a copy: the chapter's own variables stay as they are
    report = {{"stub": "ran", "checker": None, "said": ""}}
    try:
        exec(compile(stub, "<the student's cell>", "exec"), namespace)
    except NotImplementedError:
        report["stub"] = "NotImplementedError"
    except BaseException as error:
        report["stub"] = f"{{type(error).__name__}}: {{error}}"
    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said):
            exec(compile(checker, "<the checker's cell>", "exec"), namespace)
    except BaseException as error:
        report["checker"] = f"{{type(error).__name__}}: {{error}}"
    report["said"] = said.getvalue()
    print({marker!r} + json.dumps(report))
_mmcourse_exercise_probe({stub!r}, {checker!r})
del _mmcourse_exercise_probe"""


# ----------------------------------------------------------------------------------------------------------------
# The notebooks


def chapter_order(stem: str) -> tuple[bool, str]:
    return (stem[:1].isalpha(), stem)  # the chapters 01…, then the appendices A1…


def chapter_notebooks(root: Path, chapters: Sequence[str] | None = None) -> list[Path]:
    """The chapter notebooks ``notebooks/NN_*.ipynb``, then the appendices ``notebooks/A<N>_*.ipynb``, of the
    repository at ``root``; with ``chapters``, only those whose prefix ("01", "A1") or stem is listed."""
    folder = Path(root) / "notebooks"
    found = sorted(folder.glob("[0-9][0-9]_*.ipynb")) + sorted(folder.glob("A[0-9]_*.ipynb"))
    if not found:
        raise ValueError(f"root={str(root)!r} has no chapter notebooks in notebooks/")
    if chapters is None:
        return found
    known = {path.stem.split("_")[0].lower(): path for path in found} | {path.stem.lower(): path for path in found}
    unknown = [chapter for chapter in chapters if chapter.lower() not in known]
    if unknown:
        prefixes = ", ".join(path.stem.split("_")[0] for path in found)
        raise ValueError(f"chapters: no chapter notebook {', '.join(map(repr, unknown))}; known: {prefixes}")
    return sorted({known[chapter.lower()] for chapter in chapters}, key=lambda path: chapter_order(path.stem))


def check_profile(profile: str) -> None:
    """Raise ValueError naming ``profile`` unless it is one of ``PROFILES``."""
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r} is not a profile; valid profiles are: {', '.join(PROFILES)}")


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for the block (a kernel started inside inherits them), then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def notebook_environment(profile: str, results: Path | None = None, **extra: str) -> Iterator[Path]:
    """What a kernel started inside the block runs with: ``profile``, the Hugging Face libraries offline, strict
    results (a name recorded twice by two cells raises), and its results recorded into ``results`` — by default a
    temporary folder, so the book's results stay untouched. ``extra``: more variables. Yields the results folder."""
    check_profile(profile)
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory())) if results is None else Path(results)
        stack.enter_context(
            environment(
                MMCOURSE_PROFILE=profile, MMCOURSE_RESULTS=str(folder), **{STRICT_ENV_VAR: "1"}, **offline, **extra
            )
        )
        yield folder


# ----------------------------------------------------------------------------------------------------------------
# What the prose glues, checked without running anything


def _code(cell: dict) -> str:
    """A code cell's source as Python: IPython magics and shell lines commented out."""
    return "\n".join(
        "# " + line if line.lstrip().startswith(("%", "!")) else line for line in cell["source"].split("\n")
    )


def glue_references(notebook: dict) -> set[str]:
    """The glue keys that the notebook's markdown uses (``{glue:text}`name:.1%```, ``{glue}`name```, …)."""
    return {
        key
        for cell in notebook["cells"]
        if cell["cell_type"] == "markdown"
        for key in GLUE_REFERENCE.findall(cell["source"])
    }


@dataclass(frozen=True)
class RecordCall:
    """One ``results.record(name, ...)`` call (or ``record(chapter, name, ...)``, or ``glue``) in a code cell: the
    names it records — exactly, when they can be worked out from the code (literals, loops over literals), else
    as a regular expression (an f-string's fields match any name part) —, whether a condition decides if it runs,
    and where it is."""

    cell: int
    line: int
    statement: int  # the line of the cell's top-level statement that holds the call (a loop's first line)
    chapter: str | None  # the chapter id, None when it cannot be worked out
    names: tuple[str, ...] | None  # every name it records, in the order a loop makes them; None: not worked out
    pattern: str  # a regular expression for the names it records
    conditional: bool  # inside an if, an except, a while or a conditional expression

    def matches(self, name: str) -> bool:
        return name in self.names if self.names is not None else re.fullmatch(self.pattern, name) is not None


_SAFE_BUILTINS = {f.__name__: f for f in (zip, range, enumerate, len, str, dict, list, tuple, sorted, reversed)}
_UNKNOWN = object()


def _evaluate(node: ast.expr, scope: dict) -> object:
    """The value of an expression over literals and known names; _UNKNOWN when it depends on anything else."""
    names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} - set(_SAFE_BUILTINS)
    if any(scope.get(name, _UNKNOWN) is _UNKNOWN for name in names):
        return _UNKNOWN
    try:
        value = eval(compile(ast.Expression(node), "<record>", "eval"), {"__builtins__": _SAFE_BUILTINS}, scope)
        return list(value) if isinstance(value, (zip, enumerate, range, reversed, type({}.items()))) else value
    except Exception:  # noqa: BLE001 - anything it cannot evaluate is unknown
        return _UNKNOWN


def _bind(target: ast.expr, value: object, scope: dict) -> None:
    if isinstance(target, ast.Name):
        scope[target.id] = value
    elif isinstance(target, (ast.Tuple, ast.List)):
        parts = list(value) if value is not _UNKNOWN and isinstance(value, (tuple, list)) else None
        for index, element in enumerate(target.elts):
            _bind(element, parts[index] if parts is not None and index < len(parts) else _UNKNOWN, scope)


def _possible_values(node: ast.expr, call: ast.Call, parents: dict, module: dict) -> list | None:
    """Every value ``node`` (an argument of ``call``) takes: through the for-loops around the call (their iterables
    evaluated) and the assignments before it in each loop's body, in the order the loops make them, each once.
    None when it cannot be worked out."""
    chain, ancestor = [], call
    while ancestor in parents:
        child, ancestor = ancestor, parents[ancestor]
        chain.append((ancestor, child))
    scopes = [dict(module)]
    for ancestor, child in reversed(chain):  # from the cell's top down to the call
        body = getattr(ancestor, "body", None)
        if isinstance(ancestor, ast.For) and child in ancestor.body:
            expanded = []
            for scope in scopes:
                items = _evaluate(ancestor.iter, scope)
                for item in items if isinstance(items, (list, tuple, dict, set, str)) else [_UNKNOWN]:
                    inner = dict(scope)
                    _bind(ancestor.target, item, inner)
                    expanded.append(inner)
            scopes = expanded[:10000]
        if isinstance(body, list) and child in body:
            for statement in body[: body.index(child)]:  # assignments before the call, in this block
                if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
                    for scope in scopes:
                        _bind(statement.targets[0], _evaluate(statement.value, scope), scope)
    values = [_evaluate(node, scope) for scope in scopes]
    if not values or any(value is _UNKNOWN for value in values):
        return None
    return list(dict.fromkeys(values))


def _module_literals(notebook: dict, upto: int) -> dict:
    """Names assigned a literal at the top level of the code cells up to ``upto`` (CHAPTER = "...", a dict …)."""
    found: dict = {}
    for cell in notebook["cells"][: upto + 1]:
        if cell["cell_type"] != "code":
            continue
        for statement in ast.parse(_code(cell)).body:
            if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
                try:
                    _bind(statement.targets[0], ast.literal_eval(statement.value), found)
                except (ValueError, TypeError, SyntaxError, RecursionError):
                    _bind(statement.targets[0], _UNKNOWN, found)
    return found


def _top_statement(node: ast.AST, parents: dict) -> ast.AST:
    while parents.get(node) is not None and not isinstance(parents[node], ast.Module):
        node = parents[node]
    return node


def _name_pattern(node: ast.expr) -> str:
    if isinstance(node, ast.JoinedStr):
        return "".join(
            re.escape(value.value) if isinstance(value, ast.Constant) else "[a-z0-9_]+" for value in node.values
        )
    return "[a-z0-9_]+"


def _bound_chapters(notebook: dict) -> dict[str, str | None]:
    """The names bound to ``chapter_results(<chapter>)`` in the notebook's code cells, each with its chapter
    (None when the argument is not a literal)."""
    bound = {}
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        for node in ast.walk(ast.parse(_code(cell))):
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name)
                and node.value.func.id == "chapter_results"
            ):
                argument = node.value.args[0] if node.value.args else None
                chapter = argument.value if isinstance(argument, ast.Constant) else None
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        bound[target.id] = chapter
    return bound


def _recording_function(node: ast.AST, bound: dict[str, str | None]) -> str | None:
    """"record" for ``record(chapter, name, ...)``, "method" for ``results.record(name, ...)`` on a name bound to
    ``chapter_results``, "glue" for myst-nb's ``glue(name, ...)``; None for any other node."""
    if not isinstance(node, ast.Call):
        return None
    if isinstance(node.func, ast.Name) and node.func.id in ("record", "glue"):
        return node.func.id
    if (
        isinstance(node.func, ast.Attribute)
        and node.func.attr == "record"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in bound
    ):
        return "method"
    return None


def record_calls(notebook: dict) -> list[RecordCall]:
    """Every call that makes a glue key in the notebook's code cells: ``results.record(name, ...)`` on the
    chapter's results (``results = chapter_results(chapter)``, ``mmcourse.book.results``), ``record(chapter, name,
    ...)``, and myst-nb's ``glue(name, ...)``."""
    calls = []
    bound = _bound_chapters(notebook)
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        tree = ast.parse(_code(cell))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        module = None
        for node in ast.walk(tree):
            function = _recording_function(node, bound)
            if function is None:
                continue
            module = _module_literals(notebook, index) if module is None else module
            arguments = {**dict(enumerate(node.args)), **{k.arg: k.value for k in node.keywords if k.arg}}
            chapters = None
            if function == "record":
                chapter_node, name_node = (
                    arguments.get(0, arguments.get("chapter")),
                    arguments.get(1, arguments.get("name")),
                )
                if chapter_node is not None:
                    chapters = _possible_values(chapter_node, node, parents, module)
            else:  # glue(name, value), a value shown in the text but not a result; results.record(name, value)
                chapter_node, name_node = ast.Constant(None), arguments.get(0, arguments.get("name"))
                if function == "method" and bound[node.func.value.id] is not None:
                    chapters = [bound[node.func.value.id]]
            if chapter_node is None or name_node is None:
                raise ValueError(f"cell {index}, line {node.lineno}: {function}() without its name")
            names = _possible_values(name_node, node, parents, module)
            conditional, ancestor = False, node
            while ancestor in parents:
                child, ancestor = ancestor, parents[ancestor]
                if isinstance(ancestor, (ast.If, ast.IfExp, ast.While)) and child is not ancestor.test:
                    conditional = True
                conditional = conditional or isinstance(ancestor, ast.ExceptHandler)
            calls.append(
                RecordCall(
                    cell=index,
                    line=node.lineno,
                    statement=_top_statement(node, parents).lineno,
                    chapter=chapters[0] if chapters is not None and len(chapters) == 1 else None,
                    names=tuple(map(str, names)) if names is not None else None,
                    pattern=_name_pattern(name_node),
                    conditional=conditional,
                )
            )
    return calls


def glue_problems(notebook: dict, chapter: str) -> list[str]:
    """What would make an executed build of ``notebook`` fail on its glue keys in some profile, found without
    running it: a key the prose uses that no ``record`` call makes, or that only a conditional one makes; a name
    that two calls record; a ``record`` call whose chapter is not the notebook's own (``chapter``, the file's
    stem, in lower case).

    Names that cannot be worked out from the code (an f-string over a config's values, a function's argument) are
    matched by their pattern when the prose uses them, and left to the executor's run-time check (a second record
    of a name raises) for duplicates. Empty when there is no problem."""
    calls = record_calls(notebook)
    problems = []
    for call in calls:
        if call.chapter is not None and call.chapter != chapter.lower():
            problems.append(
                f"cell {call.cell}: results of chapter {call.chapter!r} recorded in {chapter}: use the notebook's name"
            )
    exact = [call for call in calls if call.names is not None]
    for position, call in enumerate(exact):
        for other in exact[position + 1 :]:
            for name in sorted(set(call.names) & set(other.names)):
                problems.append(
                    f"{name!r} is recorded twice: cell {call.cell} line {call.line} and cell {other.cell} line "
                    f"{other.line} (one name per value: the book build fails on a duplicate glue key)"
                )
    for key in sorted(glue_references(notebook)):
        makers = [call for call in calls if call.matches(key)]
        if not makers:
            problems.append(f"the prose uses {{glue}} key {key!r}, which no record() call makes")
        elif all(call.conditional for call in makers):
            where = ", ".join(f"cell {call.cell} line {call.line}" for call in makers)
            problems.append(
                f"the prose uses {{glue}} key {key!r}, which only a conditional record() makes ({where}): "
                "in a profile where the condition is false the book build fails"
            )
    return problems


def _bound_names(source: str) -> set[str]:
    tree = ast.parse(source)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def _loaded_names(source: str) -> set[str]:
    return {
        node.id for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
    }


def exercise_cells(notebook: dict) -> list[tuple[int, int | None]]:
    """(solution cell, checker cell) of every exercise: the checker is the next code cell (None if there is none)."""
    from mmcourse.exercises import is_solution_cell

    cells = notebook["cells"]
    pairs = []
    for index, cell in enumerate(cells):
        if is_solution_cell(cell):
            following = [later for later in range(index + 1, len(cells)) if cells[later]["cell_type"] == "code"]
            pairs.append((index, following[0] if following else None))
    return pairs


def solution_names_used_later(notebook: dict, name: str = "notebook") -> list[str]:
    """Names that only a solution defines (the student's cleared cell does not) but that a later cell other than
    that exercise's checker reads: in the student notebook that cell would fail. Empty when there is none."""
    from mmcourse.exercises import student_notebook

    student = student_notebook(copy.deepcopy(notebook), name)
    cells = notebook["cells"]
    solutions = dict(exercise_cells(notebook))
    bound_elsewhere: set[str] = set()
    for index, cell in enumerate(cells):
        if cell["cell_type"] == "code" and index not in solutions:
            bound_elsewhere |= _bound_names(_code(cell))
    problems = []
    for solution, checker in solutions.items():
        only_in_solution = (
            _bound_names(_code(cells[solution])) - _bound_names(_code(student.cells[solution])) - bound_elsewhere
        )
        for later in range(solution + 1, len(cells)):
            if cells[later]["cell_type"] != "code" or later == checker:
                continue
            used = sorted(_loaded_names(_code(student.cells[later])) & only_in_solution)
            if used:
                problems.append(
                    f"cell {later} reads {', '.join(used)}, which only the solution in cell {solution} defines"
                )
    return problems


def static_problems(paths: Sequence[Path]) -> list[str]:
    """Everything :func:`glue_problems` and :func:`solution_names_used_later` find in these notebooks, each
    prefixed with the notebook's name: what would fail an executed build in some profile, found without running."""
    import nbformat

    problems = []
    for path in map(Path, paths):
        notebook = nbformat.read(str(path), as_version=4)
        found = glue_problems(notebook, path.stem) + solution_names_used_later(notebook, path.name)
        problems += [f"{path.name}: {problem}" for problem in found]
    return problems


# ----------------------------------------------------------------------------------------------------------------
# Executing


@dataclass(frozen=True)
class CellFailure:
    """The cell that stopped a notebook: its index among the notebook's cells, the error, and its traceback."""

    cell: int
    ename: str
    evalue: str
    traceback: str = ""

    @property
    def message(self) -> str:
        """The error's name and the last line of its message, without terminal colours."""
        lines = [line.strip() for line in ANSI_COLOUR.sub("", self.evalue).splitlines() if line.strip()]
        return f"{self.ename}: {lines[-1][:300] if lines else ''}".rstrip(": ")

    def __str__(self) -> str:
        return f"cell {self.cell}: {self.message}"


@dataclass(frozen=True)
class ExerciseProbe:
    """An exercise as a student receives it, run just before its solution: what the cleared cell did ("ran",
    "NotImplementedError", or another error) and what the checker said (or the error it raised)."""

    solution_cell: int
    checker_cell: int | None
    stub: str
    checker_error: str | None
    said: str


@dataclass
class Execution:
    """One notebook executed once."""

    path: str
    profile: str
    seconds: float  # wall clock, kernel start included
    failure: CellFailure | None
    exercises: list[ExerciseProbe]
    glued: list[str]  # the glue keys its outputs hold
    referenced: list[str]  # the glue keys its markdown uses
    cell_seconds: list[float | None]  # per cell; None for markdown and for cells not reached
    peaks: dict  # from the appended cell: peak_gpu_bytes, gpu, peak_rss_bytes, torch, torch_threads
    threads: int | None
    code_hash: str = ""  # of the notebook's code cells when it ran: is a report of the notebook as it is now?
    date: str = field(default_factory=lambda: _dt.datetime.now().isoformat(timespec="seconds"))
    notebook: dict | None = field(default=None, repr=False)  # the executed notebook; not written to reports

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def ok(self) -> bool:
        """Ran to the end without an error."""
        return self.failure is None

    def missing_glue(self) -> list[str]:
        """Glue keys the prose uses that this run did not record."""
        return sorted(set(self.referenced) - set(self.glued))

    def problems(self) -> list[str]:
        """Everything that makes this run fail a check, each naming the notebook: a failed cell, a glue key the
        prose uses but this run did not record, an exercise whose student version misbehaves."""
        found = [f"{self.name}: {self.failure}"] if self.failure else []
        if self.failure is None:
            found += [
                f"{self.name}: the prose uses glue key {key!r}, which this run did not record"
                for key in self.missing_glue()
            ]
        found += [f"{self.name}: {problem}" for problem in exercise_problems(self.exercises)]
        return found

    def report(self) -> dict:
        """The JSON-able report of this run, without the notebook."""
        return {key: value for key, value in asdict(self).items() if key != "notebook"}


def exercise_problems(probes: Sequence[ExerciseProbe]) -> list[str]:
    """What a student would meet that they should not: a cleared cell that raises something other than
    ``NotImplementedError``, a checker that raises, or one that does not say the exercise is not answered yet."""
    problems = []
    for probe in probes:
        where = f"exercise in cell {probe.solution_cell}"
        if probe.checker_cell is None:
            problems.append(f"{where}: no checker cell follows it")
            continue
        if probe.stub not in ("ran", "NotImplementedError"):
            problems.append(f"{where}: the student's cell raises {probe.stub} (only NotImplementedError may)")
        if probe.checker_error is not None:
            problems.append(f"{where}: its checker (cell {probe.checker_cell}) raises {probe.checker_error}")
        elif NOT_ANSWERED not in probe.said:
            problems.append(f"{where}: its checker does not say '{NOT_ANSWERED}' (it said {probe.said.strip()!r})")
    return problems


def code_hash(notebook: dict) -> str:
    """A hash of the notebook's code cells (sources and metadata): what its execution depends on."""
    import hashlib

    code = [[cell["source"], cell.get("metadata", {})] for cell in notebook["cells"] if cell["cell_type"] == "code"]
    return hashlib.sha256(json.dumps(code, sort_keys=True).encode()).hexdigest()[:16]


def read_marker(outputs: Sequence[dict], marker: str) -> dict | None:
    """The JSON that a cell printed after ``marker``, from its outputs (None if absent)."""
    for output in outputs:
        if output.get("output_type") != "stream":
            continue
        text = output.get("text", "")
        for line in ("".join(text) if isinstance(text, list) else text).splitlines():
            if line.startswith(marker):
                return json.loads(line[len(marker) :])
    return None


def glued_keys(notebook: dict) -> list[str]:
    """The glue keys held by the notebook's outputs (myst-nb's ``glue`` writes them as scrapbook metadata)."""
    return sorted(
        {
            output["metadata"]["scrapbook"]["name"]
            for cell in notebook["cells"]
            if cell["cell_type"] == "code"
            for output in cell.get("outputs", [])
            if "scrapbook" in output.get("metadata", {})
        }
    )


def _progress_models(notebook: dict) -> set[str]:
    """The widget models of tqdm's notebook bars: an HBox holding a progress bar."""
    state = notebook.get("metadata", {}).get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    models = state.get("state", {})
    progress = {
        key for key, model in models.items() if model.get("model_name") in ("FloatProgressModel", "IntProgressModel")
    }
    bars = set()
    for key, model in models.items():
        children = [str(child).removeprefix("IPY_MODEL_") for child in model.get("state", {}).get("children", [])]
        if model.get("model_name") == "HBoxModel" and progress & set(children):
            bars.add(key)
    return bars


TQDM_TEXT = re.compile(r"\d+%\|.*\|")


def strip_progress_bars(notebook: dict) -> int:
    """Remove tqdm's progress bars from the outputs (in place): the widget views of its bars, and bars written as
    text to stderr — and their widget models from the notebook's widget state, which the page embeds: only the
    models that the remaining widget views need stay. Returns the number of outputs removed."""
    bars = _progress_models(notebook)
    removed = 0
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get("application/vnd.jupyter.widget-view+json")
            is_bar = view is not None and view.get("model_id") in bars
            text = output.get("text", "")
            is_bar = is_bar or (output.get("name") == "stderr" and bool(TQDM_TEXT.search("".join(text))))
            removed += is_bar
            if not is_bar:
                kept.append(output)
        cell["outputs"] = kept
    views_left = [
        output["data"]["application/vnd.jupyter.widget-view+json"].get("model_id")
        for cell in notebook["cells"]
        if cell["cell_type"] == "code"
        for output in cell.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in output.get("data", {})
    ]
    widgets = notebook.get("metadata", {}).get("widgets", {}).get("application/vnd.jupyter.widget-state+json")
    if not views_left:
        notebook.get("metadata", {}).pop("widgets", None)
    elif widgets is not None:  # keep the models the remaining views need, and only those
        models = widgets.get("state", {})
        needed, todo = set(), list(views_left)
        while todo:
            key = todo.pop()
            if key in needed or key not in models:
                continue
            needed.add(key)
            todo += re.findall(r"IPY_MODEL_(\w+)", json.dumps(models[key].get("state", {})))
        widgets["state"] = {key: model for key, model in models.items() if key in needed}
    return removed


def _with_probes(notebook: dict, name: str) -> tuple[dict, list[int | None]]:
    """The notebook to run: a probe cell before each exercise's solution, the peaks cell at the end. Returns it
    and, for each of its cells, the index of the original cell (None for the added ones)."""
    import nbformat

    from mmcourse.exercises import student_notebook

    student = student_notebook(notebook, name)
    checkers = dict(exercise_cells(notebook))
    running = copy.deepcopy(notebook)
    running.cells, origin = [], []
    for index, cell in enumerate(notebook.cells):
        if index in checkers:
            checker = checkers[index]
            source = PROBE_CELL.format(
                marker=PROBE_MARKER,
                stub=_code(student.cells[index]),
                checker=_code(notebook.cells[checker]) if checker is not None else "",
            )
            running.cells.append(nbformat.v4.new_code_cell(source))
            origin.append(None)
        running.cells.append(copy.deepcopy(cell))
        origin.append(index)
    running.cells.append(nbformat.v4.new_code_cell(PEAKS_CELL))
    origin.append(None)
    return running, origin


async def _execute_one(path: Path, profile: str, timeout: int, exercises: bool) -> Execution:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    source = nbformat.read(str(path), as_version=4)
    running, origin = _with_probes(source, path.name) if exercises else _peaks_only(source)
    client = NotebookClient(
        running, timeout=timeout, record_timing=False, resources={"metadata": {"path": str(path.parent)}}
    )
    cell_seconds: list[float | None] = [None] * len(source.cells)
    failure: CellFailure | None = None
    current = 0  # the source cell running now: an added probe counts as its exercise's solution cell
    start, seconds = time.perf_counter(), None
    try:
        async with client.async_setup_kernel():
            info = await client.async_wait_for_reply(await _maybe_await(client.kc.kernel_info()))
            if info is not None and "language_info" in info["content"]:
                running.metadata["language_info"] = info["content"]["language_info"]
            for index, cell in enumerate(running.cells[:-1]):
                began = time.perf_counter()
                current = origin[index] if origin[index] is not None else origin[index + 1]
                try:
                    await client.async_execute_cell(cell, index)
                except CellExecutionError as error:  # the kernel is idle again: it can still report its peaks
                    failure = CellFailure(current, error.ename, error.evalue, str(error))
                    break
                finally:
                    if origin[index] is not None and cell.cell_type == "code":
                        cell_seconds[origin[index]] = round(time.perf_counter() - began, 3)
            seconds = time.perf_counter() - start
            await client.async_execute_cell(running.cells[-1], len(running.cells) - 1)
            client.set_widgets_metadata()
    except Exception as error:  # a cell that timed out, a dead kernel, a kernel that did not start
        if failure is None:
            failure = CellFailure(current, type(error).__name__, str(error))
    seconds = time.perf_counter() - start if seconds is None else seconds

    probes, checkers = [], dict(exercise_cells(source))
    for index, cell in enumerate(running.cells):
        if origin[index] is None and index < len(running.cells) - 1:
            solution = origin[index + 1]
            found = read_marker(cell.get("outputs", []), PROBE_MARKER)
            if found is not None:
                probes.append(
                    ExerciseProbe(solution, checkers.get(solution), found["stub"], found["checker"], found["said"])
                )
    executed = copy.deepcopy(source)  # the source's cells and metadata exactly, with the run's outputs
    for index, cell in enumerate(running.cells):
        if origin[index] is not None and cell.cell_type == "code":
            executed.cells[origin[index]].outputs = cell.get("outputs", [])
            executed.cells[origin[index]].execution_count = cell.get("execution_count")
    for key in ("language_info", "widgets"):
        if key in running.metadata:
            executed.metadata[key] = running.metadata[key]
    strip_progress_bars(executed)
    peaks = read_marker(running.cells[-1].get("outputs", []), PEAKS_MARKER) or {}
    return Execution(
        path=str(path),
        profile=profile,
        seconds=round(seconds, 1),
        failure=failure,
        exercises=probes,
        glued=glued_keys(executed),
        referenced=sorted(glue_references(source)),
        cell_seconds=cell_seconds,
        peaks=peaks,
        threads=peaks.get("torch_threads"),
        code_hash=code_hash(source),
        notebook=executed,
    )


def _peaks_only(notebook: dict) -> tuple[dict, list[int | None]]:
    import nbformat

    running = copy.deepcopy(notebook)
    running.cells.append(nbformat.v4.new_code_cell(PEAKS_CELL))
    return running, [*range(len(notebook.cells)), None]


async def _maybe_await(value: object) -> object:
    return await value if asyncio.iscoroutine(value) else value


def execute(
    paths: Sequence[Path],
    profile: str,
    *,
    workers: int = 1,
    threads: int | None = None,
    timeout: int = DEFAULT_TIMEOUT,
    results: Path | None = None,
    exercises: bool = True,
    progress: bool = True,
    expected_seconds: dict[str, float] | None = None,
) -> list[Execution]:
    """Execute each notebook once in ``profile`` (see the module's docstring), ``workers`` at a time, each kernel
    with ``threads`` torch threads (OMP_NUM_THREADS; None: torch's default). ``timeout``: seconds per cell.
    ``results``: where the kernels record (default: a temporary folder); each notebook's old results file there
    is removed first, so what is left is what this run recorded. ``exercises``: probe the student version of each
    exercise. ``expected_seconds`` (by notebook stem, e.g. from this machine's runbook) starts the longest first,
    so that the last to finish is not a long one started late. Returns one Execution per path, in the order given;
    a notebook that fails is reported, not raised."""
    check_profile(profile)
    check_positive_int("workers", workers)
    check_positive_int("timeout", timeout)
    if threads is not None:
        check_positive_int("threads", threads)
    paths = [Path(path) for path in paths]
    extra = {"OMP_NUM_THREADS": str(threads)} if threads is not None else {}

    async def run_all(folder: Path) -> list[Execution]:
        semaphore = asyncio.Semaphore(workers)
        expected = expected_seconds or {}
        watch = Progress([path.stem for path in paths], expected, workers, profile, enabled=progress)

        async def run(path: Path) -> Execution:
            async with semaphore:
                (folder / profile / f"{path.stem.lower()}.json").unlink(missing_ok=True)  # its chapter id
                watch.start(path.stem)
                execution = await _execute_one(path, profile, timeout, exercises)
                watch.finish(execution)
                return execution

        order = sorted(range(len(paths)), key=lambda i: -expected.get(paths[i].stem, 0.0))
        try:
            finished = await asyncio.gather(*(run(paths[i]) for i in order))
        finally:
            watch.close()
        return [finished[order.index(i)] for i in range(len(paths))]

    with notebook_environment(profile, results, **extra) as folder:
        return asyncio.run(run_all(folder))


def format_duration(seconds: float) -> str:
    """ "45 s", "12.3 min", "1 h 49 min"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """What a person watching ``make book`` reads: a line when a notebook starts (with the time it took last on
    this machine, when known) and when it ends (its outcome and time, and about how long the rest will take), under
    a bar over the notebooks when the output is a terminal."""

    def __init__(
        self, stems: Sequence[str], expected: dict[str, float], workers: int, profile: str, enabled: bool = True
    ) -> None:
        from tqdm.auto import tqdm

        self.stems, self.expected, self.workers, self.profile, self.enabled = (
            list(stems),
            expected,
            workers,
            profile,
            enabled,
        )
        self.started: dict[str, float] = {}
        self.done: set[str] = set()
        terminal = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=len(self.stems), desc="notebooks", unit="notebook", disable=not terminal, leave=False)

    def remaining(self, now: float) -> float | None:
        """Seconds until every notebook is done, if each takes what it took last time and ``workers`` run at
        once; None when a notebook has no expected time."""
        left = 0.0
        for stem in self.stems:
            if stem in self.done:
                continue
            if stem not in self.expected:
                return None
            elapsed = now - self.started[stem] if stem in self.started else 0.0
            left += max(0.0, self.expected[stem] - elapsed)
        return left / self.workers

    def _say(self, text: str) -> None:
        if self.enabled:
            self.bar.write(f"[{_dt.datetime.now():%H:%M:%S}] {text}")
            sys.stdout.flush()

    def start(self, stem: str) -> None:
        self.started[stem] = time.monotonic()
        count = f"{len(self.started)}/{len(self.stems)}"
        last = f"; {format_duration(self.expected[stem])} last time" if stem in self.expected else ""
        self._say(f"{stem}: started ({count}, {self.profile} profile{last})")

    def finish(self, execution: Execution) -> None:
        stem = Path(execution.path).stem
        self.done.add(stem)
        self.bar.update(1)
        outcome = "ok" if execution.ok else f"FAILED at {execution.failure}"
        left = self.remaining(time.monotonic())
        rest = "" if left is None or len(self.done) == len(self.stems) else f"; about {format_duration(left)} left"
        self._say(
            f"{stem}: {outcome} in {format_duration(execution.seconds)} ({len(self.done)}/{len(self.stems)} done{rest})"
        )

    def close(self) -> None:
        self.bar.close()


# ----------------------------------------------------------------------------------------------------------------
# Reports and the book's execution cache


def report_path(folder: Path, notebook: Path) -> Path:
    return Path(folder) / f"{Path(notebook).stem}.json"


def write_report(execution: Execution, folder: Path) -> Path:
    """``<folder>/<notebook stem>.json``: the run's report (outcome, exercises, glue keys, times, peaks); for a
    failed run also ``<stem>.traceback.txt``, the failing cell's traceback as plain text."""
    path = report_path(folder, Path(execution.path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(execution.report(), indent=1, ensure_ascii=False))
    log = path.with_suffix(".traceback.txt")
    if execution.failure is not None:  # the failing cell's traceback, readable as it was printed
        log.write_text(f"{execution.name}, {execution.failure}\n\n{ANSI_COLOUR.sub('', execution.failure.traceback)}\n")
    else:
        log.unlink(missing_ok=True)
    return path


def read_report(path: Path) -> Execution:
    """An Execution from a report that :func:`write_report` wrote (without its notebook)."""
    data = json.loads(Path(path).read_text())
    data["failure"] = CellFailure(**data["failure"]) if data["failure"] else None
    data["exercises"] = [ExerciseProbe(**probe) for probe in data["exercises"]]
    return Execution(**data)


def cache_dir(root: Path, profile: str) -> Path:
    """The jupyter-cache folder of one profile's executed notebooks in the repository at ``root``: MyST-NB's cache
    keys on a notebook's code only, not on ``MMCOURSE_PROFILE``, so each profile has its own."""
    return Path(root) / "_build" / ".jupyter_cache" / profile


def cache(execution: Execution, cache_dir: Path) -> None:
    """Store a successful execution in the jupyter-cache folder that MyST-NB reads in cache mode (``book/build.py``:
    ``_build/.jupyter_cache/<profile>``), with its time as ``execution_seconds``, and check that MyST-NB will find
    it for the notebook as it is on disk. Raises ValueError for a failed execution."""
    import nbformat
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    if not execution.ok or execution.notebook is None:
        raise ValueError(f"{execution.name}: only a notebook that ran to its end is cached ({execution.failure})")
    store = get_cache(str(cache_dir))
    store.cache_notebook_bundle(
        CacheBundleIn(execution.notebook, execution.path, data={"execution_seconds": execution.seconds}),
        check_validity=False,
        overwrite=True,
    )
    store.match_cache_notebook(nbformat.read(execution.path, as_version=4))  # KeyError if MyST-NB would miss it


def cores() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(count: int) -> tuple[int, int]:
    """(notebooks at a time, torch threads each) for ``count`` notebooks on this machine: a kernel per core, the
    cores left over shared out as threads. On two cores two notebooks of one thread each beat one of two threads:
    these models are too small for a second thread to halve their time."""
    workers = max(1, min(count, cores()))
    return workers, max(1, cores() // workers)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every chapter notebook")
    parser.add_argument("--profile", default=None, help="default: MMCOURSE_PROFILE, else this machine's")
    parser.add_argument("--workers", type=positive_int_argument, default=None)
    parser.add_argument("--threads", type=positive_int_argument, default=None)
    parser.add_argument("--timeout", type=positive_int_argument, default=DEFAULT_TIMEOUT)
    parser.add_argument("--reports", type=Path, default=None, help="folder for the JSON reports")
    parser.add_argument("--results", type=Path, default=None, help="folder for the recorded results (default: none)")
    args = parser.parse_args(argv)
    root = repository_root() or Path.cwd()
    paths = args.notebooks or chapter_notebooks(root)
    profile = args.profile or current_profile()
    workers, threads = default_workers(len(paths))
    executions = execute(
        paths,
        profile,
        workers=args.workers or workers,
        threads=args.threads or threads,
        timeout=args.timeout,
        results=args.results,
    )
    problems = [problem for execution in executions for problem in execution.problems()]
    for execution in executions:
        if args.reports:
            write_report(execution, args.reports)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
