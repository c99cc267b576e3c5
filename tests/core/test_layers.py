import pytest
import torch
from torch import nn

from mmcourse.attention import causal_mask, padding_mask
from mmcourse.convert.torch_layers import load_torch_decoder_layer, load_torch_encoder_layer
from mmcourse.layers import DecoderLayer, EncoderLayer, FeedForward

D_MODEL, N_HEADS, D_FF = 16, 4, 32
SETTINGS = [(norm_first, activation) for norm_first in (False, True) for activation in ("relu", "gelu")]


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
    with pytest.raises(ValueError, match="x must be"):
        EncoderLayer(D_MODEL, N_HEADS, D_FF)(torch.randn(2, 5, D_MODEL + 1))
    with pytest.raises(ValueError, match="memory must be"):
        DecoderLayer(D_MODEL, N_HEADS, D_FF)(torch.randn(2, 5, D_MODEL), torch.randn(3, 4, D_MODEL))


@pytest.mark.parametrize(("norm_first", "activation"), SETTINGS)
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad_fast_path", "with_grad"])
def test_encoder_layer_matches_torch(norm_first: bool, activation: str, grad: bool) -> None:
    torch.manual_seed(0)
    reference = nn.TransformerEncoderLayer(
        D_MODEL, N_HEADS, D_FF, dropout=0.0, activation=activation, norm_first=norm_first, batch_first=True
    ).eval()
    ours = load_torch_encoder_layer(EncoderLayer(D_MODEL, N_HEADS, D_FF, 0.0, activation, norm_first), reference)
    ours.eval()
    x = torch.randn(3, 6, D_MODEL)  # (batch, S, d_model)
    attention_mask = key_padding([6, 4, 2], 6)  # (batch, S) no row fully padded
    with torch.set_grad_enabled(grad):
        expected = reference(x, src_key_padding_mask=~attention_mask.bool())  # torch: True = NOT allowed
        actual, weights = ours(x, mask=padding_mask(attention_mask))
    torch.testing.assert_close(actual, expected)
    assert weights is None
    _, weights = ours(x, mask=padding_mask(attention_mask), need_weights=True)
    assert weights.shape == (3, N_HEADS, 6, 6)
    assert weights[1, :, :, 4:].abs().max() == 0, "padded keys get zero weight"


@pytest.mark.parametrize(("norm_first", "activation"), SETTINGS)
def test_decoder_layer_matches_torch(norm_first: bool, activation: str) -> None:
    torch.manual_seed(1)
    reference = nn.TransformerDecoderLayer(
        D_MODEL, N_HEADS, D_FF, dropout=0.0, activation=activation, norm_first=norm_first, batch_first=True
    ).eval()
    ours = load_torch_decoder_layer(DecoderLayer(D_MODEL, N_HEADS, D_FF, 0.0, activation, norm_first), reference)
    ours.eval()
    x, memory = torch.randn(3, 5, D_MODEL), torch.randn(3, 7, D_MODEL)  # (batch, T, d_model), (batch, S, d_model)
    memory_attention_mask = key_padding([7, 3, 5], 7)  # (batch, S)
    causal = causal_mask(5)  # (T, T)
    expected = reference(
        x, memory, tgt_mask=~causal, memory_key_padding_mask=~memory_attention_mask.bool()
    )  # (batch, T, d_model)
    actual, self_weights, cross_weights = ours(
        x, memory, self_mask=causal, memory_mask=padding_mask(memory_attention_mask), need_weights=True
    )
    torch.testing.assert_close(actual, expected)
    assert self_weights.shape == (3, N_HEADS, 5, 5) and cross_weights.shape == (3, N_HEADS, 5, 7)
    assert self_weights.triu(diagonal=1).abs().max() == 0, "no weight on future positions"
    assert cross_weights[1, :, :, 3:].abs().max() == 0, "no weight on padded memory"


def test_loading_a_mismatched_torch_layer_fails() -> None:
    reference = nn.TransformerEncoderLayer(D_MODEL, N_HEADS, D_FF, norm_first=True, batch_first=True)
    with pytest.raises(ValueError, match="norm_first"):
        load_torch_encoder_layer(EncoderLayer(D_MODEL, N_HEADS, D_FF, norm_first=False), reference)
    with pytest.raises(ValueError, match="activation"):
        load_torch_encoder_layer(EncoderLayer(D_MODEL, N_HEADS, D_FF, activation="gelu", norm_first=True), reference)


def test_decoder_layer_padded_query_rows_have_no_nan() -> None:
    torch.manual_seed(0)
    layer = DecoderLayer(D_MODEL, N_HEADS, D_FF).eval()
    x, memory = torch.randn(2, 4, D_MODEL), torch.randn(2, 3, D_MODEL)
    self_mask = causal_mask(4) & padding_mask(key_padding([4, 2], 4))  # (batch, 1, T, T)
    memory_mask = torch.zeros(2, 1, 1, 3, dtype=torch.bool)  # nothing to attend to at all
    output, _, _ = layer(x, memory, self_mask, memory_mask)
    assert torch.isfinite(output).all()
