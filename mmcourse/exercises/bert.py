"""Checkers for the chapter 3 exercises (BERT). Each prints a pass line or a hint; none raises."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from mmcourse.exercises import CheckResult, Hint, expect, expect_shape, run_check
from mmcourse.train import IGNORE_INDEX

MASK_ID, VOCAB_SIZE = 4, 1000


def check_masking(my_mask_tokens: Callable[[Tensor, Tensor, torch.Generator], tuple[Tensor, Tensor]]) -> CheckResult:
    """``my_mask_tokens(input_ids, special_tokens_mask, generator)`` → (masked_input_ids, labels): BERT's 80/10/10
    rule on 15% of the non-special tokens, with ``mask_id=4`` and ``vocab_size=1000``."""

    def test() -> None:
        generator = torch.Generator().manual_seed(31)
        input_ids = torch.randint(5, VOCAB_SIZE, (400, 128), generator=generator)  # (batch, L)
        special = torch.zeros_like(input_ids)
        special[:, 0] = special[:, 64] = special[:, -1] = 1  # [CLS], a [SEP] in the middle and at the end
        input_ids[special.bool()] = 2
        answer = my_mask_tokens(input_ids.clone(), special, torch.Generator().manual_seed(0))
        expect(isinstance(answer, tuple) and len(answer) == 2, "return (masked_input_ids, labels).")
        masked, labels = answer
        expect_shape(masked, tuple(input_ids.shape), "masked_input_ids")
        expect_shape(labels, tuple(input_ids.shape), "labels")
        chosen = labels != IGNORE_INDEX
        expect(bool(chosen.any()), "labels are all -100: no token was chosen for prediction.")
        expect(
            not bool(chosen[special.bool()].any()), "never choose special tokens ([CLS], [SEP]): they are not words."
        )
        expect(
            torch.equal(labels[chosen], input_ids[chosen]),
            "at a chosen position the label is the *original* token id (what the model must recover).",
        )
        expect(
            torch.equal(masked[~chosen], input_ids[~chosen]),
            "positions that were not chosen must keep their token and get label -100.",
        )
        rate = chosen.float().sum().item() / (~special.bool()).sum().item()
        expect(abs(rate - 0.15) < 0.01, f"{rate:.1%} of the tokens were chosen: choose each with probability 0.15.")
        became_mask = (masked[chosen] == MASK_ID).float().mean().item()
        unchanged = (masked[chosen] == input_ids[chosen]).float().mean().item()
        if became_mask > 0.97:
            raise Hint("all chosen tokens became [MASK]: only 80% should; 10% get a random token, 10% stay.")
        expect(abs(became_mask - 0.8) < 0.02, f"{became_mask:.1%} of the chosen tokens became [MASK]; aim for 80%.")
        expect(abs(unchanged - 0.1) < 0.02, f"{unchanged:.1%} of the chosen tokens stayed unchanged; aim for 10%.")

    return run_check("80/10/10 masking", test)


def check_mlm_accuracy(my_mlm_accuracy: Callable[[Tensor, Tensor], float]) -> CheckResult:
    """``my_mlm_accuracy(mlm_logits, labels)`` → top-1 accuracy over the positions whose label is not -100."""

    def test() -> None:
        logits = torch.full((2, 4, 5), -5.0)  # (batch, L, vocab_size)
        predicted = torch.tensor([[1, 2, 3, 4], [0, 0, 1, 1]])
        logits.scatter_(-1, predicted[..., None], 5.0)
        labels = torch.tensor([[1, -100, 0, -100], [0, -100, -100, 2]])  # 4 scored positions, 2 right
        answer = my_mlm_accuracy(logits, labels)
        answer = answer.item() if isinstance(answer, Tensor) and answer.numel() == 1 else answer
        expect(isinstance(answer, (int, float)), f"return a number, got {type(answer).__name__}.")
        if math.isclose(answer, 2 / 8):
            raise Hint("score only the chosen positions: skip every label that is -100, and divide by their number.")
        expect(math.isclose(answer, 0.5), "take the argmax over the vocabulary at each scored position.")

    return run_check("MLM accuracy", test)


def check_nsp_pairs(
    my_nsp_pairs: Callable[[dict[str, list[str]], int, int], list[tuple[str, str, bool]]],
) -> CheckResult:
    """``my_nsp_pairs(documents, n_pairs, seed)`` → (A, B, is_next) triples, half true next, half from elsewhere."""

    def test() -> None:
        documents = {name: [f"{name}-{index}" for index in range(30)] for name in ("alpha", "beta", "gamma")}
        pairs = my_nsp_pairs(documents, 200, 0)
        expect(isinstance(pairs, list) and len(pairs) == 200, "return a list of n_pairs (A, B, is_next) triples.")
        expect(all(len(pair) == 3 for pair in pairs), "each pair is a triple (segment A, segment B, is_next).")
        positives = sum(bool(pair[2]) for pair in pairs)
        expect(positives == 100, f"{positives} of 200 pairs are positives: make exactly half of them true next pairs.")
        for first, second, is_next in pairs:
            document, index = first.rsplit("-", 1)
            other, other_index = second.rsplit("-", 1)
            if is_next:
                expect(
                    other == document and int(other_index) == int(index) + 1,
                    "a positive pair's B is the unit right after A, in the same document.",
                )
            else:
                expect(other != document, "a negative pair's B must come from a *different* document.")
        expect(my_nsp_pairs(documents, 200, 0) == pairs, "the same seed must give the same pairs.")

    return run_check("NSP pairs", test)


def check_tokens_per_word(vocab_sizes: Sequence[int], tokens_per_word: Sequence[float]) -> CheckResult:
    """Tokens per word measured for WordPiece vocabularies of increasing size."""

    def test() -> None:
        if vocab_sizes is None or tokens_per_word is None:
            raise NotImplementedError  # still the placeholders: not answered yet
        expect(len(vocab_sizes) == len(tokens_per_word) >= 3, "measure at least three vocabulary sizes.")
        expect(list(vocab_sizes) == sorted(vocab_sizes), "list the vocabulary sizes in increasing order.")
        expect(all(isinstance(t, (int, float)) and t >= 1 for t in tokens_per_word),
               "every word is at least one token: tokens per word is >= 1.")  # fmt: skip
        falling = all(b < a for a, b in zip(tokens_per_word, tokens_per_word[1:], strict=False))
        expect(falling, "a larger vocabulary keeps more words whole: tokens per word should fall as it grows.")

    return run_check("tokens per word", test)
