"""Checkers for the chapter 2 exercises (the Transformer). Each prints a pass line or a hint; none raises."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from mmcourse.exercises import CheckResult, Hint, expect, expect_close, expect_shape, run_check
from mmcourse.layers import EncoderLayer
from mmcourse.transformer import warmup_inverse_sqrt


def _same(actual: object, expected: Tensor) -> bool:
    return isinstance(actual, Tensor) and actual.shape == expected.shape and bool(torch.equal(actual, expected))


def check_teacher_forcing(my_teacher_forcing: Callable[[Tensor], tuple[Tensor, Tensor]]) -> CheckResult:
    """``my_teacher_forcing(target_ids)`` → (decoder_input_ids, labels) for targets ``<bos> y … <eos> <pad>…``."""

    def test() -> None:
        target_ids = torch.tensor([[1, 7, 8, 9, 2, 0], [1, 5, 2, 0, 0, 0]])  # <bos>=1, <eos>=2, <pad>=0
        answer = my_teacher_forcing(target_ids)
        expect(isinstance(answer, tuple) and len(answer) == 2, "return a pair: (decoder_input_ids, labels).")
        decoder_input, labels = answer
        expected_input, expected_labels = target_ids[:, :-1], target_ids[:, 1:]
        if _same(decoder_input, expected_labels) and _same(labels, expected_input):
            raise Hint("the two are swapped: the decoder reads <bos> y1 …, and must predict y1 … <eos>.")
        if _same(decoder_input, target_ids) or _same(labels, target_ids):
            raise Hint("shift by one position: the label at position t is the input at position t + 1.")
        expect_shape(decoder_input, tuple(expected_input.shape), "decoder_input_ids")
        expect_shape(labels, tuple(expected_labels.shape), "labels")
        expect(bool(decoder_input[:, 0].eq(1).all()), "every decoder input starts with <bos>: keep the first column.")
        expect(_same(decoder_input, expected_input), "decoder_input_ids: the target without its last position.")
        expect(_same(labels, expected_labels), "labels: the target without its first position (<bos>).")

    return run_check("teacher forcing", test)


def check_warmup_schedule(my_learning_rate: Callable[[int, int, int], float]) -> CheckResult:
    """``my_learning_rate(step, d_model, warmup)`` → d_model^-0.5 · min(step^-0.5, step · warmup^-1.5)."""

    def test() -> None:
        cases = [(1, 512, 4000), (100, 512, 4000), (4000, 512, 4000), (20000, 512, 4000), (50, 128, 200)]
        for step, d_model, warmup in cases:
            answer = my_learning_rate(step, d_model, warmup)
            expect(isinstance(answer, (int, float)), f"return a float, got {type(answer).__name__}.")
            expected = warmup_inverse_sqrt(step, d_model, warmup)
            if math.isclose(answer, expected, rel_tol=1e-6):
                continue
            if math.isclose(answer, expected * math.sqrt(d_model), rel_tol=1e-6):
                raise Hint("multiply by d_model^-0.5: wider models take smaller steps.")
            if step < warmup and math.isclose(answer, d_model**-0.5 * step**-0.5, rel_tol=1e-6):
                raise Hint("during warmup (step < warmup) the rate must rise linearly: take the min of the two.")
            if step > warmup and math.isclose(answer, d_model**-0.5 * step * warmup**-1.5, rel_tol=1e-6):
                raise Hint("after warmup the rate decays as 1/√step: take the min of the two terms.")
            raise Hint(f"at step={step}, d_model={d_model}, warmup={warmup} the value is off; check each exponent.")

    return run_check("warmup schedule", test)


def check_pre_ln_forward(my_pre_ln_forward: Callable[[EncoderLayer, Tensor], Tensor]) -> CheckResult:
    """``my_pre_ln_forward(layer, x)`` → the pre-LN encoder layer's output, using ``layer``'s modules."""

    def test() -> None:
        torch.manual_seed(21)
        layer = EncoderLayer(d_model=16, n_heads=2, d_ff=32, norm_first=True).eval()
        x = torch.randn(2, 5, 16)
        with torch.no_grad():
            answer = my_pre_ln_forward(layer, x)
            expected, _ = layer(x)
            layer.norm_first = False
            post_ln, _ = layer(x)
            layer.norm_first = True
        expect_shape(answer, (2, 5, 16), "my_pre_ln_forward(layer, x) for x (2, 5, 16)")
        if torch.allclose(answer, post_ln, atol=1e-5):
            raise Hint("that is the post-LN layer: pre-LN normalises the *input* of each sublayer, x + f(norm(x)).")
        expect_close(
            answer,
            expected,
            "x = x + self_attention(norm1(x)); then x = x + feed_forward(norm2(x)). The residual skips the norm.",
        )

    return run_check("pre-LN encoder layer", test)


def check_padding_experiment(change_with_mask: float | None, change_without_mask: float | None) -> CheckResult:
    """The largest change of the real positions' logits when pads are appended to the source, with and without
    the source attention mask."""

    def test() -> None:
        if change_with_mask is None or change_without_mask is None:
            raise NotImplementedError  # the variables still hold their placeholder: not answered yet
        for name, value in (("change_with_mask", change_with_mask), ("change_without_mask", change_without_mask)):
            expect(isinstance(value, (int, float)), f"{name} should be a number (use .item() on a tensor).")
            expect(math.isfinite(value) and value >= 0, f"{name} should be a maximum absolute difference (>= 0).")
        expect(
            change_with_mask < 1e-4,
            "with the attention mask, padding should change nothing (up to rounding, < 1e-4): pass the mask that "
            "marks the appended pads with 0, and compare only the original positions.",
        )
        expect(
            change_without_mask > 1e-3,
            "without the mask the model attends to the pads, so the logits should change: did you pass an all-ones "
            "attention mask for the padded source?",
        )

    return run_check("padding and masks", test)
