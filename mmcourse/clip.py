"""CLIP (Radford et al., 2021): contrastive learning (对比学习) of an image tower and a text tower.

Both towers map into one space; after L2 normalisation the cosine similarity of every image with every text,
times a learned scale, gives the logits; a symmetric cross-entropy asks each image to pick its own text among the
batch and each text its own image. This module holds the loss, the temperature, the text tower and the two-tower
model, and the evaluation: zero-shot (零样本) classification by prompts, prompt ensembling, and retrieval Recall@K.

The loss and the forward passes check only shapes; the checks that read the data (ids inside the vocabulary,
unit-norm embeddings) run once where the data enters: ``check_text_ids`` after tokenizing, ``zero_shot_classify``
on the embeddings it is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcourse.bert import mean_pool
from mmcourse.checks import check_dropout, check_positive_int, check_positive_number, check_token_ids
from mmcourse.layers import EncoderLayer

TEXT_POOLINGS = ("end", "mean")

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


def _check_embeds(image_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor | float) -> None:
    """Shapes only: two (rows, D) tensors of the same width, and a scalar logit_scale (> 0 when a number)."""
    for name, embeds in (("image_embeds", image_embeds), ("text_embeds", text_embeds)):
        if not isinstance(embeds, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(embeds).__name__}")
        if embeds.dim() != 2 or embeds.size(0) == 0:
            raise ValueError(f"{name} must be a 2-D tensor (rows, D) with at least one row, got {tuple(embeds.shape)}")
    if image_embeds.size(-1) != text_embeds.size(-1):
        raise ValueError(f"image_embeds width {image_embeds.size(-1)} != text_embeds width {text_embeds.size(-1)}: "
                         "both towers must project into the same space")  # fmt: skip
    if isinstance(logit_scale, Tensor) and logit_scale.numel() != 1:
        raise ValueError(f"logit_scale must be a scalar, got shape {tuple(logit_scale.shape)}")
    if not isinstance(logit_scale, Tensor) and not logit_scale > 0:
        raise ValueError(f"logit_scale must be > 0 (it is exp of the learned log scale), got {logit_scale}")


def check_normalised(embeds: Tensor, name: str, atol: float = 1e-2) -> None:
    """ValueError naming ``name`` unless every row of ``embeds`` (rows, D) has unit L2 norm (within atol).

    It reads the data (a wait for the device): call it once on embeddings that come from outside, not per step.
    """
    norms = embeds.detach().float().norm(dim=-1)  # (rows,): float32 even for bf16 embeddings
    worst = (norms - 1).abs().max().item()
    if not worst <= atol:  # also catches NaN
        row = int((norms - 1).abs().nan_to_num(float("inf")).argmax())
        raise ValueError(f"{name} must be L2-normalised (unit rows, as CLIP requires): row {row} has norm "
                         f"{norms[row].item():.4f}. Use F.normalize({name}, dim=-1).")  # fmt: skip


def clip_logits(image_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor | float) -> tuple[Tensor, Tensor]:
    """Scaled cosines of normalised embeddings. Returns (logits_per_image (N, M), logits_per_text (M, N))."""
    _check_embeds(image_embeds, text_embeds, logit_scale)
    logits_per_image = logit_scale * image_embeds @ text_embeds.T  # (N, M)
    return logits_per_image, logits_per_image.T  # (N, M), (M, N)


def contrastive_loss(logits_per_image: Tensor) -> Tensor:
    """Symmetric InfoNCE of square logits (N, N) whose diagonal holds the matching pairs: 0-dim."""
    targets = torch.arange(logits_per_image.size(0), device=logits_per_image.device)  # (N,): the diagonal
    image_to_text = F.cross_entropy(logits_per_image, targets)  # each image picks its text
    text_to_image = F.cross_entropy(logits_per_image.T, targets)  # each text picks its image
    return (image_to_text + text_to_image) / 2


def clip_loss(image_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor | float) -> Tensor:
    """The mean cross-entropy of image->text and text->image, image i matching text i, of unit embeddings. 0-dim."""
    _check_embeds(image_embeds, text_embeds, logit_scale)
    if image_embeds.size(0) != text_embeds.size(0):
        raise ValueError(f"batch sizes differ: image_embeds has {image_embeds.size(0)} rows, text_embeds "
                         f"{text_embeds.size(0)}; the loss pairs image i with text i")  # fmt: skip
    logits_per_image = logit_scale * image_embeds @ text_embeds.T  # (N, N)
    return contrastive_loss(logits_per_image)


# ---------------------------------------------------------------------------------------------------------------
# The text tower and the two-tower model
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextEncoderConfig:
    vocab_size: int = 1000
    context_length: int = 32
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    d_ff: int = 512
    dropout: float = 0.0
    pooling: str = "end"  # "end": the last real token's state (CLIP's end-of-text pooling); "mean": their mean

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "d_model", "n_heads", "n_layers", "d_ff"):
            check_positive_int(name, getattr(self, name))
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        check_dropout("dropout", self.dropout)
        if self.pooling not in TEXT_POOLINGS:
            raise ValueError(f"pooling={self.pooling!r} is not one of {TEXT_POOLINGS}")


def check_text_ids(input_ids: Tensor, attention_mask: Tensor, vocab_size: int) -> None:
    """The checks that read the data, run once where texts enter (after tokenizing), not in every forward: ids in
    [0, vocab_size), and every row right-padded with at least one real token, as the text tower's pooling needs."""
    check_token_ids("input_ids", input_ids, vocab_size)
    if not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}")
    lengths = attention_mask.long().sum(dim=-1)  # (batch,)
    if bool((lengths == 0).any()):
        raise ValueError("attention_mask has a row with no real token: every text needs at least one")
    positions = torch.arange(attention_mask.size(-1), device=attention_mask.device)  # (L,)
    if not torch.equal(attention_mask.bool(), positions < lengths[..., None]):
        raise ValueError("attention_mask must be right-padded: 1s first, then 0s, in every row")


