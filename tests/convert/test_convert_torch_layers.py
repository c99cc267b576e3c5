"""Golden parity with torch's own layers: the same weights in ours and in nn.MultiheadAttention,
nn.TransformerEncoderLayer / DecoderLayer and nn.Transformer give the same outputs (mmcourse.convert.torch_layers)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmcourse.attention import MultiHeadAttention, causal_mask, padding_mask
from mmcourse.convert.torch_layers import (
    load_torch_decoder_layer,
    load_torch_encoder_layer,
    load_torch_multihead,
    load_torch_transformer,
    to_torch_multihead,
)
from mmcourse.layers import DecoderLayer, EncoderLayer
from mmcourse.transformer import Seq2SeqTransformer, TransformerConfig

D_MODEL, N_HEADS, D_FF = 16, 4, 32
SETTINGS = [(norm_first, activation) for norm_first in (False, True) for activation in ("relu", "gelu")]


def key_padding(lengths: list[int], length: int) -> torch.Tensor:
    """HF attention_mask (batch, length): 1 for the first ``lengths[i]`` positions."""
    return (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).long()  # (batch, length)


@pytest.mark.parametrize("bias", [True, False])
def test_to_torch_multihead_gives_the_same_outputs_and_weights(bias: bool) -> None:
    torch.manual_seed(0)
    ours = MultiHeadAttention(d_model=D_MODEL, n_heads=N_HEADS, bias=bias).eval()
    reference = to_torch_multihead(ours).eval()
    query, memory = torch.randn(2, 5, D_MODEL), torch.randn(2, 7, D_MODEL)
    attention_mask = key_padding([7, 5], 7)  # (batch, S)
    output, attn_weights = ours(query, memory, memory, mask=padding_mask(attention_mask), need_weights=True)
    expected, expected_weights = reference(query, memory, memory, key_padding_mask=attention_mask == 0)
    torch.testing.assert_close(output, expected)
    torch.testing.assert_close(attn_weights.mean(dim=1), expected_weights)  # torch averages over heads
    fused, no_weights = ours(query, memory, memory, mask=padding_mask(attention_mask))  # the fused kernel
    assert no_weights is None
    torch.testing.assert_close(fused, expected)
    x = torch.randn(3, 6, D_MODEL)
    causal, _ = ours(x, mask=causal_mask(6))
    expected, _ = reference(x, x, x, attn_mask=~causal_mask(6), need_weights=False)  # torch: True = blocked
    torch.testing.assert_close(causal, expected)


def test_load_torch_multihead_gives_the_same_outputs() -> None:
    torch.manual_seed(2)
    reference = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    ours = load_torch_multihead(MultiHeadAttention(8, 2), reference).eval()
    x = torch.randn(2, 4, 8)
    torch.testing.assert_close(ours(x)[0], reference(x, x, x)[0])
    with pytest.raises(ValueError, match="n_heads"):
        load_torch_multihead(MultiHeadAttention(8, 4), reference)
    with pytest.raises(ValueError, match="bias"):
        load_torch_multihead(MultiHeadAttention(8, 2, bias=False), reference)


@pytest.mark.parametrize(("norm_first", "activation"), SETTINGS)
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad_fast_path", "with_grad"])
def test_load_torch_encoder_layer_gives_the_same_outputs(norm_first: bool, activation: str, grad: bool) -> None:
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
        actual, _ = ours(x, mask=padding_mask(attention_mask))
        explicit, _ = ours(x, mask=padding_mask(attention_mask), need_weights=True)
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(explicit, expected)


@pytest.mark.parametrize(("norm_first", "activation"), SETTINGS)
def test_load_torch_decoder_layer_gives_the_same_outputs(norm_first: bool, activation: str) -> None:
    torch.manual_seed(1)
    reference = nn.TransformerDecoderLayer(
        D_MODEL, N_HEADS, D_FF, dropout=0.0, activation=activation, norm_first=norm_first, batch_first=True
    ).eval()
    ours = load_torch_decoder_layer(DecoderLayer(D_MODEL, N_HEADS, D_FF, 0.0, activation, norm_first), reference)
    ours.eval()
    x, memory = torch.randn(3, 5, D_MODEL), torch.randn(3, 7, D_MODEL)  # (batch, T, d_model), (batch, S, d_model)
    memory_attention_mask = key_padding([7, 3, 5], 7)  # (batch, S)
    expected = reference(
        x, memory, tgt_mask=~causal_mask(5), memory_key_padding_mask=~memory_attention_mask.bool()
    )  # (batch, T, d_model)
    for need_weights in (False, True):
        actual, _, _ = ours(x, memory, causal_mask(5), padding_mask(memory_attention_mask), need_weights)
        torch.testing.assert_close(actual, expected)


@pytest.mark.filterwarnings("ignore:.*nested.tensor:UserWarning")
@pytest.mark.parametrize("norm_first", [False, True])
def test_load_torch_transformer_gives_the_same_stacks(norm_first: bool) -> None:
    torch.manual_seed(0)
    reference = nn.Transformer(
        d_model=16, nhead=2, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=32, dropout=0.0,
        batch_first=True, norm_first=norm_first,
    ).eval()  # fmt: skip
    config = TransformerConfig(11, 13, d_model=16, n_heads=2, d_ff=32, dropout=0.0, norm_first=norm_first,
                               final_norm=True)  # fmt: skip
    model = load_torch_transformer(Seq2SeqTransformer(config).eval(), reference)
    source, target = torch.randn(3, 7, 16), torch.randn(3, 5, 16)  # already embedded (batch, S/T, d_model)
    src_attention_mask = key_padding([7, 4, 2], 7)  # (batch, S)
    tgt_attention_mask = key_padding([5, 5, 3], 5)  # (batch, T)
    with torch.no_grad():  # the fast path (nested tensors) of torch's encoder runs too
        expected = reference(
            source, target, tgt_mask=~causal_mask(5), src_key_padding_mask=~src_attention_mask.bool(),
            tgt_key_padding_mask=~tgt_attention_mask.bool(), memory_key_padding_mask=~src_attention_mask.bool(),
        )  # fmt: skip
        memory, _ = model.encoder(source, padding_mask(src_attention_mask))  # (batch, S, d_model)
        self_mask = causal_mask(5) & padding_mask(tgt_attention_mask)  # (batch, 1, T, T)
        actual, _, _ = model.decoder(target, memory, self_mask, padding_mask(src_attention_mask))
        torch_memory = reference.encoder(source, src_key_padding_mask=~src_attention_mask.bool())
    torch.testing.assert_close(actual, expected)
    real = src_attention_mask.bool()  # torch's nested-tensor path writes zeros at padded positions
    torch.testing.assert_close(memory[real], torch_memory[real])


@pytest.mark.filterwarnings("ignore:.*nested.tensor:UserWarning")
def test_loading_a_mismatched_torch_layer_names_the_setting() -> None:
    reference = nn.TransformerEncoderLayer(D_MODEL, N_HEADS, D_FF, norm_first=True, batch_first=True)
    with pytest.raises(ValueError, match="norm_first"):
        load_torch_encoder_layer(EncoderLayer(D_MODEL, N_HEADS, D_FF, norm_first=False), reference)
    with pytest.raises(ValueError, match="activation"):
        load_torch_encoder_layer(EncoderLayer(D_MODEL, N_HEADS, D_FF, activation="gelu", norm_first=True), reference)
    with pytest.raises(ValueError, match="d_ff"):
        load_torch_encoder_layer(EncoderLayer(D_MODEL, N_HEADS, 2 * D_FF, norm_first=True), reference)
    post_ln = Seq2SeqTransformer(TransformerConfig(11, 13, d_model=16, n_heads=2, d_ff=32, norm_first=False))
    with pytest.raises(ValueError, match="final_norm"):
        load_torch_transformer(post_ln, nn.Transformer(16, 2, 2, 2, 32, 0.0, batch_first=True))
    with pytest.raises(ValueError, match="layer counts"):
        load_torch_transformer(post_ln, nn.Transformer(16, 2, 1, 2, 32, 0.0, batch_first=True))
