"""Recorded results: the only way a number reaches the book's prose.

A chapter binds its results once, ``results = chapter_results("04_gpt")``, and records each number the text talks
about with ``results.record(name, value)``: the value is stored in ``<results dir>/<profile>/<chapter>.json`` (one
file per chapter, so notebooks running in parallel never write the same file) and glued for myst-nb, so the text
can say ``{glue:text}`name:.3f``` instead of a typed number. The book's Results page shows every recorded value.

One name, one value: when the book's executor runs a notebook (``MMCOURSE_STRICT_RESULTS=1``), a name that another
cell or line has recorded already in this kernel raises ValueError naming the chapter and the name — a glue key
glued twice fails the book build. Running the same cell again (in Jupyter) records again without complaint.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from mmcourse.book.profiles import PROFILES, current_profile

ENV_VAR = "MMCOURSE_RESULTS"
STRICT_ENV_VAR = "MMCOURSE_STRICT_RESULTS"  # set by the book's executor (mmcourse.book.notebooks): one cell per name
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_CHAPTER = re.compile(r"^[0-9a-z][0-9a-z_]*$")
_RECORDED: dict[tuple[str, str], tuple[str, int]] = {}  # (chapter, name) -> the code location that recorded it


@dataclass(frozen=True)
class Result:
    chapter: str
    name: str
    value: float
    unit: str
    profile: str
    machine: str
    date: str
    torch: str
    note: str = ""


def repository_root() -> Path | None:
    """The book's repository when mmcourse is installed from a checkout (editable), else None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "_config.yml").is_file() and (root / "mmcourse").is_dir() else None


def results_dir() -> Path:
    """``$MMCOURSE_RESULTS``, else ``_build/results`` in the repository, else ``~/.cache/mmcourse/results``."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    root = repository_root()
    if root is not None:
        return root / "_build" / "results"
    return Path.home() / ".cache" / "mmcourse" / "results"


def _check_chapter(chapter: str) -> None:
    if not isinstance(chapter, str):
        raise TypeError(f"chapter must be a str, got {type(chapter).__name__}")
    if not _CHAPTER.match(chapter):
        raise ValueError(f"chapter must look like '01_attention' (lowercase, digits, _), got {chapter!r}")


@dataclass(frozen=True)
class ChapterResults:
    """One chapter's results: bound once at the top of the notebook, then ``results.record(name, value)``."""

    chapter: str

    def __post_init__(self) -> None:
        _check_chapter(self.chapter)

    def record(self, name: str, value: float, unit: str = "", note: str = "") -> float:
        """Store ``value`` under ``name`` for the current profile, glue it as ``name``, and return it."""
        return record(self.chapter, name, value, unit, note)


def chapter_results(chapter: str) -> ChapterResults:
    """The results of ``chapter`` (the notebook's file name without ``.ipynb``, in lower case)."""
    return ChapterResults(chapter)


def record(chapter: str, name: str, value: float, unit: str = "", note: str = "") -> float:
    """Store ``value`` under (chapter, name) for the current profile, glue it as ``name``, and return it. Chapters
    call it through ``chapter_results(chapter).record``."""
    _check_chapter(chapter)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"name must be lowercase letters, digits and _ starting with a letter, got {name!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"value for {name!r} must be a number, got {type(value).__name__}") from None
    if not math.isfinite(number):
        raise ValueError(f"value for {name!r} must be finite, got {number}")
    if not isinstance(unit, str):
        raise ValueError(f"unit must be a string, got {type(unit).__name__}")
    _check_recorded_once(chapter, name)

    import torch

    from mmcourse.book.device import machine_name

    result = Result(
        chapter=chapter,
        name=name,
        value=number,
        unit=unit,
        profile=current_profile(),
        machine=machine_name(),
        date=_dt.date.today().isoformat(),
        torch=torch.__version__,
        note=note,
    )
    path = results_dir() / result.profile / f"{chapter}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = json.loads(path.read_text()) if path.is_file() else {}
    entries[name] = asdict(result)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
    tmp.replace(path)
    _glue(name, number)
    return number


def _check_recorded_once(chapter: str, name: str) -> None:
    """Under the book's executor, refuse a name that another place in the code (cell and line) recorded already in
    this process; the same place again (a loop, a re-run cell) is fine."""
    caller = sys._getframe(1)
    while caller.f_code.co_filename == __file__:  # the first frame outside this module: the notebook's line
        caller = caller.f_back
    where = (caller.f_code.co_filename, caller.f_lineno)
    first = _RECORDED.setdefault((chapter, name), where)
    if first != where and os.environ.get(STRICT_ENV_VAR) == "1":
        raise ValueError(
            f"{chapter}: the result {name!r} was recorded already, by another cell or line: one name per value "
            "(the book glues each name once; a second value under the same name fails the build)"
        )


def _glue(name: str, value: float) -> None:
    """Glue for myst-nb when it is installed (the book build); a no-op elsewhere (Colab)."""
    try:
        from myst_nb import glue
    except ImportError:
        return
    glue(name, value, display=False)


def load(directory: Path | None = None) -> list[Result]:
    """Every recorded result under ``directory`` (default: ``results_dir()``), sorted by profile, chapter, name."""
    directory = results_dir() if directory is None else Path(directory)
    found: list[Result] = []
    for profile in PROFILES:
        for path in sorted((directory / profile).glob("*.json")):
            for entry in json.loads(path.read_text()).values():
                found.append(Result(**entry))
    order = {profile: index for index, profile in enumerate(PROFILES)}
    return sorted(found, key=lambda r: (order[r.profile], r.chapter, r.name))


def with_measurements(built: list[Result], measured: list[Result]) -> list[Result]:
    """This build's results, plus committed measurements (e.g. from a GPU machine) for the profiles this build did
    not run: a profile's numbers always come from one source, never mixed."""
    profiles_built = {result.profile for result in built}
    merged = built + [result for result in measured if result.profile not in profiles_built]
    order = {profile: index for index, profile in enumerate(PROFILES)}
    return sorted(merged, key=lambda r: (order[r.profile], r.chapter, r.name))


def format_value(value: float) -> str:
    """Up to four significant digits, without scientific notation for everyday magnitudes."""
    if value == 0 or 1e-3 <= abs(value) < 1e6:
        text = f"{value:.4g}"
        return text if "e" not in text else f"{value:.0f}"
    return f"{value:.3e}"
