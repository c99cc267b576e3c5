"""Prompting a causal language model (chapter 8): label-word scoring, few-shot prompts, chat templates, soft prompts.

A classification by prompt never parses free text: the prompt ends where the label word would start, and the
model's next-token log-probabilities of the label words (" positive", " negative") are the scores
(``score_label_words``). ``few_shot_prompt`` writes k demonstrations (in-context learning, 少样本) and
``few_shot_query`` the query after them;
``score_with_prefix`` runs the demonstrations once, keeps their KV cache, and scores a batch of queries from it.
``chatml`` writes the ChatML template that SmolLM2-Instruct was tuned with. ``SoftPromptModel`` is prompt tuning
(Lester et al. 2021, 提示学习): a few trainable vectors put in front of the input embeddings of a frozen model.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from mmcourse.checks import check_int, check_positive_int
from mmcourse.generation import KVCache
from mmcourse.gpt import GPT

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

EXAMPLE_TEMPLATE = "Review: {text}\nSentiment:"  # the query; a demonstration adds its label word
SEPARATOR = "\n\n"  # between the instruction and the demonstrations, and before the query
LABEL_WORDS = (" negative", " positive")  # label 0, label 1: each one token for SmolLM2's tokenizer
ROLES = ("system", "user", "assistant")


# ---------------------------------------------------------------------------------------------------------------
# Label words
# ---------------------------------------------------------------------------------------------------------------


def label_token_ids(tokenizer: PreTrainedTokenizerBase, words: Sequence[str] = LABEL_WORDS) -> Tensor:
    """The token id of each label word, (n_labels,); ValueError naming a word that is not exactly one token."""
    if isinstance(words, str) or len(words) < 2:
        raise ValueError(f"words must be a sequence of at least two label words, got {words!r}")
    ids = []
    for word in words:
        encoded = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise ValueError(f"label word {word!r} is {len(encoded)} tokens {encoded}: choose one-token label words")
        ids.append(encoded[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"label words {tuple(words)} share a token id: {ids}")
    return torch.tensor(ids)


def score_label_words(next_token_logits: Tensor, label_ids: Tensor) -> Tensor:
    """Log-probabilities (batch, n_labels) of the label tokens under the full next-token distribution
    (a softmax over the whole vocabulary, not over the labels only). next_token_logits: (batch, vocab_size).
    Shapes are checked, not the ids' values: it runs in a loss (``label_token_ids`` makes valid ids)."""
    if next_token_logits.dim() != 2:
        raise ValueError(f"next_token_logits must be (batch, vocab_size), got shape {tuple(next_token_logits.shape)}")
    if label_ids.dim() != 1 or label_ids.numel() < 2 or label_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"label_ids must be an integer tensor (n_labels >= 2,), got {tuple(label_ids.shape)}")
    log_probs = next_token_logits.float().log_softmax(dim=-1)  # (batch, vocab_size)
    return log_probs[:, label_ids.to(log_probs.device)]  # (batch, n_labels)


def label_mass(label_log_probs: Tensor) -> Tensor:
    """Share of the next-token probability that falls on the label words, (batch,): low means the prompt has not
    made the model expect a label at all, even when the argmax among labels is right."""
    return label_log_probs.exp().sum(dim=-1)  # (batch,)


def calibrate(label_log_probs: Tensor, content_free_log_probs: Tensor) -> Tensor:
    """Contextual calibration (Zhao et al. 2021): subtract the label log-probabilities the same prompt gives a
    content-free query ("N/A"), so that a prompt's bias towards one label no longer decides the prediction.
    (batch, n_labels) and (n_labels,) or (1, n_labels) → (batch, n_labels)."""
    if label_log_probs.dim() != 2 or content_free_log_probs.reshape(-1).shape != label_log_probs.shape[1:]:
        raise ValueError(f"label_log_probs must be (batch, n_labels) and content_free_log_probs (n_labels,), got "
                         f"{tuple(label_log_probs.shape)} and {tuple(content_free_log_probs.shape)}")  # fmt: skip
    return label_log_probs - content_free_log_probs.reshape(1, -1)  # (batch, n_labels)


# ---------------------------------------------------------------------------------------------------------------
# Few-shot prompts
# ---------------------------------------------------------------------------------------------------------------


