"""Generating sequences from a trained model: greedy decoding and beam search (chapter 2).

The functions work with any encoder-decoder ``model`` that has ``encode(src_ids, src_attention_mask)`` → memory
and ``decode(tgt_ids, memory, src_attention_mask, tgt_attention_mask)`` → logits (batch, T, vocab_size), such
as :class:`mmcourse.transformer.Seq2SeqTransformer`. Returned sequences hold the generated tokens only (no BOS),
EOS included, and ``pad_id`` after a sequence's EOS. Each step re-runs the decoder on the whole prefix, every
generated token unmasked: simple, and cheap for short outputs (a KV cache would avoid the repeated work).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block in eval mode without gradients, then restore the model's training flag."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def _resolve_pad_id(model: nn.Module, pad_id: int | None) -> int:
    if pad_id is not None:
        return pad_id
    config = getattr(model, "config", None)
    return getattr(config, "pad_id", 0)


def _check_generation_args(src_ids: Tensor, bos_id: int, eos_id: int, max_length: int) -> None:
    if src_ids.dim() != 2:
        raise ValueError(f"src_ids must be (batch, S), got shape {tuple(src_ids.shape)}")
    for name, value in (("bos_id", bos_id), ("eos_id", eos_id)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")


def greedy_decode(
    model: nn.Module,
    src_ids: Tensor,
    bos_id: int,
    eos_id: int,
    max_length: int,
    src_attention_mask: Tensor | None = None,
    pad_id: int | None = None,
) -> Tensor:
    """The most likely next token at every step. Returns (batch, ≤ max_length) generated ids, pad after EOS.

    Stops as soon as every sequence has produced EOS. ``pad_id`` defaults to ``model.config.pad_id`` (else 0);
    ``src_attention_mask`` (1 = real token) defaults to ``src_ids != pad_id``.
    """
    _check_generation_args(src_ids, bos_id, eos_id, max_length)
    pad_id = _resolve_pad_id(model, pad_id)
    if src_attention_mask is None:
        src_attention_mask = (src_ids != pad_id).long()  # (batch, S)
    batch = src_ids.size(0)
    with evaluating(model):
        memory = model.encode(src_ids, src_attention_mask)  # (batch, S, d_model)
        tokens = torch.full((batch, 1), bos_id, dtype=torch.long, device=src_ids.device)  # (batch, 1)
        finished = torch.zeros(batch, dtype=torch.bool, device=src_ids.device)  # (batch,)
        for _ in range(max_length):
            logits = model.decode(tokens, memory, src_attention_mask, torch.ones_like(tokens))  # (batch, t, vocab_size)
            next_token = logits[:, -1].argmax(dim=-1)  # (batch,)
            next_token = next_token.masked_fill(finished, pad_id)  # finished sequences only grow padding
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)  # (batch, t + 1)
            finished |= next_token == eos_id
            if finished.all():
                break
    return tokens[:, 1:]  # (batch, ≤ max_length), BOS dropped


def gnmt_length_penalty(length: Tensor, alpha: float) -> Tensor:
    """GNMT length penalty ((5 + length) / 6)^alpha (Wu et al., 2016); alpha = 0 turns it off."""
    return ((5.0 + length.float()) / 6.0) ** alpha


def beam_search(
    model: nn.Module,
    src_ids: Tensor,
    bos_id: int,
    eos_id: int,
    max_length: int,
    beam_size: int = 4,
    length_penalty: float = 0.6,
    src_attention_mask: Tensor | None = None,
    pad_id: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Keep the ``beam_size`` best prefixes at every step. Returns (sequences (batch, beam_size, ≤ max_length),
    scores (batch, beam_size)), best first.

    A score is the sequence's total log-probability (EOS included) divided by the GNMT length penalty
    ((5 + length) / 6)^length_penalty. Candidates are ranked by that score; a finished beam keeps its place (extended by
    pad at no cost) until better candidates push it out. ``beam_size=1`` is greedy decoding.
    """
    _check_generation_args(src_ids, bos_id, eos_id, max_length)
    if not isinstance(beam_size, int) or isinstance(beam_size, bool) or beam_size < 1:
        raise ValueError(f"beam_size must be a positive int, got {beam_size!r}")
    if not length_penalty >= 0:
        raise ValueError(f"length_penalty must be >= 0, got {length_penalty!r}")
    pad_id = _resolve_pad_id(model, pad_id)
    if src_attention_mask is None:
        src_attention_mask = (src_ids != pad_id).long()  # (batch, S)
    batch, device = src_ids.size(0), src_ids.device
    with evaluating(model):
        memory = model.encode(src_ids, src_attention_mask)  # (batch, S, d_model)
        memory = memory.repeat_interleave(beam_size, dim=0)  # (batch·beam, S, d_model)
        beam_mask = src_attention_mask.repeat_interleave(beam_size, dim=0)  # (batch·beam, S)
        tokens = torch.full((batch * beam_size, 1), bos_id, dtype=torch.long, device=device)  # (batch·beam, 1)
        scores = torch.full((batch, beam_size), float("-inf"), device=device)  # (batch, beam) total log-prob
        scores[:, 0] = 0.0  # all beams start identical: expand only the first one
        lengths = torch.zeros(batch, beam_size, dtype=torch.long, device=device)  # (batch, beam)
        finished = torch.zeros(batch, beam_size, dtype=torch.bool, device=device)  # (batch, beam)
        for _ in range(max_length):
            logits = model.decode(tokens, memory, beam_mask, torch.ones_like(tokens))[:, -1]  # (batch·beam, vocab_size)
            vocab_size = logits.size(-1)
            log_probs = logits.float().log_softmax(dim=-1).view(batch, beam_size, vocab_size)  # (batch, beam, V)
            pad_only = torch.full((vocab_size,), float("-inf"), device=device)
            pad_only[pad_id] = 0.0  # a finished beam's one continuation: pad, free
            log_probs = torch.where(finished[..., None], pad_only, log_probs)  # (batch, beam, V)
            candidate_scores = scores[..., None] + log_probs  # (batch, beam, V)
            candidate_lengths = lengths + (~finished).long()  # (batch, beam)
            normalized = candidate_scores / gnmt_length_penalty(candidate_lengths, length_penalty)[..., None]
            best = normalized.view(batch, -1).topk(beam_size, dim=-1).indices  # (batch, beam) into beam·V
            source_beam, next_token = best // vocab_size, best % vocab_size  # (batch, beam), (batch, beam)
            scores = candidate_scores.view(batch, -1).gather(1, best)  # (batch, beam)
            lengths = candidate_lengths.gather(1, source_beam)  # (batch, beam)
            finished = finished.gather(1, source_beam) | (next_token == eos_id)  # (batch, beam)
            prefix = tokens.view(batch, beam_size, -1)  # (batch, beam, t)
            prefix = prefix.gather(1, source_beam[..., None].expand_as(prefix))  # (batch, beam, t) reordered
            tokens = torch.cat([prefix, next_token[..., None]], dim=-1).view(batch * beam_size, -1)  # (batch·beam, t+1)
            if finished.all():
                break
        final_scores = scores / gnmt_length_penalty(lengths, length_penalty)  # (batch, beam)
        final_scores, order = final_scores.sort(dim=-1, descending=True)  # (batch, beam), best first
        sequences = tokens.view(batch, beam_size, -1)[:, :, 1:]  # (batch, beam, ≤ max_length), BOS dropped
        sequences = sequences.gather(1, order[..., None].expand_as(sequences))  # (batch, beam, ≤ max_length)
    return sequences, final_scores


