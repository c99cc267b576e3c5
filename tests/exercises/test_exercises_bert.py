"""Chapter 3 checkers: the reference passes, typical wrong answers get a helpful hint, errors are reported."""

from __future__ import annotations

import random

import torch
from conftest import Outcome, raises

from mmcourse.bert import mask_tokens
from mmcourse.exercises.bert import check_masking, check_mlm_accuracy, check_nsp_pairs, check_tokens_per_word


def test_masking_checker(outcome: Outcome) -> None:
    def right(input_ids, special, generator):
        return mask_tokens(input_ids, special, 1000, 4, 0.15, generator)

    def always_mask(input_ids, special, generator):
        chosen = (torch.rand(input_ids.shape, generator=generator) < 0.15) & ~special.bool()
        return input_ids.masked_fill(chosen, 4), input_ids.masked_fill(~chosen, -100)

    def masks_specials(input_ids, special, generator):
        return mask_tokens(input_ids, torch.zeros_like(special), 1000, 4, 0.15, generator)

    def labels_everywhere(input_ids, special, generator):
        masked, _ = mask_tokens(input_ids, special, 1000, 4, 0.15, generator)
        return masked, input_ids

    assert outcome(check_masking(right))[0]
    passed, out = outcome(check_masking(always_mask))
    assert not passed and "only 80%" in out
    passed, out = outcome(check_masking(masks_specials))
    assert not passed and "special tokens" in out
    passed, out = outcome(check_masking(labels_everywhere))
    assert not passed and "special tokens" in out or "-100" in out
    passed, out = outcome(check_masking(raises))
    assert not passed and "raised" in out


def test_mlm_accuracy_checker(outcome: Outcome) -> None:
    def right(logits, labels):
        scored = labels != -100
        return (logits.argmax(-1)[scored] == labels[scored]).float().mean().item()

    assert outcome(check_mlm_accuracy(right))[0]
    passed, out = outcome(check_mlm_accuracy(lambda logits, labels: (logits.argmax(-1) == labels).float().mean()))
    assert not passed and "skip every label" in out
    passed, out = outcome(check_mlm_accuracy(lambda logits, labels: 0.9))
    assert not passed and "argmax" in out
    passed, out = outcome(check_mlm_accuracy(raises))
    assert not passed and "raised" in out


def test_nsp_pairs_checker(outcome: Outcome) -> None:
    def right(documents, n_pairs, seed):
        rng, names, pairs = random.Random(seed), sorted(documents), []
        labels = [True] * (n_pairs // 2) + [False] * (n_pairs // 2)
        rng.shuffle(labels)
        for is_next in labels:
            name = rng.choice(names)
            start = rng.randrange(len(documents[name]) - 1)
            if is_next:
                second = documents[name][start + 1]
            else:
                other = rng.choice([n for n in names if n != name])
                second = rng.choice(documents[other])
            pairs.append((documents[name][start], second, is_next))
        return pairs

    def same_document_negatives(documents, n_pairs, seed):
        return [
            (a, documents[a.rsplit("-", 1)[0]][0], False) if not n else (a, b, n)
            for a, b, n in right(documents, n_pairs, seed)
        ]

    def unbalanced(documents, n_pairs, seed):
        return [
            (a, b, True) if i < n_pairs // 2 + 10 and n else (a, b, n)
            for i, (a, b, n) in enumerate(right(documents, n_pairs, seed))
        ][: n_pairs - 1] + [right(documents, 2, 1)[0][:2] + (True,)]

    assert outcome(check_nsp_pairs(right))[0]
    passed, out = outcome(check_nsp_pairs(same_document_negatives))
    assert not passed and "different" in out
    passed, out = outcome(check_nsp_pairs(lambda d, n, s: right(d, n, s)[: n - 2] + [("a-1", "a-2", True)] * 2))
    assert not passed and "exactly half" in out or "right after" in out
    passed, out = outcome(check_nsp_pairs(raises))
    assert not passed and "raised" in out


def test_tokens_per_word_checker(outcome: Outcome) -> None:
    assert outcome(check_tokens_per_word([500, 2000, 8000], [1.6, 1.3, 1.1]))[0]
    passed, out = outcome(check_tokens_per_word([500, 2000, 8000], [1.1, 1.3, 1.6]))
    assert not passed and "fall" in out
    passed, out = outcome(check_tokens_per_word([500, 2000, 8000], [0.9, 0.8, 0.7]))
    assert not passed and ">= 1" in out
    passed, out = outcome(check_tokens_per_word(None, None))  # type: ignore[arg-type]
    assert not passed and "not answered yet" in out
