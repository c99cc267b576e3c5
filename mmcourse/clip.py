"""CLIP (Radford et al., 2021): contrastive learning (对比学习) of an image tower and a text tower.

Both towers map into one space; after L2 normalisation the cosine similarity of every image with every text,
times a learned scale, gives the logits; a symmetric cross-entropy asks each image to pick its own text among the
batch and each text its own image. This module holds the loss, the temperature, and the evaluation: zero-shot
(零样本) classification by prompts, prompt ensembling, and retrieval Recall@K.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ---------------------------------------------------------------------------------------------------------------
# The temperature
# ---------------------------------------------------------------------------------------------------------------


class LogitScale(nn.Module):
    """CLIP's learnable logit scale exp(t) = 1 / temperature: t starts at ln(1/0.07) and is capped at ln(100).

    The cap is applied in place at the start of every forward, as CLIP clamps the parameter after each optimiser
    step: an optimiser step may push t past ln(100), but forward() puts it back before using it, so the scale a
    loss sees is never above 100, and below the cap the gradient flows unchanged.
    """

    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0) -> None:
        super().__init__()
        if not 0 < init_temperature:
            raise ValueError(f"init_temperature must be > 0, got {init_temperature}")
        if not 1 / init_temperature <= max_scale:
            raise ValueError(f"max_scale={max_scale} must be >= 1 / init_temperature = {1 / init_temperature:.2f}")
        self.max_log_scale = math.log(max_scale)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))  # () learnable

    def forward(self) -> Tensor:
        """The scale exp(t), after clamping t to at most ln(max_scale): a 0-dim tensor."""
        with torch.no_grad():
            self.log_scale.clamp_(max=self.max_log_scale)
        return self.log_scale.exp()  # ()

    def extra_repr(self) -> str:
        return f"scale={self.log_scale.exp().item():.2f}, max_scale={math.exp(self.max_log_scale):.0f}"


# ---------------------------------------------------------------------------------------------------------------
# Logits and loss
# ---------------------------------------------------------------------------------------------------------------


def _check_matrix(embeds: Tensor, name: str) -> None:
    """Raise ValueError naming ``name`` unless ``embeds`` is a 2-D tensor with at least one row."""
    if not isinstance(embeds, Tensor) or embeds.dim() != 2:
        shape = tuple(embeds.shape) if isinstance(embeds, Tensor) else type(embeds).__name__
        raise ValueError(f"{name} must be a 2-D tensor (rows, D), got shape {shape}")
    if embeds.size(0) == 0:
        raise ValueError(f"{name} has no rows")


def check_normalised(embeds: Tensor, name: str, atol: float = 1e-2) -> None:
    """Raise ValueError naming ``name`` unless ``embeds`` is (rows, D) with every row of unit L2 norm (within atol)."""
    _check_matrix(embeds, name)
    norms = embeds.detach().float().norm(dim=-1)  # (rows,): float32 even for bf16 embeddings
    worst = (norms - 1).abs().max().item()
    if not worst <= atol:  # also catches NaN
        row = int((norms - 1).abs().nan_to_num(float("inf")).argmax())
        raise ValueError(
            f"{name} must be L2-normalised (unit rows, as CLIP requires): row {row} has norm {norms[row].item():.4f}. "
            f"Use F.normalize({name}, dim=-1)."
        )


def clip_logits(image_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor | float) -> tuple[Tensor, Tensor]:
    """Scaled cosines of normalised embeddings. Returns (logits_per_image (N, M), logits_per_text (M, N))."""
    check_normalised(image_embeds, "image_embeds")
    check_normalised(text_embeds, "text_embeds")
    if image_embeds.size(-1) != text_embeds.size(-1):
        raise ValueError(
            f"image_embeds width {image_embeds.size(-1)} != text_embeds width {text_embeds.size(-1)}: "
            "both towers must project into the same space"
        )
    _check_scale(logit_scale)
    logits_per_image = logit_scale * image_embeds @ text_embeds.T  # (N, M)
    return logits_per_image, logits_per_image.T  # (N, M), (M, N)


def _check_scale(logit_scale: Tensor | float) -> None:
    """Raise ValueError unless logit_scale is a positive scalar (a float or a one-element tensor)."""
    value = logit_scale
    if isinstance(logit_scale, Tensor):
        if logit_scale.numel() != 1:
            raise ValueError(f"logit_scale must be a scalar, got shape {tuple(logit_scale.shape)}")
        value = logit_scale.detach().item()
    if not value > 0:
        raise ValueError(f"logit_scale must be > 0 (it is exp of the learned log scale), got {value}")


def clip_loss(image_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Symmetric InfoNCE: mean cross-entropy of image->text and text->image, image i matching text i. 0-dim."""
    _check_matrix(image_embeds, "image_embeds")
    _check_matrix(text_embeds, "text_embeds")
    if image_embeds.size(0) != text_embeds.size(0):
        raise ValueError(
            f"batch sizes differ: image_embeds has {image_embeds.size(0)} rows, text_embeds {text_embeds.size(0)}; "
            "the loss pairs image i with text i"
        )
    logits_per_image, logits_per_text = clip_logits(image_embeds, text_embeds, logit_scale)  # (N, N), (N, N)
    targets = torch.arange(logits_per_image.size(0), device=logits_per_image.device)  # (N,): the diagonal
    image_to_text = F.cross_entropy(logits_per_image, targets)  # each image picks its text
    text_to_image = F.cross_entropy(logits_per_text, targets)  # each text picks its image
    return (image_to_text + text_to_image) / 2


