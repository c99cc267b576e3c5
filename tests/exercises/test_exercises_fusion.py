"""Chapter 7 checkers: the reference passes, typical wrong answers get a helpful hint, errors are reported."""

from __future__ import annotations

import math

import torch
from conftest import Outcome, raises

from mmcourse.exercises.fusion import (
    check_beam_experiment,
    check_cross_attention,
    check_last_real_state,
    check_late_fuse,
    check_shuffled_images,
)


def test_late_fuse_checker(outcome: Outcome) -> None:
    assert outcome(check_late_fuse(lambda t, v: torch.cat([t, v, t * v], dim=-1)))[0]
    passed, out = outcome(check_late_fuse(lambda t, v: torch.cat([t, v], dim=-1)))
    assert not passed and "product" in out
    passed, out = outcome(check_late_fuse(lambda t, v: torch.cat([v, t, t * v], dim=-1)))
    assert not passed and "text vector first" in out
    passed, out = outcome(check_late_fuse(lambda t, v: torch.cat([t, v, t + v], dim=-1)))
    assert not passed and "not the sum" in out
    passed, out = outcome(check_late_fuse(lambda t, v: torch.cat([t, v, t * v], dim=0)))
    assert not passed and "feature dimension" in out
    passed, out = outcome(check_late_fuse(raises))
    assert not passed and "raised" in out


def reference_cross_attention(words, patches, w_q, w_k, w_v, scale=True, dim=-1, values=True):
    q, k, v = words @ w_q, patches @ w_k, patches @ w_v
    scores = q @ k.transpose(-2, -1) / (math.sqrt(q.size(-1)) if scale else 1.0)
    weights = scores.softmax(dim=dim)
    return weights @ (v if values else patches), weights


def test_cross_attention_checker(outcome: Outcome) -> None:
    assert outcome(check_cross_attention(reference_cross_attention))[0]
    passed, out = outcome(check_cross_attention(lambda *a: reference_cross_attention(*a, scale=False)))
    assert not passed and "sqrt(d)" in out
    passed, out = outcome(check_cross_attention(lambda *a: reference_cross_attention(*a, dim=-2)))
    assert not passed and "over the patches" in out
    passed, out = outcome(check_cross_attention(lambda *a: reference_cross_attention(*a, values=False)))
    assert not passed and "values" in out

    def patches_as_queries(words, patches, w_q, w_k, w_v):
        return reference_cross_attention(patches, words, w_q, w_k, w_v)

    passed, out = outcome(check_cross_attention(patches_as_queries))
    assert not passed and "queries come from the words" in out
    passed, out = outcome(check_cross_attention(lambda *a: reference_cross_attention(*a)[0]))
    assert not passed and "pair" in out
    passed, out = outcome(check_cross_attention(raises))
    assert not passed and "raised" in out


def test_last_real_state_checker(outcome: Outcome) -> None:
    def right(hidden_states, attention_mask):
        return hidden_states[torch.arange(hidden_states.size(0)), attention_mask.sum(1) - 1]

    assert outcome(check_last_real_state(right))[0]
    passed, out = outcome(check_last_real_state(lambda hidden_states, attention_mask: hidden_states[:, -1]))
    assert not passed and "after the padding" in out

    def one_too_far(hidden_states, attention_mask):
        return hidden_states[torch.arange(hidden_states.size(0)), attention_mask.sum(1).clamp(max=5)]

    passed, out = outcome(check_last_real_state(one_too_far))
    assert not passed and "off by one" in out
    passed, out = outcome(check_last_real_state(lambda hidden_states, attention_mask: hidden_states.mean(1)))
    assert not passed and "wrong values" in out
    passed, out = outcome(check_last_real_state(raises))
    assert not passed and "raised" in out


def test_shuffled_images_checker(outcome: Outcome) -> None:
    assert outcome(check_shuffled_images(0.92, 0.35, 0.3))[0]
    passed, out = outcome(check_shuffled_images(None, None, None))
    assert not passed and "not answered yet" in out
    passed, out = outcome(check_shuffled_images(0.9, 0.9, 0.3))
    assert not passed and "identical" in out
    passed, out = outcome(check_shuffled_images(0.4, 0.6, 0.3))
    assert not passed and "worse" in out
    passed, out = outcome(check_shuffled_images(92, 35, 30))
    assert not passed and "[0, 1]" in out


def test_beam_checker(outcome: Outcome) -> None:
    assert outcome(check_beam_experiment([1, 2, 4, 8], [0.8, 0.82, 0.82, 0.81]))[0]
    passed, out = outcome(check_beam_experiment(None, None))
    assert not passed and "not answered yet" in out
    passed, out = outcome(check_beam_experiment([2, 4, 8], [0.8, 0.8, 0.8]))
    assert not passed and "greedy" in out
    passed, out = outcome(check_beam_experiment([1, 4, 2], [0.8, 0.8, 0.8]))
    assert not passed and "increasing order" in out
    passed, out = outcome(check_beam_experiment([1, 2, 4], [80.0, 81.0, 82.0]))
    assert not passed and "[0, 1]" in out
