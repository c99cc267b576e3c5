"""Shared fixtures. Unit tests never touch the network (make test runs them with sockets disabled)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from mmcourse.bert import BertConfig, BertModel
from mmcourse.finetune import SequenceClassifier

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


# A tiny BERT classifier and a padded, labelled batch for it: the fine-tuning, LoRA and adversarial tests share them.
CLASSIFIER_BERT = BertConfig(vocab_size=50, context_length=16, d_model=32, n_heads=4, n_layers=2, d_ff=64, dropout=0.0)


def classifier(seed: int = 0, dropout: float = 0.0, pooling: str = "mean") -> SequenceClassifier:
    torch.manual_seed(seed)
    encoder = BertModel(CLASSIFIER_BERT)
    return SequenceClassifier(encoder, CLASSIFIER_BERT.d_model, n_classes=2, dropout=dropout, pooling=pooling)


def labelled_batch(size: int = 8, length: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random sequences with some padding at the end and random labels, as a collated batch."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, CLASSIFIER_BERT.vocab_size, (size, length), generator=generator)  # (batch, L)
    lengths = torch.randint(length // 2, length + 1, (size,), generator=generator)  # (batch,)
    attention_mask = (torch.arange(length)[None, :] < lengths[:, None]).long()  # (batch, L)
    return {
        "input_ids": input_ids.masked_fill(attention_mask == 0, CLASSIFIER_BERT.pad_id),
        "attention_mask": attention_mask,
        "labels": torch.arange(size) % 2,  # (batch,) balanced
    }


# A tiny BERT for pretraining and parity tests, and a batch of sentence pairs with a padded last row.
PAIRS_BERT = BertConfig(vocab_size=60, context_length=24, d_model=32, n_heads=4, n_layers=2, d_ff=64, dropout=0.1)


def pair_batch(batch: int = 3, length: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random [CLS] A [SEP] B [SEP] ids with token_type_ids and a padded last row."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, PAIRS_BERT.vocab_size, (batch, length), generator=generator)  # (batch, L)
    token_type_ids = torch.zeros_like(input_ids)  # (batch, L)
    token_type_ids[:, length // 2 :] = 1
    attention_mask = torch.ones_like(input_ids)  # (batch, L)
    attention_mask[-1, length - 3 :] = 0
    input_ids[:, 0] = 2
    input_ids[-1, length - 3 :] = 0
    return input_ids, token_type_ids, attention_mask
