"""Generating sequences from a trained model: greedy decoding and beam search (chapter 2).

The functions work with any encoder-decoder ``model`` that has ``encode(src_ids, src_attention_mask)`` → memory
and ``decode(tgt_ids, memory, src_attention_mask, tgt_attention_mask)`` → logits (batch, T, vocab_size), such
as :class:`mmcourse.transformer.Seq2SeqTransformer`. Returned sequences hold the generated tokens only (no BOS),
EOS included, and ``pad_id`` after a sequence's EOS. Each step re-runs the decoder on the whole prefix, every
generated token unmasked: simple, and cheap for short outputs (a KV cache would avoid the repeated work).

For decoder-only language models (:class:`mmcourse.gpt.GPT`, chapter 4) there is sampling: ``top_k_filter``,
``top_p_filter``, ``apply_repetition_penalty`` and ``sample_next_token`` work on next-token logits
(batch, vocab_size); ``generate`` extends a prompt token by token, by default with a :class:`KVCache` that keeps
the keys and values of the tokens seen so far.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from mmcourse.checks import check_finite_number, check_int, check_positive_int, check_token_ids

GREEDY_TEMPERATURE = 1e-6  # sampling below this temperature is greedy: logits / temperature could overflow float32


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


def _check_generation_args(
    src_ids: Tensor, bos_id: int, eos_id: int, max_length: int, src_attention_mask: Tensor | None
) -> None:
    """src_ids: token ids (batch, S), or any source the model's ``encode`` takes (images (batch, C, H, W), …) when
    ``src_attention_mask`` (batch, S) is given, since a mask can only be read off token ids."""
    if src_ids.dim() < 2 or (src_ids.dim() != 2 and src_attention_mask is None):
        raise ValueError(
            f"src_ids must be (batch, S) token ids, or a (batch, ...) source with src_attention_mask given; got shape "
            f"{tuple(src_ids.shape)}"
        )
    for name, value in (("bos_id", bos_id), ("eos_id", eos_id)):
        check_int(name, value, minimum=0)
    check_positive_int("max_length", max_length)


def _check_source_ids(model: nn.Module, src_ids: Tensor) -> None:
    """Token ids from outside, checked once per call (not per generated token) against the model's source vocabulary;
    a source of images or features has no ids to check."""
    vocab_size = getattr(getattr(model, "config", None), "src_vocab_size", None)
    if src_ids.dim() == 2 and vocab_size is not None:
        check_token_ids("src_ids", src_ids, vocab_size, "src_vocab_size")


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
    _check_generation_args(src_ids, bos_id, eos_id, max_length, src_attention_mask)
    _check_source_ids(model, src_ids)
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
    _check_generation_args(src_ids, bos_id, eos_id, max_length, src_attention_mask)
    _check_source_ids(model, src_ids)
    check_positive_int("beam_size", beam_size)
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


# ---------------------------------------------------------------------------------------------------------------
# Sampling from a decoder-only language model (chapter 4)
# ---------------------------------------------------------------------------------------------------------------


class KVCache:
    """Keys and values of the tokens seen so far: one (k, v) pair per layer, each (batch, n_kv_heads, length,
    head_dim), keys already rotated. Each forward pass appends its new positions."""

    def __init__(self, n_layers: int) -> None:
        check_positive_int("n_layers", n_layers)
        self.layers: list[tuple[Tensor, Tensor] | None] = [None] * n_layers

    @property
    def length(self) -> int:
        """Number of cached positions (the same in every layer between forward passes)."""
        return 0 if self.layers[0] is None else self.layers[0][0].size(-2)

    def update(self, layer_index: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append new k, v (batch, n_kv_heads, new, head_dim) to layer ``layer_index``; return all its k, v."""
        past = self.layers[layer_index]
        if past is not None:
            k = torch.cat([past[0], k], dim=-2)  # (batch, n_kv_heads, past + new, head_dim)
            v = torch.cat([past[1], v], dim=-2)  # (batch, n_kv_heads, past + new, head_dim)
        self.layers[layer_index] = (k, v)
        return k, v


def _check_logits(logits: Tensor) -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a float tensor (batch, vocab_size), got {shape}")


