"""A decoder-only Transformer language model, from GPT-2 to Llama in one class (chapter 4).

``GPT(config)`` = token embedding (+ learned positions) → ``n_layers`` pre-LN blocks (causal self-attention, then an
MLP, each in a residual connection) → a final norm → the LM head (tied to the token embedding by default). The
config chooses the recipe: the GPT-2 style (LayerNorm, GELU MLP, learned positions, biases) is the default,
:meth:`GPTConfig.llama_style` gives RMSNorm, a SwiGLU MLP, rotary positions, no biases and, with ``n_kv_heads``,
grouped-query attention. A :class:`KVCache` keeps past keys and values so that generation (see
:func:`mmcourse.generation.generate`) feeds one new token per step.

The conversions at the end copy weights to and from Hugging Face ``GPT2LMHeadModel`` and ``LlamaForCausalLM``; the
tests compare logits with transformers (importing transformers happens inside those functions only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcourse.attention import fused_attention, scaled_dot_product_attention
from mmcourse.checks import check_positive_int, check_token_ids
from mmcourse.positional import LearnedPositionalEmbedding, RotaryEmbedding, apply_rotary

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
POSITIONS = ("learned", "rotary")


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    context_length: int = 128
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int | None = None  # None: 4·d_model for the GELU MLP; a SwiGLU MLP needs it set (Llama: about 8/3·d_model)
    dropout: float = 0.0
    bias: bool = True  # biases in the linear layers and LayerNorms
    norm: str = "layernorm"  # "layernorm" or "rmsnorm"
    mlp: str = "gelu"  # "gelu" (GPT-2, tanh approximation) or "swiglu" (Llama)
    positions: str = "learned"  # "learned" (GPT-2, at most context_length) or "rotary" (RoPE, Llama)
    n_kv_heads: int | None = None  # grouped-query attention: key/value heads shared by n_heads/n_kv_heads queries
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True  # the LM head reuses the token embedding matrix

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "d_model", "n_heads", "n_layers"):
            check_positive_int(name, getattr(self, name))
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        for name, options in (("norm", NORMS), ("mlp", MLPS), ("positions", POSITIONS)):
            if getattr(self, name) not in options:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {options}")
        if self.d_ff is None:
            if self.mlp == "swiglu":
                raise ValueError("d_ff must be set for mlp='swiglu' (Llama uses about 8/3·d_model)")
            object.__setattr__(self, "d_ff", 4 * self.d_model)  # frozen: set the resolved default once
        check_positive_int("d_ff", self.d_ff)
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        check_positive_int("n_kv_heads", self.n_kv_heads)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        for name in ("bias", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("rope_base", "norm_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.positions == "rotary" and self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} (d_model / n_heads) must be even for rotary positions")

    @property
    def head_dim(self) -> int:
        """Size of one attention head: d_model / n_heads."""
        return self.d_model // self.n_heads

    @classmethod
    def gpt2_style(cls, vocab_size: int, **overrides: Any) -> GPTConfig:
        """GPT-2's recipe (the defaults): LayerNorm, GELU MLP of 4·d_model, learned positions, biases."""
        return cls(vocab_size=vocab_size, **overrides)

    @classmethod
    def llama_style(cls, vocab_size: int, **overrides: Any) -> GPTConfig:
        """Llama's recipe: RMSNorm, SwiGLU MLP (d_ff = 8/3·d_model rounded up to a multiple of 64), rotary
        positions, no biases. ``n_kv_heads`` (grouped-query attention) and the rest can be overridden."""
        settings: dict[str, Any] = {"norm": "rmsnorm", "mlp": "swiglu", "positions": "rotary", "bias": False}
        settings.update(overrides)
        if settings.get("d_ff") is None:
            d_model = settings.get("d_model", cls.__dataclass_fields__["d_model"].default)
            settings["d_ff"] = 64 * math.ceil(8 * d_model / 3 / 64)
        return cls(vocab_size=vocab_size, **settings)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich, 2019): x / √(mean(x²) + eps) · weight; no mean, no bias."""

    def __init__(self, d_model: int, eps: float = 1e-5) -> None:
        super().__init__()
        check_positive_int("d_model", d_model)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: Tensor) -> Tensor:
        """(…, d_model) → (…, d_model), computed in float32 as Llama does."""
        x32 = x.float()  # (…, d_model)
        normalized = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # (…, d_model)
        return self.weight * normalized.to(x.dtype)  # (…, d_model)


def make_norm(config: GPTConfig) -> nn.Module:
    """The config's normalisation layer over d_model: LayerNorm (with a bias if ``config.bias``) or RMSNorm."""
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)


