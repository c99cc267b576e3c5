"""Checkers for the appendix A1 exercises (data-parallel training). Each prints a pass line or a hint; none raises."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from mmcourse.distributed import Batch, get_batch, gpt_loss
from mmcourse.exercises import CheckResult, Hint, expect, expect_close, run_check
from mmcourse.gpt import GPT, GPTConfig

# The checker's own small GPT (the appendix's fast sizes) and token stream: the same in every profile and machine
CHECK_CONFIG = GPTConfig(vocab_size=65, context_length=32, d_model=32, n_heads=2, n_layers=2)
CHECK_IDS = torch.randint(CHECK_CONFIG.vocab_size, (2_000,), generator=torch.Generator().manual_seed(1))  # (2000,)


def check_uneven_accumulation(my_accumulate_gradients: Callable[[nn.Module, Sequence[Batch]], object]) -> CheckResult:
    """``my_accumulate_gradients(model, micro_batches)`` leaves in ``.grad`` the gradient of the mean loss over all
    the sequences of micro-batches of different sizes, as if they were one batch."""

    def test() -> None:
        with torch.random.fork_rng(devices=[]):  # a fixed model, without moving the notebook's random numbers
            torch.manual_seed(1)
            check_model = GPT(CHECK_CONFIG)
        input_ids, targets = get_batch(CHECK_IDS, 7, 7, CHECK_CONFIG.context_length, seed=1)  # (7, T) each
        sizes = (1, 2, 4)
        starts = [0, 1, 3]
        parts = [(input_ids[s : s + n], targets[s : s + n]) for s, n in zip(starts, sizes, strict=True)]
        gpt_loss(check_model, (input_ids, targets)).backward()
        expected = {name: p.grad.clone() for name, p in check_model.named_parameters()}
        check_model.zero_grad(set_to_none=True)
        my_accumulate_gradients(check_model, parts)
        grads = {name: p.grad for name, p in check_model.named_parameters()}
        missing = [name for name, grad in grads.items() if grad is None]
        expect(not missing, f"{missing[0] if missing else ''} has no gradient: call backward on every micro-batch.")
        embedding, expected_embedding = grads["token_embedding.weight"], expected["token_embedding.weight"]
        ratio = (embedding * expected_embedding).sum() / expected_embedding.pow(2).sum()  # projection on the answer
        if abs(ratio.item() - len(sizes)) < 0.5:
            raise Hint("the gradient is too large by the number of micro-batches: scale each micro-batch's loss.")
        for name, grad in grads.items():
            expect_close(grad, expected[name], "weight each micro-batch's mean loss by its share of the sequences, "
                         "n_j / N, not by 1/k: the micro-batches have different sizes.", what=f"the gradient of {name}",
                         atol=1e-6, rtol=1e-4)  # fmt: skip

    return run_check("gradient accumulation over uneven micro-batches", test)


def check_rounding_gaps(gaps: dict[str, float] | None) -> CheckResult:
    """``gaps = {"float32": ..., "float64": ...}``: the largest |mean of two half-batch gradients − full-batch
    gradient| measured in each precision."""

    def test() -> None:
        if gaps is None:
            raise NotImplementedError  # still the placeholder: not answered yet
        expect(isinstance(gaps, dict) and set(gaps) == {"float32", "float64"},
               "`gaps` should be a dict with the keys 'float32' and 'float64'.")  # fmt: skip
        values = {key: float(value) for key, value in gaps.items()}
        expect(all(math.isfinite(v) and v >= 0 for v in values.values()),
               "each gap is a largest absolute difference: a finite number >= 0.")  # fmt: skip
        expect(values["float32"] < 1e-4, "the float32 gap should be tiny (rounding): compare gradients of the same "
               "model and batch.")  # fmt: skip
        expect(values["float64"] < 1e-12, "the float64 gap should be about 1e-16: convert the model with "
               ".double() before computing the gradients.")  # fmt: skip
        expect(values["float64"] <= values["float32"], "float64 rounds far less than float32: check which is which.")

    return run_check("rounding, measured", test)
