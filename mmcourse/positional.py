"""Positional information: sinusoidal encodings, learned embeddings and rotary embeddings (RoPE) (chapter 1).

Attention alone is permutation-equivariant: shuffle the tokens and the outputs shuffle the same way. These
modules give each position an identity. The rotary code follows the Hugging Face Llama convention
(``rotate_half`` on the two halves of a head), so real Llama-family weights work with it unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmcourse.checks import check_positive_int


def _even(name: str, value: int) -> None:
    check_positive_int(name, value)
    if value % 2:
        raise ValueError(f"{name}={value} must be even: positions use (sin, cos) pairs")


def sinusoidal_frequencies(d_model: int, base: float = 10000.0) -> Tensor:
    """(d_model/2,) angular frequencies ω_i = base^(-2i/d_model), i = 0 … d_model/2 - 1."""
    _even("d_model", d_model)
    return base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)


def sinusoidal_encoding(length: int, d_model: int, base: float = 10000.0, offset: int = 0) -> Tensor:
    """(length, d_model): PE[pos, 2i] = sin(pos·ω_i), PE[pos, 2i+1] = cos(pos·ω_i) for pos = offset, offset + 1, …"""
    check_positive_int("length", length)
    angles = torch.arange(offset, offset + length, dtype=torch.float64)[:, None] * sinusoidal_frequencies(d_model, base)
    encoding = torch.empty(length, d_model, dtype=torch.float64)  # (length, d_model)
    encoding[:, 0::2] = angles.sin()
    encoding[:, 1::2] = angles.cos()
    return encoding.float()


def sinusoidal_shift(offset: int, d_model: int, base: float = 10000.0) -> Tensor:
    """(d_model, d_model) matrix M with PE(pos + offset) = M @ PE(pos) for every pos: a rotation per (sin, cos) pair."""
    angles = offset * sinusoidal_frequencies(d_model, base)  # (d_model/2,)
    cos, sin = angles.cos(), angles.sin()
    shift = torch.zeros(d_model, d_model, dtype=torch.float64)
    index = torch.arange(0, d_model, 2)
    shift[index, index], shift[index, index + 1] = cos, sin  # sin(a+b) = sin a cos b + cos a sin b
    shift[index + 1, index], shift[index + 1, index + 1] = -sin, cos  # cos(a+b) = cos a cos b - sin a sin b
    return shift.float()


class SinusoidalPositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal encoding to (batch, length, d_model) inputs; nothing is learned."""

    def __init__(self, d_model: int, context_length: int = 4096, base: float = 10000.0) -> None:
        super().__init__()
        _even("d_model", d_model)
        check_positive_int("context_length", context_length)
        self.d_model, self.context_length = d_model, context_length
        self.register_buffer("encoding", sinusoidal_encoding(context_length, d_model, base), persistent=False)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        """x + PE[offset : offset + length]; ``offset`` lets a decoder add positions one step at a time."""
        if x.dim() != 3 or x.size(-1) != self.d_model:
            raise ValueError(f"x must be (batch, length, d_model={self.d_model}), got {tuple(x.shape)}")
        if offset < 0 or offset + x.size(1) > self.context_length:
            raise ValueError(f"positions {offset}…{offset + x.size(1) - 1} exceed context_length={self.context_length}")
        return x + self.encoding[offset : offset + x.size(1)].to(x.dtype)  # (batch, length, d_model)


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) → (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each (x_i, x_{i+d/2}) pair of x (…, length, head_dim) by the angle whose cos/sin are given."""
    if cos.shape != sin.shape or cos.size(-1) != x.size(-1) or cos.size(-2) != x.size(-2):
        raise ValueError(
            f"cos/sin of shape {tuple(cos.shape)} / {tuple(sin.shape)} do not match x {tuple(x.shape)} "
            "(…, length, head_dim)"
        )
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE, Su et al.): rotates queries and keys; q·k then depends on m - n only."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        _even("head_dim", head_dim)
        self.head_dim = head_dim
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (head_dim/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """(cos, sin), each (…, length, head_dim), for integer ``positions`` (…, length)."""
        angles = positions.to(self.inv_freq.dtype)[..., None] * self.inv_freq  # (…, length, head_dim/2)
        angles = torch.cat((angles, angles), dim=-1)  # (…, length, head_dim): pairs (i, i + head_dim/2)
        return angles.cos(), angles.sin()

    def rotate(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """x (…, length, head_dim) rotated by its positions (default 0 … length-1)."""
        if x.size(-1) != self.head_dim:
            raise ValueError(f"x must end in head_dim={self.head_dim}, got {tuple(x.shape)}")
        if positions is None:
            positions = torch.arange(x.size(-2), device=x.device)
        cos, sin = self(positions)
        return apply_rotary(x, cos.to(x.dtype), sin.to(x.dtype))
