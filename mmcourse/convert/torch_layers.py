"""Bridges to torch's own layers (chapters 1 and 2): our attention, encoder and decoder layers and the encoder-decoder
stacks, loaded from (or, for attention, copied into) ``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer`` /
``DecoderLayer`` and ``nn.Transformer`` with the same weights, so tests/convert/test_convert_torch_layers.py can
compare outputs. Every loader raises ValueError naming the setting (size, norm_first, activation) that differs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmcourse.attention import MultiHeadAttention
from mmcourse.layers import ACTIVATIONS, DecoderLayer, EncoderLayer
from mmcourse.transformer import Seq2SeqTransformer


def to_torch_multihead(attention: MultiHeadAttention) -> nn.MultiheadAttention:
    """A ``torch.nn.MultiheadAttention`` (batch_first) holding a copy of ``attention``'s weights."""
    bias = attention.q_proj.bias is not None
    reference = nn.MultiheadAttention(
        attention.d_model, attention.n_heads, dropout=attention.dropout, bias=bias, batch_first=True
    )
    projections = (attention.q_proj, attention.k_proj, attention.v_proj)
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([p.weight for p in projections]))  # (3·d_model, d_model)
        reference.out_proj.weight.copy_(attention.out_proj.weight)
        if bias:
            reference.in_proj_bias.copy_(torch.cat([p.bias for p in projections]))
            reference.out_proj.bias.copy_(attention.out_proj.bias)
    return reference.to(attention.out_proj.weight.device)


def load_torch_multihead(attention: MultiHeadAttention, reference: nn.MultiheadAttention) -> MultiHeadAttention:
    """Copy a ``torch.nn.MultiheadAttention``'s weights into ``attention`` (same d_model, heads and bias)."""
    if reference.embed_dim != attention.d_model or reference.num_heads != attention.n_heads:
        raise ValueError(
            f"shapes differ: torch has embed_dim={reference.embed_dim}, num_heads={reference.num_heads}; ours has "
            f"d_model={attention.d_model}, n_heads={attention.n_heads}"
        )
    if not reference._qkv_same_embed_dim:
        raise ValueError("only torch layers with kdim = vdim = embed_dim can be loaded")
    has_bias = reference.in_proj_bias is not None
    if has_bias != (attention.q_proj.bias is not None):
        raise ValueError(f"bias differs: torch bias={has_bias}, ours bias={attention.q_proj.bias is not None}")
    weights = reference.in_proj_weight.chunk(3)
    biases = reference.in_proj_bias.chunk(3) if has_bias else (None, None, None)
    with torch.no_grad():
        projections = (attention.q_proj, attention.k_proj, attention.v_proj)
        for projection, weight, bias in zip(projections, weights, biases, strict=True):
            projection.weight.copy_(weight)
            if bias is not None:
                projection.bias.copy_(bias)
        attention.out_proj.weight.copy_(reference.out_proj.weight)
        if has_bias:
            attention.out_proj.bias.copy_(reference.out_proj.bias)
    return attention


def _torch_activation_name(torch_layer: nn.Module) -> str:
    activation = torch_layer.activation
    if activation is F.relu or isinstance(activation, nn.ReLU):
        return "relu"
    if activation is F.gelu or (isinstance(activation, nn.GELU) and activation.approximate == "none"):
        return "gelu"
    raise ValueError(f"torch layer activation {activation!r} is not one of {tuple(ACTIVATIONS)}")


def _check_torch_layer(ours: EncoderLayer | DecoderLayer, torch_layer: nn.Module) -> None:
    if torch_layer.norm_first != ours.norm_first:
        raise ValueError(f"norm_first differs: torch has {torch_layer.norm_first}, ours has {ours.norm_first}")
    if torch_layer.linear1.out_features != ours.feed_forward.linear1.out_features:
        raise ValueError(
            f"d_ff differs: torch has {torch_layer.linear1.out_features}, "
            f"ours has {ours.feed_forward.linear1.out_features}"
        )
    activation = _torch_activation_name(torch_layer)
    if activation != ours.feed_forward.activation_name:
        raise ValueError(
            f"activation differs: torch has {activation!r}, ours has {ours.feed_forward.activation_name!r}"
        )


