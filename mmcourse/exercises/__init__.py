"""Exercises: the convention every chapter follows, and the checkers' shared machinery.

An exercise is a code cell with nbgrader metadata (``"solution": true``) whose answer sits between
``### BEGIN SOLUTION`` and ``### END SOLUTION``, followed by a cell that calls a ``check_*`` function.
``make student`` clears the solutions with nbgrader's ``ClearSolutions`` (the student sees
``raise NotImplementedError()``) and removes every output.

A checker never lets an exception escape into the kernel and never prints the answer: it prints a pass
line, or a hint that says what is wrong (shape, scaling, an off-by-one) and returns False.
"""

from __future__ import annotations

import copy
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

SOLUTION_BEGIN = "### BEGIN SOLUTION"
SOLUTION_END = "### END SOLUTION"


class Hint(Exception):
    """Raised inside a check to report what is wrong with an answer, in words a student can act on."""


def expect(condition: bool, hint: str) -> None:
    """Fail the check with ``hint`` unless ``condition`` holds."""
    if not condition:
        raise Hint(hint)


def expect_shape(tensor: object, shape: Sequence[int], what: str = "your result") -> None:
    """Fail with a hint naming ``what`` unless ``tensor`` is a tensor of exactly ``shape``."""
    if not isinstance(tensor, torch.Tensor):
        raise Hint(f"{what} should be a torch.Tensor, but it is a {type(tensor).__name__}.")
    if tuple(tensor.shape) != tuple(shape):
        raise Hint(f"{what} has shape {tuple(tensor.shape)}, but the expected shape is {tuple(shape)}.")


def expect_close(
    actual: object, expected: torch.Tensor, hint: str, what: str = "your result", atol: float = 1e-5, rtol: float = 1e-4
) -> None:
    """Fail unless ``actual`` matches ``expected`` in shape and values; the message never shows ``expected``."""
    expect_shape(actual, expected.shape, what)
    assert isinstance(actual, torch.Tensor)
    if not torch.allclose(actual.detach().to(expected.dtype), expected, atol=atol, rtol=rtol, equal_nan=True):
        difference = (actual.detach().to(expected.dtype) - expected).abs().nan_to_num(float("inf")).max().item()
        raise Hint(f"{what} has the right shape but wrong values (largest difference {difference:.3g}). {hint}")


@dataclass(frozen=True)
class CheckResult:
    """What a checker returns: true when the answer passed, so a grading cell can ``assert check_…(answer)``. It
    shows nothing in a notebook: the checker has printed its line already."""

    name: str
    passed: bool

    def __bool__(self) -> bool:
        return self.passed

    def _ipython_display_(self) -> None:  # IPython calls this instead of showing the repr: nothing to show
        return None


def run_check(name: str, test: Callable[[], None]) -> CheckResult:
    """Run ``test``; print a pass line or a friendly hint, and return whether it passed. Never raises."""
    try:
        test()
    except NotImplementedError:
        print(f"[{name}] not answered yet: replace `raise NotImplementedError()` with your code, then run this again.")
        return CheckResult(name, False)
    except Hint as hint:
        print(f"[{name}] not yet: {hint}")
        return CheckResult(name, False)
    except Exception as error:  # noqa: BLE001 - a student's error must not escape into the kernel
        frame = traceback.extract_tb(error.__traceback__)[-1]
        print(
            f"[{name}] your code raised {type(error).__name__}: {error} "
            f"(line {frame.lineno} of {Path(frame.filename).name}). Fix it and run this cell again."
        )
        return CheckResult(name, False)
    print(f"[{name}] correct. Well done.")
    return CheckResult(name, True)


# ----------------------------------------------------------------------------------------------------------------
# Student notebooks


def is_solution_cell(cell: dict) -> bool:
    """True for a cell marked as an nbgrader solution cell."""
    return bool(cell.get("metadata", {}).get("nbgrader", {}).get("solution", False))


def student_notebook(notebook: dict, name: str = "notebook") -> dict:
    """``notebook`` (an nbformat notebook) with its solutions cleared (nbgrader ``ClearSolutions``) and no outputs;
    the input is not changed. Raises ValueError if a solution region sits in a cell that is not marked as a
    solution cell (it would reach students unchanged); ``name`` names the notebook in that message."""
    from nbconvert.preprocessors import ClearOutputPreprocessor
    from nbgrader.preprocessors import ClearSolutions

    for index, cell in enumerate(notebook.cells):
        if SOLUTION_BEGIN in cell.source and not is_solution_cell(cell):
            raise ValueError(f"{name}: cell {index} has '{SOLUTION_BEGIN}' but no nbgrader solution metadata")
    resources: dict = {}
    student, resources = ClearSolutions().preprocess(copy.deepcopy(notebook), resources)
    student, resources = ClearOutputPreprocessor().preprocess(student, resources)
    for cell in student.cells:
        if cell.cell_type == "code":
            cell.execution_count = None
    return student


def make_student_notebook(source: Path, destination: Path) -> int:
    """Write ``destination``: ``source`` with solutions cleared (nbgrader ``ClearSolutions``) and no outputs.

    Returns the number of solution cells cleared. Raises ValueError if a solution region sits in a cell that is
    not marked as a solution cell (it would reach students unchanged).
    """
    import nbformat

    notebook = nbformat.read(str(source), as_version=4)
    student = student_notebook(notebook, Path(source).name)
    destination.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(student, str(destination))
    return sum(1 for cell in notebook.cells if is_solution_cell(cell))
