"""A pretraining corpus for BERT: documents → segments → (segment A, segment B, is_next) pairs.

A *document* is a list of text units in reading order: the speeches of one Shakespeare work (speaker name kept,
as in a script: ``"Ham. To be, or not to be..."``), or the snippets of one sentiment domain. Next sentence
prediction needs documents: B is either the text that really follows A in A's document, or a segment of
*another* document. The train/validation split is by document, so that no validation pair shares a work with
the training pairs.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

Documents = dict[str, list[str]]  # {document name: its text units, in order}

_SPEAKER = re.compile(r"^[A-Z][A-Za-z' ]{0,40}\.$")  # "Ham." or "First Clown." alone on a line


def _word_count(text: str) -> int:
    return len(text.split())


def speeches(text: str, speakers: bool = True) -> list[str]:
    """The blank-line separated blocks of a Gutenberg play, one string each; stage directions ``[...]``
    dropped; a speaker line such as ``Ham.`` kept as a prefix (or dropped when ``speakers=False``)."""
    units = []
    for block in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        lines = [line.strip() for line in block.strip().split("\n") if line.strip()]
        lines = [line for line in lines if not (line.startswith("[") and line.endswith("]"))]
        if not lines:
            continue
        if len(lines) > 1 and _SPEAKER.match(lines[0]) and not speakers:
            lines = lines[1:]
        units.append(" ".join(lines))
    return units


def shakespeare_documents(speakers: bool = True, min_units: int = 50) -> Documents:
    """``{work: [speech, ...]}`` for every Shakespeare work with at least ``min_units`` blocks."""
    from mmcourse.data.shakespeare import load_shakespeare

    documents = {name: speeches(text, speakers) for name, text in load_shakespeare().items()}
    return {name: units for name, units in documents.items() if len(units) >= min_units}


def split_documents(
    documents: Mapping[str, Sequence[str]], validation_fraction: float = 0.15, seed: int = 0
) -> tuple[Documents, Documents]:
    """(train, validation) split BY DOCUMENT, each side with at least two documents (NSP needs another one)."""
    if len(documents) < 4:
        raise ValueError(f"documents must hold at least 4 documents to split, got {len(documents)}")
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}")
    names = sorted(documents)
    random.Random(seed).shuffle(names)
    n_validation = min(len(names) - 2, max(2, round(validation_fraction * len(names))))
    validation = {name: list(documents[name]) for name in sorted(names[:n_validation])}
    train = {name: list(documents[name]) for name in sorted(names[n_validation:])}
    return train, validation


class SegmentPair(NamedTuple):
    """One NSP example; ``pair[0], pair[1], pair[2]`` are (A, B, is_next), the form PretrainingCollator takes."""

    first: str  # segment A
    second: str  # segment B
    is_next: bool  # True: B is the text that follows A; False: B comes from another document
    first_document: str
    second_document: str


def _segment(units: Sequence[str], start: int, budget: int, length: Callable[[str], int]) -> tuple[str, int]:
    """Consecutive units from ``start`` until ``budget`` is used (at least one unit). Returns (text, end)."""
    end, used = start, 0
    while end < len(units) and (end == start or used + length(units[end]) <= budget):
        used += length(units[end])
        end += 1
    return " ".join(units[start:end]), end


def make_nsp_pairs(
    documents: Mapping[str, Sequence[str]],
    n_pairs: int,
    max_tokens: int,
    seed: int = 0,
    length: Callable[[str], int] = _word_count,
) -> list[SegmentPair]:
    """``n_pairs`` (A, B, is_next) pairs, exactly half with the true next segment, half with B from another document.

    A starts at a random unit of a random document (weighted by size) and takes whole units while their
    ``length`` (default: words) fits in ``max_tokens // 2``; the positive B is what follows, the negative B a
    segment of the same budget from a random place in a different document. Deterministic given ``seed``.
    """
    if not isinstance(n_pairs, int) or n_pairs < 2 or n_pairs % 2:
        raise ValueError(f"n_pairs must be an even int >= 2 (half positive, half negative), got {n_pairs!r}")
    if not isinstance(max_tokens, int) or max_tokens < 2:
        raise ValueError(f"max_tokens must be an int >= 2, got {max_tokens!r}")
    names = sorted(name for name, units in documents.items() if len(units) >= 2)
    if len(names) < 2:
        raise ValueError("documents must hold at least two documents of two or more units (negatives need another)")
    rng = random.Random(seed)
    budget = max_tokens // 2
    weights = [len(documents[name]) for name in names]
    labels = [True] * (n_pairs // 2) + [False] * (n_pairs // 2)
    rng.shuffle(labels)
    pairs = []
    for is_next in labels:
        name = rng.choices(names, weights)[0]
        units = documents[name]
        start = rng.randrange(len(units) - 1)  # leave at least one unit for the next segment
        first, end = _segment(units, start, budget, length)
        if end == len(units):  # A ran to the end of the document: give a unit back to B
            first, end = _segment(units, start, 0, length)
        if is_next:
            second, second_name = _segment(units, end, budget, length)[0], name
        else:
            others = [other for other in names if other != name]
            second_name = rng.choices(others, [len(documents[other]) for other in others])[0]
            other_units = documents[second_name]
            second = _segment(other_units, rng.randrange(len(other_units)), budget, length)[0]
        pairs.append(SegmentPair(first, second, is_next, name, second_name))
    return pairs
