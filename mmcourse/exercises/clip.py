"""Checkers for the chapter 5 exercises (CLIP). Each prints a pass line or a hint; none raises."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mmcourse.clip import clip_loss, prompt_ensemble, recall_at_k
from mmcourse.exercises import CheckResult, Hint, expect, expect_close, expect_shape, run_check
from mmcourse.vision import patchify


def check_patchify(my_patchify: Callable[[Tensor, int], Tensor]) -> CheckResult:
    """``my_patchify(images, patch_size)``: (batch, C, H, W) → (batch, n_patches, C·p·p), row-major, channel-first."""

    def test() -> None:
        images = torch.rand(2, 3, 8, 12, generator=torch.Generator().manual_seed(5))  # not square: catches H/W swaps
        answer = my_patchify(images, 4)
        expect_shape(answer, (2, 6, 48), "my_patchify(images (2, 3, 8, 12), 4)")
        expected = patchify(images, 4)
        channel_last = images.unfold(2, 4, 4).unfold(3, 4, 4).permute(0, 2, 3, 4, 5, 1).reshape(2, 6, 48)
        if torch.allclose(answer, channel_last):
            raise Hint("flatten each patch channel-first: all of channel 0's pixels, then channel 1's, then 2's.")
        column_major = expected.view(2, 2, 3, 48).transpose(1, 2).reshape(2, 6, 48)
        if torch.allclose(answer, column_major):
            raise Hint("number the patches row by row (left to right along the top row first), not column by column.")
        expect_close(answer, expected, "patch n holds the pixels of one p×p square of the image, nothing else.")

    return run_check("patchify", test)


def check_clip_loss(my_clip_loss: Callable[[Tensor, Tensor, float], Tensor]) -> CheckResult:
    """``my_clip_loss(image_features, text_features, logit_scale)`` → CLIP's symmetric loss; features not normalised."""

    def test() -> None:
        generator = torch.Generator().manual_seed(7)
        image_features = torch.randn(6, 8, generator=generator) * torch.linspace(0.5, 3, 6)[:, None]  # (6, 8)
        text_features = image_features + torch.randn(6, 8, generator=generator)  # related, not equal
        text_features[:, 0] += 2.0  # so the two directions' losses differ
        scale = 12.5
        answer = my_clip_loss(image_features, text_features, scale)
        expect(isinstance(answer, Tensor) and answer.dim() == 0, "return a scalar tensor (0-dim): the mean loss.")
        image_embeds, text_embeds = F.normalize(image_features, dim=-1), F.normalize(text_features, dim=-1)
        expected = clip_loss(image_embeds, text_embeds, scale)
        logits = scale * image_embeds @ text_embeds.T  # (6, 6)
        targets = torch.arange(6)
        one_way = (F.cross_entropy(logits, targets), F.cross_entropy(logits.T, targets))
        if any(torch.allclose(answer, loss, atol=1e-5) for loss in one_way):
            raise Hint("average both directions: images choosing among texts and texts choosing among images.")
        if torch.allclose(answer, clip_loss(image_embeds, text_embeds, 1.0), atol=1e-5):
            raise Hint("multiply the cosine similarities by logit_scale before the cross-entropy.")
        raw = scale * image_features @ text_features.T
        unnormalised = (F.cross_entropy(raw, targets) + F.cross_entropy(raw.T, targets)) / 2
        if torch.allclose(answer, unnormalised, rtol=1e-4):
            raise Hint("L2-normalise both sets of features first, so the dot products are cosines.")
        expect_close(answer, expected, "the target of image i is text i (the diagonal), and vice versa.", "the loss")

    return run_check("CLIP's symmetric loss", test)


