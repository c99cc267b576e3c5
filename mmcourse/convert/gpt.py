"""Our GPT to and from Hugging Face: GPT-2 (``GPT2LMHeadModel``) both ways, and Llama-style checkpoints
(``LlamaForCausalLM``, SmolLM2) into our GPT with RMSNorm, SwiGLU, rotary positions and grouped-query attention."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mmcourse.gpt import GPT, GPTConfig

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel, LlamaForCausalLM


def _copy_into(target: Tensor, source: Tensor, name: str) -> None:
    """target ← source under no_grad, after checking the shapes; ``name`` says which tensor in the error."""
    if target.shape != source.shape:
        raise ValueError(f"{name}: shape {tuple(source.shape)} does not fit the target's {tuple(target.shape)}")
    with torch.no_grad():
        target.copy_(source)


def _gpt2_pairs(model: GPT) -> list[tuple[str, list[Tensor], bool]]:
    """(Hugging Face GPT-2 parameter name, our tensors, transposed?) for every GPT-2 weight. Several tensors are
    concatenated along their first dimension: GPT-2 fuses q, k, v into one c_attn. GPT-2's Conv1D stores
    (in, out) where nn.Linear stores (out, in): those are transposed."""
    pairs: list[tuple[str, list[Tensor], bool]] = [
        ("transformer.wte.weight", [model.token_embedding.weight], False),
        ("transformer.wpe.weight", [model.position_embedding.weight], False),  # type: ignore[union-attr]
    ]
    for index, block in enumerate(model.blocks):
        prefix, attention, mlp = f"transformer.h.{index}.", block.attention, block.mlp
        projections = (attention.q_proj, attention.k_proj, attention.v_proj)
        pairs += [
            (prefix + "ln_1.weight", [block.norm1.weight], False),
            (prefix + "ln_1.bias", [block.norm1.bias], False),
            (prefix + "attn.c_attn.weight", [p.weight for p in projections], True),  # (d_model, 3·d_model)
            (prefix + "attn.c_attn.bias", [p.bias for p in projections], False),  # (3·d_model,)
            (prefix + "attn.c_proj.weight", [attention.out_proj.weight], True),
            (prefix + "attn.c_proj.bias", [attention.out_proj.bias], False),
            (prefix + "ln_2.weight", [block.norm2.weight], False),
            (prefix + "ln_2.bias", [block.norm2.bias], False),
            (prefix + "mlp.c_fc.weight", [mlp.linear1.weight], True),
            (prefix + "mlp.c_fc.bias", [mlp.linear1.bias], False),
            (prefix + "mlp.c_proj.weight", [mlp.linear2.weight], True),
            (prefix + "mlp.c_proj.bias", [mlp.linear2.bias], False),
        ]
    pairs += [("transformer.ln_f.weight", [model.final_norm.weight], False)]
    pairs += [("transformer.ln_f.bias", [model.final_norm.bias], False)]
    if not model.config.tie_embeddings:
        pairs.append(("lm_head.weight", [model.lm_head.weight], False))
    return pairs


def _check_gpt2_style(config: GPTConfig) -> None:
    wanted = {"norm": "layernorm", "mlp": "gelu", "positions": "learned", "bias": True, "n_kv_heads": config.n_heads}
    for name, value in wanted.items():
        if getattr(config, name) != value:
            raise ValueError(f"GPT-2 needs {name}={value!r}, this config has {name}={getattr(config, name)!r}")


def to_hf_gpt2(model: GPT) -> GPT2LMHeadModel:
    """A Hugging Face ``GPT2LMHeadModel`` holding a copy of ``model``'s weights (a GPT-2 style config only)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if not isinstance(model, GPT):
        raise TypeError(f"model must be a mmcourse.gpt.GPT, got {type(model).__name__}")
    config = model.config
    _check_gpt2_style(config)
    end_of_text = 50256 if config.vocab_size > 50256 else None  # GPT-2's <|endoftext|>, when the vocabulary has it
    hf_config = GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.context_length,
        n_embd=config.d_model,
        n_layer=config.n_layers,
        n_head=config.n_heads,
        n_inner=config.d_ff,
        activation_function="gelu_new",
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        layer_norm_epsilon=config.norm_eps,
        tie_word_embeddings=config.tie_embeddings,
        bos_token_id=end_of_text,
        eos_token_id=end_of_text,
    )
    hf_model = GPT2LMHeadModel(hf_config)
    hf_parameters = dict(hf_model.named_parameters(remove_duplicate=False))
    for name, tensors, transposed in _gpt2_pairs(model):
        ours = torch.cat(tensors)  # (out, in) or (out,); q, k, v stacked for c_attn
        _copy_into(hf_parameters[name], ours.t() if transposed else ours, name)
    return hf_model.to(model.lm_head.weight.device).train(model.training)


