"""Byte-pair encoding (BPE, 字节对编码) training in plain Python, deterministic: the WordPiece vocabulary of BERT.

Hugging Face's ``WordPieceTrainer`` is a BPE trainer under the hood (``tokenizers``' ``BpeTrainer`` with the
continuing prefix ``##``): it starts from single characters and repeatedly merges the adjacent pair of tokens that
occurs most often in the training words, weighted by how often each word occurs. This module does the same steps in
the same order, so it learns the same vocabulary, with one difference: it gives the ``##`` tokens their ids in sorted
order. The Rust trainer gives them ids in hash-map order, which changes from one process to the next, and breaks
ties between pairs of equal count by those ids, so the same texts can give a different vocabulary on every run
(huggingface/tokenizers issue #1794; pull request #2066 sorts them, as we do).

The vocabulary, in id order: the special tokens, the alphabet (every character, by code point), a ``##c`` token
for every character ``c`` seen inside a word, then one token per merge, until there are ``vocab_size`` tokens or no
pair occurs at least ``min_frequency`` times. A pair's count is kept up to date as merges change the words that hold
it (only those words are visited), and a heap keeps the most frequent pair on top, as in the Rust trainer. With
``prefix=""`` there are no ``##`` tokens, and the vocabulary is ``BpeTrainer``'s (which is deterministic), id for id.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence

from mmcourse.checks import check_int, check_positive_int

Pair = tuple[int, int]  # (id of the left token, id of the right token)


def word_counts(
    texts: Iterable[str],
    normalize: Callable[[str], str],
    pre_tokenize: Callable[[str], Sequence[tuple[str, tuple[int, int]]]],
) -> dict[str, int]:
    """How often each word occurs in ``texts``, split as the tokenizer splits them: ``normalize`` is a normalizer's
    ``normalize_str``, ``pre_tokenize`` a pre-tokenizer's ``pre_tokenize_str`` (it returns (word, offsets) pairs)."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    counts: Counter[str] = Counter()
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"texts must hold strings, got a {type(text).__name__}")
        counts.update(word for word, _ in pre_tokenize(normalize(text)))
    return dict(counts)


def initial_vocab(counts: Mapping[str, int], special_tokens: Sequence[str] = (), prefix: str = "##") -> list[str]:
    """The vocabulary before any merge: special tokens, the alphabet by code point, the ``prefix`` tokens sorted."""
    _check_counts(counts)
    _check_tokens("special_tokens", special_tokens, prefix)
    alphabet = sorted({character for word in counts for character in word})
    continuing = sorted({prefix + character for word in counts for character in word[1:]})  # Rust: hash-map order
    return list(dict.fromkeys([*special_tokens, *alphabet, *continuing]))  # a token already there keeps its id