class KVCache:
    """Keys and values of the tokens seen so far: one (k, v) pair per layer, each (batch, n_kv_heads, length,
    head_dim), keys already rotated. Each forward pass appends its new positions in place."""

    def __init__(self, n_layers: int) -> None:
        check_positive_int("n_layers", n_layers)
        self.layers: list[tuple[Tensor, Tensor] | None] = [None] * n_layers

    @property
    def length(self) -> int:
        """Number of cached positions (the same in every layer between forward passes)."""
        first = self.layers[0]
        return 0 if first is None else first[0].size(-2)

    def update(self, layer_index: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append new k, v (batch, n_kv_heads, new, head_dim) to layer ``layer_index``; return all cached k, v."""
        if not 0 <= layer_index < len(self.layers):
            raise ValueError(f"layer_index must be in [0, {len(self.layers)}), got {layer_index}")
        past = self.layers[layer_index]
        if past is not None:
            if past[0].shape[:2] != k.shape[:2] or past[0].size(-1) != k.size(-1):
                raise ValueError(
                    f"new keys {tuple(k.shape)} do not continue the cached keys {tuple(past[0].shape)} "
                    "(batch, n_kv_heads, length, head_dim)"
                )
            k = torch.cat([past[0], k], dim=-2)  # (batch, n_kv_heads, past + new, head_dim)
            v = torch.cat([past[1], v], dim=-2)  # (batch, n_kv_heads, past + new, head_dim)
        self.layers[layer_index] = (k, v)
        return k, v


class CausalSelfAttention(nn.Module):
    """Masked multi-head self-attention with optional rotary positions, grouped-query heads and a KV cache."""

    def __init__(self, config: GPTConfig, layer_index: int = 0) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.dropout = config.dropout
        kv_dim = config.n_kv_heads * config.head_dim
        self.q_proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.k_proj = nn.Linear(config.d_model, kv_dim, bias=config.bias)
        self.v_proj = nn.Linear(config.d_model, kv_dim, bias=config.bias)
        self.out_proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_base) if config.positions == "rotary" else None

    def forward(
        self, x: Tensor, cache: KVCache | None = None, position_offset: int = 0, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """x (batch, L, d_model) at positions position_offset … → (output (batch, L, d_model), attn_weights
        (batch, n_heads, L, S) or None). With ``cache``, the L new queries see the S = past + L cached keys."""
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)  # (batch, n_heads, L, hd)
        k = self.k_proj(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (batch, kv, L, hd)
        v = self.v_proj(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (batch, kv, L, hd)
        if self.rotary is not None:
            positions = torch.arange(position_offset, position_offset + length, device=x.device)  # (L,)
            cos, sin = self.rotary(positions)  # (L, head_dim) each
            q = apply_rotary(q, cos.to(q.dtype), sin.to(q.dtype))  # (batch, n_heads, L, head_dim)
            k = apply_rotary(k, cos.to(k.dtype), sin.to(k.dtype))  # (batch, n_kv_heads, L, head_dim)
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)  # (batch, n_kv_heads, S, head_dim), S = past + L
        groups = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(groups, dim=1)  # (batch, n_heads, S, head_dim): kv head j serves query heads j·g …
        v = v.repeat_interleave(groups, dim=1)  # (batch, n_heads, S, head_dim)
        keys = k.size(-2)
        dropout = self.dropout if self.training else 0.0
        # query i sits at position past + i: it may see keys 0 … past + i (a causal mask aligned bottom-right)
        mask = torch.ones(length, keys, dtype=torch.bool, device=x.device).tril(diagonal=keys - length)  # (L, S)
        attn_weights = None
        if need_weights:
            context, attn_weights = scaled_dot_product_attention(q, k, v, mask, dropout)  # (batch, n_heads, L, hd)
        elif keys == length:  # nothing cached: torch's causal kernel
            context = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)  # (batch, h, L, hd)
        else:  # is_causal would align the mask top-left: pass it explicitly
            context = fused_attention(q, k, v, mask, dropout)  # (batch, n_heads, L, head_dim)
        context = context.transpose(1, 2).reshape(batch, length, self.n_heads * self.head_dim)  # (batch, L, d_model)
        return self.out_proj(context), attn_weights  # (batch, L, d_model)


class MLP(nn.Module):
    """GPT-2's feed-forward network: linear1 → GELU (tanh approximation, GPT-2's "gelu_new") → linear2."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.linear1 = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.linear2 = nn.Linear(config.d_ff, config.d_model, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(batch, L, d_model) → (batch, L, d_model)."""
        hidden_states = F.gelu(self.linear1(x), approximate="tanh")  # (batch, L, d_ff)
        return self.linear2(hidden_states)  # (batch, L, d_model)