def end_of_text_pool(hidden_states: Tensor, attention_mask: Tensor) -> Tensor:
    """The state of each sequence's last real token — [SEP] from a BERT-style tokenizer: (batch, L, d) → (batch, d).

    attention_mask (batch, L), 1 = real token, must be right-padded (real tokens first), as tokenizers pad.
    """
    if hidden_states.dim() != 3 or attention_mask.shape != hidden_states.shape[:2]:
        raise ValueError(f"hidden_states must be (batch, L, d) and attention_mask (batch, L), got "
                         f"{tuple(hidden_states.shape)} and {tuple(attention_mask.shape)}")  # fmt: skip
    last = attention_mask.long().sum(dim=1) - 1  # (batch,): the last real position
    rows = torch.arange(hidden_states.size(0), device=hidden_states.device)  # (batch,)
    return hidden_states[rows, last]  # (batch, d)


class TextEncoder(nn.Module):
    """Token + learned position embeddings → pre-LN encoder layers (padding masked) → LayerNorm → (batch, d_model).

    Every row needs at least one real token, right-padded (``check_text_ids`` checks a tokenized dataset once).
    """

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        if not isinstance(config, TextEncoderConfig):
            raise TypeError(f"config must be a TextEncoderConfig, got {type(config).__name__}")
        self.config = config
        self.out_features = config.d_model
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.context_length, config.d_model)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.01)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(config.d_model, config.n_heads, config.d_ff, config.dropout, "gelu", norm_first=True)
            for _ in range(config.n_layers)
        )
        self.norm = nn.LayerNorm(config.d_model)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """input_ids, attention_mask (batch, L), 1 = real token → (batch, d_model) pooled by ``config.pooling``."""
        if not isinstance(input_ids, Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"input_ids must be an int64 or int32 tensor of token ids, got {type(input_ids).__name__}"
                            f" {getattr(input_ids, 'dtype', '')}")  # fmt: skip
        if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(f"input_ids and attention_mask must both be (batch, L), got {tuple(input_ids.shape)} "
                             f"and {tuple(attention_mask.shape)}")  # fmt: skip
        if input_ids.size(1) > self.config.context_length:
            raise ValueError(f"input_ids has {input_ids.size(1)} tokens, more than context_length="
                             f"{self.config.context_length}")  # fmt: skip
        positions = torch.arange(input_ids.size(1), device=input_ids.device)  # (L,)
        x = self.dropout(self.token_embedding(input_ids) + self.position_embedding(positions))  # (batch, L, d)
        keep = attention_mask.bool()[:, None, None, :]  # (batch, 1, 1, L): no token attends to padding
        for layer in self.layers:
            x, _ = layer(x, mask=keep)  # (batch, L, d_model)
        x = self.norm(x)
        if self.config.pooling == "end":
            return end_of_text_pool(x, attention_mask)  # (batch, d_model)
        return mean_pool(x, attention_mask)  # (batch, d_model)


@dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int = 128  # width of the shared image-text space
    init_temperature: float = 0.07
    max_scale: float = 100.0

    def __post_init__(self) -> None:
        check_positive_int("embed_dim", self.embed_dim)
        for name in ("init_temperature", "max_scale"):
            check_positive_number(name, getattr(self, name))


@dataclass
class CLIPOutput:
    """What ``CLIP.forward`` returns for N image-caption pairs (the names of transformers' CLIPOutput)."""

    loss: Tensor  # (): the symmetric contrastive loss
    logits_per_image: Tensor  # (N, N): image i against every caption, scaled cosines
    logits_per_text: Tensor  # (N, N): its transpose
    image_embeds: Tensor  # (N, embed_dim), unit rows
    text_embeds: Tensor  # (N, embed_dim), unit rows