def from_hf_gpt2(hf_model: GPT2LMHeadModel) -> GPT:
    """Our ``GPT`` holding a copy of a Hugging Face ``GPT2LMHeadModel``'s weights."""
    hf_config = getattr(hf_model, "config", None)
    if getattr(hf_config, "model_type", None) != "gpt2" or not hasattr(hf_model, "lm_head"):
        raise TypeError(f"hf_model must be a GPT2LMHeadModel, got {type(hf_model).__name__}")
    if hf_config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"activation_function={hf_config.activation_function!r} is not GPT-2's tanh GELU (gelu_new)")
    if not hf_config.scale_attn_weights or hf_config.scale_attn_by_inverse_layer_idx:
        raise ValueError("only the standard 1/√head_dim attention scaling is supported (scale_attn_weights=True, "
                         "scale_attn_by_inverse_layer_idx=False)")  # fmt: skip
    if getattr(hf_config, "add_cross_attention", False):
        raise ValueError("add_cross_attention=True (an encoder-decoder GPT-2) is not supported")
    config = GPTConfig(
        vocab_size=hf_config.vocab_size,
        context_length=hf_config.n_positions,
        d_model=hf_config.n_embd,
        n_heads=hf_config.n_head,
        n_layers=hf_config.n_layer,
        d_ff=hf_config.n_inner or 4 * hf_config.n_embd,
        dropout=float(hf_config.resid_pdrop),
        norm_eps=float(hf_config.layer_norm_epsilon),
        tie_embeddings=bool(hf_config.tie_word_embeddings),
    )
    model = GPT(config)
    hf_parameters = dict(hf_model.named_parameters(remove_duplicate=False))
    for name, tensors, transposed in _gpt2_pairs(model):
        if name not in hf_parameters:
            raise ValueError(f"{name} is missing from the Hugging Face model")
        source = hf_parameters[name].t() if transposed else hf_parameters[name]  # (out, in) or (out,)
        sizes = [tensor.size(0) for tensor in tensors]
        if source.size(0) != sum(sizes):
            raise ValueError(f"{name}: shape {tuple(source.shape)} does not fit {len(tensors)} × {sizes[0]} rows")
        for tensor, part in zip(tensors, source.split(sizes), strict=True):  # c_attn: q, k, v
            _copy_into(tensor, part, name)
    return model.to(hf_parameters["transformer.wte.weight"].device).train(hf_model.training)


def _rope_theta(hf_config: Any) -> float:
    """rope_theta from a LlamaConfig of transformers 5 (``rope_parameters``) or 4 (``rope_theta``)."""
    parameters = getattr(hf_config, "rope_parameters", None) or {}
    scaling = getattr(hf_config, "rope_scaling", None) or {}
    rope_type = parameters.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if rope_type != "default":
        raise ValueError(f"rope_type={rope_type!r} is not supported: only the default rotary embedding")
    theta = parameters.get("rope_theta", getattr(hf_config, "rope_theta", None))
    if theta is None:
        raise ValueError("the Llama config has no rope_theta")
    return float(theta)


def from_hf_llama(hf_model: LlamaForCausalLM) -> GPT:
    """Our ``GPT`` (Llama style) holding a copy of a Hugging Face ``LlamaForCausalLM``'s weights."""
    hf_config = getattr(hf_model, "config", None)
    if getattr(hf_config, "model_type", None) != "llama" or not hasattr(hf_model, "lm_head"):
        raise TypeError(f"hf_model must be a LlamaForCausalLM, got {type(hf_model).__name__}")
    if hf_config.hidden_act != "silu":
        raise ValueError(f"hidden_act={hf_config.hidden_act!r} is not supported: SwiGLU uses silu")
    attention_bias, mlp_bias = bool(hf_config.attention_bias), bool(getattr(hf_config, "mlp_bias", False))
    if attention_bias != mlp_bias:
        raise ValueError(f"attention_bias={attention_bias} and mlp_bias={mlp_bias} differ: our config has one bias")
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    if head_dim * hf_config.num_attention_heads != hf_config.hidden_size:
        raise ValueError(
            f"head_dim={head_dim} × num_attention_heads={hf_config.num_attention_heads} must equal "
            f"hidden_size={hf_config.hidden_size}"
        )
    config = GPTConfig.llama_style(
        vocab_size=hf_config.vocab_size,
        context_length=hf_config.max_position_embeddings,
        d_model=hf_config.hidden_size,
        n_heads=hf_config.num_attention_heads,
        n_kv_heads=hf_config.num_key_value_heads or hf_config.num_attention_heads,
        n_layers=hf_config.num_hidden_layers,
        d_ff=hf_config.intermediate_size,
        bias=attention_bias,
        rope_base=_rope_theta(hf_config),
        norm_eps=float(hf_config.rms_norm_eps),
        tie_embeddings=bool(hf_config.tie_word_embeddings),
    )
    model = GPT(config)
    hf_parameters = dict(hf_model.named_parameters(remove_duplicate=False))
    pairs: list[tuple[str, Tensor]] = [("model.embed_tokens.weight", model.token_embedding.weight)]
    for index, block in enumerate(model.blocks):
        prefix = f"model.layers.{index}."
        names = {"self_attn.q_proj": block.attention.q_proj, "self_attn.k_proj": block.attention.k_proj,
                 "self_attn.v_proj": block.attention.v_proj, "self_attn.o_proj": block.attention.out_proj,
                 "mlp.gate_proj": block.mlp.gate_proj, "mlp.up_proj": block.mlp.up_proj,
                 "mlp.down_proj": block.mlp.down_proj}  # fmt: skip
        for hf_name, linear in names.items():
            pairs.append((prefix + hf_name + ".weight", linear.weight))
            if linear.bias is not None:
                pairs.append((prefix + hf_name + ".bias", linear.bias))
        pairs += [(prefix + "input_layernorm.weight", block.norm1.weight)]
        pairs += [(prefix + "post_attention_layernorm.weight", block.norm2.weight)]
    pairs.append(("model.norm.weight", model.final_norm.weight))
    if not config.tie_embeddings:
        pairs.append(("lm_head.weight", model.lm_head.weight))
    for name, tensor in pairs:
        if name not in hf_parameters:
            raise ValueError(f"{name} is missing from the Hugging Face model")
        _copy_into(tensor, hf_parameters[name], name)
    return model.to(hf_parameters["model.embed_tokens.weight"].device).train(hf_model.training)
