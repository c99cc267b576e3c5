"""Checkers for the chapter 9 exercises (a vision-language model). Each prints a pass line or a hint; none raises."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from mmcourse.data.conversations import pope_scores
from mmcourse.exercises import CheckResult, Hint, expect, expect_close, expect_shape, run_check
from mmcourse.train import IGNORE_INDEX
from mmcourse.vlm import expand_image_placeholder, pixel_shuffle, vlm_batch

POPE_KEYS = ("accuracy", "precision", "recall", "f1", "yes_rate")
IMAGE_ID = 99  # the placeholder's id in the checks' prompts: one past a vocabulary of 99 tokens


def _id_list(answer: object, what: str) -> list[int]:
    """``answer`` as a list of ints, or a Hint naming ``what``."""
    expect(isinstance(answer, (list, tuple)), f"{what} should be a list of token ids, but it is a "
                                              f"{type(answer).__name__}.")  # fmt: skip
    assert isinstance(answer, (list, tuple))
    expect(all(isinstance(i, int) and not isinstance(i, bool) for i in answer), f"{what} should hold plain ints.")
    return list(answer)


def check_expand_placeholder(my_expand_placeholder: Callable[[list[int], int, int], list[int]]) -> CheckResult:
    """``my_expand_placeholder(prompt_ids, image_token_id, n_image_tokens)`` → the prompt with its one placeholder
    replaced, in place, by ``n_image_tokens`` copies."""

    def test() -> None:
        cases = (([5, 6, IMAGE_ID, 7, 8], 4), ([IMAGE_ID, 3, 4], 3), ([1, 2, IMAGE_ID], 2), ([IMAGE_ID], 1))
        for prompt_ids, n in cases:
            given = list(prompt_ids)
            answer = _id_list(my_expand_placeholder(given, IMAGE_ID, n), "my_expand_placeholder(...)")
            expect(given == prompt_ids, "prompt_ids itself has changed: build and return a new list instead.")
            expected = expand_image_placeholder(prompt_ids, IMAGE_ID, n)
            count = answer.count(IMAGE_ID)
            if count == n + 1:
                raise Hint("the original placeholder is still there beside the n copies: replace it, so that the "
                           "result holds exactly n_image_tokens placeholders.")  # fmt: skip
            expect(count == n, f"the result should hold exactly n_image_tokens placeholders (here {n}), one per "
                               f"image token, but it holds {count}.")  # fmt: skip
            text = [i for i in prompt_ids if i != IMAGE_ID]
            expect([i for i in answer if i != IMAGE_ID] == text,
                   "the other tokens of the prompt must stay, each once, in their order.")  # fmt: skip
            if answer != expected and answer in (text + [IMAGE_ID] * n, [IMAGE_ID] * n + text):
                raise Hint("the copies must stand where the placeholder stood (in place), not at an end of the "
                           "prompt: the text around the picture keeps its position relative to it.")  # fmt: skip
            expect(answer == expected, "the n copies should stand together, where the one placeholder stood.")

    return run_check("expand the image placeholder", test)


def check_pixel_shuffle(my_pixel_shuffle: Callable[[Tensor, int], Tensor]) -> CheckResult:
    """``my_pixel_shuffle(features, factor)``: (batch, side², d) → (batch, (side/s)², s²·d), each output token the
    s × s block of neighbouring patches, concatenated row by row (the layout of ``mmcourse.vlm.pixel_shuffle``)."""

    def test() -> None:
        generator = torch.Generator().manual_seed(9)
        for batch, side, d, factor in ((2, 4, 3, 2), (1, 6, 2, 3), (2, 6, 5, 2)):
            features = torch.randn(batch, side * side, d, generator=generator)  # (batch, side², d)
            answer = my_pixel_shuffle(features.clone(), factor)
            blocks = side // factor
            expect_shape(answer, (batch, blocks * blocks, factor * factor * d),
                         f"my_pixel_shuffle(features {tuple(features.shape)}, factor={factor})")  # fmt: skip
            assert isinstance(answer, Tensor)
            expected = pixel_shuffle(features, factor)
            if torch.allclose(answer, features.reshape(expected.shape)):
                raise Hint("a plain reshape puts s² patches that follow each other in one row of the grid into a "
                           "token, not an s × s block of neighbours: view the patches as a side × side grid, then "
                           "permute so that the rows and columns inside a block come together.")  # fmt: skip
            grid = features.reshape(batch, blocks, factor, blocks, factor, d)  # (batch, row, i, col, j, d)
            for order, hint in (
                ((0, 1, 3, 4, 2, 5), "inside a block the patches go row by row: (0, 0), (0, 1), …, then the next "
                 "row — you have them column by column."),
                ((0, 3, 1, 2, 4, 5), "the blocks themselves go row by row over the grid, like the patches: you have "
                 "them column by column."),
                ((0, 1, 3, 5, 2, 4), "concatenate whole patch vectors (the d features of patch (0, 0), then of patch "
                 "(0, 1), …), not feature by feature: torch's pixel_unshuffle orders the channels this other way."),
            ):  # fmt: skip
                if torch.allclose(answer, grid.permute(*order).reshape(expected.shape)):
                    raise Hint(hint)
            expect_close(answer, expected, "each output token is one s × s block of neighbouring patches, the "
                                           "patches concatenated row by row.")  # fmt: skip

    return run_check("pixel shuffle", test)


def _reference_targets(prompt_ids: list[int], answer_ids: list[int], n: int) -> tuple[list[int], list[int]]:
    """One row of ``vlm_batch``: its (input_ids, targets), which a single row never pads."""
    batch = vlm_batch(torch.zeros(1, 3, 2, 2), [prompt_ids], [answer_ids], IMAGE_ID, n)
    return batch["input_ids"][0].tolist(), batch["targets"][0].tolist()


_EXPANDED_PROMPT = (
    "count the prompt after the expansion: it is n_image_tokens - 1 tokens longer than prompt_ids, "
    "and every one of its positions but the last gets -100."
)


def check_vlm_targets(
    my_vlm_targets: Callable[[list[int], list[int], int, int], tuple[list[int], list[int]]],
) -> CheckResult:
    """``my_vlm_targets(prompt_ids, answer_ids, image_token_id, n_image_tokens)`` → (input_ids, targets): the
    placeholder expanded, the tokens but the last, and the next token on the answer, -100 on prompt and image."""

    def test() -> None:
        cases = (([4, IMAGE_ID, 5, 6], [20, 21, 2], 4), ([IMAGE_ID, 7], [30, 2], 3), ([8, 9, IMAGE_ID], [3], 2))
        for prompt_ids, answer_ids, n in cases:
            answer = my_vlm_targets(list(prompt_ids), list(answer_ids), IMAGE_ID, n)
            expect(isinstance(answer, tuple) and len(answer) == 2, "return a pair (input_ids, targets).")
            input_ids = _id_list(answer[0], "input_ids")
            targets = _id_list(answer[1], "targets")
            expected_inputs, expected_targets = _reference_targets(prompt_ids, answer_ids, n)
            expanded = len(prompt_ids) + n - 1
            if input_ids.count(IMAGE_ID) == 1:
                raise Hint(f"expand the placeholder first: the image takes n_image_tokens (here {n}) positions of "
                           "the sequence, one placeholder each.")  # fmt: skip
            expect(input_ids.count(IMAGE_ID) == n, f"input_ids should hold n_image_tokens (here {n}) placeholders.")
            if len(input_ids) == expanded + len(answer_ids):
                raise Hint("input_ids drop the last token: nothing comes after it to be predicted.")
            if len(input_ids) == expanded + len(answer_ids) - 1 and len(targets) == len(input_ids) - n + 1:
                raise Hint(_EXPANDED_PROMPT)
            expect(len(input_ids) == len(targets) == expanded + len(answer_ids) - 1, "input_ids and targets have "
                   "one entry per position: len(expanded prompt) + len(answer) - 1.")  # fmt: skip
            expect(input_ids == expected_inputs, "input_ids are the expanded prompt followed by the answer, but the "
                                                 "last token.")  # fmt: skip
            tokens = [*expected_inputs, answer_ids[-1]]
            if targets == tokens[1:]:
                raise Hint("the targets of prompt and image positions must be -100 (IGNORE_INDEX): the loss is on "
                           "the answer only.")  # fmt: skip
            if targets == [IGNORE_INDEX if token == IMAGE_ID else token for token in tokens[1:]]:
                raise Hint("-100 on the image positions is right, but the prompt's text must be -100 too: only the "
                           "answer is learned.")  # fmt: skip
            if targets.count(IGNORE_INDEX) == len(prompt_ids) - 1:
                raise Hint(_EXPANDED_PROMPT)
            if targets.count(IGNORE_INDEX) == expanded:
                raise Hint("one -100 too many: the prompt's last token predicts the answer's first token, so its "
                           "target is that token.")  # fmt: skip
            expect(targets == expected_targets, "targets[t] is the token at t + 1, or -100 where that token belongs "
                                                "to the (expanded) prompt.")  # fmt: skip

    return run_check("answer-only targets with image tokens", test)


def _scores(answer: object, what: str) -> dict[str, float]:
    """``answer`` as a dict of POPE_KEYS → float, or a Hint."""
    expect(isinstance(answer, Mapping), f"{what} should be a dict, but it is a {type(answer).__name__}.")
    assert isinstance(answer, Mapping)
    missing = [key for key in POPE_KEYS if key not in answer]
    expect(not missing, f"{what} has no {', '.join(repr(key) for key in missing)}: return the keys "
                        f"{', '.join(POPE_KEYS)}.")  # fmt: skip
    values = {}
    for key in POPE_KEYS:
        value = answer[key]
        if isinstance(value, Tensor) and value.numel() == 1:
            value = value.item()
        expect(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
               f"{what}[{key!r}] should be a finite number, but it is {type(value).__name__} {value!r}.")  # fmt: skip
        values[key] = float(value)
    return values


def _is_nan(value: object) -> bool:
    if isinstance(value, Tensor):
        return bool(value.isnan().any())
    return isinstance(value, float) and math.isnan(value)


def check_pope_scores(my_pope_scores: Callable[[list[bool], list[bool]], dict[str, float]]) -> CheckResult:
    """``my_pope_scores(predicted_yes, truth)``, two lists of bools → {"accuracy", "precision", "recall", "f1",
    "yes_rate"}, "yes" the positive class; precision (recall) 0.0 when nothing is predicted (truly) "yes"."""

    def close(a: float, b: float) -> bool:
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)

    def test() -> None:
        predicted = [True, True, True, True, False, False, True, False, True, True]
        truth = [True, True, False, False, True, False, False, False, True, False]  # tp 3, fp 4, fn 1, tn 2
        answer = _scores(my_pope_scores(list(predicted), list(truth)), "my_pope_scores(...)")
        expected = pope_scores(predicted, truth)
        p, r = expected["precision"], expected["recall"]
        if close(answer["precision"], r) and close(answer["recall"], p):
            raise Hint("precision and recall are the other way round: precision is the share of the model's "
                       "\"yes\" answers that are right, recall the share of the objects really there that it "
                       "found.")  # fmt: skip
        if close(answer["yes_rate"], sum(truth) / len(truth)):
            raise Hint("yes_rate is how often the *model* says yes (the predictions), not how often yes is true: a "
                       "yes_rate above the truth's share is the sign of a model that hallucinates.")  # fmt: skip
        if close(answer["f1"], (p + r) / 2) and not close(answer["f1"], expected["f1"]):
            raise Hint("F1 is the harmonic mean 2PR / (P + R), not the arithmetic mean (P + R) / 2: it stays low "
                       "when either is low.")  # fmt: skip
        meanings = {
            "accuracy": "the share of questions answered right, yes or no.",
            "precision": "true positives / the number of predicted yes.",
            "recall": "true positives / the number of true yes.",
            "f1": "2 · precision · recall / (precision + recall).",
            "yes_rate": "the share of predictions that are yes.",
        }
        for key in POPE_KEYS:
            expect(close(answer[key], expected[key]), f"{key} is wrong: it is {meanings[key]}")
        zero = ("with no yes predicted (or none true), precision (or recall) divides by zero: POPE counts it as 0.0, "
                "and F1 as 0.0 when precision and recall are both 0.")  # fmt: skip
        for edge_predicted, edge_truth in (([False] * 4, [True, False, True, False]), ([True, False], [False, False])):
            try:
                raw = my_pope_scores(list(edge_predicted), list(edge_truth))
            except ZeroDivisionError:
                raise Hint(zero) from None
            if isinstance(raw, Mapping) and any(_is_nan(value) for value in raw.values()):
                raise Hint(zero)
            answer = _scores(raw, "my_pope_scores(...)")
            expected = pope_scores(edge_predicted, edge_truth)
            expect(all(close(answer[key], expected[key]) for key in POPE_KEYS), zero)

    return run_check("POPE scores", test)


def check_hallucination_measurement(scores: Mapping[str, float] | None, n_questions: int | None = None) -> CheckResult:
    """POPE scores (a ``pope_scores`` dict) measured on a new set of existence questions, ``n_questions`` of them if
    given: the five keys, shares in [0, 1], and numbers that one set of answers can give together."""

    def test() -> None:
        if scores is None:
            raise NotImplementedError
        values = _scores(scores, "your scores")
        expect(all(0.0 <= value <= 1.0 for value in values.values()), "every POPE number is a share in [0, 1].")
        p, r = values["precision"], values["recall"]
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        expect(math.isclose(values["f1"], f1, abs_tol=1e-6), "f1 should be the harmonic mean of your precision and "
               "recall: use pope_scores on the answers.")  # fmt: skip
        true_positive_rate = p * values["yes_rate"]  # true positives / n
        if r > 0:  # accuracy = (TP + TN) / n = 1 - T/n - Y/n + 2 TP/n, with T/n = (TP/n) / recall
            accuracy = 1 - true_positive_rate / r - values["yes_rate"] + 2 * true_positive_rate
            expect(math.isclose(values["accuracy"], accuracy, abs_tol=1e-6),
                   "these numbers cannot all come from one set of answers: score the predictions and the truth of "
                   "the same questions with pope_scores.")  # fmt: skip
        if n_questions is not None:
            expect(isinstance(n_questions, int) and n_questions > 0, "n_questions is the number of questions asked.")
            for key in ("accuracy", "yes_rate"):
                count = values[key] * n_questions
                expect(abs(count - round(count)) < 1e-4, f"{key} should be a count / {n_questions}: did you score "
                                                         f"all {n_questions} questions?")  # fmt: skip
        if values["yes_rate"] in (0.0, 1.0):
            print("(the model gave the same answer to every question: its accuracy here is only the share of that "
                  "answer in the set)")  # fmt: skip

    return run_check("hallucination, measured", test)
