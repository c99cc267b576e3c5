"""Chapter 2: the feed-forward network and the encoder and decoder layers (parity with torch: tests/convert)."""

from __future__ import annotations

import pytest
import torch

from mmcourse.attention import causal_mask, padding_mask
from mmcourse.layers import DecoderLayer, EncoderLayer, FeedForward

D_MODEL, N_HEADS, D_FF = 16, 4, 32


def key_padding(lengths: list[int], length: int) -> torch.Tensor:
    """HF attention_mask (batch, length): 1 for the first ``lengths[i]`` positions."""
    return (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).long()  # (batch, length)


def test_feed_forward_shape_and_bad_activation() -> None:
    feed_forward = FeedForward(D_MODEL, D_FF, activation="gelu")
    assert feed_forward(torch.randn(2, 5, D_MODEL)).shape == (2, 5, D_MODEL)
    with pytest.raises(ValueError, match="activation.*relu.*gelu"):
        FeedForward(D_MODEL, D_FF, activation="swish")
    with pytest.raises(ValueError, match="d_ff"):
        FeedForward(D_MODEL, 0)
    with pytest.raises(ValueError, match="dropout"):
        FeedForward(D_MODEL, D_FF, dropout=1.5)


def test_bad_layer_arguments_name_the_field() -> None:
    with pytest.raises(ValueError, match="n_heads"):
        EncoderLayer(D_MODEL, 3, D_FF)
    with pytest.raises(ValueError, match="d_model"):
        DecoderLayer(0, N_HEADS, D_FF)
    with pytest.raises(TypeError, match="d_ff"):
        EncoderLayer(D_MODEL, N_HEADS, 32.0)
    with pytest.raises(ValueError, match="norm_eps"):
        DecoderLayer(D_MODEL, N_HEADS, D_FF, norm_eps=0.0)
    with pytest.raises(ValueError, match="x must be"):
        EncoderLayer(D_MODEL, N_HEADS, D_FF, norm_first=True)(torch.randn(2, 5, D_MODEL + 1))
    with pytest.raises(ValueError, match="memory must be"):
        DecoderLayer(D_MODEL, N_HEADS, D_FF)(torch.randn(2, 5, D_MODEL), torch.randn(3, 4, D_MODEL))


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_weights_only_when_asked_and_zero_on_padding(norm_first: bool) -> None:
    torch.manual_seed(0)
    layer = EncoderLayer(D_MODEL, N_HEADS, D_FF, norm_first=norm_first).eval()
    x = torch.randn(3, 6, D_MODEL)  # (batch, S, d_model)
    mask = padding_mask(key_padding([6, 4, 2], 6))  # (batch, 1, 1, S)
    output, weights = layer(x, mask)
    explicit, explicit_weights = layer(x, mask, need_weights=True)
    assert weights is None and explicit_weights.shape == (3, N_HEADS, 6, 6)
    torch.testing.assert_close(output, explicit)
    assert explicit_weights[1, :, :, 4:].abs().max() == 0, "padded keys get zero weight"


def test_decoder_layer_weights_are_causal_and_skip_padded_memory() -> None:
    torch.manual_seed(1)
    layer = DecoderLayer(D_MODEL, N_HEADS, D_FF).eval()
    x, memory = torch.randn(3, 5, D_MODEL), torch.randn(3, 7, D_MODEL)  # (batch, T, d_model), (batch, S, d_model)
    _, self_weights, cross_weights = layer(x, memory, causal_mask(5), padding_mask(key_padding([7, 3, 5], 7)), True)
    assert self_weights.shape == (3, N_HEADS, 5, 5) and cross_weights.shape == (3, N_HEADS, 5, 7)
    assert self_weights.triu(diagonal=1).abs().max() == 0, "no weight on future positions"
    assert cross_weights[1, :, :, 3:].abs().max() == 0, "no weight on padded memory"


def test_decoder_layer_padded_query_rows_have_no_nan() -> None:
    torch.manual_seed(0)
    layer = DecoderLayer(D_MODEL, N_HEADS, D_FF).eval()
    x, memory = torch.randn(2, 4, D_MODEL), torch.randn(2, 3, D_MODEL)
    self_mask = causal_mask(4) & padding_mask(key_padding([4, 2], 4))  # (batch, 1, T, T)
    memory_mask = torch.zeros(2, 1, 1, 3, dtype=torch.bool)  # nothing to attend to at all
    output, _, _ = layer(x, memory, self_mask, memory_mask)
    assert torch.isfinite(output).all()


def test_encoder_layer_learns_to_copy_the_first_token() -> None:
    """Learning: one layer learns to write position 0's input at every position; the loss falls."""
    torch.manual_seed(2)
    layer = EncoderLayer(D_MODEL, N_HEADS, D_FF, norm_first=True)
    optimizer = torch.optim.Adam(layer.parameters(), lr=3e-3)
    x = torch.randn(8, 6, D_MODEL)
    target = x[:, :1].expand(8, 6, D_MODEL)
    losses = []
    for _ in range(150):
        loss = torch.nn.functional.mse_loss(layer(x)[0], target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
