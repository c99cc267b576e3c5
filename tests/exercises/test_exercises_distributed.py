"""Appendix A1 checkers: the reference passes, typical wrong answers get a helpful hint, errors are reported."""

from __future__ import annotations

import math

import torch
from conftest import Outcome, raises

from mmcourse.distributed import gpt_loss
from mmcourse.exercises.distributed import check_rounding_gaps, check_uneven_accumulation


def test_uneven_accumulation_checker(outcome: Outcome) -> None:
    def right(model, micro_batches):
        total = sum(input_ids.size(0) for input_ids, _ in micro_batches)
        for batch in micro_batches:
            (gpt_loss(model, batch) * batch[0].size(0) / total).backward()

    def unscaled(model, micro_batches):  # .grad adds up k mean-loss gradients
        for batch in micro_batches:
            gpt_loss(model, batch).backward()

    def divided_by_k(model, micro_batches):  # right for equal micro-batches only
        for batch in micro_batches:
            (gpt_loss(model, batch) / len(micro_batches)).backward()

    assert outcome(check_uneven_accumulation(right))[0]
    passed, out = outcome(check_uneven_accumulation(unscaled))
    assert not passed and "too large by the number of micro-batches" in out
    passed, out = outcome(check_uneven_accumulation(divided_by_k))
    assert not passed and "n_j / N, not by 1/k" in out
    passed, out = outcome(check_uneven_accumulation(lambda model, micro_batches: None))
    assert not passed and "has no gradient: call backward on every micro-batch" in out
    passed, out = outcome(check_uneven_accumulation(raises))
    assert not passed and "raised RuntimeError" in out


def test_uneven_accumulation_checker_leaves_the_random_numbers_alone(outcome: Outcome) -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    outcome(check_uneven_accumulation(raises))
    assert torch.equal(torch.rand(3), expected)


def test_rounding_gaps_checker(outcome: Outcome) -> None:
    assert outcome(check_rounding_gaps({"float32": 3e-8, "float64": 5e-17}))[0]
    passed, out = outcome(check_rounding_gaps(None))
    assert not passed and "not answered yet" in out
    passed, out = outcome(check_rounding_gaps({"float32": 3e-8, "float64": 2e-8}))  # the model was never .double()
    assert not passed and ".double()" in out
    passed, out = outcome(check_rounding_gaps({"float32": 0.05, "float64": 5e-17}))  # not the same model and batch
    assert not passed and "same model and batch" in out
    passed, out = outcome(check_rounding_gaps({"float32": 1e-17, "float64": 5e-17}))  # float64 above float32
    assert not passed and "which is which" in out
    passed, out = outcome(check_rounding_gaps({"float32": math.nan, "float64": 5e-17}))
    assert not passed and "finite number" in out
    passed, out = outcome(check_rounding_gaps({torch.float32: 3e-8, torch.float64: 5e-17}))  # type: ignore[dict-item]
    assert not passed and "keys 'float32' and 'float64'" in out
    passed, out = outcome(check_rounding_gaps({"float32": "small", "float64": 5e-17}))  # type: ignore[dict-item]
    assert not passed and "raised ValueError" in out