class SwiGLU(nn.Module):
    """Llama's feed-forward network (Shazeer, 2020): down_proj(SiLU(gate_proj(x)) · up_proj(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.up_proj = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.down_proj = nn.Linear(config.d_ff, config.d_model, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        """(batch, L, d_model) → (batch, L, d_model)."""
        hidden_states = F.silu(self.gate_proj(x)) * self.up_proj(x)  # (batch, L, d_ff)
        return self.down_proj(hidden_states)  # (batch, L, d_model)


class Block(nn.Module):
    """A pre-LN decoder block: x + attention(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, config: GPTConfig, layer_index: int = 0) -> None:
        super().__init__()
        self.norm1 = make_norm(config)
        self.attention = CausalSelfAttention(config, layer_index)
        self.norm2 = make_norm(config)
        self.mlp = SwiGLU(config) if config.mlp == "swiglu" else MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: Tensor, cache: KVCache | None = None, position_offset: int = 0, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """x (batch, L, d_model) → (x (batch, L, d_model), attn_weights (batch, n_heads, L, S) or None)."""
        attended, attn_weights = self.attention(self.norm1(x), cache, position_offset, need_weights)
        x = x + self.dropout(attended)  # (batch, L, d_model)
        x = x + self.dropout(self.mlp(self.norm2(x)))  # (batch, L, d_model)
        return x, attn_weights


def _residual_projections(block: Block) -> tuple[nn.Linear, nn.Linear]:
    mlp = block.mlp
    return block.attention.out_proj, mlp.down_proj if isinstance(mlp, SwiGLU) else mlp.linear2


