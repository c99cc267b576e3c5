"""Our Vision Transformer to Hugging Face's ``ViTModel``: the same weights, the same hidden states."""

from __future__ import annotations

import torch
from torch import nn

from mmcourse.vision import VisionTransformer, ViTConfig


def _vit_name_pairs(config: ViTConfig) -> list[tuple[str, str]]:
    """(our parameter name, transformers ViTModel parameter name) for every weight."""
    pairs = [
        ("cls_token", "embeddings.cls_token"),
        ("position_embedding", "embeddings.position_embeddings"),
        ("patch_embedding.projection.weight", "embeddings.patch_embeddings.projection.weight"),
        ("patch_embedding.projection.bias", "embeddings.patch_embeddings.projection.bias"),
        ("norm.weight", "layernorm.weight"),
        ("norm.bias", "layernorm.bias"),
    ]
    parts = {
        "self_attention.q_proj": "attention.q_proj",
        "self_attention.k_proj": "attention.k_proj",
        "self_attention.v_proj": "attention.v_proj",
        "self_attention.out_proj": "attention.o_proj",
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "feed_forward.linear1": "mlp.fc1",
        "feed_forward.linear2": "mlp.fc2",
    }
    for index in range(config.n_layers):
        for ours, theirs in parts.items():
            for kind in ("weight", "bias"):
                pairs.append((f"layers.{index}.{ours}.{kind}", f"layers.{index}.{theirs}.{kind}"))
    return pairs


def to_hf_vit(model: VisionTransformer) -> nn.Module:
    """A transformers ``ViTModel`` (no pooler) holding a copy of ``model``'s weights: its last_hidden_state equals
    our ``hidden_states``, so its [CLS] row equals our cls-pooled output."""
    from transformers import ViTConfig as HFViTConfig
    from transformers import ViTModel

    if not isinstance(model, VisionTransformer):
        raise TypeError(f"model must be a VisionTransformer, got {type(model).__name__}")
    config = model.config
    hf_config = HFViTConfig(
        hidden_size=config.d_model,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        intermediate_size=config.d_ff,
        hidden_act="gelu",
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.dropout,
        layer_norm_eps=model.norm.eps,
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_channels=config.channels,
        qkv_bias=True,
    )
    hf_model = ViTModel(hf_config, add_pooling_layer=False)
    ours, theirs = dict(model.named_parameters()), dict(hf_model.named_parameters())
    with torch.no_grad():
        for our_name, their_name in _vit_name_pairs(config):
            theirs[their_name].copy_(ours[our_name])
    return hf_model.to(model.cls_token.device).train(model.training)
