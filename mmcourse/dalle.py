"""DALL·E-style text-to-image generation (Ramesh et al., 2021): one decoder-only Transformer over a caption's tokens
followed by an image's tokens.

A VQ-VAE (:mod:`mmcourse.vqvae`) turns each training image into a grid of h × w code indices; read row by row, the
grid is a sequence of n = h·w *image tokens*. The caption's word ids, padded to a fixed length L, come first and the
image tokens after them, shifted past the words so that one vocabulary holds both: id ``text_vocab_size + k`` is
code k. Chapter 4's GPT learns the next token of these sequences with the causal mask it always had, so every image
token is predicted from the whole caption and the image tokens before it. The loss counts the image tokens only
(DALL·E weighted the text's loss by 1/8; here the caption is given, never generated), and is taken over the codes
alone: the logits of the word ids are ignored, as they are when sampling. To generate, feed the caption and sample n
tokens one at a time (with the KV cache and chapter 4's temperature and top-k), then decode the grid with the
VQ-VAE. DALL·E drew many samples per caption and kept the ones its CLIP ranked best: :func:`rerank` is that step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mmcourse.checks import check_positive_int, check_token_ids
from mmcourse.generation import evaluating, sample_next_token
from mmcourse.gpt import GPT


def _check_text_ids(text_ids: Tensor, text_vocab_size: int) -> None:
    check_positive_int("text_vocab_size", text_vocab_size)
    check_token_ids("text_ids", text_ids, text_vocab_size, "text_vocab_size")
    if text_ids.dim() != 2 or text_ids.size(1) < 1:
        raise ValueError(f"text_ids must be (batch, L) with L >= 1, got shape {tuple(text_ids.shape)}")


def image_token_sequences(text_ids: Tensor, codes: Tensor, text_vocab_size: int, codebook_size: int) -> Tensor:
    """[caption ids (batch, L); codes (batch, h, w) read row by row, each + text_vocab_size] → (batch, L + h·w)."""
    _check_text_ids(text_ids, text_vocab_size)
    check_token_ids("codes", codes, codebook_size, "codebook_size")
    if codes.dim() != 3 or len(codes) != len(text_ids):
        raise ValueError(f"codes must be (batch={len(text_ids)}, h, w), got shape {tuple(codes.shape)}")
    return torch.cat([text_ids, codes.flatten(1) + text_vocab_size], dim=1)  # (batch, L + h·w)


def check_image_token_model(model: GPT, text_length: int, n_codes: int, text_vocab_size: int) -> int:
    """That ``model`` is a GPT whose vocabulary holds the words and the codes and whose context holds a caption of
    ``text_length`` ids and ``n_codes`` image tokens; returns the codebook size (vocab_size - text_vocab_size)."""
    if not isinstance(model, GPT):
        raise TypeError(f"model must be a mmcourse.gpt.GPT, got {type(model).__name__}")
    for name, value in (("text_length", text_length), ("n_codes", n_codes), ("text_vocab_size", text_vocab_size)):
        check_positive_int(name, value)
    codebook_size = model.config.vocab_size - text_vocab_size
    if codebook_size < 2:
        raise ValueError(f"the model's vocab_size={model.config.vocab_size} must exceed text_vocab_size="
                         f"{text_vocab_size} by the codebook size (at least 2)")  # fmt: skip
    if text_length + n_codes - 1 > model.config.context_length:
        raise ValueError(f"a caption of {text_length} ids and {n_codes} image tokens need context_length >= "
                         f"{text_length + n_codes - 1}, the model has {model.config.context_length}")  # fmt: skip
    return codebook_size


def image_token_loss(model: GPT, sequences: Tensor, text_length: int, text_vocab_size: int) -> Tensor:
    """Mean cross-entropy of the image tokens of ``sequences`` (batch, L + n): the logits at positions L - 1 … L + n - 2
    predict tokens L … L + n - 1, over the codes only. Shapes are checked; the ids were checked where they were built
    (:func:`image_token_sequences`)."""
    n_codes = sequences.size(1) - text_length
    check_image_token_model(model, text_length, n_codes, text_vocab_size)
    logits = model(sequences[:, :-1])[:, text_length - 1 :, text_vocab_size:]  # (batch, n, codebook_size)
    targets = sequences[:, text_length:] - text_vocab_size  # (batch, n) code indices
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


@torch.no_grad()
def sample_image_tokens(
    model: GPT,
    text_ids: Tensor,
    grid: tuple[int, int],
    text_vocab_size: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """For each caption of text_ids (batch, L), sample a grid of codes (batch, h, w), token by token with the KV
    cache; only code logits compete (a word id is never drawn). ``temperature`` and ``top_k`` as in chapter 4's
    ``sample_next_token``; ``generator`` (on the model's device) makes it repeatable."""
    height, width = grid
    check_positive_int("grid height", height)
    check_positive_int("grid width", width)
    _check_text_ids(text_ids, text_vocab_size)
    n_codes = height * width
    check_image_token_model(model, text_ids.size(1), n_codes, text_vocab_size)
    codes = []
    with evaluating(model):
        cache = model.new_cache()
        logits = model(text_ids, cache)[:, -1]  # (batch, vocab_size): the last word predicts the first code
        for index in range(n_codes):
            code = sample_next_token(logits[:, text_vocab_size:], temperature, top_k, generator=generator)  # (batch,)
            codes.append(code)
            if index + 1 < n_codes:
                logits = model((code + text_vocab_size)[:, None], cache)[:, -1]  # (batch, vocab_size)
    return torch.stack(codes, dim=1).view(-1, height, width)  # (batch, h, w)


def rerank(scores: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
    """DALL·E's last step: of k candidates per caption keep the one its scorer (CLIP's image-caption similarity)
    ranks highest. scores (batch, k), candidates (batch, k, …) → (the best candidates (batch, …), their indices
    (batch,))."""
    if not isinstance(scores, Tensor) or scores.dim() != 2 or not scores.is_floating_point():
        raise ValueError(f"scores must be a float tensor (batch, k), got {getattr(scores, 'shape', scores)!r}")
    if not isinstance(candidates, Tensor) or tuple(candidates.shape[:2]) != tuple(scores.shape):
        found = tuple(candidates.shape) if isinstance(candidates, Tensor) else type(candidates).__name__
        raise ValueError(f"candidates must be (batch, k, …) = {tuple(scores.shape)} + …, got {found}")
    best = scores.argmax(dim=1)  # (batch,)
    return candidates[torch.arange(len(candidates), device=candidates.device), best], best