def check_recall_at_k(my_recall_at_k: Callable[[Tensor, Tensor, int], float]) -> CheckResult:
    """``my_recall_at_k(similarity, relevant, k)`` → share of queries with a relevant item among their top k."""

    def test() -> None:
        generator = torch.Generator().manual_seed(3)
        similarity = torch.randn(200, 50, generator=generator)  # (queries, items)
        relevant = torch.rand(200, 50, generator=generator) < 0.05
        own = torch.arange(200) % 50  # (queries,): the item each query was made from
        relevant[torch.arange(200), own] = True  # every query has an answer, many have several
        single = {"own": torch.zeros_like(relevant), "first": torch.zeros_like(relevant)}  # only one counted
        single["own"][torch.arange(200), own] = True
        single["first"][torch.arange(200), relevant.float().argmax(dim=-1)] = True
        for k in (1, 3, 5):
            answer = my_recall_at_k(similarity, relevant, k)
            expect(isinstance(answer, (float, int)) or (isinstance(answer, Tensor) and answer.numel() == 1),
                   "return one number: the share of queries that found a relevant item.")  # fmt: skip
            answer = float(answer)
            expected = recall_at_k(similarity, relevant, (k,))[k]
            if math.isclose(answer, expected, abs_tol=1e-6):
                continue
            if k > 1 and math.isclose(answer, recall_at_k(similarity, relevant, (k - 1,))[k - 1], abs_tol=1e-6):
                raise Hint(f"with k={k}, look at the k most similar items: you look at one too few.")
            if math.isclose(answer, recall_at_k(similarity, relevant, (k + 1,))[k + 1], abs_tol=1e-6):
                raise Hint(f"with k={k}, look at the k most similar items: you look at one too many.")
            if math.isclose(answer, recall_at_k(-similarity, relevant, (k,))[k], abs_tol=1e-6):
                raise Hint("the most similar items have the *largest* similarity: rank in descending order.")
            if any(
                math.isclose(answer, recall_at_k(similarity, one, (k,))[k], abs_tol=1e-6) for one in single.values()
            ):
                raise Hint("count a hit for *any* relevant item (relevant[q] may hold several), not one fixed item.")
            expect(0.0 <= answer <= 1.0, "recall is a share of the queries: between 0 and 1.")
            raise Hint(f"with k={k} the recall is off: for each query, is any of its top-k items relevant?")

    return run_check("Recall@K", test)


def check_prompt_ensemble(my_prompt_ensemble: Callable[[Tensor], Tensor]) -> CheckResult:
    """``my_prompt_ensemble(text_embeds)``: (templates, classes, D) → (classes, D), one unit vector per class."""

    def test() -> None:
        generator = torch.Generator().manual_seed(11)
        text_embeds = torch.randn(4, 5, 6, generator=generator)  # (templates, classes, D)
        text_embeds = text_embeds * torch.tensor([0.2, 1.0, 3.0, 8.0])[:, None, None]  # very different lengths
        answer = my_prompt_ensemble(text_embeds)
        if isinstance(answer, Tensor) and tuple(answer.shape) == (4, 6):
            raise Hint("average over the templates (dimension 0), not over the classes: one vector per class.")
        expect_shape(answer, (5, 6), "my_prompt_ensemble(text_embeds (4 templates, 5 classes, 6))")
        expected = prompt_ensemble(text_embeds)
        if torch.allclose(answer, F.normalize(text_embeds, dim=-1).mean(0), atol=1e-5):
            raise Hint("normalise the mean again: a mean of unit vectors is shorter than 1.")
        if torch.allclose(answer, F.normalize(text_embeds.mean(0), dim=-1), atol=1e-5):
            raise Hint("normalise each template's embedding *before* averaging, or long ones outvote short ones.")
        expect_close(answer, expected, "normalise, average over templates, normalise again.")

    return run_check("prompt ensemble", test)


def check_temperature_experiment(
    scales: Sequence[float], accuracies: Sequence[float], confidences: Sequence[float]
) -> CheckResult:
    """Zero-shot accuracy and mean top probability of the trained model, measured at increasing logit scales."""

    def test() -> None:
        if scales is None or accuracies is None or confidences is None:
            raise NotImplementedError  # still the placeholders: not answered yet
        expect(len(scales) == len(accuracies) == len(confidences) >= 3,
               "measure at least three scales, with one accuracy and one confidence each.")  # fmt: skip
        numbers = [*scales, *accuracies, *confidences]
        expect(all(isinstance(x, (int, float)) and math.isfinite(x) for x in numbers), "use plain numbers (float).")
        expect(list(scales) == sorted(scales) and scales[0] > 0, "list positive scales in increasing order.")
        expect(
            all(0 <= x <= 1 for x in [*accuracies, *confidences]), "accuracies and confidences are shares in [0, 1]."
        )
        expect(max(accuracies) - min(accuracies) < 1e-6,
               "the accuracies differ: did every scale use the same images and prompts? Multiplying all logits by one "
               "positive number cannot change which is largest.")  # fmt: skip
        rising = all(b > a for a, b in zip(confidences, confidences[1:], strict=False))
        expect(rising, "the confidence (mean of each image's top probability) should rise with the scale: check the "
                       "softmax is taken over the classes of each image.")  # fmt: skip

    return run_check("the temperature, measured", test)