class CLIP(nn.Module):
    """Two towers, each followed by a bias-free linear projection into one space, L2-normalised, and a LogitScale.

    ``image_encoder(images)`` and ``text_encoder(input_ids, attention_mask)`` return (batch, out_features); each
    tower module says its width in ``out_features``. Any tower works: ours, or a frozen pretrained one (LiT).
    """

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, config: CLIPConfig = CLIPConfig()) -> None:
        super().__init__()
        for name, tower in (("image_encoder", image_encoder), ("text_encoder", text_encoder)):
            if not isinstance(tower, nn.Module) or not isinstance(getattr(tower, "out_features", None), int):
                raise TypeError(f"{name} must be an nn.Module with an int attribute out_features (its output width)")
        self.config = config
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_projection = nn.Linear(image_encoder.out_features, config.embed_dim, bias=False)
        self.text_projection = nn.Linear(text_encoder.out_features, config.embed_dim, bias=False)
        self.logit_scale = LogitScale(config.init_temperature, config.max_scale)

    def encode_image(self, images: Tensor) -> Tensor:
        """(batch, C, H, W) → (batch, embed_dim), unit rows."""
        return F.normalize(self.image_projection(self.image_encoder(images)), dim=-1)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(batch, L) ids and mask → (batch, embed_dim), unit rows."""
        return self.project_text_features(self.text_encoder(input_ids, attention_mask))

    def project_text_features(self, features: Tensor) -> Tensor:
        """The text tower's outputs (batch, out_features) → (batch, embed_dim), unit rows. With a frozen text tower
        (LiT), its outputs never change, so they can be computed once and fed here."""
        if features.dim() != 2 or features.size(-1) != self.text_encoder.out_features:
            raise ValueError(f"features must be (batch, {self.text_encoder.out_features}), got shape "
                             f"{tuple(features.shape)}")  # fmt: skip
        return F.normalize(self.text_projection(features), dim=-1)

    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> CLIPOutput:
        """N image-caption pairs (image i goes with caption i) → a CLIPOutput: loss, logits and embeddings."""
        if images.size(0) != input_ids.size(0):
            raise ValueError(f"images and input_ids must have the same batch size (one caption per image), got "
                             f"{images.size(0)} and {input_ids.size(0)}")  # fmt: skip
        image_embeds = self.encode_image(images)  # (N, D)
        text_embeds = self.encode_text(input_ids, attention_mask)  # (N, D)
        logits_per_image, logits_per_text = clip_logits(image_embeds, text_embeds, self.logit_scale())  # (N, N) each
        return CLIPOutput(contrastive_loss(logits_per_image), logits_per_image, logits_per_text, image_embeds,
                          text_embeds)  # fmt: skip


def in_batch_accuracy(logits_per_image: Tensor) -> float:
    """Share of images whose own text (the diagonal) scores highest among the batch's texts."""
    if logits_per_image.dim() != 2 or logits_per_image.size(0) != logits_per_image.size(1):
        raise ValueError(f"logits_per_image must be square (N, N), got shape {tuple(logits_per_image.shape)}")
    targets = torch.arange(logits_per_image.size(0), device=logits_per_image.device)  # (N,)
    return (logits_per_image.argmax(dim=-1) == targets).float().mean().item()


def last_hidden_state(output: Any) -> Tensor:
    """An encoder's last-layer vectors (batch, L, d): a tensor, our BertOutput's .hidden_states, or a transformers
    output's .last_hidden_state (whose .hidden_states is a tuple of every layer's)."""
    hidden_states = output if isinstance(output, Tensor) else getattr(output, "last_hidden_state", None)
    if hidden_states is None:
        hidden_states = getattr(output, "hidden_states", None)
    if not isinstance(hidden_states, Tensor) or hidden_states.dim() != 3:
        raise TypeError(f"the encoder must return (batch, L, d) vectors: a tensor, .last_hidden_state (transformers) "
                        f"or .hidden_states (mmcourse BertModel), got {type(output).__name__}")  # fmt: skip
    return hidden_states


