"""Our BERT to and from Hugging Face's ``BertModel`` / ``BertForPreTraining`` (chapter 3): the same weights under
the other library's names (shapes are equal), so tests/convert/test_convert_bert.py compares hidden states and
logits. ``to_hf_bert`` / ``to_hf_bert_for_pretraining`` build a transformers model from ours, ``from_hf_bert``
builds ours from a transformers model, ``load_hf_bert`` copies into a model that exists."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from mmcourse.bert import BertConfig, BertForPreTraining, BertModel

if TYPE_CHECKING:
    import transformers

_LAYER_NAMES = {
    "self_attention.q_proj": "attention.self.query",
    "self_attention.k_proj": "attention.self.key",
    "self_attention.v_proj": "attention.self.value",
    "self_attention.out_proj": "attention.output.dense",
    "norm1": "attention.output.LayerNorm",
    "feed_forward.linear1": "intermediate.dense",
    "feed_forward.linear2": "output.dense",
    "norm2": "output.LayerNorm",
}


def _encoder_names(config: BertConfig) -> dict[str, str]:
    """{our parameter name: transformers' BertModel parameter name} for the encoder and the pooler."""
    modules = {
        "embeddings.token_embedding": "embeddings.word_embeddings",
        "embeddings.position_embedding": "embeddings.position_embeddings",
        "embeddings.segment_embedding": "embeddings.token_type_embeddings",
        "embeddings.norm": "embeddings.LayerNorm",
        "pooler": "pooler.dense",
    }
    for index in range(config.n_layers):
        for ours, theirs in _LAYER_NAMES.items():
            modules[f"layers.{index}.{ours}"] = f"encoder.layer.{index}.{theirs}"
    names = {}
    for ours, theirs in modules.items():
        suffixes = ("weight",) if "embedding" in ours and "norm" not in ours else ("weight", "bias")
        for suffix in suffixes:
            names[f"{ours}.{suffix}"] = f"{theirs}.{suffix}"
    return names


def _pretraining_names(config: BertConfig) -> dict[str, str]:
    """{our name: transformers' BertForPreTraining name}; the tied decoder weight is the token embedding."""
    names = {f"bert.{ours}": f"bert.{theirs}" for ours, theirs in _encoder_names(config).items()}
    heads = {
        "mlm_head.dense": "cls.predictions.transform.dense",
        "mlm_head.norm": "cls.predictions.transform.LayerNorm",
        "nsp_head": "cls.seq_relationship",
    }
    for ours, theirs in heads.items():
        names[f"{ours}.weight"], names[f"{ours}.bias"] = f"{theirs}.weight", f"{theirs}.bias"
    names["mlm_head.bias"] = "cls.predictions.bias"
    return names


def _copy_weights(target: nn.Module, source: nn.Module, names: dict[str, str], target_is_ours: bool) -> None:
    """Copy every mapped tensor from ``source`` to ``target``; ValueError naming the tensor if shapes differ."""
    ours, theirs = (target, source) if target_is_ours else (source, target)
    our_state, their_state = ours.state_dict(), theirs.state_dict()
    for our_name, their_name in names.items():
        if their_name not in their_state:
            raise ValueError(f"the transformers model has no tensor {their_name!r} (for our {our_name!r})")
        our_tensor, their_tensor = our_state[our_name], their_state[their_name]
        if our_tensor.shape != their_tensor.shape:
            raise ValueError(
                f"shape mismatch for {our_name!r} ↔ {their_name!r}: ours {tuple(our_tensor.shape)}, "
                f"transformers {tuple(their_tensor.shape)}"
            )
    target_state, source_state = (our_state, their_state) if target_is_ours else (their_state, our_state)
    with torch.no_grad():
        for our_name, their_name in names.items():
            target_name, source_name = (our_name, their_name) if target_is_ours else (their_name, our_name)
            target_state[target_name].copy_(source_state[source_name])  # state_dict tensors share the storage


def _hf_config(config: BertConfig) -> transformers.BertConfig:
    import transformers

    return transformers.BertConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        intermediate_size=config.d_ff,
        hidden_act="gelu",
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.dropout,
        max_position_embeddings=config.context_length,
        type_vocab_size=config.type_vocab_size,
        layer_norm_eps=config.norm_eps,
        pad_token_id=config.pad_id,
        tie_word_embeddings=True,
    )


