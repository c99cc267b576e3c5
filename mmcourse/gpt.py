"""A decoder-only Transformer language model, GPT-2 to Llama in one class (chapter 4): token embedding (+ learned
positions) → ``n_layers`` pre-LN blocks (causal self-attention, then an MLP, each in a residual connection) → a final
norm → the LM head, tied to the token embedding. GPT-2's recipe is the default; :meth:`GPTConfig.llama_style` gives
Llama's (RMSNorm, SwiGLU, rotary positions, grouped-query attention). Generation passes a KV cache
(:class:`mmcourse.generation.KVCache`). The forward pass never reads tensor values. Hugging Face conversions:
:mod:`mmcourse.convert.gpt`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcourse.attention import scaled_dot_product_attention
from mmcourse.checks import check_dropout, check_positive_int, check_positive_number
from mmcourse.generation import KVCache
from mmcourse.positional import RotaryEmbedding

CHOICES = {"norm": ("layernorm", "rmsnorm"), "mlp": ("gelu", "swiglu"), "positions": ("learned", "rotary")}


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    context_length: int = 128  # the longest input with learned positions (rotary ones have no limit)
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int | None = None  # None: 4·d_model for the GELU MLP; SwiGLU needs it set (Llama: about 8/3·d_model)
    dropout: float = 0.0
    bias: bool = True  # biases in the linear layers and LayerNorms
    norm: str = "layernorm"  # "layernorm" (GPT-2) or "rmsnorm" (Llama)
    mlp: str = "gelu"  # "gelu" (GPT-2, tanh approximation) or "swiglu" (Llama)
    positions: str = "learned"  # "learned" (GPT-2) or "rotary" (RoPE, Llama)
    n_kv_heads: int | None = None  # grouped-query attention: key/value heads, each shared by n_heads/n_kv_heads
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True  # the LM head reuses the token embedding matrix

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "d_model", "n_heads", "n_layers"):
            check_positive_int(name, getattr(self, name))
        for name, options in CHOICES.items():
            if getattr(self, name) not in options:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {options}")
        if self.d_ff is None and self.mlp == "swiglu":
            raise ValueError("d_ff must be set for mlp='swiglu' (Llama uses about 8/3·d_model)")
        for name, default in (("d_ff", 4 * self.d_model), ("n_kv_heads", self.n_heads)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)  # frozen: the resolved default, set once
            check_positive_int(name, getattr(self, name))
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")
        check_dropout("dropout", self.dropout)
        for name in ("rope_base", "norm_eps"):
            check_positive_number(name, getattr(self, name))
        for name in ("bias", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.positions == "rotary" and self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} (d_model / n_heads) must be even for rotary positions")

    @property
    def head_dim(self) -> int:
        """Size of one attention head: d_model / n_heads."""
        return self.d_model // self.n_heads

    @classmethod
    def llama_style(cls, vocab_size: int, **overrides: Any) -> GPTConfig:
        """Llama's recipe: RMSNorm, SwiGLU MLP (d_ff = 8/3·d_model rounded up to a multiple of 64), rotary
        positions, no biases. ``n_kv_heads`` (grouped-query attention) and the rest can be overridden."""
        settings: dict[str, Any] = {"norm": "rmsnorm", "mlp": "swiglu", "positions": "rotary", "bias": False}
        settings.update(overrides)
        if settings.get("d_ff") is None:
            settings["d_ff"] = 64 * math.ceil(8 * settings.get("d_model", cls.d_model) / 3 / 64)
        return cls(vocab_size=vocab_size, **settings)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich, 2019): x / √(mean(x²) + eps) · weight; no mean, no bias."""

    def __init__(self, d_model: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: Tensor) -> Tensor:
        """(…, d_model) → (…, d_model), computed in float32 as Llama does."""
        x32 = x.float()  # (…, d_model)
        normalized = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # (…, d_model)
        return self.weight * normalized.to(x.dtype)  # (…, d_model)


def make_norm(config: GPTConfig) -> nn.Module:
    """The config's norm over d_model: LayerNorm (with a bias if ``config.bias``) or RMSNorm."""
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps, bias=config.bias)


