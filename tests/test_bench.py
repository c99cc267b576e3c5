"""Cost measurement: timings summarise repeats; the explicit attention's score matrix shows up in peak memory."""

from __future__ import annotations

import sys

import pytest
import torch

from mmcourse.bench import attention_cost, attention_function, attention_inputs, time_call


def test_time_call_summarises_repeats() -> None:
    calls = []
    timing = time_call(lambda: calls.append(1), repeats=4, warmup=2)
    assert len(calls) == 6 and timing.repeats == 4
    assert 0 <= timing.minimum <= timing.median <= timing.maximum
    with pytest.raises(ValueError, match="repeats"):
        time_call(lambda: None, repeats=0)


def test_both_implementations_compute_the_same_attention() -> None:
    q, k, v = attention_inputs(16, n_heads=2, head_dim=8)
    torch.testing.assert_close(attention_function("explicit", q, k, v)(), attention_function("fused", q, k, v)())
    with pytest.raises(ValueError, match="implementation"):
        attention_function("flash", q, k, v)
    with pytest.raises(ValueError, match="length=0"):
        attention_inputs(0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CPU peak memory is measured on Linux only")
def test_explicit_attention_materialises_the_score_matrix() -> None:
    explicit, fused = attention_cost((1024,), repeats=1, n_heads=4, progress=False)
    scores_bytes = 4 * 1024 * 1024 * 4  # (heads, L, L) float32
    assert explicit.peak_bytes is not None and explicit.peak_bytes >= scores_bytes
    assert fused.peak_bytes is not None and fused.peak_bytes < scores_bytes / 4
    with pytest.raises(ValueError, match="lengths"):
        attention_cost((), progress=False)
