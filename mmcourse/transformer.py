"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017) (chapter 2).

``Seq2SeqTransformer`` = token embeddings (× √d_model) + sinusoidal positions → an ``Encoder`` stack over the
source and a ``Decoder`` stack over the target prefix that cross-attends to the encoder output (the *memory*) →
a linear projection to target-vocabulary logits. ``encode`` and ``decode`` are separate so that generation
(:mod:`mmcourse.generation`) encodes the source once; ``encoder_attention_weights`` / ``decoder_attention_weights``
take the same inputs and return the attention maps. ``attention_mask`` arguments have the Hugging Face meaning:
1 = real token, 0 = padding; when omitted they are derived from ``config.pad_id``. The models check shapes and
dtypes, never the ids' values: ids enter through a tokenizer, which only makes valid ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcourse.attention import causal_mask, padding_mask
from mmcourse.checks import check_dropout, check_int, check_positive_int
from mmcourse.layers import ACTIVATIONS, DecoderLayer, EncoderLayer
from mmcourse.positional import SinusoidalPositionalEncoding


@dataclass(frozen=True)
class TransformerConfig:
    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 128
    n_heads: int = 4
    n_encoder_layers: int = 2
    n_decoder_layers: int = 2
    d_ff: int = 512
    dropout: float = 0.1
    context_length: int = 64  # longest source or target sequence, in tokens
    norm_first: bool = True  # pre-LN (True) or the 2017 post-LN (False)
    share_embeddings: bool = False  # one embedding table for source and target (needs equal vocab sizes)
    tie_output: bool = True  # the output projection reuses the target embedding matrix
    activation: str = "relu"  # "relu" or "gelu"
    final_norm: bool | None = None  # a LayerNorm after each stack; None: the same as norm_first
    pad_id: int = 0

    def __post_init__(self) -> None:
        sizes = ("src_vocab_size", "tgt_vocab_size", "d_model", "n_heads", "d_ff", "context_length")
        for name in (*sizes, "n_encoder_layers", "n_decoder_layers"):
            check_positive_int(name, getattr(self, name))
        for name in ("norm_first", "share_embeddings", "tie_output", "final_norm"):
            if not isinstance(getattr(self, name), bool) and not (name == "final_norm" and self.final_norm is None):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        check_int("pad_id", self.pad_id, minimum=0)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.d_model % 2:
            raise ValueError(f"d_model={self.d_model} must be even: sinusoidal positions use (sin, cos) pairs")
        check_dropout("dropout", self.dropout)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} is not one of {tuple(ACTIVATIONS)}")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(f"share_embeddings=True needs src_vocab_size == tgt_vocab_size, got {self.src_vocab_size} "
                             f"and {self.tgt_vocab_size}")  # fmt: skip
        if self.pad_id >= min(self.src_vocab_size, self.tgt_vocab_size):
            raise ValueError(f"pad_id={self.pad_id} must be in both vocabularies (< src_vocab_size, tgt_vocab_size)")

    @property
    def use_final_norm(self) -> bool:
        """Whether each stack ends in a LayerNorm (``final_norm``, defaulting to ``norm_first``)."""
        return self.norm_first if self.final_norm is None else self.final_norm