class CausalSelfAttention(nn.Module):
    """Masked multi-head self-attention, with rotary positions, grouped-query heads and a KV cache as options."""

    def __init__(self, config: GPTConfig, layer_index: int = 0) -> None:
        super().__init__()
        self.layer_index, self.n_heads, self.n_kv_heads = layer_index, config.n_heads, config.n_kv_heads
        self.head_dim, self.dropout = config.head_dim, config.dropout
        kv_dim = config.n_kv_heads * config.head_dim
        self.q_proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.k_proj = nn.Linear(config.d_model, kv_dim, bias=config.bias)
        self.v_proj = nn.Linear(config.d_model, kv_dim, bias=config.bias)
        self.out_proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_base) if config.positions == "rotary" else None

    def forward(
        self, x: Tensor, cache: KVCache | None = None, offset: int = 0, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """x (batch, L, d_model) at positions offset … → (output (batch, L, d_model), attn_weights (batch,
        n_heads, L, S) with ``need_weights``, else None). With ``cache``, S = cached + L keys."""
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)  # (batch, n_heads, L, hd)
        k = self.k_proj(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (batch, kv, L, hd)
        v = self.v_proj(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (batch, kv, L, hd)
        if self.rotary is not None:
            positions = torch.arange(offset, offset + length, device=x.device)  # (L,)
            q, k = self.rotary.rotate(q, positions), self.rotary.rotate(k, positions)  # shapes unchanged
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)  # (batch, n_kv_heads, S, head_dim), S = cached + L
        groups = self.n_heads // self.n_kv_heads  # query heads per key/value head
        if groups > 1:  # kv head j serves query heads j·g … (j+1)·g - 1
            k = k.repeat_interleave(groups, dim=1)  # (batch, n_heads, S, head_dim)
            v = v.repeat_interleave(groups, dim=1)  # (batch, n_heads, S, head_dim)
        keys, dropout = k.size(-2), self.dropout if self.training else 0.0
        attn_weights = None
        if keys == length and not need_weights:  # nothing cached: torch's fused causal kernel
            context = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)  # (batch, h, L, hd)
        else:  # query i sits at position cached + i: it sees keys 0 … cached + i (a causal mask aligned bottom-right)
            mask = torch.ones(length, keys, dtype=torch.bool, device=x.device).tril(diagonal=keys - length)  # (L, S)
            if need_weights:  # chapter 1's explicit softmax(q kᵀ / √d) v, which has the weights to return
                context, attn_weights = scaled_dot_product_attention(q, k, v, mask, dropout)  # (batch, h, L, hd)
            else:  # is_causal would align the mask top-left: pass it explicitly
                context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        context = context.transpose(1, 2).reshape(batch, length, -1)  # (batch, L, d_model)
        return self.out_proj(context), attn_weights  # (batch, L, d_model)


class MLP(nn.Module):
    """GPT-2's feed-forward network: linear1 → GELU (tanh approximation, GPT-2's "gelu_new") → linear2."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.linear1 = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.linear2 = nn.Linear(config.d_ff, config.d_model, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(F.gelu(self.linear1(x), approximate="tanh"))  # (batch, L, d_ff) → (batch, L, d_model)


class SwiGLU(nn.Module):
    """Llama's feed-forward network (Shazeer, 2020): down_proj(SiLU(gate_proj(x)) · up_proj(x))."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.up_proj = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.down_proj = nn.Linear(config.d_ff, config.d_model, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # (batch, L, d_ff) → (batch, L, d_model)


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
        self, x: Tensor, cache: KVCache | None = None, offset: int = 0, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """x (batch, L, d_model) → (x (batch, L, d_model), attn_weights (batch, n_heads, L, S) or None)."""
        attended, attn_weights = self.attention(self.norm1(x), cache, offset, need_weights)
        x = x + self.dropout(attended)  # (batch, L, d_model)
        x = x + self.dropout(self.mlp(self.norm2(x)))  # (batch, L, d_model)
        return x, attn_weights