class LockedTextTower(nn.Module):
    """A pretrained sentence encoder, frozen: mean of its last hidden states over real tokens (LiT's locked tower).

    ``encoder(input_ids, attention_mask=...)`` returns the (batch, L, hidden) states — our BertModel's output, a
    transformers BertModel's, or a tensor — and ``out_features`` is ``hidden``. Its parameters get
    requires_grad=False and it stays in eval mode.
    """

    def __init__(self, encoder: nn.Module, out_features: int) -> None:
        super().__init__()
        check_positive_int("out_features", out_features)
        self.encoder = encoder.requires_grad_(False).eval()
        self.out_features = out_features

    def train(self, mode: bool = True) -> LockedTextTower:
        """Stay in eval mode: a locked tower's dropout must not change its outputs."""
        super().train(False)
        return self

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(batch, L) ids and mask → (batch, out_features), without building a graph."""
        with torch.no_grad():
            hidden_states = last_hidden_state(self.encoder(input_ids, attention_mask=attention_mask))  # (batch, L, h)
        if hidden_states.size(-1) != self.out_features:
            raise ValueError(
                f"the encoder returns width {hidden_states.size(-1)}, not out_features={self.out_features}"
            )
        return mean_pool(hidden_states, attention_mask)  # (batch, out_features)


def hf_clip_embeddings(
    hf_model: nn.Module, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """A transformers ``CLIPModel``'s L2-normalised (image_embeds (N, D), text_embeds (M, D)), for our functions."""
    if getattr(getattr(hf_model, "config", None), "model_type", None) != "clip":
        raise TypeError(f"hf_model must be a transformers CLIPModel, got {type(hf_model).__name__}")
    with torch.no_grad():
        image = hf_model.get_image_features(pixel_values=pixel_values)
        text = hf_model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
    image = getattr(image, "pooler_output", image)  # transformers 5 returns an output object, 4 a tensor
    text = getattr(text, "pooler_output", text)
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------


def prompt_ensemble(text_embeds: Tensor) -> Tensor:
    """One embedding per class from several prompt templates: (templates, C, D) -> (C, D), normalise-mean-normalise."""
    if not isinstance(text_embeds, Tensor) or text_embeds.dim() != 3 or text_embeds.size(0) == 0:
        shape = tuple(text_embeds.shape) if isinstance(text_embeds, Tensor) else type(text_embeds).__name__
        raise ValueError(f"text_embeds must be (templates, classes, D) with at least one template, got {shape}")
    mean = F.normalize(text_embeds, dim=-1).mean(dim=0)  # (C, D)
    return F.normalize(mean, dim=-1)  # (C, D)


def zero_shot_classify(
    image_embeds: Tensor, class_text_embeds: Tensor, logit_scale: Tensor | float = 100.0
) -> tuple[Tensor, Tensor]:
    """Each image's class = the prompt it is most similar to. Returns (probabilities (N, C), predictions (N,)).

    The embeddings come from outside (a model, transformers): here, once per call, they are checked to be unit.
    """
    logits_per_image, _ = clip_logits(image_embeds, class_text_embeds, logit_scale)  # (N, C), after shape checks
    check_normalised(image_embeds, "image_embeds")
    check_normalised(class_text_embeds, "text_embeds")
    probabilities = logits_per_image.softmax(dim=-1)  # (N, C)
    return probabilities, logits_per_image.argmax(dim=-1)  # (N, C), (N,)


def recall_at_k(similarity: Tensor, relevant: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Share of queries with a relevant item among their k most similar, for each k: {k: recall in [0, 1]}.

    similarity: (queries, items); relevant: (queries, items) bool, True where the item answers the query (several may,
    when captions are not unique). Ties in similarity are broken by torch.topk's order.
    """
    if not isinstance(similarity, Tensor) or similarity.dim() != 2 or similarity.size(0) == 0:
        shape = tuple(similarity.shape) if isinstance(similarity, Tensor) else type(similarity).__name__
        raise ValueError(f"similarity must be (queries, items) with at least one query, got shape {shape}")
    if not isinstance(relevant, Tensor) or relevant.shape != similarity.shape:
        shape = tuple(relevant.shape) if isinstance(relevant, Tensor) else type(relevant).__name__
        raise ValueError(f"relevant must have the shape of similarity {tuple(similarity.shape)}, got {shape}")
    if relevant.dtype != torch.bool:
        raise TypeError(f"relevant must be a bool tensor, got dtype {relevant.dtype}")
    without = (~relevant.any(dim=-1)).nonzero().flatten()  # (missing,)
    if len(without):
        raise ValueError(f"every query needs a relevant item; queries {without[:5].tolist()} have none")
    ks, items = tuple(ks), similarity.size(1)
    if not ks or any(not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= items for k in ks):
        raise ValueError(f"ks must be ints in [1, items={items}], got {ks}")
    top = similarity.topk(max(ks), dim=-1).indices  # (queries, max_k): most similar first
    hits = relevant.gather(1, top)  # (queries, max_k): is the r-th retrieved item relevant?
    found = hits.cummax(dim=-1).values  # (queries, max_k): a relevant item within the first r + 1?
    return {k: found[:, k - 1].float().mean().item() for k in ks}
