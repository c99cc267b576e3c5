"""Checkers for the chapter 4 exercises (GPT). Each prints a pass line or a hint; none raises."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from mmcourse.attention import scaled_dot_product_attention
from mmcourse.exercises import CheckResult, Hint, expect, expect_close, expect_shape, run_check
from mmcourse.generation import top_p_filter
from mmcourse.gpt import GPTConfig, gpt_parameter_count


def check_top_p(my_top_p_filter: Callable[[Tensor, float], Tensor]) -> CheckResult:
    """``my_top_p_filter(logits, top_p)`` → logits with every token outside the nucleus set to -inf."""

    def test() -> None:
        probabilities = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05], [0.05, 0.1, 0.7, 0.1, 0.05]])
        logits = probabilities.log()
        for top_p in (0.6, 0.75, 0.93, 0.3):  # no top_p on a cumulative sum: float rounding would decide
            answer = my_top_p_filter(logits.clone(), top_p)
            expect_shape(answer, (2, 5), f"my_top_p_filter(logits (2, 5), {top_p})")
            kept, expected_kept = torch.isfinite(answer), torch.isfinite(top_p_filter(logits, top_p))
            expect(
                bool(kept[:, :].any(-1).all()), "always keep at least the most likely token, even when top_p is small."
            )
            if not torch.equal(kept, expected_kept):
                if torch.equal(kept, torch.isfinite(top_p_filter(logits.flip(-1), top_p)).flip(-1)):
                    raise Hint("sort the tokens by probability *descending* before accumulating.")
                missing = (expected_kept & ~kept).any().item()
                raise Hint(
                    f"with top_p={top_p} the kept set is wrong: "
                    + (
                        "keep the token that makes the cumulative probability reach top_p, too."
                        if missing
                        else "stop once the kept tokens' probability reaches top_p: you keep too many."
                    )
                )
            expect(
                torch.allclose(answer[kept], logits[kept]),
                "leave the kept tokens' logits unchanged; only set the others to -inf.",
            )

    return run_check("top-p (nucleus) filtering", test)


def check_gpt_parameter_count(my_count: Callable[[int, int, int, int], int]) -> CheckResult:
    """``my_count(vocab_size, context_length, d_model, n_layers)`` → parameters of a GPT-2-style model (tied head)."""

    def test() -> None:
        for vocab_size, context_length, d_model, n_layers in (
            (65, 64, 128, 4),
            (50257, 1024, 768, 12),
            (100, 8, 16, 1),
        ):
            answer = my_count(vocab_size, context_length, d_model, n_layers)
            expect(isinstance(answer, int), f"return an int, got {type(answer).__name__}.")
            expected = gpt_parameter_count(GPTConfig(vocab_size, context_length, d_model, n_heads=1, n_layers=n_layers))
            if answer == expected:
                continue
            if answer == expected + vocab_size * d_model:
                raise Hint("the LM head is tied to the token embedding: count that matrix once.")
            if answer == expected - context_length * d_model:
                raise Hint("GPT-2 learns a vector per position: context_length × d_model more parameters.")
            if answer == expected - 2 * d_model:
                raise Hint("the final LayerNorm after the last block has a weight and a bias too.")
            raise Hint(
                f"for vocab_size={vocab_size}, context_length={context_length}, d_model={d_model}, "
                f"n_layers={n_layers} the count is off: per block, two LayerNorms, attention (4 d² + 4 d) and the "
                "MLP (8 d² + 5 d)."
            )

    return run_check("GPT parameter count", test)


def check_cached_attention(
    my_cached_attention: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]],
) -> CheckResult:
    """``my_cached_attention(q_new, k_new, v_new, k_cache, v_cache)`` → (output, k_cache, v_cache) for one new token."""

    def test() -> None:
        generator = torch.Generator().manual_seed(41)
        q, k, v = (torch.randn(1, 2, 6, 8, generator=generator) for _ in range(3))  # (batch, heads, L, head_dim)
        mask = torch.ones(6, 6, dtype=torch.bool).tril()
        full, _ = scaled_dot_product_attention(q, k, v, mask)  # (1, 2, 6, 8)
        answer = my_cached_attention(q[..., 5:, :], k[..., 5:, :], v[..., 5:, :], k[..., :5, :], v[..., :5, :])
        expect(isinstance(answer, tuple) and len(answer) == 3, "return (output, k_cache, v_cache).")
        output, k_cache, v_cache = answer
        expect_shape(k_cache, (1, 2, 6, 8), "the updated k_cache (the 5 cached keys and the new one)")
        expect_shape(v_cache, (1, 2, 6, 8), "the updated v_cache")
        expect(torch.allclose(k_cache, k), "append the new key after the cached ones, along the length dimension.")
        expect(torch.allclose(v_cache, v), "append the new value after the cached ones, along the length dimension.")
        expect_shape(output, (1, 2, 1, 8), "the output for the one new query")
        only_new, _ = scaled_dot_product_attention(q[..., 5:, :], k[..., 5:, :], v[..., 5:, :])
        if torch.allclose(output, only_new, atol=1e-5):
            raise Hint("the new query must attend to the cached keys as well as to its own key.")
        expect_close(
            output, full[..., 5:, :], "attend from the new query to all keys: the cached ones and the new one."
        )

    return run_check("attention with a KV cache", test)


def check_temperature_experiment(temperatures: Sequence[float], entropies: Sequence[float]) -> CheckResult:
    """Entropies (nats) of the model's next-token distribution measured at increasing temperatures."""

    def test() -> None:
        if temperatures is None or entropies is None:
            raise NotImplementedError  # still the placeholders: not answered yet
        expect(len(temperatures) == len(entropies) >= 3, "measure at least three temperatures, one entropy each.")
        expect(all(isinstance(e, (int, float)) and math.isfinite(e) for e in entropies), "entropies must be numbers.")
        expect(list(temperatures) == sorted(temperatures), "list the temperatures in increasing order.")
        expect(all(e >= 0 for e in entropies), "an entropy is never negative: use -(p * log p).sum().")
        increasing = all(b > a for a, b in zip(entropies, entropies[1:], strict=False))
        expect(increasing, "dividing logits by a larger temperature flattens the softmax: the entropy should grow.")

    return run_check("temperature and entropy", test)
