"""Shared fixtures. Unit tests never touch the network (make test runs them with sockets disabled)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread per test process: make test runs two xdist workers on two cores, and tiny models run
    several times faster without threads fighting over them."""
    import torch

    torch.set_num_threads(1)


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def results_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Record results into a temporary folder, in the fast profile."""
    monkeypatch.setenv("MMCOURSE_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("MMCOURSE_PROFILE", "fast")
    return tmp_path / "results"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty data cache."""
    monkeypatch.setenv("MMCOURSE_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


Outcome = Callable[[bool], tuple[bool, str]]


@pytest.fixture
def outcome(capsys: pytest.CaptureFixture[str]) -> Outcome:
    """For checker tests: ``outcome(check_x(answer))`` → (passed, what the checker printed)."""
    return lambda passed: (passed, capsys.readouterr().out)


def uses_a_kernel(test: Callable) -> Callable:
    """For a slow test that starts a Jupyter kernel: it talks to the test over localhost, and to nowhere else."""
    return pytest.mark.slow(pytest.mark.enable_socket(pytest.mark.allow_hosts(["127.0.0.1"])(test)))


def raises(*_: object) -> None:
    """A student's answer that raises: checkers must report it, not propagate it."""
    raise RuntimeError("boom")


def solution_metadata(grade_id: str) -> dict:
    """The nbgrader metadata of an exercise's solution cell (``grade_id`` unique within the notebook)."""
    return {"grade": False, "grade_id": grade_id, "locked": False, "schema_version": 3, "solution": True}