# ---------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------


def prompt_ensemble(text_embeds: Tensor) -> Tensor:
    """One embedding per class from several prompt templates: (templates, C, D) -> (C, D), normalise-mean-normalise."""
    if not isinstance(text_embeds, Tensor) or text_embeds.dim() != 3:
        shape = tuple(text_embeds.shape) if isinstance(text_embeds, Tensor) else type(text_embeds).__name__
        raise ValueError(f"text_embeds must be (templates, classes, D), got shape {shape}")
    if text_embeds.size(0) == 0:
        raise ValueError("text_embeds has no templates")
    mean = F.normalize(text_embeds, dim=-1).mean(dim=0)  # (C, D)
    return F.normalize(mean, dim=-1)  # (C, D)


def zero_shot_classify(
    image_embeds: Tensor, class_text_embeds: Tensor, logit_scale: Tensor | float = 100.0
) -> tuple[Tensor, Tensor]:
    """Each image's class = the prompt it is most similar to. Returns (probabilities (N, C), predictions (N,))."""
    logits_per_image, _ = clip_logits(image_embeds, class_text_embeds, logit_scale)  # (N, C)
    probabilities = logits_per_image.softmax(dim=-1)  # (N, C)
    return probabilities, logits_per_image.argmax(dim=-1)  # (N, C), (N,)


def recall_at_k(similarity: Tensor, relevant: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Share of queries with a relevant item among their k most similar, for each k: {k: recall in [0, 1]}.

    similarity: (queries, items); relevant: (queries, items) bool, True where the item answers the query (several may,
    when captions are not unique). Ties in similarity are broken by torch.topk's order.
    """
    if not isinstance(similarity, Tensor) or similarity.dim() != 2:
        shape = tuple(similarity.shape) if isinstance(similarity, Tensor) else type(similarity).__name__
        raise ValueError(f"similarity must be (queries, items), got shape {shape}")
    if not isinstance(relevant, Tensor) or relevant.shape != similarity.shape:
        shape = tuple(relevant.shape) if isinstance(relevant, Tensor) else type(relevant).__name__
        raise ValueError(f"relevant must have the shape of similarity {tuple(similarity.shape)}, got {shape}")
    if relevant.dtype != torch.bool:
        raise ValueError(f"relevant must be a bool tensor, got dtype {relevant.dtype}")
    queries, items = similarity.shape
    if queries == 0:
        raise ValueError("similarity has no queries")
    without = (~relevant.any(dim=-1)).nonzero().flatten()  # (missing,)
    if len(without):
        raise ValueError(f"every query needs a relevant item; queries {without[:5].tolist()} have none")
    ks = tuple(ks)
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= items for k in ks):
        raise ValueError(f"ks must be ints in [1, items={items}], got {ks}")
    top = similarity.topk(max(ks), dim=-1).indices  # (queries, max_k): most similar first
    hits = relevant.gather(1, top)  # (queries, max_k): is the r-th retrieved item relevant?
    found = hits.cummax(dim=-1).values  # (queries, max_k): a relevant item within the first r + 1?
    return {k: found[:, k - 1].float().mean().item() for k in ks}