def few_shot_prompt(
    demonstrations: Sequence[tuple[str, int]],
    label_words: Sequence[str] = LABEL_WORDS,
    instruction: str = "",
    template: str = EXAMPLE_TEMPLATE,
) -> str:
    """The prefix shared by every query: the instruction (if any) and k demonstrations
    ``template.format(text=...) + label_words[label]``, joined by blank lines (SEPARATOR). ``few_shot_query`` writes
    the query that follows it. The separator opens the query rather than closing the prefix, so that prefix and
    query tokenize apart exactly as they do together (a trailing "\\n\\n" would become one token on its own)."""
    if "{text}" not in template:
        raise ValueError(f"template must contain {{text}}, got {template!r}")
    parts = [instruction.strip()] if instruction.strip() else []
    for text, label in demonstrations:
        if not 0 <= label < len(label_words):
            raise ValueError(f"demonstration label {label!r} is not in [0, {len(label_words)})")
        parts.append(template.format(text=text) + label_words[label])
    return SEPARATOR.join(parts)


def few_shot_query(text: str, after_prefix: bool, template: str = EXAMPLE_TEMPLATE) -> str:
    """The query for ``text``: ``template`` filled in, opened by SEPARATOR when a prefix comes before it."""
    return (SEPARATOR if after_prefix else "") + template.format(text=text)


def draw_demonstrations(
    pool: Sequence[tuple[str, int]], k: int, rng: random.Random, labels: Sequence[int] | None = None
) -> list[tuple[str, int]]:
    """k demonstrations from ``pool`` (text, label). ``labels``: the label of each slot, in order (e.g. balanced
    [0, 1, 0, 1] or all positive); None draws them at random from the pool."""
    check_int("k", k, minimum=0)
    if labels is None:
        return [pool[index] for index in rng.sample(range(len(pool)), k)]
    if len(labels) != k:
        raise ValueError(f"labels must give one label per demonstration: k={k}, got {len(labels)}")
    by_label: dict[int, list[int]] = {}
    for index, (_, label) in enumerate(pool):
        by_label.setdefault(label, []).append(index)
    chosen = []
    for label in set(labels):
        if labels.count(label) > len(by_label.get(label, [])):
            raise ValueError(f"the pool has {len(by_label.get(label, []))} examples of label {label}, "
                             f"{labels.count(label)} wanted")  # fmt: skip
    remaining = {label: rng.sample(indices, len(indices)) for label, indices in by_label.items()}
    for label in labels:
        chosen.append(pool[remaining[label].pop()])
    return chosen


def balanced_labels(k: int, rng: random.Random) -> list[int]:
    """k labels, half 0 and half 1 (one extra at random when k is odd), in a random order."""
    labels = [0, 1] * (k // 2) + ([rng.randrange(2)] if k % 2 else [])
    rng.shuffle(labels)
    return labels


def expand_cache(cache: KVCache, batch: int) -> KVCache:
    """A new KVCache whose every layer repeats ``cache``'s single sequence ``batch`` times (views, no copy)."""
    check_positive_int("batch", batch)
    if not isinstance(cache, KVCache) or cache.layers[0] is None:
        raise ValueError("cache must be a filled KVCache")
    expanded = KVCache(len(cache.layers))
    for index, layer in enumerate(cache.layers):
        k, v = layer  # type: ignore[misc]  # (1, n_kv_heads, P, head_dim) each
        if k.size(0) != 1:
            raise ValueError(f"cache must hold one sequence to expand, got batch {k.size(0)}")
        expanded.layers[index] = (k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))  # (batch, kv, P, hd)
    return expanded


@torch.no_grad()
def score_with_prefix(
    model: GPT,
    prefix_ids: Sequence[int],
    query_ids: Sequence[Sequence[int]],
    label_ids: Tensor,
    batch_size: int = 16,
    pad_id: int = 0,
) -> Tensor:
    """Label-word log-probabilities (n_queries, n_labels) of each query read after a shared prefix.

    The prefix (the demonstrations; may be empty) runs once and its keys and values are cached; the queries are
    right-padded into batches that continue the cache. A row's scores are read at its last real token, which
    sees only the prefix and its own tokens (the padding comes after it)."""
    check_positive_int("batch_size", batch_size)
    if not query_ids or any(len(ids) == 0 for ids in query_ids):
        raise ValueError("query_ids must be a non-empty list of non-empty id lists")
    vocab_size = model.config.vocab_size  # the ids are checked once, here, on the host (the model reads no values)
    outside = [i for ids in [prefix_ids, *query_ids, [pad_id]] for i in ids if not 0 <= i < vocab_size]
    if outside:
        raise ValueError(f"prefix_ids, query_ids and pad_id must be in [0, vocab_size={vocab_size}), got {outside[:5]}")
    device = model.lm_head.weight.device
    was_training = model.training
    model.eval()
    prefix_cache = None
    if len(prefix_ids):
        prefix_cache = model.new_cache()
        model(torch.tensor([list(prefix_ids)], device=device), cache=prefix_cache)  # fills the cache
    scores = []
    for start in range(0, len(query_ids), batch_size):
        chunk = query_ids[start : start + batch_size]
        longest = max(len(ids) for ids in chunk)
        input_ids = torch.full((len(chunk), longest), pad_id, dtype=torch.long, device=device)  # (batch, T)
        for row, ids in enumerate(chunk):
            input_ids[row, : len(ids)] = torch.tensor(list(ids))
        cache = expand_cache(prefix_cache, len(chunk)) if prefix_cache is not None else None
        logits = model(input_ids, cache=cache)  # (batch, T, vocab_size)
        last = torch.tensor([len(ids) - 1 for ids in chunk], device=device)  # (batch,)
        scores.append(score_label_words(logits[torch.arange(len(chunk), device=device), last], label_ids))
    model.train(was_training)
    return torch.cat(scores).cpu()  # (n_queries, n_labels)


