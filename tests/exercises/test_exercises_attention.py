"""Chapter 1 checkers: the reference passes, typical wrong answers get a helpful hint, errors are reported."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import Outcome, raises

from mmcourse.attention import causal_mask, mha_parameter_count
from mmcourse.exercises.attention import (
    check_attention,
    check_causal_mask,
    check_mha_parameter_count,
    check_rotary,
    check_scaling_experiment,
)
from mmcourse.positional import RotaryEmbedding


def test_causal_mask_checker(outcome: Outcome) -> None:
    passed, out = outcome(check_causal_mask(causal_mask))
    assert passed and out == "[causal mask] correct. Well done.\n"
    passed, out = outcome(check_causal_mask(lambda n: torch.ones(n, n, dtype=torch.bool).tril(-1)))
    assert not passed and "diagonal" in out
    passed, out = outcome(check_causal_mask(lambda n: torch.ones(n, n, dtype=torch.bool).triu()))
    assert not passed and "above the diagonal" in out
    passed, out = outcome(check_causal_mask(lambda n: torch.ones(n, n).tril()))
    assert not passed and "boolean" in out
    passed, out = outcome(check_causal_mask(raises))
    assert not passed and "RuntimeError: boom" in out


def test_attention_checker(outcome: Outcome) -> None:
    def right(q, k, v):
        return (q @ k.T / math.sqrt(q.size(-1))).softmax(-1) @ v

    assert outcome(check_attention(right))[0]
    passed, out = outcome(check_attention(lambda q, k, v: (q @ k.T).softmax(-1) @ v))
    assert not passed and "√d_k" in out
    passed, out = outcome(check_attention(lambda q, k, v: (q @ k.T / 4).softmax(0) @ v))
    assert not passed and "last dimension" in out
    passed, out = outcome(check_attention(lambda q, k, v: (q @ k.T / 16).softmax(-1) @ v))
    assert not passed and "square root" in out
    passed, out = outcome(check_attention(lambda q, k, v: q @ k.T))
    assert not passed and "shape" in out
    passed, out = outcome(check_attention(raises))
    assert not passed and "raised RuntimeError" in out


def test_parameter_count_checker(outcome: Outcome) -> None:
    assert outcome(check_mha_parameter_count(lambda d, h, b: mha_parameter_count(d, b)))[0]
    passed, out = outcome(check_mha_parameter_count(lambda d, h, b: 3 * d * d + (3 * d if b else 0)))
    assert not passed and "output projection" in out
    passed, out = outcome(check_mha_parameter_count(lambda d, h, b: h * mha_parameter_count(d, b)))
    assert not passed and "do not multiply" in out
    passed, out = outcome(check_mha_parameter_count(lambda d, h, b: 4 * d * d))
    assert not passed and "bias" in out
    passed, out = outcome(check_mha_parameter_count(lambda d, h, b: float(4 * d * d)))
    assert not passed and "int" in out


def test_rotary_checker(outcome: Outcome) -> None:
    rotary = RotaryEmbedding(8)
    assert outcome(check_rotary(rotary.rotate))[0]
    passed, out = outcome(check_rotary(lambda x, p: rotary.rotate(x, -p)))
    assert not passed and "wrong way" in out

    def interleaved(x, positions):  # pairs (0, 1), (2, 3), ... instead of the two halves
        angles = positions[:, None].float() * rotary.inv_freq  # (length, 4)
        even, odd = x[:, 0::2], x[:, 1::2]
        out = torch.empty_like(x)
        out[:, 0::2] = even * angles.cos() - odd * angles.sin()
        out[:, 1::2] = even * angles.sin() + odd * angles.cos()
        return out

    passed, out = outcome(check_rotary(interleaved))
    assert not passed and "two halves" in out
    passed, out = outcome(check_rotary(lambda x, p: x * 2))
    assert not passed and "length" in out
    passed, out = outcome(check_rotary(raises))
    assert not passed and "raised" in out


def test_scaling_experiment_checker(outcome: Outcome) -> None:
    assert outcome(check_scaling_experiment(16.2, 1.01))[0]
    passed, out = outcome(check_scaling_experiment(16.0, 16.0))
    assert not passed and "close to 1" in out
    passed, out = outcome(check_scaling_experiment(1.0, 1.0))
    assert not passed and "grow with d_k" in out
    passed, out = outcome(check_scaling_experiment(torch.tensor(16.0), 1.0))  # type: ignore[arg-type]
    assert not passed and ".item()" in out


def test_checkers_never_print_the_answer(capsys: pytest.CaptureFixture[str]) -> None:
    check_mha_parameter_count(lambda d, h, b: 1)
    out = capsys.readouterr().out
    assert str(mha_parameter_count(64, True)) not in out


def test_causal_mask_checker_catches_a_missing_lower_triangle(outcome: Outcome) -> None:
    passed, out = outcome(check_causal_mask(lambda n: torch.eye(n, dtype=torch.bool)))
    assert not passed and "below the diagonal" in out


def test_scaling_checker_says_not_answered_for_the_placeholder(outcome: Outcome) -> None:
    passed, out = outcome(check_scaling_experiment(None, None))
    assert not passed and "not answered yet" in out
