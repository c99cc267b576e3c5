"""Chapter 9 checkers: the reference passes, typical wrong answers get a helpful hint, errors are reported."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from conftest import Outcome, raises

from mmcourse.alignment import sft_example
from mmcourse.data.conversations import pope_scores
from mmcourse.exercises.vlm import (
    check_expand_placeholder,
    check_hallucination_measurement,
    check_pixel_shuffle,
    check_pope_scores,
    check_vlm_targets,
)
from mmcourse.train import IGNORE_INDEX
from mmcourse.vlm import expand_image_placeholder, pixel_shuffle


def test_expand_placeholder_checker(outcome: Outcome) -> None:
    assert outcome(check_expand_placeholder(expand_image_placeholder))[0]

    def appended(ids, image_id, n):
        return [i for i in ids if i != image_id] + [image_id] * n

    def inserted(ids, image_id, n):  # list.insert changes the student's own list
        at = ids.index(image_id)
        for _ in range(n - 1):
            ids.insert(at, image_id)
        return ids

    passed, out = outcome(check_expand_placeholder(appended))
    assert not passed and "in place" in out
    passed, out = outcome(check_expand_placeholder(lambda ids, image_id, n: ids + [image_id] * n))
    assert not passed and "original placeholder is still there" in out
    passed, out = outcome(check_expand_placeholder(lambda ids, image_id, n: expand_image_placeholder(ids, image_id, 2)))
    assert not passed and "exactly n_image_tokens placeholders (here 4)" in out
    passed, out = outcome(check_expand_placeholder(inserted))
    assert not passed and "prompt_ids itself has changed" in out
    passed, out = outcome(check_expand_placeholder(lambda ids, image_id, n: torch.tensor(ids)))
    assert not passed and "list of token ids" in out
    passed, out = outcome(check_expand_placeholder(raises))
    assert not passed and "raised" in out


def test_pixel_shuffle_checker(outcome: Outcome) -> None:
    assert outcome(check_pixel_shuffle(pixel_shuffle))[0]

    def permuted(order):
        def shuffle(features, factor):
            batch, n, d = features.shape
            blocks = math.isqrt(n) // factor
            grid = features.reshape(batch, blocks, factor, blocks, factor, d)
            return grid.permute(*order).reshape(batch, blocks * blocks, factor * factor * d)

        return shuffle

    def unshuffle(features, factor):  # torch's pixel_unshuffle on the grid as an image: channels feature-major
        batch, n, d = features.shape
        side = math.isqrt(n)
        image = features.transpose(1, 2).reshape(batch, d, side, side)
        return F.pixel_unshuffle(image, factor).flatten(2).transpose(1, 2)

    assert outcome(check_pixel_shuffle(permuted((0, 1, 3, 2, 4, 5))))[0]  # the reference's own permutation
    passed, out = outcome(check_pixel_shuffle(lambda f, s: f.reshape(f.size(0), -1, s * s * f.size(2))))
    assert not passed and "plain reshape" in out
    passed, out = outcome(check_pixel_shuffle(permuted((0, 1, 3, 4, 2, 5))))
    assert not passed and "inside a block" in out
    passed, out = outcome(check_pixel_shuffle(permuted((0, 3, 1, 2, 4, 5))))
    assert not passed and "blocks themselves" in out
    passed, out = outcome(check_pixel_shuffle(unshuffle))
    assert not passed and "pixel_unshuffle" in out
    passed, out = outcome(check_pixel_shuffle(lambda f, s: f.reshape(f.size(0), -1, s * f.size(2))))
    assert not passed and "expected shape is (2, 4, 12)" in out
    passed, out = outcome(check_pixel_shuffle(lambda f, s: pixel_shuffle(f, s) + 0.1))
    assert not passed and "wrong values" in out
    passed, out = outcome(check_pixel_shuffle(raises))
    assert not passed and "raised" in out


def right_targets(prompt_ids, answer_ids, image_token_id, n_image_tokens):
    return sft_example(expand_image_placeholder(prompt_ids, image_token_id, n_image_tokens), answer_ids)


def test_vlm_targets_checker(outcome: Outcome) -> None:
    assert outcome(check_vlm_targets(right_targets))[0]

    def unmasked(prompt, answer, image_id, n):
        tokens = expand_image_placeholder(prompt, image_id, n) + answer
        return tokens[:-1], tokens[1:]

    def images_only(prompt, answer, image_id, n):
        tokens = expand_image_placeholder(prompt, image_id, n) + answer
        return tokens[:-1], [IGNORE_INDEX if token == image_id else token for token in tokens[1:]]

    def unexpanded_mask(prompt, answer, image_id, n):
        tokens = expand_image_placeholder(prompt, image_id, n) + answer
        targets = tokens[1:]
        targets[: len(prompt) - 1] = [IGNORE_INDEX] * (len(prompt) - 1)
        return tokens[:-1], targets

    def short_targets(prompt, answer, image_id, n):
        tokens = expand_image_placeholder(prompt, image_id, n) + answer
        return tokens[:-1], [IGNORE_INDEX] * (len(prompt) - 1) + answer

    def one_too_many(prompt, answer, image_id, n):
        expanded = expand_image_placeholder(prompt, image_id, n)
        return (expanded + answer)[:-1], [IGNORE_INDEX] * len(expanded) + answer[1:]

    passed, out = outcome(check_vlm_targets(lambda prompt, answer, image_id, n: sft_example(prompt, answer)))
    assert not passed and "expand the placeholder first" in out
    passed, out = outcome(check_vlm_targets(unmasked))
    assert not passed and "must be -100" in out
    passed, out = outcome(check_vlm_targets(images_only))
    assert not passed and "prompt's text must be -100 too" in out
    passed, out = outcome(check_vlm_targets(unexpanded_mask))
    assert not passed and "count the prompt after the expansion" in out
    passed, out = outcome(check_vlm_targets(short_targets))
    assert not passed and "count the prompt after the expansion" in out
    passed, out = outcome(check_vlm_targets(one_too_many))
    assert not passed and "one -100 too many" in out
    passed, out = outcome(check_vlm_targets(lambda *args: [list(part) for part in right_targets(*args)]))
    assert not passed and "return a pair" in out
    passed, out = outcome(check_vlm_targets(raises))
    assert not passed and "raised" in out


def test_pope_scores_checker(outcome: Outcome) -> None:
    assert outcome(check_pope_scores(pope_scores))[0]

    def changed(**replace):
        def scores(predicted, truth):
            right = pope_scores(predicted, truth)
            return {**right, **{key: value(right, predicted, truth) for key, value in replace.items()}}

        return scores

    def naive(predicted, truth):  # divides by zero when nothing is predicted yes
        true_positives = sum(p and t for p, t in zip(predicted, truth, strict=True))
        precision, recall = true_positives / sum(predicted), true_positives / sum(truth)
        accuracy = sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)
        f1 = 2 * precision * recall / (precision + recall)
        return {"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1,
                "yes_rate": sum(predicted) / len(predicted)}  # fmt: skip

    def with_torch(predicted, truth):  # nan where it divides by zero
        p, t = torch.tensor(predicted, dtype=torch.float), torch.tensor(truth, dtype=torch.float)
        precision, recall = (p * t).sum() / p.sum(), (p * t).sum() / t.sum()
        return {"accuracy": (p == t).float().mean(), "precision": precision, "recall": recall,
                "f1": 2 * precision * recall / (precision + recall), "yes_rate": p.mean()}  # fmt: skip

    swapped = changed(precision=lambda right, *_: right["recall"], recall=lambda right, *_: right["precision"])
    passed, out = outcome(check_pope_scores(swapped))
    assert not passed and "other way round" in out
    passed, out = outcome(check_pope_scores(changed(yes_rate=lambda right, p, truth: sum(truth) / len(truth))))
    assert not passed and "how often the *model* says yes" in out
    passed, out = outcome(check_pope_scores(changed(f1=lambda right, *_: (right["precision"] + right["recall"]) / 2)))
    assert not passed and "harmonic mean" in out
    hits_only = changed(accuracy=lambda right, p, truth: sum(a and b for a, b in zip(p, truth, strict=True)) / len(p))
    passed, out = outcome(check_pope_scores(hits_only))  # the "no" answered right are right answers too
    assert not passed and "accuracy is wrong" in out
    passed, out = outcome(check_pope_scores(naive))
    assert not passed and "divides by zero" in out
    passed, out = outcome(check_pope_scores(with_torch))
    assert not passed and "divides by zero" in out
    passed, out = outcome(check_pope_scores(lambda p, t: {"accuracy": 0.5}))
    assert not passed and "has no 'precision'" in out
    passed, out = outcome(check_pope_scores(lambda p, t: [0.5] * 5))
    assert not passed and "should be a dict" in out
    passed, out = outcome(check_pope_scores(raises))
    assert not passed and "raised" in out


def test_hallucination_measurement_checker(outcome: Outcome) -> None:
    predicted = [True, False, True, True, False, False, True, False]
    truth = [True, True, False, True, False, False, False, False]
    scores = pope_scores(predicted, truth)
    assert outcome(check_hallucination_measurement(scores, len(truth)))[0]
    assert outcome(check_hallucination_measurement(scores))[0]
    tensors = {key: torch.tensor(value) for key, value in scores.items()}
    assert outcome(check_hallucination_measurement(tensors, len(truth)))[0]
    passed, out = outcome(check_hallucination_measurement(pope_scores([True] * 4, [True, False, True, False]), 4))
    assert passed and "same answer to every question" in out
    passed, out = outcome(check_hallucination_measurement(None))
    assert not passed and "not answered" in out
    passed, out = outcome(check_hallucination_measurement({**scores, "f1": 0.5}))
    assert not passed and "harmonic mean" in out
    passed, out = outcome(check_hallucination_measurement({**scores, "accuracy": 0.9}))
    assert not passed and "one set of answers" in out
    passed, out = outcome(check_hallucination_measurement({key: 100 * value for key, value in scores.items()}))
    assert not passed and "[0, 1]" in out
    passed, out = outcome(check_hallucination_measurement(scores, 7))
    assert not passed and "/ 7" in out
    passed, out = outcome(check_hallucination_measurement({"accuracy": 0.5}))
    assert not passed and "has no" in out
