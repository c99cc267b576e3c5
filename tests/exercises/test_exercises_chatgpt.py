"""Chapter 8 checkers: the reference passes, typical wrong answers get a helpful hint, errors are reported."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from conftest import Outcome, raises

from mmcourse.alignment import dpo_loss, sft_example
from mmcourse.exercises.chatgpt import (
    check_dpo_loss,
    check_ewc_penalty,
    check_label_scores,
    check_order_experiment,
    check_sft_targets,
)
from mmcourse.prompting import score_label_words
from mmcourse.train import IGNORE_INDEX


def test_label_scores_checker(outcome: Outcome) -> None:
    assert outcome(check_label_scores(score_label_words))[0]
    passed, out = outcome(check_label_scores(lambda logits, ids: logits[:, ids]))
    assert not passed and "log-softmax" in out
    passed, out = outcome(check_label_scores(lambda logits, ids: logits[:, ids].log_softmax(-1)))
    assert not passed and "whole vocabulary" in out
    passed, out = outcome(check_label_scores(lambda logits, ids: logits.softmax(-1)[:, ids]))
    assert not passed and "not probabilities" in out
    passed, out = outcome(check_label_scores(raises))
    assert not passed and "raised" in out


def test_sft_targets_checker(outcome: Outcome) -> None:
    assert outcome(check_sft_targets(sft_example))[0]

    def unmasked(prompt, response):
        tokens = prompt + response
        return tokens[:-1], tokens[1:]

    def one_too_many(prompt, response):
        tokens = prompt + response
        return tokens[:-1], [IGNORE_INDEX] * len(prompt) + response[1:]

    passed, out = outcome(check_sft_targets(unmasked))
    assert not passed and "-100" in out
    passed, out = outcome(check_sft_targets(one_too_many))
    assert not passed and "one -100 too many" in out
    passed, out = outcome(check_sft_targets(lambda prompt, response: (prompt + response, prompt + response)))
    assert not passed and "drop the last token" in out
    passed, out = outcome(check_sft_targets(raises))
    assert not passed and "raised" in out


def test_dpo_loss_checker(outcome: Outcome) -> None:
    assert outcome(check_dpo_loss(lambda *args: dpo_loss(*args)[0]))[0]
    passed, out = outcome(check_dpo_loss(lambda pc, pr, rc, rr, beta: dpo_loss(pr, pc, rr, rc, beta)[0]))
    assert not passed and "other way round" in out
    passed, out = outcome(check_dpo_loss(lambda pc, pr, rc, rr, beta: dpo_loss(pc, pr, rc, rr, 1.0)[0]))
    assert not passed and "beta" in out
    passed, out = outcome(check_dpo_loss(lambda pc, pr, rc, rr, beta: -F.logsigmoid(beta * (pc - pr)).mean()))
    assert not passed and "ln 2" in out  # without the reference, policy = reference no longer gives ln 2
    passed, out = outcome(check_dpo_loss(raises))
    assert not passed and "raised" in out


def right_penalty(parameters, anchors, fisher, strength):
    return strength / 2 * sum((fisher[n] * (parameters[n] - anchors[n]) ** 2).sum() for n in anchors)


def test_ewc_penalty_checker(outcome: Outcome) -> None:
    assert outcome(check_ewc_penalty(right_penalty))[0]
    passed, out = outcome(check_ewc_penalty(lambda p, a, f, s: 2 * right_penalty(p, a, f, s)))
    assert not passed and "1/2" in out
    passed, out = outcome(
        check_ewc_penalty(lambda p, a, f, s: right_penalty(p, a, {n: torch.ones_like(v) for n, v in f.items()}, s))
    )
    assert not passed and "Fisher" in out
    passed, out = outcome(check_ewc_penalty(lambda p, a, f, s: right_penalty(p, a, f, s) + 1.0))
    assert not passed and "zero at the anchor" in out
    passed, out = outcome(check_ewc_penalty(raises))
    assert not passed and "raised" in out


def test_order_experiment_checker(outcome: Outcome) -> None:
    assert outcome(check_order_experiment([0.5, 0.75, 0.625], 8))[0]
    passed, out = outcome(check_order_experiment(None, 8))
    assert not passed and "not answered" in out
    passed, out = outcome(check_order_experiment([0.5, 0.7], 8))
    assert not passed and "three orders" in out
    passed, out = outcome(check_order_experiment([0.5, 0.7, 0.6], 8))
    assert not passed and "/ 8" in out
    passed, out = outcome(check_order_experiment([0.5, 1.5, 0.5], 8))
    assert not passed and "[0, 1]" in out
