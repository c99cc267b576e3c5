"""Chapter 4 checkers: the reference passes, typical wrong answers get a helpful hint, errors are reported."""

from __future__ import annotations

import math

import torch
from conftest import Outcome, raises

from mmcourse.attention import scaled_dot_product_attention
from mmcourse.exercises.gpt import (
    check_cached_attention,
    check_gpt_parameter_count,
    check_temperature_experiment,
    check_top_p,
)
from mmcourse.generation import top_p_filter
from mmcourse.gpt import GPTConfig, gpt_parameter_count


def test_top_p_checker(outcome: Outcome) -> None:
    assert outcome(check_top_p(top_p_filter))[0]

    def keeps_too_few(logits, top_p):  # stops before the token that reaches top_p
        probabilities, order = logits.softmax(-1).sort(-1, descending=True)
        drop = probabilities.cumsum(-1) >= top_p
        drop[..., 0] = False
        return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))

    passed, out = outcome(check_top_p(keeps_too_few))
    assert not passed and "reach top_p" in out
    passed, out = outcome(check_top_p(lambda logits, top_p: logits))
    assert not passed and "keep too many" in out
    passed, out = outcome(check_top_p(raises))
    assert not passed and "raised" in out


def test_parameter_count_checker(outcome: Outcome) -> None:
    def right(vocab_size, context_length, d_model, n_layers):
        return gpt_parameter_count(GPTConfig(vocab_size, context_length, d_model, n_heads=1, n_layers=n_layers))

    assert outcome(check_gpt_parameter_count(right))[0]
    passed, out = outcome(check_gpt_parameter_count(lambda v, c, d, n: right(v, c, d, n) + v * d))
    assert not passed and "tied" in out
    passed, out = outcome(check_gpt_parameter_count(lambda v, c, d, n: right(v, c, d, n) - c * d))
    assert not passed and "per position" in out
    passed, out = outcome(check_gpt_parameter_count(lambda v, c, d, n: float(right(v, c, d, n))))
    assert not passed and "int" in out


def test_cached_attention_checker(outcome: Outcome) -> None:
    def right(q, k, v, k_cache, v_cache):
        k_cache, v_cache = torch.cat([k_cache, k], dim=-2), torch.cat([v_cache, v], dim=-2)
        return scaled_dot_product_attention(q, k_cache, v_cache)[0], k_cache, v_cache

    def forgets_cache(q, k, v, k_cache, v_cache):
        return scaled_dot_product_attention(q, k, v)[0], torch.cat([k_cache, k], -2), torch.cat([v_cache, v], -2)

    def prepends(q, k, v, k_cache, v_cache):
        k_cache, v_cache = torch.cat([k, k_cache], dim=-2), torch.cat([v, v_cache], dim=-2)
        return scaled_dot_product_attention(q, k_cache, v_cache)[0], k_cache, v_cache

    assert outcome(check_cached_attention(right))[0]
    passed, out = outcome(check_cached_attention(forgets_cache))
    assert not passed and "cached keys as well" in out
    passed, out = outcome(check_cached_attention(prepends))
    assert not passed and "after the cached ones" in out
    passed, out = outcome(check_cached_attention(raises))
    assert not passed and "raised" in out


def test_temperature_checker(outcome: Outcome) -> None:
    assert outcome(check_temperature_experiment([0.5, 1.0, 2.0], [0.8, 1.6, 2.9]))[0]
    passed, out = outcome(check_temperature_experiment([0.5, 1.0, 2.0], [2.9, 1.6, 0.8]))
    assert not passed and "grow" in out
    passed, out = outcome(check_temperature_experiment([0.5, 1.0], [0.8, 1.6]))
    assert not passed and "three" in out
    passed, out = outcome(check_temperature_experiment([0.5, 1.0, 2.0], [0.8, math.nan, 2.0]))
    assert not passed and "numbers" in out
    passed, out = outcome(check_temperature_experiment(None, None))  # type: ignore[arg-type]
    assert not passed and "not answered yet" in out