def sequence_log_probability(
    model: nn.Module,
    src_ids: Tensor,
    sequences: Tensor,
    bos_id: int,
    eos_id: int,
    src_attention_mask: Tensor | None = None,
    pad_id: int | None = None,
) -> Tensor:
    """Total log-probability (batch,) of generated ``sequences`` (batch, T) (no BOS), up to and including EOS."""
    if sequences.dim() != 2 or sequences.size(0) != src_ids.size(0):
        raise ValueError(f"sequences must be (batch={src_ids.size(0)}, T), got shape {tuple(sequences.shape)}")
    pad_id = _resolve_pad_id(model, pad_id)
    if src_attention_mask is None:
        src_attention_mask = (src_ids != pad_id).long()  # (batch, S)
    bos = torch.full((sequences.size(0), 1), bos_id, dtype=torch.long, device=sequences.device)  # (batch, 1)
    with evaluating(model):
        memory = model.encode(src_ids, src_attention_mask)  # (batch, S, d_model)
        tgt_ids = torch.cat([bos, sequences], dim=1)[:, :-1]  # (batch, T) decoder inputs
        tgt_attention_mask = torch.ones_like(tgt_ids)  # every prefix token counts, even a pad id
        logits = model.decode(tgt_ids, memory, src_attention_mask, tgt_attention_mask)  # (batch, T, V)
        token_log_probs = logits.float().log_softmax(dim=-1).gather(-1, sequences[..., None])[..., 0]  # (batch, T)
    is_eos = (sequences == eos_id).long()  # (batch, T)
    after_eos = (is_eos.cumsum(dim=1) - is_eos) > 0  # (batch, T) positions past the first EOS
    return token_log_probs.masked_fill(after_eos, 0.0).sum(dim=1)  # (batch,)