def _copy(target: nn.Module, source: nn.Module) -> None:
    """Copy ``source``'s parameters into ``target``: two modules of the same kind and size (a Linear, a LayerNorm)."""
    target.load_state_dict(source.state_dict())


def load_torch_encoder_layer(ours: EncoderLayer, torch_layer: nn.TransformerEncoderLayer) -> EncoderLayer:
    """Copy a ``torch.nn.TransformerEncoderLayer``'s weights into ``ours`` (same sizes, norm_first, activation)."""
    _check_torch_layer(ours, torch_layer)
    load_torch_multihead(ours.self_attention, torch_layer.self_attn)
    _copy(ours.feed_forward.linear1, torch_layer.linear1)
    _copy(ours.feed_forward.linear2, torch_layer.linear2)
    _copy(ours.norm1, torch_layer.norm1)
    _copy(ours.norm2, torch_layer.norm2)
    return ours


def load_torch_decoder_layer(ours: DecoderLayer, torch_layer: nn.TransformerDecoderLayer) -> DecoderLayer:
    """Copy a ``torch.nn.TransformerDecoderLayer``'s weights into ``ours`` (same sizes, norm_first, activation)."""
    _check_torch_layer(ours, torch_layer)
    load_torch_multihead(ours.self_attention, torch_layer.self_attn)
    load_torch_multihead(ours.cross_attention, torch_layer.multihead_attn)
    _copy(ours.feed_forward.linear1, torch_layer.linear1)
    _copy(ours.feed_forward.linear2, torch_layer.linear2)
    _copy(ours.norm1, torch_layer.norm1)
    _copy(ours.norm2, torch_layer.norm2)
    _copy(ours.norm3, torch_layer.norm3)
    return ours


def load_torch_transformer(model: Seq2SeqTransformer, torch_transformer: nn.Transformer) -> Seq2SeqTransformer:
    """Copy a ``torch.nn.Transformer`` (batch_first=True)'s encoder and decoder stacks into ``model``.

    nn.Transformer has no embeddings or output projection (those stay as they are) and always ends each stack
    in a LayerNorm: ``model`` needs ``final_norm`` on (set ``final_norm=True`` for a post-LN model).
    """
    config = model.config
    torch_encoder, torch_decoder = torch_transformer.encoder, torch_transformer.decoder
    if len(torch_encoder.layers) != config.n_encoder_layers or len(torch_decoder.layers) != config.n_decoder_layers:
        raise ValueError(
            f"layer counts differ: torch has {len(torch_encoder.layers)} encoder / {len(torch_decoder.layers)} "
            f"decoder layers, ours n_encoder_layers={config.n_encoder_layers}, "
            f"n_decoder_layers={config.n_decoder_layers}"
        )
    if torch_transformer.d_model != config.d_model or torch_transformer.nhead != config.n_heads:
        raise ValueError(
            f"sizes differ: torch has d_model={torch_transformer.d_model}, nhead={torch_transformer.nhead}; ours "
            f"d_model={config.d_model}, n_heads={config.n_heads}"
        )
    if not torch_transformer.batch_first:
        raise ValueError("torch_transformer must be built with batch_first=True")
    if (torch_encoder.norm is None) != (model.encoder.norm is None) or (torch_decoder.norm is None) != (
        model.decoder.norm is None
    ):
        raise ValueError("final_norm differs: nn.Transformer ends each stack in a LayerNorm; set final_norm=True")
    for ours, theirs in zip(model.encoder.layers, torch_encoder.layers, strict=True):
        load_torch_encoder_layer(ours, theirs)
    for ours, theirs in zip(model.decoder.layers, torch_decoder.layers, strict=True):
        load_torch_decoder_layer(ours, theirs)
    for ours, theirs in ((model.encoder.norm, torch_encoder.norm), (model.decoder.norm, torch_decoder.norm)):
        if ours is not None:
            _copy(ours, theirs)
    return model