def learn_merges(
    counts: Mapping[str, int], vocab: Sequence[str], vocab_size: int, min_frequency: int = 0, prefix: str = "##"
) -> list[str]:
    """``vocab`` (from :func:`initial_vocab`) followed by one token per merge, most frequent pair first (ties: the
    pair of smaller ids), until ``vocab_size`` tokens or no pair occurs ``min_frequency`` times."""
    _check_counts(counts)
    _check_tokens("vocab", vocab, prefix)
    check_positive_int("vocab_size", vocab_size)
    check_int("min_frequency", min_frequency, minimum=0)
    vocab = list(vocab)
    token_id = {token: index for index, token in enumerate(vocab)}
    if len(token_id) != len(vocab):
        raise ValueError("vocab must not repeat a token")
    spellings = sorted(counts)  # a fixed order for the words
    needed = {word[0] for word in spellings} | {prefix + c for word in spellings for c in word[1:]}
    if missing := sorted(needed - token_id.keys()):
        raise ValueError(f"vocab lacks {len(missing)} tokens the words need, e.g. {missing[:3]}")
    # Each word as a list of token ids: its first character, then "##" + each following character.
    words = [[token_id[word[0]], *(token_id[prefix + c] for c in word[1:])] for word in spellings]
    frequency = [counts[word] for word in spellings]

    # Count every adjacent pair, and remember which words hold it.
    pair_counts: dict[Pair, int] = defaultdict(int)
    where: dict[Pair, set[int]] = defaultdict(set)
    for index, word in enumerate(words):
        for pair in zip(word, word[1:], strict=False):
            pair_counts[pair] += frequency[index]
            where[pair].add(index)
    # The heap holds (-count, pair, push number, words to visit): the largest count first, then the smallest pair.
    # An entry lists the words that held the pair when it was pushed; words that gain the pair later get an entry
    # of their own. As in the Rust trainer, a merge visits only its entry's words (the others follow when their
    # entry comes up), and a merged pair's count is left as it was.
    heap = [(-pair_counts[pair], pair, number, indices) for number, (pair, indices) in enumerate(where.items())]
    heapq.heapify(heap)
    pushes = len(heap)

    while len(vocab) < vocab_size and heap:
        negative_count, pair, _, indices = heapq.heappop(heap)
        count = pair_counts[pair]
        if -negative_count != count:  # the count changed since this entry was pushed: push it again, up to date
            heapq.heappush(heap, (-count, pair, pushes, indices))
            pushes += 1
            continue
        if count < max(min_frequency, 1):
            break
        new_token = vocab[pair[0]] + vocab[pair[1]].removeprefix(prefix)  # "t" + "##h" -> "th"
        if new_token not in token_id:  # two different merges can spell the same token: it keeps its first id
            token_id[new_token] = len(vocab)
            vocab.append(new_token)
        # Merge the pair in the words that hold it, and update the counts of the pairs around it.
        gained: dict[Pair, set[int]] = defaultdict(set)
        for index in indices:
            for changed, change in _merge_pair(words[index], pair, token_id[new_token]):
                pair_counts[changed] += change * frequency[index]
                if change > 0:
                    gained[changed].add(index)
        for changed, gained_in in gained.items():
            if pair_counts[changed] > 0:
                heapq.heappush(heap, (-pair_counts[changed], changed, pushes, gained_in))
                pushes += 1
    return vocab


def learn_wordpiece_vocab(
    counts: Mapping[str, int],
    vocab_size: int,
    min_frequency: int = 0,
    special_tokens: Sequence[str] = (),
    prefix: str = "##",
) -> list[str]:
    """The WordPiece vocabulary in id order that ``WordPieceTrainer`` learns from ``counts``, with sorted ``##`` ids.
    Never cut below the initial vocabulary: it is longer than ``vocab_size`` when the alphabet alone is."""
    return learn_merges(counts, initial_vocab(counts, special_tokens, prefix), vocab_size, min_frequency, prefix)


def _merge_pair(word: list[int], pair: Pair, new_id: int) -> list[tuple[Pair, int]]:
    """Replace each ``pair`` in ``word`` (in place, left to right) by ``new_id``; return the pair count changes."""
    left, right = pair
    changes = []
    i = 0
    while i < len(word) - 1:
        if word[i] == left and word[i + 1] == right:
            if i > 0:  # (before, left) becomes (before, new)
                changes += [((word[i - 1], left), -1), ((word[i - 1], new_id), 1)]
            word[i : i + 2] = [new_id]
            if i < len(word) - 1:  # (right, after) becomes (new, after)
                changes += [((right, word[i + 1]), -1), ((new_id, word[i + 1]), 1)]
        i += 1
    return changes


def _check_counts(counts: Mapping[str, int]) -> None:
    if not isinstance(counts, Mapping):
        raise TypeError(f"counts must be a mapping from word to count, got {type(counts).__name__}")
    for word, count in counts.items():
        if not isinstance(word, str) or not isinstance(count, int) or isinstance(count, bool):
            raise TypeError(f"counts must map str to int, got {word!r}: {count!r}")
        if not word or count < 1:
            raise ValueError(f"counts must map non-empty words to counts >= 1, got {word!r}: {count!r}")


def _check_tokens(name: str, tokens: Sequence[str], prefix: str) -> None:
    if isinstance(tokens, str) or not all(isinstance(token, str) for token in tokens):
        raise TypeError(f"{name} must be a sequence of strings (not one string)")
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