def _check_sampling(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> None:
    """temperature a finite number >= 0, top_k None or an int >= 1, top_p None or a number in (0, 1]: TypeError
    for another type (a bool is not a number), ValueError for another value."""
    check_finite_number("temperature", temperature)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None:
        check_positive_int("top_k", top_k)
    if top_p is not None:
        check_finite_number("top_p", top_p)
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def top_k_filter(logits: Tensor, top_k: int) -> Tensor:
    """Keep each row's ``top_k`` largest logits (batch, vocab_size); the others become -inf. A logit tied with the
    k-th largest is kept too; ``top_k >= vocab_size`` keeps everything."""
    _check_logits(logits)
    _check_sampling(top_k=top_k)
    if top_k >= logits.size(-1):
        return logits
    kth_largest = logits.topk(top_k, dim=-1).values[:, -1:]  # (batch, 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))  # (batch, vocab_size)


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Nucleus filtering (Holtzman et al., 2020): keep the smallest set of most likely tokens whose probability
    reaches ``top_p`` (sum >= top_p); the others become -inf. A token is kept when the tokens more likely than it
    sum to less than ``top_p``, so the most likely token always stays. logits: (batch, vocab_size)."""
    _check_logits(logits)
    _check_sampling(top_p=top_p)
    if top_p == 1:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (batch, vocab_size), most likely first
    probs = sorted_logits.float().softmax(dim=-1)  # (batch, vocab_size)
    mass_before = probs.cumsum(dim=-1) - probs  # (batch, vocab_size) probability of the more likely tokens
    remove_sorted = mass_before >= top_p  # (batch, vocab_size) the nucleus already holds top_p
    remove = remove_sorted.scatter(-1, order, remove_sorted)  # (batch, vocab_size) back to vocabulary order
    return logits.masked_fill(remove, float("-inf"))  # (batch, vocab_size)


def apply_repetition_penalty(logits: Tensor, input_ids: Tensor, penalty: float) -> Tensor:
    """CTRL's repetition penalty (Keskar et al., 2019), as in transformers: the logit of every token already in
    ``input_ids`` (batch, T) is divided by ``penalty`` when positive and multiplied by it when negative, so
    ``penalty > 1`` makes repeats less likely. logits: (batch, vocab_size)."""
    _check_logits(logits)
    check_finite_number("penalty", penalty)
    if not penalty > 0:
        raise ValueError(f"penalty must be a number > 0, got {penalty!r}")
    if input_ids.dim() != 2 or input_ids.size(0) != logits.size(0):
        raise ValueError(f"input_ids must be (batch={logits.size(0)}, T), got shape {tuple(input_ids.shape)}")
    if penalty == 1 or input_ids.size(1) == 0:
        return logits
    seen = logits.gather(-1, input_ids)  # (batch, T) logits of the tokens seen so far
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)  # (batch, T) pushed towards less likely
    return logits.scatter(-1, input_ids, seen)  # (batch, vocab_size), a repeated id penalised once


def sample_next_token(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One token id per row of logits (batch, vocab_size) → (batch,): divide by ``temperature``, keep the
    ``top_k`` and then the ``top_p`` nucleus, sample from the softmax. ``temperature=0`` is the argmax, and so is
    any temperature below ``GREEDY_TEMPERATURE`` (1e-6), the limit that sampling approaches as the temperature
    goes to 0: dividing by a smaller one could overflow float32 into inf and NaN probabilities. The temperature
    must be a finite int or float >= 0 (TypeError for another type, ValueError for inf, NaN or a negative)."""
    _check_logits(logits)
    _check_sampling(temperature, top_k, top_p)
    if temperature < GREEDY_TEMPERATURE:
        return logits.argmax(dim=-1)  # (batch,)
    logits = logits.float() / temperature  # (batch, vocab_size)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.softmax(dim=-1)  # (batch, vocab_size), zero outside the kept tokens
    return torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]  # (batch,)


def generate(
    model: nn.Module,
    input_ids: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
) -> Tensor:
    """Extend the prompts input_ids (batch, T) token by token with a :class:`mmcourse.gpt.GPT`. Returns
    (batch, T + new), new <= max_new_tokens.

    Each step applies ``repetition_penalty`` (to prompt and generated tokens), then samples with
    :func:`sample_next_token` (``temperature=0``, or below ``GREEDY_TEMPERATURE``: greedy). ``use_cache=True``
    feeds only the new token and keeps past keys and values in a KV cache; ``use_cache=False`` re-runs the whole
    sequence each step. Both give the same tokens. With learned positions the model sees at most its last
    ``context_length`` tokens: past that, the window slides (the cache is then rebuilt each step). With ``eos_id``,
    a sequence that produced it continues with ``eos_id`` only, and generation stops once every sequence has. The
    prompt's ids are checked once, here (the model reads no values); the generated ones come from the vocabulary.
    """
    from mmcourse.gpt import GPT

    if not isinstance(model, GPT):
        raise TypeError(f"model must be a mmcourse.gpt.GPT, got {type(model).__name__}")
    vocab_size = model.config.vocab_size
    check_token_ids("input_ids", input_ids, vocab_size)  # the one look at the ids' values
    if input_ids.dim() != 2 or input_ids.size(1) < 1:
        raise ValueError(f"input_ids must be (batch, T) with T >= 1, got shape {tuple(input_ids.shape)}")
    check_int("max_new_tokens", max_new_tokens, minimum=0)
    _check_sampling(temperature, top_k, top_p)
    check_finite_number("repetition_penalty", repetition_penalty)
    if not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty must be a number > 0, got {repetition_penalty!r}")
    if eos_id is not None:
        check_int("eos_id", eos_id, minimum=0)
        if eos_id >= vocab_size:
            raise ValueError(f"eos_id must be None or an int in [0, vocab_size={vocab_size}), got {eos_id!r}")
    window = model.config.context_length if model.config.positions == "learned" else math.inf
    tokens = input_ids  # (batch, t)
    finished = torch.zeros(input_ids.size(0), dtype=torch.bool, device=input_ids.device)  # (batch,)
    cache = None
    with evaluating(model):
        for _ in range(max_new_tokens):
            if use_cache and cache is not None and cache.length < window:
                logits = model(tokens[:, -1:], cache=cache)  # (batch, 1, vocab_size): the new token only
            else:  # the first step, no cache, or a full window: (re)run the last ≤ window tokens
                cache = model.new_cache() if use_cache else None
                context = tokens[:, -window:] if tokens.size(1) > window else tokens  # (batch, ≤ window)
                logits = model(context, cache=cache)  # (batch, ≤ window, vocab_size)
            next_logits = apply_repetition_penalty(logits[:, -1], tokens, repetition_penalty)  # (batch, vocab_size)
            next_token = sample_next_token(next_logits, temperature, top_k, top_p, generator)  # (batch,)
            if eos_id is not None:
                next_token = next_token.masked_fill(finished, eos_id)  # (batch,) finished rows repeat EOS
                finished |= next_token == eos_id
            tokens = torch.cat([tokens, next_token[:, None]], dim=1)  # (batch, t + 1)
            if eos_id is not None and finished.all():
                break
    return tokens
