"""Chapter 1: sinusoidal encodings, learned embeddings, rotary embeddings."""

from __future__ import annotations

import math

import pytest
import torch

from mmcourse.positional import (
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    apply_rotary,
    rotate_half,
    sinusoidal_encoding,
    sinusoidal_shift,
)


def test_sinusoidal_values_follow_the_formula() -> None:
    encoding = sinusoidal_encoding(50, 16)
    assert encoding.shape == (50, 16)
    for position, i in [(0, 0), (1, 0), (7, 3), (49, 7)]:
        angle = position / 10000 ** (2 * i / 16)
        assert encoding[position, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
        assert encoding[position, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    torch.testing.assert_close(sinusoidal_encoding(5, 16, offset=10), encoding[10:15])


@pytest.mark.parametrize("offset", [1, 5, 23])
def test_shifted_position_is_a_linear_function_of_the_position(offset: int) -> None:
    encoding = sinusoidal_encoding(100, 32)
    shift = sinusoidal_shift(offset, 32)
    torch.testing.assert_close(encoding[:-offset] @ shift.T, encoding[offset:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shift @ shift.T, torch.eye(32), atol=1e-6, rtol=0)  # a rotation


def test_sinusoidal_module_adds_the_encoding() -> None:
    module = SinusoidalPositionalEncoding(8, context_length=20)
    x = torch.zeros(2, 5, 8)
    torch.testing.assert_close(module(x), sinusoidal_encoding(5, 8).expand(2, 5, 8))
    torch.testing.assert_close(module(x[:, :1], offset=4)[0, 0], sinusoidal_encoding(5, 8)[4])
    with pytest.raises(ValueError, match="context_length"):
        module(torch.zeros(1, 21, 8))
    with pytest.raises(ValueError, match="d_model=8"):
        module(torch.zeros(1, 3, 6))


def test_rotary_score_depends_only_on_the_offset() -> None:
    torch.manual_seed(0)
    rotary = RotaryEmbedding(16)
    q, k = torch.randn(16), torch.randn(16)

    def score(m: int, n: int) -> torch.Tensor:
        q_m = rotary.rotate(q[None, :], torch.tensor([m]))
        k_n = rotary.rotate(k[None, :], torch.tensor([n]))
        return (q_m * k_n).sum()

    for m, n in [(0, 3), (5, 2)]:
        for shift in (1, 17, 250):
            torch.testing.assert_close(score(m + shift, n + shift), score(m, n), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(score(0, 3), score(0, 4))


def test_rotary_preserves_norms_and_position_zero() -> None:
    rotary = RotaryEmbedding(8)
    x = torch.randn(2, 5, 8)
    rotated = rotary.rotate(x)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(rotated[:, 0], x[:, 0])
    torch.testing.assert_close(rotate_half(rotate_half(x)), -x)


def test_rotary_matches_transformers_llama() -> None:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, rope_theta=10000.0)
    reference = LlamaRotaryEmbedding(config)
    q, k = torch.randn(2, 4, 7, 16), torch.randn(2, 4, 7, 16)
    positions = torch.arange(7)[None].expand(2, 7)
    cos, sin = reference(q, positions)
    expected_q, expected_k = apply_rotary_pos_emb(q, k, cos, sin)
    ours_cos, ours_sin = RotaryEmbedding(16)(positions)
    torch.testing.assert_close(ours_cos, cos)
    torch.testing.assert_close(apply_rotary(q, ours_cos[:, None], ours_sin[:, None]), expected_q)
    torch.testing.assert_close(RotaryEmbedding(16).rotate(k), expected_k)


def test_bad_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="d_model=7 must be even"):
        sinusoidal_encoding(4, 7)
    with pytest.raises(ValueError, match="length"):
        sinusoidal_encoding(0, 8)
    with pytest.raises(ValueError, match="head_dim=5 must be even"):
        RotaryEmbedding(5)
    with pytest.raises(ValueError, match="head_dim=8"):
        RotaryEmbedding(8).rotate(torch.randn(3, 6))
    with pytest.raises(ValueError, match="do not match"):
        apply_rotary(torch.randn(3, 8), torch.randn(4, 8), torch.randn(4, 8))