class Encoder(nn.Module):
    """A stack of encoder layers (and an optional final LayerNorm) over already-embedded inputs."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(
                config.d_model, config.n_heads, config.d_ff, config.dropout, config.activation, config.norm_first
            )
            for _ in range(config.n_encoder_layers)
        )
        self.norm = nn.LayerNorm(config.d_model) if config.use_final_norm else None

    def forward(
        self, hidden_states: Tensor, mask: Tensor | None = None, need_weights: bool = False
    ) -> tuple[Tensor, list[Tensor] | None]:
        """hidden_states (batch, S, d_model), mask → (batch, n_heads, S, S). Returns (memory, per-layer weights)."""
        all_weights = [] if need_weights else None
        for layer in self.layers:
            hidden_states, attn_weights = layer(hidden_states, mask, need_weights)  # (batch, S, d_model)
            if all_weights is not None:
                all_weights.append(attn_weights)  # (batch, n_heads, S, S)
        if self.norm is not None:
            hidden_states = self.norm(hidden_states)  # (batch, S, d_model)
        return hidden_states, all_weights


class Decoder(nn.Module):
    """A stack of decoder layers (and an optional final LayerNorm) over already-embedded target inputs."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DecoderLayer(
                config.d_model, config.n_heads, config.d_ff, config.dropout, config.activation, config.norm_first
            )
            for _ in range(config.n_decoder_layers)
        )
        self.norm = nn.LayerNorm(config.d_model) if config.use_final_norm else None

    def forward(
        self,
        hidden_states: Tensor,
        memory: Tensor,
        self_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, list[Tensor] | None, list[Tensor] | None]:
        """hidden_states (batch, T, d_model), memory (batch, S, d_model). Returns (hidden_states, self weights,
        cross weights), the weights as per-layer lists when ``need_weights``."""
        self_weights = [] if need_weights else None
        cross_weights = [] if need_weights else None
        for layer in self.layers:
            hidden_states, layer_self, layer_cross = layer(
                hidden_states, memory, self_mask, memory_mask, need_weights
            )  # (batch, T, d_model)
            if need_weights:
                self_weights.append(layer_self)  # (batch, n_heads, T, T)
                cross_weights.append(layer_cross)  # (batch, n_heads, T, S)
        if self.norm is not None:
            hidden_states = self.norm(hidden_states)  # (batch, T, d_model)
        return hidden_states, self_weights, cross_weights


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder Transformer: source ids + target prefix ids → next-target-token logits."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
        self.config = config
        self.src_embedding = nn.Embedding(config.src_vocab_size, config.d_model)
        self.tgt_embedding = (
            self.src_embedding if config.share_embeddings else nn.Embedding(config.tgt_vocab_size, config.d_model)
        )
        self.positional = SinusoidalPositionalEncoding(config.d_model, config.context_length)
        self.dropout = nn.Dropout(config.dropout)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.output_projection = nn.Linear(config.d_model, config.tgt_vocab_size, bias=False)
        self.reset_parameters()
        if config.tie_output:
            self.output_projection.weight = self.tgt_embedding.weight  # one (tgt_vocab_size, d_model) matrix

    def reset_parameters(self) -> None:
        """Xavier-uniform matrices in the stacks (as nn.Transformer); embeddings N(0, 1/d_model), so ×√d_model ≈ 1."""
        for stack in (self.encoder, self.decoder):
            for parameter in stack.parameters():
                if parameter.dim() > 1:
                    nn.init.xavier_uniform_(parameter)
        for embedding in (self.src_embedding, self.tgt_embedding):
            nn.init.normal_(embedding.weight, std=self.config.d_model**-0.5)
        if not self.config.tie_output:
            nn.init.normal_(self.output_projection.weight, std=self.config.d_model**-0.5)

    def _check_ids(self, name: str, ids: Tensor) -> None:
        """Dtype and shape only: the values are the tokenizer's to get right (reading them would sync a GPU)."""
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{name} must be an int64 or int32 tensor of token ids, got {ids.dtype}")
        if ids.dim() != 2 or not 1 <= ids.size(1) <= self.config.context_length:
            raise ValueError(f"{name} must be (batch, length) with 1 <= length <= context_length="
                             f"{self.config.context_length}, got {tuple(ids.shape)}")  # fmt: skip

    def attention_mask_for(self, ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The (batch, length) 1/0 attention mask: ``attention_mask`` checked, or ``ids != pad_id`` when None."""
        if attention_mask is None:
            return (ids != self.config.pad_id).long()  # (batch, length)
        if attention_mask.shape != ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of the ids {tuple(ids.shape)}, got {tuple(attention_mask.shape)}"
            )
        return attention_mask

    def embed(self, ids: Tensor, embedding: nn.Embedding) -> Tensor:
        """Embedding × √d_model + sinusoidal positions, then dropout: (batch, length) → (batch, length, d_model)."""
        hidden_states = embedding(ids) * math.sqrt(self.config.d_model)  # (batch, length, d_model)
        return self.dropout(self.positional(hidden_states))  # (batch, length, d_model)

    def _encode(
        self, src_ids: Tensor, src_attention_mask: Tensor | None, need_weights: bool
    ) -> tuple[Tensor, list[Tensor] | None]:
        self._check_ids("src_ids", src_ids)
        src_attention_mask = self.attention_mask_for(src_ids, src_attention_mask)  # (batch, S)
        hidden_states = self.embed(src_ids, self.src_embedding)  # (batch, S, d_model)
        return self.encoder(hidden_states, padding_mask(src_attention_mask), need_weights)

    def _decode(
        self,
        tgt_ids: Tensor,
        memory: Tensor,
        src_attention_mask: Tensor | None,
        tgt_attention_mask: Tensor | None,
        need_weights: bool,
    ) -> tuple[Tensor, list[Tensor] | None, list[Tensor] | None]:
        self._check_ids("tgt_ids", tgt_ids)
        if memory.dim() != 3 or memory.size(0) != tgt_ids.size(0) or memory.size(-1) != self.config.d_model:
            raise ValueError(
                f"memory must be (batch={tgt_ids.size(0)}, S, d_model={self.config.d_model}), got {tuple(memory.shape)}"
            )
        tgt_attention_mask = self.attention_mask_for(tgt_ids, tgt_attention_mask)  # (batch, T)
        causal = causal_mask(tgt_ids.size(1), device=tgt_ids.device)  # (T, T)
        self_mask = causal & padding_mask(tgt_attention_mask)  # (batch, 1, T, T): causal AND real keys
        memory_mask = None
        if src_attention_mask is not None:
            if src_attention_mask.shape != memory.shape[:2]:
                raise ValueError(f"src_attention_mask must be (batch, S) = {tuple(memory.shape[:2])}, got "
                                 f"{tuple(src_attention_mask.shape)}")  # fmt: skip
            memory_mask = padding_mask(src_attention_mask)  # (batch, 1, 1, S)
        hidden_states = self.embed(tgt_ids, self.tgt_embedding)  # (batch, T, d_model)
        return self.decoder(hidden_states, memory, self_mask, memory_mask, need_weights)

    def encode(self, src_ids: Tensor, src_attention_mask: Tensor | None = None) -> Tensor:
        """src_ids (batch, S) → memory (batch, S, d_model)."""
        memory, _ = self._encode(src_ids, src_attention_mask, need_weights=False)
        return memory

    def decode(
        self,
        tgt_ids: Tensor,
        memory: Tensor,
        src_attention_mask: Tensor | None = None,
        tgt_attention_mask: Tensor | None = None,
    ) -> Tensor:
        """tgt_ids (batch, T), memory (batch, S, d_model) → logits (batch, T, tgt_vocab_size).

        ``src_attention_mask`` (batch, S) hides padded memory positions; None attends to every position, so pass
        the mask that ``encode`` used.
        """
        hidden_states, _, _ = self._decode(tgt_ids, memory, src_attention_mask, tgt_attention_mask, False)
        return self.output_projection(hidden_states)  # (batch, T, tgt_vocab_size)

    def forward(
        self,
        src_ids: Tensor,
        tgt_ids: Tensor,
        src_attention_mask: Tensor | None = None,
        tgt_attention_mask: Tensor | None = None,
    ) -> Tensor:
        """Teacher forcing: src_ids (batch, S), tgt_ids (batch, T) → logits (batch, T, tgt_vocab_size)."""
        src_attention_mask = self.attention_mask_for(src_ids, src_attention_mask)
        memory = self.encode(src_ids, src_attention_mask)  # (batch, S, d_model)
        return self.decode(tgt_ids, memory, src_attention_mask, tgt_attention_mask)  # (batch, T, tgt_vocab_size)

    def encoder_attention_weights(self, src_ids: Tensor, src_attention_mask: Tensor | None = None) -> Tensor:
        """``encode``'s self-attention weights, stacked: (n_encoder_layers, batch, n_heads, S, S)."""
        _, weights = self._encode(src_ids, src_attention_mask, need_weights=True)
        return torch.stack(weights)

    def decoder_attention_weights(
        self,
        tgt_ids: Tensor,
        memory: Tensor,
        src_attention_mask: Tensor | None = None,
        tgt_attention_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """``decode``'s (self-attention, cross-attention) weights, stacked: (n_decoder_layers, batch, n_heads, T, T)
        and (n_decoder_layers, batch, n_heads, T, S)."""
        _, self_weights, cross_weights = self._decode(tgt_ids, memory, src_attention_mask, tgt_attention_mask, True)
        return torch.stack(self_weights), torch.stack(cross_weights)


def sequence_loss(logits: Tensor, labels: Tensor, pad_id: int = 0, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy over the non-pad labels. logits (batch, T, vocab_size), labels (batch, T)."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"logits must be (batch, T, vocab_size) and labels (batch, T), got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    return F.cross_entropy(
        logits.flatten(0, 1), labels.flatten(), ignore_index=pad_id, label_smoothing=label_smoothing
    )  # pads are ignored, not counted in the mean


def warmup_inverse_sqrt(step: int, d_model: int, warmup: int) -> float:
    """The 2017 learning rate d_model^-0.5 · min(step^-0.5, step · warmup^-1.5), ``step`` counted from 1.

    It rises linearly for ``warmup`` steps, peaks at step == warmup, then decays as 1/√step. With
    :func:`mmcourse.train.train` (0-based steps) use ``lr_lambda=lambda s: warmup_inverse_sqrt(s + 1, d_model,
    warmup)`` and ``learning_rate=1.0`` (or a scale factor).
    """
    for name, value in (("step", step), ("d_model", d_model), ("warmup", warmup)):
        check_positive_int(name, value)
    return d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)
