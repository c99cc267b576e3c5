"""Chapter 1: scaled dot-product attention, masks and multi-head attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmcourse.attention import (
    MultiHeadAttention,
    causal_mask,
    fused_attention,
    mha_parameter_count,
    padding_mask,
    scaled_dot_product_attention,
)


def qkv(batch: int = 2, heads: int = 3, length: int = 5, keys: int = 7, head_dim: int = 8, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, length, head_dim, generator=generator)
    k = torch.randn(batch, heads, keys, head_dim, generator=generator)
    v = torch.randn(batch, heads, keys, head_dim, generator=generator)
    return q, k, v


def test_matches_torch_without_mask() -> None:
    q, k, v = qkv()
    output, attn_weights = scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(output, F.scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(attn_weights.sum(-1), torch.ones(2, 3, 5))
    torch.testing.assert_close(fused_attention(q, k, v), output)


def test_matches_torch_with_causal_and_padding_masks() -> None:
    q, k, v = qkv(length=6, keys=6)
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    mask = causal_mask(6) & padding_mask(attention_mask)  # (2, 1, 6, 6)
    output, attn_weights = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(output, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    torch.testing.assert_close(fused_attention(q, k, v, mask), output)
    assert torch.all(attn_weights.masked_select(~mask.expand_as(attn_weights)) == 0)


def test_causal_mask_gives_exactly_zero_weight_to_the_future() -> None:
    q, k, v = qkv(length=6, keys=6)
    _, attn_weights = scaled_dot_product_attention(q * 100, k, v, causal_mask(6))  # large scores: still exactly 0
    assert torch.all(attn_weights.triu(1) == 0)
    torch.testing.assert_close(attn_weights.sum(-1), torch.ones(2, 3, 6))
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]


def test_changing_a_future_value_changes_no_earlier_output() -> None:
    q, k, v = qkv(length=6, keys=6)
    changed = v.clone()
    changed[..., 4:, :] += 10.0
    before, _ = scaled_dot_product_attention(q, k, v, causal_mask(6))
    after, _ = scaled_dot_product_attention(q, k, changed, causal_mask(6))
    torch.testing.assert_close(before[..., :4, :], after[..., :4, :])


def test_fully_masked_row_gives_zeros_and_finite_gradients() -> None:
    q, k, v = (t.requires_grad_() for t in qkv(batch=1, heads=1, length=3, keys=3))
    mask = torch.tensor([[True, False, False], [False, False, False], [True, True, True]])
    output, attn_weights = scaled_dot_product_attention(q, k, v, mask)
    assert torch.all(attn_weights[..., 1, :] == 0) and torch.all(output[..., 1, :] == 0)
    fused = fused_attention(q, k, v, mask)
    torch.testing.assert_close(fused, output)
    (output.sum() + fused.sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_scores_are_scaled_by_square_root_of_head_dim() -> None:
    q, k, v = qkv(head_dim=16)
    _, attn_weights = scaled_dot_product_attention(q, k, v)
    expected = (q @ k.transpose(-2, -1) / 4.0).softmax(-1)
    torch.testing.assert_close(attn_weights, expected)


def test_multihead_attention_returns_weights_only_when_asked() -> None:
    torch.manual_seed(0)
    attention = MultiHeadAttention(d_model=16, n_heads=4).eval()
    query, memory = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    mask = padding_mask(torch.tensor([[1] * 7, [1] * 5 + [0] * 2]))  # (batch, 1, 1, S)
    fused, none = attention(query, memory, memory, mask=mask)
    explicit, attn_weights = attention(query, memory, memory, mask=mask, need_weights=True)
    assert none is None and attn_weights.shape == (2, 4, 5, 7)
    torch.testing.assert_close(fused, explicit)
    assert torch.all(attn_weights[1, ..., 5:] == 0)  # padded keys: exactly zero weight


@pytest.mark.parametrize(("d_model", "n_heads", "bias"), [(16, 4, True), (64, 8, False), (384, 12, True)])
def test_parameter_count_formula(d_model: int, n_heads: int, bias: bool) -> None:
    attention = MultiHeadAttention(d_model, n_heads, bias=bias)
    assert sum(p.numel() for p in attention.parameters()) == mha_parameter_count(d_model, bias)
    torch_layer = nn.MultiheadAttention(d_model, n_heads, bias=bias)
    assert sum(p.numel() for p in torch_layer.parameters()) == mha_parameter_count(d_model, bias)


def test_self_attention_is_permutation_equivariant() -> None:
    torch.manual_seed(3)
    attention = MultiHeadAttention(16, 4).eval()
    x = torch.randn(1, 6, 16)
    permutation = torch.randperm(6)
    output, _ = attention(x)
    permuted, _ = attention(x[:, permutation])
    torch.testing.assert_close(permuted, output[:, permutation])


def test_dropout_only_in_training() -> None:
    torch.manual_seed(4)
    attention = MultiHeadAttention(16, 4, dropout=0.5)
    x = torch.randn(2, 5, 16)
    attention.eval()
    torch.testing.assert_close(attention(x)[0], attention(x)[0])
    attention.train()
    assert not torch.allclose(attention(x, need_weights=True)[0], attention(x, need_weights=True)[0])


def test_attention_learns_to_copy_a_marked_token() -> None:
    """Learning: one layer learns to output the value at the key its query points to; the loss falls."""
    torch.manual_seed(5)
    attention = MultiHeadAttention(16, 2)
    optimizer = torch.optim.Adam(attention.parameters(), lr=1e-2)
    x = torch.randn(8, 6, 16)
    target = x[:, :1].expand(8, 6, 16)  # every position should read position 0
    losses = []
    for _ in range(150):
        loss = F.mse_loss(attention(x)[0], target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="divisible by n_heads"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="dropout"):
        MultiHeadAttention(8, 2, dropout=1.5)
    with pytest.raises(ValueError, match="length"):
        causal_mask(0)
    with pytest.raises(TypeError, match="length"):
        causal_mask(2.0)
    with pytest.raises(TypeError, match="n_heads"):
        MultiHeadAttention(8, "2")
    q, k, v = qkv()
    with pytest.raises(ValueError, match="same last dimension"):
        scaled_dot_product_attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="same number of positions"):
        scaled_dot_product_attention(q, k, v[..., :3, :])
    with pytest.raises(ValueError, match="does not broadcast"):
        scaled_dot_product_attention(q, k, v, torch.ones(5, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="boolean"):
        scaled_dot_product_attention(q, k, v, torch.ones(5, 7))
    with pytest.raises(ValueError, match="leading"):
        scaled_dot_product_attention(q, k[:1], v[:1])
    with pytest.raises(ValueError, match="does not broadcast"):
        fused_attention(q, k, v, torch.ones(4, 7, dtype=torch.bool))
    attention = MultiHeadAttention(8, 2)
    with pytest.raises(ValueError, match="query must be"):
        attention(torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match="key/value the length"):
        attention(torch.randn(2, 5, 8), torch.randn(2, 4, 8), torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="attention_mask"):
        padding_mask(torch.ones(5))
