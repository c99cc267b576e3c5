"""Transformer layers: the position-wise feed-forward network and the encoder and decoder layers (chapter 2).

Each layer wraps its sub-layers (attention, feed-forward) in a residual connection and a LayerNorm, either
*post-LN* (``norm_first=False``, the 2017 paper: ``x = norm(x + sublayer(x))``) or *pre-LN*
(``norm_first=True``: ``x = x + sublayer(norm(x))``, easier to train deep). Masks are boolean, True = may attend,
and broadcast to (batch, n_heads, L, S) as in :mod:`mmcourse.attention`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from mmcourse.attention import MultiHeadAttention
from mmcourse.checks import check_dropout, check_positive_int

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": F.relu, "gelu": F.gelu}


def _check_sizes(
    d_model: int, n_heads: int, d_ff: int, dropout: float, activation: str, norm_eps: float = 1e-5
) -> None:
    for name, value in (("d_model", d_model), ("n_heads", n_heads), ("d_ff", d_ff)):
        check_positive_int(name, value)
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
    check_dropout("dropout", dropout)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not one of {tuple(ACTIVATIONS)}")
    if not norm_eps > 0:
        raise ValueError(f"norm_eps must be > 0, got {norm_eps!r}")


def _check_states(name: str, x: Tensor, d_model: int, batch: int | None = None) -> None:
    """ValueError unless ``x`` is (batch, length, d_model), with ``batch`` rows when given (shapes only)."""
    if x.dim() != 3 or x.size(-1) != d_model or batch not in (None, x.size(0)):
        rows = "batch" if batch is None else f"batch={batch}"
        raise ValueError(f"{name} must be ({rows}, length, d_model={d_model}), got {tuple(x.shape)}")


class FeedForward(nn.Module):
    """Position-wise feed-forward network: linear1 → activation → dropout → linear2, applied to every token alone."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0, activation: str = "relu") -> None:
        super().__init__()
        _check_sizes(d_model, 1, d_ff, dropout, activation)
        self.activation_name = activation
        self.activation = ACTIVATIONS[activation]
        self.linear1 = nn.Linear(d_model, d_ff)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        """(batch, length, d_model) → (batch, length, d_model)."""
        hidden_states = self.activation(self.linear1(x))  # (batch, length, d_ff)
        return self.linear2(self.dropout(hidden_states))  # (batch, length, d_model)


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each with residual, dropout and LayerNorm (post-LN or pre-LN)."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.0,
        activation: str = "relu",
        norm_first: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        _check_sizes(d_model, n_heads, d_ff, dropout, activation, norm_eps)
        self.d_model, self.norm_first = d_model, norm_first
        self.self_attention = MultiHeadAttention(d_model, n_heads, dropout)
        self.feed_forward = FeedForward(d_model, d_ff, dropout, activation)
        self.norm1 = nn.LayerNorm(d_model, eps=norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=norm_eps)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, mask: Tensor | None = None, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """x (batch, L, d_model), mask broadcastable to (batch, n_heads, L, L). Returns (x, attn_weights or None)."""
        _check_states("x", x, self.d_model)
        if self.norm_first:
            attended, attn_weights = self.self_attention(self.norm1(x), mask=mask, need_weights=need_weights)
            x = x + self.dropout1(attended)  # (batch, L, d_model)
            x = x + self.dropout2(self.feed_forward(self.norm2(x)))  # (batch, L, d_model)
        else:
            attended, attn_weights = self.self_attention(x, mask=mask, need_weights=need_weights)
            x = self.norm1(x + self.dropout1(attended))  # (batch, L, d_model)
            x = self.norm2(x + self.dropout2(self.feed_forward(x)))  # (batch, L, d_model)
        return x, attn_weights


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention over the encoder output, feed-forward; residual + LayerNorm each."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.0,
        activation: str = "relu",
        norm_first: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        _check_sizes(d_model, n_heads, d_ff, dropout, activation, norm_eps)
        self.d_model, self.norm_first = d_model, norm_first
        self.self_attention = MultiHeadAttention(d_model, n_heads, dropout)
        self.cross_attention = MultiHeadAttention(d_model, n_heads, dropout)
        self.feed_forward = FeedForward(d_model, d_ff, dropout, activation)
        self.norm1 = nn.LayerNorm(d_model, eps=norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=norm_eps)
        self.norm3 = nn.LayerNorm(d_model, eps=norm_eps)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        memory: Tensor,
        self_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """x (batch, T, d_model), memory (batch, S, d_model); self_mask → (batch, n_heads, T, T), memory_mask →
        (batch, n_heads, T, S). Returns (x, self attn_weights or None, cross attn_weights or None)."""
        _check_states("x", x, self.d_model)
        _check_states("memory", memory, self.d_model, batch=x.size(0))
        if self.norm_first:
            attended, self_weights = self.self_attention(self.norm1(x), mask=self_mask, need_weights=need_weights)
            x = x + self.dropout1(attended)  # (batch, T, d_model)
            attended, cross_weights = self.cross_attention(
                self.norm2(x), memory, memory, mask=memory_mask, need_weights=need_weights
            )
            x = x + self.dropout2(attended)  # (batch, T, d_model)
            x = x + self.dropout3(self.feed_forward(self.norm3(x)))  # (batch, T, d_model)
        else:
            attended, self_weights = self.self_attention(x, mask=self_mask, need_weights=need_weights)
            x = self.norm1(x + self.dropout1(attended))  # (batch, T, d_model)
            attended, cross_weights = self.cross_attention(
                x, memory, memory, mask=memory_mask, need_weights=need_weights
            )
            x = self.norm2(x + self.dropout2(attended))  # (batch, T, d_model)
            x = self.norm3(x + self.dropout3(self.feed_forward(x)))  # (batch, T, d_model)
        return x, self_weights, cross_weights