# ---------------------------------------------------------------------------------------------------------------
# Chat templates
# ---------------------------------------------------------------------------------------------------------------


def chatml(messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = False) -> str:
    """The ChatML text of ``messages`` ({"role", "content"}): ``<|im_start|>role\\ncontent<|im_end|>\\n`` each;
    with ``add_generation_prompt``, the opening of the assistant's turn. (SmolLM2's own template also inserts a
    default system message when there is none; pass one explicitly to compare.)"""
    parts = []
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"messages[{index}]['role']={role!r} is not one of {ROLES}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{index}]['content'] must be a string, got {type(content).__name__}")
        parts.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------------------------
# Soft prompts
# ---------------------------------------------------------------------------------------------------------------


class SoftPromptModel(nn.Module):
    """A frozen GPT reading ``n_prompt`` trainable vectors before every input: prompt tuning.

    Only ``prompt`` (n_prompt, d_model) learns; every weight of the model is frozen (requires_grad False). The
    prompt starts as the embeddings of ``init_ids`` (a real instruction, cut or repeated to n_prompt tokens) or,
    without them, as randomly chosen rows of the embedding matrix."""

    def __init__(self, model: GPT, n_prompt: int, init_ids: Sequence[int] | None = None, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(model, GPT):
            raise TypeError(f"model must be a mmcourse.gpt.GPT, got {type(model).__name__}")
        check_positive_int("n_prompt", n_prompt)
        self.model = model.requires_grad_(False)
        embedding = model.token_embedding.weight.detach()  # (vocab_size, d_model)
        if init_ids is not None and len(init_ids):
            ids = (list(init_ids) * n_prompt)[:n_prompt]
        else:
            generator = torch.Generator().manual_seed(seed)
            ids = torch.randint(0, embedding.size(0), (n_prompt,), generator=generator).tolist()
        self.prompt = nn.Parameter(embedding[torch.tensor(ids, device=embedding.device)].clone())  # (n_prompt, d)

    @property
    def n_prompt(self) -> int:
        return self.prompt.size(0)

    def forward(self, input_ids: Tensor) -> Tensor:
        """input_ids (batch, T) → logits (batch, T, vocab_size) at the input positions (the prompt's dropped)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, T), got shape {tuple(input_ids.shape)}")
        embeds = self.model.token_embedding(input_ids)  # (batch, T, d_model)
        prompt = self.prompt.to(embeds.dtype).expand(input_ids.size(0), -1, -1)  # (batch, n_prompt, d_model)
        logits = self.model.forward_embeddings(torch.cat([prompt, embeds], dim=1))  # (batch, n_prompt + T, V)
        return logits[:, self.n_prompt :]  # (batch, T, vocab_size)


def last_token_logits(logits: Tensor, lengths: Tensor) -> Tensor:
    """Logits (batch, vocab_size) at each row's last real token, for right-padded rows of ``lengths`` tokens
    (each in [1, T]: from ``pad_batch``'s attention mask; the values are not checked, this runs in a loss)."""
    if logits.dim() != 3 or lengths.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (batch, T, vocab) and lengths (batch,), got {tuple(logits.shape)} and "
                         f"{tuple(lengths.shape)}")  # fmt: skip
    return logits[torch.arange(logits.size(0), device=logits.device), lengths.to(logits.device) - 1]


def label_word_loss(logits: Tensor, lengths: Tensor, labels: Tensor, label_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy of the right label word among the label words, read at each row's last real token.
    Returns (loss, accuracy), both scalar tensors (no ``.item()`` here: ``train`` logs the accuracy)."""
    scores = score_label_words(last_token_logits(logits, lengths), label_ids)  # (batch, n_labels)
    if labels.shape != scores.shape[:1]:
        raise ValueError(f"labels must be (batch={scores.size(0)},), got {tuple(labels.shape)}")
    loss = nn.functional.cross_entropy(scores, labels.to(scores.device))  # softmax over the label words only
    return loss, (scores.argmax(dim=-1) == labels.to(scores.device)).float().mean().detach()
