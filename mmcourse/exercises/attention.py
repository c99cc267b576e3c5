"""Checkers for the chapter 1 exercises (attention). Each prints a pass line or a hint; none raises."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from mmcourse.attention import mha_parameter_count, scaled_dot_product_attention
from mmcourse.exercises import CheckResult, Hint, expect, expect_close, expect_shape, run_check
from mmcourse.positional import RotaryEmbedding


def _same(actual: object, expected: Tensor) -> bool:
    return (
        isinstance(actual, Tensor)
        and actual.shape == expected.shape
        and torch.allclose(actual.detach().float(), expected.float(), atol=1e-5, rtol=1e-4)
    )


def check_causal_mask(my_causal_mask: Callable[[int], Tensor]) -> CheckResult:
    """``my_causal_mask(length)`` → (length, length) bool, True where attention is allowed."""

    def test() -> None:
        for length in (1, 5):
            mask = my_causal_mask(length)
            expect_shape(mask, (length, length), f"my_causal_mask({length})")
            expect(mask.dtype == torch.bool, "return a boolean tensor (True = may attend), e.g. with dtype=torch.bool.")
            expect(bool(mask.diagonal().all()), "a token may attend to itself: the diagonal should be True.")
            expect(not bool(mask.triu(1).any()), "positions after the query (above the diagonal) must be False.")
            below = torch.ones(length, length, dtype=torch.bool).tril(-1)
            expect(bool(mask[below].all()), "earlier positions (below the diagonal) must be True.")

    return run_check("causal mask", test)


def check_attention(my_attention: Callable[[Tensor, Tensor, Tensor], Tensor]) -> CheckResult:
    """``my_attention(q, k, v)`` → softmax(q kᵀ / √d_k) v for q (L, d_k), k (S, d_k), v (S, d_v)."""

    def test() -> None:
        generator = torch.Generator().manual_seed(11)
        q, k, v = (torch.randn(n, d, generator=generator) for n, d in ((3, 16), (5, 16), (5, 4)))
        output = my_attention(q, k, v)
        expect_shape(output, (3, 4), "my_attention(q, k, v) for q (3, 16), k (5, 16), v (5, 4)")
        scores = q @ k.T
        if _same(output, scores.softmax(-1) @ v):
            raise Hint("close, but the scores must be divided by √d_k = √q.size(-1) before the softmax.")
        if _same(output, (scores / math.sqrt(16)).softmax(0) @ v):
            raise Hint("the softmax runs over the keys (the last dimension), so each query's weights sum to 1.")
        if _same(output, (scores / 16).softmax(-1) @ v):
            raise Hint("divide by the square root of d_k, not by d_k itself.")
        expected, _ = scaled_dot_product_attention(q, k, v)
        expect_close(output, expected, "compute scores = q @ k.T / √d_k, weights = softmax(scores), then weights @ v.")

    return run_check("scaled dot-product attention", test)


def check_mha_parameter_count(my_count: Callable[[int, int, bool], int]) -> CheckResult:
    """``my_count(d_model, n_heads, bias)`` → the number of parameters of a multi-head attention layer."""

    def test() -> None:
        for d_model, n_heads, bias in ((64, 8, True), (64, 8, False), (384, 12, True), (30, 5, False)):
            answer = my_count(d_model, n_heads, bias)
            expect(isinstance(answer, int), f"return an int, got {type(answer).__name__}.")
            expected = mha_parameter_count(d_model, bias)
            if answer == expected:
                continue
            if answer == 3 * d_model * d_model + (3 * d_model if bias else 0):
                raise Hint("you counted the q, k, v projections; the output projection W_O is a fourth.")
            if answer % n_heads == 0 and answer // n_heads == expected:
                raise Hint("heads split d_model into n_heads pieces of head_dim; they do not multiply the weights.")
            if answer == 4 * d_model * d_model and bias:
                raise Hint("with bias=True every projection also has a bias vector of d_model numbers.")
            raise Hint(
                f"for d_model={d_model}, n_heads={n_heads}, bias={bias} the count is off: count W_Q, W_K, "
                "W_V, W_O and their biases."
            )

    return run_check("multi-head attention parameters", test)


def check_rotary(my_rotary: Callable[[Tensor, Tensor], Tensor]) -> CheckResult:
    """``my_rotary(x, positions)`` → x (length, head_dim) rotated as RoPE does (pairs i and i + head_dim/2)."""

    def test() -> None:
        generator = torch.Generator().manual_seed(12)
        x = torch.randn(6, 8, generator=generator)
        positions = torch.arange(6)
        output = my_rotary(x, positions)
        expect_shape(output, (6, 8), "my_rotary(x, positions) for x (6, 8)")
        reference = RotaryEmbedding(8)
        expected = reference.rotate(x, positions)
        if _same(output, reference.rotate(x, -positions)):
            raise Hint("you rotate the wrong way: rotate_half(x) is (-x2, x1), and x·cos + rotate_half(x)·sin.")
        expect(
            torch.allclose(output.norm(dim=-1), x.norm(dim=-1), atol=1e-4),
            "a rotation keeps each vector's length: check that you use cos and sin of the same angles.",
        )
        expect(
            torch.allclose(output[0], x[0], atol=1e-5),
            "position 0 is rotated by angle 0, so the first row should come back unchanged.",
        )
        expect_close(
            output,
            expected,
            "pair dimension i with i + head_dim/2 (the two halves), angle = position · base^(-2i/head_dim).",
        )

    return run_check("rotary embedding", test)


def check_scaling_experiment(std_unscaled: float | None, std_scaled: float | None, d_k: int = 256) -> CheckResult:
    """The measured standard deviation of q·k for random unit-variance vectors of size d_k, unscaled and scaled."""

    def test() -> None:
        if std_unscaled is None or std_scaled is None:
            raise NotImplementedError  # the variables still hold their placeholder: not answered yet
        for name, value in (("std_unscaled", std_unscaled), ("std_scaled", std_scaled)):
            expect(isinstance(value, (int, float)), f"{name} should be a number (use .item() on a tensor).")
            expect(math.isfinite(value) and value > 0, f"{name} should be a positive standard deviation.")
        expect(
            abs(std_scaled - 1.0) < 0.15,
            "after dividing by √d_k the standard deviation should be close to 1: measure with many samples.",
        )
        expect(
            abs(std_unscaled / math.sqrt(d_k) - 1.0) < 0.15,
            f"without scaling the spread should grow with d_k = {d_k}: each of the d_k products adds variance 1.",
        )

    return run_check("why √d_k", test)