class GPT(nn.Module):
    """A decoder-only language model: input_ids (batch, T) → next-token logits (batch, T, vocab_size)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise ValueError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.positional = (
            LearnedPositionalEmbedding(config.context_length, config.d_model) if config.positions == "learned" else None
        )
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, index) for index in range(config.n_layers))
        self.final_norm = make_norm(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.reset_parameters()
        if config.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight  # one (vocab_size, d_model) matrix

    def reset_parameters(self) -> None:
        """GPT-2's initialisation: N(0, 0.02) weights, zero biases, unit norms, and the two projections that write
        into the residual stream N(0, 0.02/√(2·n_layers)), so the stream's variance does not grow with depth."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, (nn.LayerNorm, RMSNorm)):
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for block in self.blocks:
            for projection in _residual_projections(block):
                nn.init.normal_(projection.weight, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layers))

    def new_cache(self) -> KVCache:
        """An empty KV cache with one slot per layer."""
        return KVCache(self.config.n_layers)

    def _check_input_ids(self, input_ids: Tensor, cache: KVCache | None) -> int:
        if (
            not isinstance(input_ids, Tensor)
            or input_ids.dim() != 2
            or input_ids.dtype not in (torch.int64, torch.int32)
        ):
            shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be an integer tensor (batch, T), got {shape}")
        if input_ids.size(1) < 1:
            raise ValueError("input_ids must hold at least one token, got T = 0")
        check_token_ids("input_ids", input_ids, self.config.vocab_size)
        return self._check_positions("input_ids", input_ids.size(1), cache)

    def _check_positions(self, name: str, length: int, cache: KVCache | None) -> int:
        """The position of the first new token (the cache's length, else 0), checked against the learned positions."""
        offset = 0
        if cache is not None:
            if not isinstance(cache, KVCache) or len(cache.layers) != self.config.n_layers:
                raise ValueError(f"cache must be a KVCache with n_layers={self.config.n_layers} slots")
            offset = cache.length
        end = offset + length
        if self.positional is not None and end > self.config.context_length:
            raise ValueError(
                f"{name} reach position {end} (cached {offset} + T {length}), more than "
                f"context_length={self.config.context_length} learned positions: crop the input to the last "
                f"{self.config.context_length} tokens"
            )
        return offset

    def forward(
        self, input_ids: Tensor, cache: KVCache | None = None, need_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """input_ids (batch, T) → logits (batch, T, vocab_size); with ``need_weights``, (logits, attn_weights
        stacked (n_layers, batch, n_heads, T, S)). With ``cache``, input_ids continue the cached tokens (S = cached
        + T) and their keys and values are appended to it."""
        self._check_input_ids(input_ids, cache)
        return self.forward_embeddings(self.token_embedding(input_ids), cache, need_weights)

    def forward_embeddings(
        self, hidden_states: Tensor, cache: KVCache | None = None, need_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The same forward pass from input vectors (batch, T, d_model) instead of token ids: what a soft prompt
        needs, since its vectors are not rows of the embedding matrix. Returns what ``forward`` returns."""
        if (
            not isinstance(hidden_states, Tensor)
            or hidden_states.dim() != 3
            or hidden_states.size(-1) != self.config.d_model
        ):
            shape = tuple(hidden_states.shape) if isinstance(hidden_states, Tensor) else type(hidden_states).__name__
            raise ValueError(f"hidden_states must be (batch, T, d_model={self.config.d_model}), got {shape}")
        offset = self._check_positions("hidden_states", hidden_states.size(1), cache)
        if self.positional is not None:
            hidden_states = self.positional(hidden_states, offset)  # (batch, T, d_model) + position vectors
        hidden_states = self.dropout(hidden_states)  # (batch, T, d_model)
        weights = []
        for block in self.blocks:
            hidden_states, attn_weights = block(hidden_states, cache, offset, need_weights)  # (batch, T, d_model)
            weights.append(attn_weights)
        logits = self.lm_head(self.final_norm(hidden_states))  # (batch, T, vocab_size)
        if need_weights:
            return logits, torch.stack(weights)  # (batch, T, vocab_size), (n_layers, batch, n_heads, T, S)
        return logits


def next_token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of logits (batch, T, vocab_size) against the next tokens targets (batch, T)."""
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(
            f"logits must be (batch, T, vocab_size) and targets (batch, T), got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def gpt_parameter_count(config: GPTConfig) -> int:
    """The number of parameters of ``GPT(config)``, from the config alone (a tied LM head counted once)."""
    if not isinstance(config, GPTConfig):
        raise ValueError(f"config must be a GPTConfig, got {type(config).__name__}")
    d_model, d_ff, bias = config.d_model, config.d_ff, int(config.bias)
    kv_dim = config.n_kv_heads * config.head_dim  # width of k and of v: d_model without GQA
    norm = d_model * (2 if config.norm == "layernorm" and config.bias else 1)  # weight (+ bias)
    attention = 2 * d_model * d_model + 2 * d_model * kv_dim + bias * (2 * d_model + 2 * kv_dim)  # q, out; k, v
    if config.mlp == "gelu":
        mlp = 2 * d_model * d_ff + bias * (d_ff + d_model)  # linear1, linear2
    else:
        mlp = 3 * d_model * d_ff + bias * (2 * d_ff + d_model)  # gate, up, down
    block = 2 * norm + attention + mlp
    embeddings = config.vocab_size * d_model + (config.context_length * d_model if config.positions == "learned" else 0)
    lm_head = 0 if config.tie_embeddings else config.vocab_size * d_model
    return embeddings + config.n_layers * block + norm + lm_head


# ---------------------------------------------------------------------------------------------------------------
# Weight conversion with Hugging Face transformers
# ---------------------------------------------------------------------------------------------------------------