def config_from_hf(hf_config: transformers.BertConfig) -> BertConfig:
    """Our BertConfig for a transformers BertConfig; ValueError for what our model does not implement."""
    if getattr(hf_config, "hidden_act", "gelu") != "gelu":
        raise ValueError(f"hidden_act={hf_config.hidden_act!r}: only 'gelu' (exact erf GELU) is implemented")
    if getattr(hf_config, "position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"position_embedding_type={hf_config.position_embedding_type!r}: only 'absolute'")
    return BertConfig(
        vocab_size=hf_config.vocab_size,
        context_length=hf_config.max_position_embeddings,
        d_model=hf_config.hidden_size,
        n_heads=hf_config.num_attention_heads,
        n_layers=hf_config.num_hidden_layers,
        d_ff=hf_config.intermediate_size,
        dropout=hf_config.hidden_dropout_prob,
        type_vocab_size=hf_config.type_vocab_size,
        norm_eps=hf_config.layer_norm_eps,
        pad_id=hf_config.pad_token_id if hf_config.pad_token_id is not None else 0,
    )


def to_hf_bert(model: BertModel) -> transformers.BertModel:
    """A ``transformers.BertModel`` (eager attention) holding a copy of our encoder's weights."""
    import transformers

    if not isinstance(model, BertModel):
        raise TypeError(f"model must be a BertModel, got {type(model).__name__}")
    hf_model = transformers.BertModel(_hf_config(model.config), add_pooling_layer=True)
    hf_model.config._attn_implementation = "eager"
    _copy_weights(hf_model, model, _encoder_names(model.config), target_is_ours=False)
    return hf_model.to(next(model.parameters()).device).train(model.training)


def to_hf_bert_for_pretraining(model: BertForPreTraining) -> transformers.BertForPreTraining:
    """A ``transformers.BertForPreTraining`` (eager attention) with a copy of our weights, heads included."""
    import transformers

    if not isinstance(model, BertForPreTraining):
        raise TypeError(f"model must be a BertForPreTraining, got {type(model).__name__}")
    hf_model = transformers.BertForPreTraining(_hf_config(model.config))
    hf_model.config._attn_implementation = "eager"
    _copy_weights(hf_model, model, _pretraining_names(model.config), target_is_ours=False)
    return hf_model.to(next(model.parameters()).device).train(model.training)


def load_hf_bert(model: BertModel | BertForPreTraining, hf_model: nn.Module) -> BertModel | BertForPreTraining:
    """Copy a transformers ``BertModel`` / ``BertForPreTraining``'s weights into ``model`` (same shapes)."""
    import transformers

    if isinstance(model, BertForPreTraining) and isinstance(hf_model, transformers.BertForPreTraining):
        names = _pretraining_names(model.config)
    elif isinstance(model, BertModel) and isinstance(hf_model, transformers.BertModel):
        names = _encoder_names(model.config)
    elif isinstance(model, BertModel) and isinstance(hf_model, transformers.BertForPreTraining):
        names, hf_model = _encoder_names(model.config), hf_model.bert  # the encoder only: drop the heads
    else:
        raise TypeError(
            f"cannot load a {type(hf_model).__name__} into a {type(model).__name__}: pass a BertModel or "
            "BertForPreTraining from transformers"
        )
    if isinstance(hf_model, transformers.BertModel) and hf_model.pooler is None:
        names = {ours: theirs for ours, theirs in names.items() if "pooler" not in ours}  # keep our pooler
    _copy_weights(model, hf_model, names, target_is_ours=True)
    return model


def from_hf_bert(hf_model: nn.Module) -> BertModel | BertForPreTraining:
    """Our model with a transformers BERT's weights: a BertForPreTraining when it has the heads, else a BertModel."""
    import transformers

    if not isinstance(hf_model, (transformers.BertModel, transformers.BertForPreTraining)):
        raise TypeError(
            f"hf_model must be a transformers BertModel or BertForPreTraining, got {type(hf_model).__name__}"
        )
    config = config_from_hf(hf_model.config)
    heads = isinstance(hf_model, transformers.BertForPreTraining)
    model = BertForPreTraining(config) if heads else BertModel(config)
    load_hf_bert(model, hf_model)
    device = next(hf_model.parameters()).device
    return model.to(device).train(hf_model.training)
