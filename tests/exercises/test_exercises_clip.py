"""Chapter 5 checkers: the reference passes, typical wrong answers get a helpful hint, errors are reported."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from conftest import Outcome, raises

from mmcourse.clip import clip_loss, prompt_ensemble, recall_at_k
from mmcourse.exercises.clip import (
    check_clip_loss,
    check_patchify,
    check_prompt_ensemble,
    check_recall_at_k,
    check_temperature_experiment,
)
from mmcourse.vision import patchify


def test_patchify_checker(outcome: Outcome) -> None:
    assert outcome(check_patchify(patchify))[0]

    def channel_last(images, patch_size):
        patches = images.unfold(2, patch_size, patch_size).unfold(3, patch_size, patch_size)  # (B, C, r, c, p, p)
        batch, channels, rows, columns = patches.shape[:4]
        return patches.permute(0, 2, 3, 4, 5, 1).reshape(batch, rows * columns, -1)

    def column_major(images, patch_size):
        patches = images.unfold(2, patch_size, patch_size).unfold(3, patch_size, patch_size)
        batch, channels, rows, columns = patches.shape[:4]
        return patches.permute(0, 3, 2, 1, 4, 5).reshape(batch, rows * columns, -1)

    passed, out = outcome(check_patchify(channel_last))
    assert not passed and "channel-first" in out
    passed, out = outcome(check_patchify(column_major))
    assert not passed and "row by row" in out
    passed, out = outcome(check_patchify(lambda images, patch_size: images.flatten(2)))
    assert not passed and "shape" in out
    passed, out = outcome(check_patchify(raises))
    assert not passed and "raised" in out


def test_clip_loss_checker(outcome: Outcome) -> None:
    def right(image_features, text_features, logit_scale):
        return clip_loss(F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1), logit_scale)

    assert outcome(check_clip_loss(right))[0]

    def one_way(image_features, text_features, logit_scale):
        logits = logit_scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T
        return F.cross_entropy(logits, torch.arange(len(logits)))

    passed, out = outcome(check_clip_loss(one_way))
    assert not passed and "both directions" in out
    passed, out = outcome(check_clip_loss(lambda image, text, scale: right(image, text, 1.0)))
    assert not passed and "logit_scale" in out
    passed, out = outcome(check_clip_loss(lambda image, text, scale: clip_loss_unnormalised(image, text, scale)))
    assert not passed and "normalise" in out
    passed, out = outcome(check_clip_loss(raises))
    assert not passed and "raised" in out


def clip_loss_unnormalised(image_features, text_features, logit_scale):
    logits = logit_scale * image_features @ text_features.T
    targets = torch.arange(len(logits))
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def test_recall_checker(outcome: Outcome) -> None:
    assert outcome(check_recall_at_k(lambda similarity, relevant, k: recall_at_k(similarity, relevant, (k,))[k]))[0]

    def one_too_few(similarity, relevant, k):
        return recall_at_k(similarity, relevant, (max(k - 1, 1),))[max(k - 1, 1)]

    def ascending(similarity, relevant, k):
        return recall_at_k(-similarity, relevant, (k,))[k]

    def first_relevant_only(similarity, relevant, k):
        top = similarity.topk(k, dim=-1).indices  # (Q, k)
        first = relevant.float().argmax(dim=-1, keepdim=True)  # (Q, 1): only one relevant item counts
        return (top == first).any(-1).float().mean().item()

    passed, out = outcome(check_recall_at_k(one_too_few))
    assert not passed and "one too few" in out
    passed, out = outcome(check_recall_at_k(ascending))
    assert not passed and "descending" in out
    passed, out = outcome(check_recall_at_k(first_relevant_only))
    assert not passed and "any" in out
    passed, out = outcome(check_recall_at_k(raises))
    assert not passed and "raised" in out


def test_prompt_ensemble_checker(outcome: Outcome) -> None:
    assert outcome(check_prompt_ensemble(prompt_ensemble))[0]
    passed, out = outcome(check_prompt_ensemble(lambda embeds: F.normalize(embeds, dim=-1).mean(0)))
    assert not passed and "normalise the mean again" in out
    passed, out = outcome(check_prompt_ensemble(lambda embeds: F.normalize(embeds.mean(0), dim=-1)))
    assert not passed and "before" in out
    passed, out = outcome(
        check_prompt_ensemble(lambda embeds: F.normalize(F.normalize(embeds, dim=-1).mean(1), dim=-1))
    )
    assert not passed and "templates" in out
    passed, out = outcome(check_prompt_ensemble(raises))
    assert not passed and "raised" in out


def test_temperature_checker(outcome: Outcome) -> None:
    assert outcome(check_temperature_experiment([1, 10, 100], [0.9, 0.9, 0.9], [0.2, 0.6, 0.95]))[0]
    passed, out = outcome(check_temperature_experiment(None, None, None))
    assert not passed and "not answered yet" in out
    passed, out = outcome(check_temperature_experiment([1, 10, 100], [0.5, 0.7, 0.9], [0.2, 0.6, 0.95]))
    assert not passed and "cannot change which is largest" in out
    passed, out = outcome(check_temperature_experiment([1, 10, 100], [0.9, 0.9, 0.9], [0.9, 0.6, 0.2]))
    assert not passed and "rise" in out
    passed, out = outcome(check_temperature_experiment([100, 10, 1], [0.9, 0.9, 0.9], [0.2, 0.6, 0.95]))
    assert not passed and "increasing order" in out
