"""Attention: scaled dot-product attention, masks and multi-head attention (chapter 1).

Masks are boolean and mean "may attend": ``True`` where a query may look at a key. They broadcast against the
attention scores ``(batch, n_heads, L, S)`` (L queries, S keys). A query whose keys are *all* masked (a padded
query row) gets all-zero attention weights and a zero output: no NaN in the forward or the backward pass.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcourse.checks import check_dropout, check_positive_int


def causal_mask(length: int, device: torch.device | str | None = None) -> Tensor:
    """(length, length) boolean mask, True on and below the diagonal: position i may attend to j <= i."""
    check_positive_int("length", length)
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def padding_mask(attention_mask: Tensor) -> Tensor:
    """Key mask (batch, 1, 1, S) from a Hugging Face ``attention_mask`` (batch, S) with 1 = real token, 0 = pad."""
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (batch, S), got shape {tuple(attention_mask.shape)}")
    return attention_mask.bool()[:, None, None, :]  # (batch, 1, 1, S)


def _shapes(q: Tensor, k: Tensor, v: Tensor) -> str:
    return f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> None:
    """Shapes only (no data is read): q (…, L, d_k), k (…, S, d_k), v (…, S, d_v), mask broadcasting to (…, L, S)."""
    if q.dim() < 2 or not q.shape[:-2] == k.shape[:-2] == v.shape[:-2]:
        raise ValueError(f"q, k, v must have >= 2 dimensions and share the leading ones, got {_shapes(q, k, v)}")
    if q.size(-1) != k.size(-1):
        raise ValueError(f"q and k must have the same last dimension, got {_shapes(q, k, v)}")
    if k.size(-2) != v.size(-2):
        raise ValueError(f"k and v must have the same number of positions, got {_shapes(q, k, v)}")
    if mask is None:
        return
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a boolean tensor (True = may attend), got dtype {mask.dtype}")
    scores_shape = (*q.shape[:-1], k.size(-2))  # (…, L, S)
    if mask.dim() > len(scores_shape) or any(
        size not in (1, wanted) for size, wanted in zip(reversed(mask.shape), reversed(scores_shape), strict=False)
    ):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the attention scores {scores_shape}")


def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, dropout: float = 0.0
) -> tuple[Tensor, Tensor]:
    """softmax(q kᵀ / √d_k) v, written out. ``mask``: True where attention is allowed. Returns (output, attn_weights).

    q: (…, L, d_k), k: (…, S, d_k), v: (…, S, d_v) → output (…, L, d_v), attn_weights (…, L, S).
    """
    _check_inputs(q, k, v, mask)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (…, L, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # -inf, not -1e4: exact in every dtype
        has_key = mask.any(dim=-1, keepdim=True)  # (…, L, 1) False for a fully masked query row
        scores = scores.masked_fill(~has_key, 0.0)  # such a row would be all -inf → NaN: give it finite scores …
    attn_weights = scores.softmax(dim=-1)  # (…, L, S), rows sum to 1
    if mask is not None:
        attn_weights = attn_weights.masked_fill(~has_key, 0.0)  # … then zero weight: it attends to nothing
    if dropout > 0.0:
        attn_weights = F.dropout(attn_weights, p=dropout)
    return attn_weights @ v, attn_weights  # (…, L, d_v), (…, L, S)


def fused_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, dropout: float = 0.0) -> Tensor:
    """The same as :func:`scaled_dot_product_attention` with torch's fused kernel; no weights returned."""
    _check_inputs(q, k, v, mask)
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    has_key = mask.any(dim=-1, keepdim=True)  # (…, L, 1)
    output = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | ~has_key, dropout_p=dropout)
    return output.masked_fill(~has_key, 0.0)  # a query with no key to look at outputs zeros, as above


class MultiHeadAttention(nn.Module):
    """Multi-head attention: project, split into heads, attend, merge, project (Vaswani et al., 2017).

    ``forward(query, key, value)`` with (batch, L, d_model) / (batch, S, d_model) inputs; ``key`` and ``value``
    default to ``query`` (self-attention). It always returns (output, attn_weights): the fused torch kernel runs
    and attn_weights is None, unless ``need_weights=True``, when the explicit version runs and the per-head
    weights (batch, n_heads, L, S) come back.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("n_heads", n_heads)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        check_dropout("dropout", dropout)
        self.d_model, self.n_heads, self.head_dim, self.dropout = d_model, n_heads, d_model // n_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def split_heads(self, x: Tensor) -> Tensor:
        """(batch, length, d_model) → (batch, n_heads, length, head_dim)."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)

    def merge_heads(self, x: Tensor) -> Tensor:
        """(batch, n_heads, length, head_dim) → (batch, length, d_model)."""
        batch, _, length, _ = x.shape
        return x.transpose(1, 2).reshape(batch, length, self.d_model)

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        mask: Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Returns (output (batch, L, d_model), attn_weights (batch, n_heads, L, S) or None)."""
        key = query if key is None else key
        value = key if value is None else value
        for name, tensor in (("query", query), ("key", key), ("value", value)):
            if tensor.dim() != 3 or tensor.size(-1) != self.d_model:
                raise ValueError(f"{name} must be (batch, length, d_model={self.d_model}), got {tuple(tensor.shape)}")
        if key.shape[:2] != value.shape[:2] or key.size(0) != query.size(0):
            raise ValueError(
                f"query, key, value must share the batch size and key/value the length, got query "
                f"{tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}"
            )
        q = self.split_heads(self.q_proj(query))  # (batch, n_heads, L, head_dim)
        k = self.split_heads(self.k_proj(key))  # (batch, n_heads, S, head_dim)
        v = self.split_heads(self.v_proj(value))  # (batch, n_heads, S, head_dim)
        dropout = self.dropout if self.training else 0.0
        if need_weights:
            context, attn_weights = scaled_dot_product_attention(q, k, v, mask, dropout)
        else:
            context, attn_weights = fused_attention(q, k, v, mask, dropout), None
        return self.out_proj(self.merge_heads(context)), attn_weights  # (batch, L, d_model)


def mha_parameter_count(d_model: int, bias: bool = True) -> int:
    """Parameters of a multi-head attention layer: four d_model×d_model projections (+ four biases).

    The number of heads does not appear: heads split d_model, they do not add weights.
    """
    return 4 * d_model * d_model + (4 * d_model if bias else 0)


ATTENTION_PATTERNS = ("previous token", "same token", "next token", "first token", "last token")


def attention_pattern_scores(attn_weights: Tensor) -> dict[str, Tensor]:
    """How much each head follows simple patterns: the mean weight a query gives to its previous / own / next
    position, to the first position ([CLS]) and to the last one ([SEP]).

    attn_weights: (layers, heads, L, L) for one unpadded sequence. Returns {pattern: (layers, heads)}; 1.0 means
    every query puts all its weight there.
    """
    if attn_weights.dim() != 4 or attn_weights.size(-1) != attn_weights.size(-2) or attn_weights.size(-1) < 2:
        raise ValueError(f"attn_weights must be (layers, heads, L, L) with L >= 2, got {tuple(attn_weights.shape)}")
    return {
        "previous token": attn_weights.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1),  # weight[i, i-1]
        "same token": attn_weights.diagonal(dim1=-2, dim2=-1).mean(-1),  # weight[i, i]
        "next token": attn_weights.diagonal(offset=1, dim1=-2, dim2=-1).mean(-1),  # weight[i, i+1]
        "first token": attn_weights[..., 0].mean(-1),  # weight[i, 0]
        "last token": attn_weights[..., -1].mean(-1),  # weight[i, L-1]
    }
