"""Checkers for the chapter 8 exercises (from GPT to ChatGPT). Each prints a pass line or a hint; none raises."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mmcourse.alignment import dpo_loss, sft_example
from mmcourse.exercises import CheckResult, Hint, expect, expect_close, expect_shape, run_check
from mmcourse.prompting import score_label_words
from mmcourse.train import IGNORE_INDEX


def check_label_scores(my_label_scores: Callable[[Tensor, Tensor], Tensor]) -> CheckResult:
    """``my_label_scores(next_token_logits, label_ids)``: (batch, vocab), (n_labels,) → log-probs (batch, n_labels)
    of the label tokens under the softmax over the whole vocabulary."""

    def test() -> None:
        generator = torch.Generator().manual_seed(8)
        logits = torch.randn(5, 40, generator=generator) * 3  # (batch, vocab)
        label_ids = torch.tensor([17, 3, 29])
        answer = my_label_scores(logits, label_ids)
        expect_shape(answer, (5, 3), "my_label_scores(logits (5, 40), label_ids (3,))")
        expected = score_label_words(logits, label_ids)
        if torch.allclose(answer, logits[:, label_ids], atol=1e-5):
            raise Hint("these are raw logits: turn them into log-probabilities with a log-softmax first.")
        if torch.allclose(answer, logits[:, label_ids].log_softmax(-1), atol=1e-5):
            raise Hint("normalise over the whole vocabulary, then pick the label columns: the share of probability "
                       "left to the labels is part of what we want to see.")  # fmt: skip
        if torch.allclose(answer, logits.softmax(-1)[:, label_ids], atol=1e-5):
            raise Hint("return log-probabilities (log_softmax), not probabilities.")
        if torch.allclose(answer, logits.log_softmax(0)[:, label_ids], atol=1e-5):
            raise Hint("the softmax runs over the vocabulary (the last dimension), not over the batch.")
        expect_close(answer, expected, "column j holds the log-probability of token label_ids[j].")

    return run_check("label-word scores", test)


def check_sft_targets(my_sft_targets: Callable[[list[int], list[int]], tuple[list[int], list[int]]]) -> CheckResult:
    """``my_sft_targets(prompt_ids, response_ids)`` → (input_ids, targets), prompt targets set to -100."""

    def test() -> None:
        for prompt_ids, response_ids in (([5, 6, 7, 8], [20, 21, 2]), ([9], [30, 2]), ([1, 2], [3])):
            answer = my_sft_targets(list(prompt_ids), list(response_ids))
            expect(isinstance(answer, tuple) and len(answer) == 2, "return a pair (input_ids, targets).")
            input_ids, targets = (list(map(int, part)) for part in answer)
            expected_inputs, expected_targets = sft_example(prompt_ids, response_ids)
            total = len(prompt_ids) + len(response_ids)
            if len(input_ids) == total:
                raise Hint("input_ids drop the last token: nothing comes after it to be predicted.")
            expect(len(input_ids) == len(targets) == total - 1,
                   "input_ids and targets have one entry per position: len(prompt) + len(response) - 1.")  # fmt: skip
            expect(input_ids == expected_inputs, "input_ids are the prompt followed by the response, but the last.")
            if len(prompt_ids) > 1 and targets == [*prompt_ids[1:], *response_ids]:
                raise Hint("the targets of prompt positions must be -100 (IGNORE_INDEX): the loss skips them.")
            if targets.count(IGNORE_INDEX) == len(prompt_ids):
                raise Hint("one -100 too many: the prompt's last token is the one that predicts the first answer "
                           "token, so its target is the first response token.")  # fmt: skip
            expect(targets == expected_targets, "targets[t] is the token at t + 1, or -100 where it is a prompt token.")

    return run_check("SFT targets", test)


def check_dpo_loss(my_dpo_loss: Callable[[Tensor, Tensor, Tensor, Tensor, float], Tensor]) -> CheckResult:
    """``my_dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)`` → mean DPO loss."""

    def test() -> None:
        generator = torch.Generator().manual_seed(4)
        logps = [torch.randn(6, generator=generator) * 3 - 10 for _ in range(4)]  # (6,) each
        beta = 0.3
        same = my_dpo_loss(logps[0], logps[1], logps[0].clone(), logps[1].clone(), beta)
        expect(isinstance(same, Tensor) and same.dim() == 0, "return a scalar tensor: the mean loss over the pairs.")
        expect(math.isclose(same.item(), math.log(2), rel_tol=1e-4),
               "when the policy equals the reference, every margin is 0 and the loss is -log σ(0) = ln 2.")  # fmt: skip
        answer = my_dpo_loss(*logps, beta)
        expected, _, _ = dpo_loss(*logps, beta)
        swapped, _, _ = dpo_loss(logps[1], logps[0], logps[3], logps[2], beta)
        if torch.allclose(answer, swapped, atol=1e-5):
            raise Hint("the margin is chosen minus rejected: you have them the other way round.")
        no_beta, _, _ = dpo_loss(*logps, 1.0)
        if torch.allclose(answer, no_beta, atol=1e-5):
            raise Hint("multiply the margin by beta before the log-sigmoid.")
        no_reference = -F.logsigmoid(beta * (logps[0] - logps[1])).mean()
        if torch.allclose(answer, no_reference, atol=1e-5):
            raise Hint("subtract the reference's log-probabilities: DPO's reward is log π - log π_ref.")
        expect_close(answer, expected, "loss = -log σ(β[(π_w - ref_w) - (π_l - ref_l)]), averaged over pairs.")

    return run_check("DPO loss", test)


def check_ewc_penalty(my_ewc_penalty: Callable[[dict, dict, dict, float], Tensor]) -> CheckResult:
    """``my_ewc_penalty(parameters, anchors, fisher, strength)`` → (strength / 2) Σ F (θ - θ*)² over every name."""

    def test() -> None:
        generator = torch.Generator().manual_seed(2)
        shapes = {"weight": (3, 4), "bias": (3,)}
        anchors = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
        fisher = {name: torch.rand(shape, generator=generator) for name, shape in shapes.items()}
        at_anchor = my_ewc_penalty({k: v.clone() for k, v in anchors.items()}, anchors, fisher, 5.0)
        expect(isinstance(at_anchor, Tensor) and at_anchor.dim() == 0, "return a scalar tensor.")
        expect(at_anchor.abs().item() < 1e-8, "the penalty must be zero at the anchor weights.")
        moved = {name: value + torch.randn(value.shape, generator=generator) for name, value in anchors.items()}
        answer = my_ewc_penalty(moved, anchors, fisher, 5.0)
        expected = 2.5 * sum((fisher[n] * (moved[n] - anchors[n]) ** 2).sum() for n in shapes)
        if torch.allclose(answer, 2 * expected, rtol=1e-4):
            raise Hint("the penalty has a factor 1/2: (strength / 2) Σ F (θ - θ*)².")
        if torch.allclose(answer, 2.5 * (fisher["weight"] * (moved["weight"] - anchors["weight"]) ** 2).sum()):
            raise Hint("sum over every parameter tensor (the bias too), not only the first.")
        unweighted = 2.5 * sum(((moved[n] - anchors[n]) ** 2).sum() for n in shapes)
        if torch.allclose(answer, unweighted, rtol=1e-4):
            raise Hint("weight each squared difference by its Fisher value: important weights are held tighter.")
        expect_close(answer, torch.as_tensor(expected), "(strength / 2) Σ F (θ - θ*)², summed over all entries.",
                     "the penalty")  # fmt: skip

    return run_check("EWC penalty", test)


def check_order_experiment(accuracies: Sequence[float], n_test: int) -> CheckResult:
    """Few-shot accuracies of one set of demonstrations in several orders, each on ``n_test`` test snippets."""

    def test() -> None:
        if accuracies is None:
            raise NotImplementedError
        expect(len(accuracies) >= 3, "measure at least three orders of the same demonstrations.")
        expect(all(isinstance(x, (int, float)) and math.isfinite(x) for x in accuracies), "use plain numbers.")
        expect(all(0.0 <= x <= 1.0 for x in accuracies), "accuracies are shares in [0, 1].")
        counts = [x * n_test for x in accuracies]
        expect(
            all(abs(c - round(c)) < 1e-4 for c in counts),
            f"each accuracy should be (correct snippets) / {n_test}: did you score all {n_test} test snippets?",
        )
        if max(accuracies) - min(accuracies) == 0:
            print("(all orders gave the same accuracy here: try other demonstrations, or more test snippets)")

    return run_check("example order, measured", test)
