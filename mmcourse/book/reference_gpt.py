"""A minimal GPT in plain torch, written for ``make bench`` only: the yardstick for the book's GPT.

It has the shape of the fastest small implementations — one fused query/key/value projection, no biases, torch's
fused causal attention kernel, a tied LM head, no input checks, no dropout modules — and nothing else: no KV cache,
no rotary option, no attention weights. ``make bench``'s ``reference`` section trains it beside
``mmcourse.gpt.GPT`` at the same sizes and reports both throughputs. It is not part of the teaching core.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcourse.checks import check_positive_int


class MinimalBlock(nn.Module):
    """Pre-LN block: x + attention(LayerNorm(x)), then x + MLP(LayerNorm(x)); every layer without a bias."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(d_model, bias=False)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.norm2 = nn.LayerNorm(d_model, bias=False)
        self.up = nn.Linear(d_model, 4 * d_model, bias=False)
        self.down = nn.Linear(4 * d_model, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, d_model = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(d_model, dim=-1)  # (batch, L, d_model) each
        q, k, v = (t.view(batch, length, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))  # (batch, h, L, hd)
        context = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (batch, h, L, hd)
        x = x + self.out(context.transpose(1, 2).reshape(batch, length, d_model))  # (batch, L, d_model)
        return x + self.down(F.gelu(self.up(self.norm2(x))))  # (batch, L, d_model)


class MinimalGPT(nn.Module):
    """Token + learned position embeddings → pre-LN blocks → LayerNorm → the token embedding's transpose."""

    def __init__(self, vocab_size: int, context_length: int, d_model: int, n_heads: int, n_layers: int) -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("context_length", context_length), ("d_model", d_model),
                            ("n_heads", n_heads), ("n_layers", n_layers)):  # fmt: skip
            check_positive_int(name, value)
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(context_length, d_model)
        self.blocks = nn.ModuleList(MinimalBlock(d_model, n_heads) for _ in range(n_layers))
        self.final_norm = nn.LayerNorm(d_model, bias=False)
        for parameter in self.parameters():
            if parameter.dim() == 2:
                nn.init.normal_(parameter, std=0.02)

    def forward(self, input_ids: Tensor) -> Tensor:
        """input_ids (batch, T) → logits (batch, T, vocab_size)."""
        positions = torch.arange(input_ids.size(1), device=input_ids.device)  # (T,)
        x = self.token_embedding(input_ids) + self.position_embedding(positions)  # (batch, T, d_model)
        for block in self.blocks:
            x = block(x)  # (batch, T, d_model)
        return self.final_norm(x) @ self.token_embedding.weight.T  # (batch, T, vocab_size)