class GPT(nn.Module):
    """A decoder-only language model: input_ids (batch, T) → next-token logits (batch, T, vocab_size)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        learned = config.positions == "learned"  # GPT-2's learned positions; rotary ones live in the attention
        self.position_embedding = nn.Embedding(config.context_length, config.d_model) if learned else None
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, index) for index in range(config.n_layers))
        self.final_norm = make_norm(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self._init_weights()
        if config.tie_embeddings:
            self.lm_head.weight = self.token_embedding.weight  # one (vocab_size, d_model) matrix

    def _init_weights(self) -> None:
        """GPT-2's initialisation: N(0, 0.02), zero biases; N(0, 0.02/√(2·n_layers)) for the two projections that
        write into the residual stream, so that the stream's variance does not grow with depth."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for name, parameter in self.named_parameters():  # block by block: attention's, then the MLP's
            if name.endswith(("out_proj.weight", "linear2.weight", "down_proj.weight")):
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layers))

    def forward(self, input_ids: Tensor, cache: KVCache | None = None) -> Tensor:
        """input_ids (batch, T) → logits (batch, T, vocab_size). With ``cache``, input_ids continue the cached
        tokens (their queries see the cached keys) and their own keys and values are appended to it."""
        check_input_ids(input_ids)
        return self.forward_embeddings(self.token_embedding(input_ids), cache)

    def forward_embeddings(self, hidden_states: Tensor, cache: KVCache | None = None) -> Tensor:
        """The same forward pass from input vectors (batch, T, d_model) instead of token ids: what a soft prompt
        needs, since its vectors are not rows of the embedding matrix. Returns logits (batch, T, vocab_size)."""
        return self._forward(hidden_states, cache, need_weights=False)[0]

    def _forward(self, hidden_states: Tensor, cache: KVCache | None, need_weights: bool) -> tuple[Tensor, list]:
        offset = self._check_inputs(hidden_states, cache)  # the position of the first new token
        if self.position_embedding is not None:
            positions = torch.arange(offset, offset + hidden_states.size(1), device=hidden_states.device)  # (T,)
            hidden_states = hidden_states + self.position_embedding(positions)  # (batch, T, d_model)
        hidden_states = self.dropout(hidden_states)  # (batch, T, d_model)
        all_weights = []
        for block in self.blocks:
            hidden_states, attn_weights = block(hidden_states, cache, offset, need_weights)  # (batch, T, d_model)
            all_weights.append(attn_weights)  # (batch, n_heads, T, S), or None
        return self.lm_head(self.final_norm(hidden_states)), all_weights  # logits (batch, T, vocab_size)

    def attention_weights(self, input_ids: Tensor, cache: KVCache | None = None) -> Tensor:
        """Every layer's attention weights for ``forward``'s inputs, stacked: (n_layers, batch, n_heads, T, S). The
        whole forward pass runs, with chapter 1's explicit attention in each block instead of the fused kernel."""
        check_input_ids(input_ids)
        return self.attention_weights_from_embeddings(self.token_embedding(input_ids), cache)

    def attention_weights_from_embeddings(self, hidden_states: Tensor, cache: KVCache | None = None) -> Tensor:
        """``attention_weights`` from input vectors (batch, T, d_model), as ``forward_embeddings`` takes them."""
        return torch.stack(self._forward(hidden_states, cache, need_weights=True)[1])

    def new_cache(self) -> KVCache:
        """An empty KV cache with one slot per layer."""
        return KVCache(self.config.n_layers)

    def _check_inputs(self, hidden_states: Tensor, cache: KVCache | None) -> int:
        """Shapes only (never the values): hidden_states (batch, T, d_model), the cache, the positions."""
        d_model = self.config.d_model
        if not isinstance(hidden_states, Tensor) or hidden_states.dim() != 3 or hidden_states.size(-1) != d_model:
            got = tuple(hidden_states.shape) if isinstance(hidden_states, Tensor) else type(hidden_states).__name__
            raise ValueError(f"hidden_states must be (batch, T, d_model={d_model}), got {got}")
        if cache is not None and (not isinstance(cache, KVCache) or len(cache.layers) != self.config.n_layers):
            raise ValueError(f"cache must be a KVCache with n_layers={self.config.n_layers} slots")
        offset, length = (0 if cache is None else cache.length), hidden_states.size(1)
        if self.position_embedding is not None and offset + length > self.config.context_length:
            raise ValueError(f"the input reaches position {offset + length} (cached {offset} + T {length}), past "
                             f"context_length={self.config.context_length}: crop it to its last tokens")  # fmt: skip
        return offset


def check_input_ids(input_ids: Tensor) -> None:
    """TypeError unless an int64 / int32 tensor, ValueError unless (batch, T >= 1): metadata, not the values."""
    if not isinstance(input_ids, Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
        got = f"a {input_ids.dtype} tensor" if isinstance(input_ids, Tensor) else type(input_ids).__name__
        raise TypeError(f"input_ids must be an int64 or int32 tensor (batch, T), got {got}")
    if input_ids.dim() != 2 or input_ids.size(1) < 1:
        raise ValueError(f"input_ids must be (batch, T) with T >= 1, got shape {tuple(input_ids.shape)}")


def next_token_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of logits (batch, T, vocab_size) against the next tokens targets (batch, T)."""
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"logits must be (batch, T, vocab_size) and targets (batch, T), got {tuple(logits.shape)} "
                         f"and {tuple(targets.shape)}")  # fmt: skip
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def gpt_parameter_count(config: GPTConfig) -> int:
    """The number of parameters of ``GPT(config)`` (a tied LM head once), counted on the meta device: no memory."""
    with torch.device("meta"):
        return sum(p.numel() for p in GPT(config).parameters())
