"""Multimodal fusion (多模态融合): encoders, a fusion module and a decoder (chapter 7).

A multimodal model reads each modality with an encoder, combines them in a fusion module and reads its answer off
a decoder: here a classifier over the answers of visual question answering, or a Transformer decoder that writes
a caption. The models differ in *where* the modalities meet:

- baselines that do not fuse: ``QuestionOnlyModel`` and ``ImageOnlyModel`` (how much is answerable without
  looking, or without reading?);
- late fusion (晚期融合): ``LateFusionModel`` encodes question and image apart, pools each to one vector and
  combines the two vectors (concatenation and element-wise product) in an MLP; ``LSTMCNNModel`` is the classic
  LSTM + CNN concatenation, in PyTorch;
- early fusion (早期融合): ``EarlyFusionModel`` puts image patch tokens and word tokens, each with a modality
  embedding, into one Transformer encoder from the first layer;
- cross-attention fusion (交叉注意力): ``CrossAttentionFusionModel`` lets every word token attend to the image
  patches (chapter 2's decoder layer without its causal mask), as Flamingo and BLIP-style models do;
- encoder–decoder: ``ImageCaptioner``, a ViT whose patch states a Transformer decoder cross-attends to.

Every VQA model is called ``model(images, input_ids, attention_mask)`` → logits (batch, n_answers), with
``attention_mask`` 1 for real tokens, and raises ValueError when the image and question batches differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from mmcourse.attention import causal_mask, padding_mask
from mmcourse.checks import check_positive_int, check_token_ids
from mmcourse.layers import DecoderLayer, EncoderLayer
from mmcourse.transformer import Decoder, TransformerConfig
from mmcourse.vision import PatchEmbedding, VisionTransformer, ViTConfig


@dataclass(frozen=True)
class FusionConfig:
    vocab_size: int  # question words, special tokens included
    n_answers: int
    context_length: int = 16  # longest question, in tokens
    image_size: int = 48
    patch_size: int = 8
    channels: int = 3
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2  # layers of each encoder (and of the joint encoder of early fusion)
    n_fusion_layers: int = 2  # cross-attention layers
    d_ff: int = 256
    dropout: float = 0.0
    head_hidden: int = 128  # width of the answer MLP's hidden layer
    image_position_std: float = 0.5  # initial scale of the image's learned position embeddings (see image_tower)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_answers", "context_length", "image_size", "patch_size", "channels", "d_model",
                     "n_heads", "n_layers", "n_fusion_layers", "d_ff", "head_hidden"):  # fmt: skip
            check_positive_int(name, getattr(self, name))
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} must be divisible by patch_size={self.patch_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.image_position_std > 0:
            raise ValueError(f"image_position_std must be > 0, got {self.image_position_std}")

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def vit_config(self, n_layers: int | None = None) -> ViTConfig:
        """The image tower of chapter 5 at this config's sizes."""
        return ViTConfig(image_size=self.image_size, patch_size=self.patch_size, channels=self.channels,
                         d_model=self.d_model, n_heads=self.n_heads, n_layers=n_layers or self.n_layers,
                         d_ff=self.d_ff, dropout=self.dropout, pooling="mean")  # fmt: skip


def image_tower(vit_config: ViTConfig, position_std: float) -> VisionTransformer:
    """Chapter 5's ViT, its learned position embeddings drawn with std ``position_std`` instead of 0.02.

    These images are mostly empty background: a patch's vector says little, and at 0.02 its position hardly
    changes it, so where an object is — what position and relation questions ask — is nearly invisible to the
    layers above at the start. In the runs that chose 0.5, models trained on position questions alone stayed at
    chance for 500 steps with 0.02, and left it within 100 steps with 0.5.
    """
    tower = VisionTransformer(vit_config)
    with torch.no_grad():
        tower.position_embedding.normal_(std=position_std)
    return tower


def check_vqa_inputs(images: Tensor, input_ids: Tensor, attention_mask: Tensor, config: FusionConfig) -> None:
    """Raise ValueError naming the bad argument unless images (B, C, H, W) go with input_ids and mask (B, L)."""
    expected = (config.channels, config.image_size, config.image_size)
    if not isinstance(images, Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != expected:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be (batch, {', '.join(map(str, expected))}), got shape {shape}")
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"input_ids must be an integer tensor (batch, L), got {getattr(input_ids, 'shape', input_ids)}"
        )
    if not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape:
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else type(attention_mask).__name__
        raise ValueError(f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, got {shape}")
    if images.size(0) != input_ids.size(0):
        raise ValueError(f"images and input_ids must have the same batch size (one question per image), got "
                         f"images {images.size(0)} and input_ids {input_ids.size(0)}")  # fmt: skip
    if input_ids.size(1) > config.context_length:
        raise ValueError(f"input_ids has {input_ids.size(1)} tokens, more than context_length={config.context_length}")
    check_token_ids("input_ids", input_ids, config.vocab_size)
    if (attention_mask.sum(dim=1) == 0).any():
        raise ValueError("attention_mask has a row with no real token: every question needs at least one word")


def masked_mean(hidden_states: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of the real tokens' states: (batch, L, d), mask (batch, L) with 1 = real → (batch, d)."""
    weights = attention_mask[..., None].to(hidden_states.dtype)  # (batch, L, 1)
    return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)  # (batch, d)


def answer_head(in_features: int, config: FusionConfig) -> nn.Sequential:
    """The decoder of a VQA model: LayerNorm → Linear → GELU → Linear to the answer logits."""
    return nn.Sequential(
        nn.LayerNorm(in_features),
        nn.Linear(in_features, config.head_hidden),
        nn.GELU(),
        nn.Linear(config.head_hidden, config.n_answers),
    )


class TextTower(nn.Module):
    """Word + learned position embeddings → pre-LN encoder layers (padding masked) → LayerNorm: the question's
    token states (batch, L, d_model); ``forward`` pools them by the mean of the real tokens."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        nn.init.normal_(self.token_embedding.weight, std=0.02)  # the scale of the positions: word order stays visible
        self.position_embedding = nn.Parameter(torch.randn(1, config.context_length, config.d_model) * 0.02)
        self.layers = nn.ModuleList(
            EncoderLayer(config.d_model, config.n_heads, config.d_ff, config.dropout, "gelu", norm_first=True)
            for _ in range(config.n_layers)
        )
        self.norm = nn.LayerNorm(config.d_model)

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(batch, L) ids and mask → (batch, L, d_model); no token attends to padding."""
        x = self.token_embedding(input_ids) + self.position_embedding[:, : input_ids.size(1)]  # (batch, L, d)
        keep = padding_mask(attention_mask)  # (batch, 1, 1, L)
        for layer in self.layers:
            x, _ = layer(x, mask=keep)  # (batch, L, d_model)
        return self.norm(x)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(batch, L) → (batch, d_model): the mean of the real tokens' states."""
        return masked_mean(self.hidden_states(input_ids, attention_mask), attention_mask)


class QuestionOnlyModel(nn.Module):
    """A baseline that never looks: the question's pooled vector → answer MLP. ``images`` is checked, then ignored."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        self.text_encoder = TextTower(config)
        self.head = answer_head(config.d_model, config)

    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """→ logits (batch, n_answers)."""
        check_vqa_inputs(images, input_ids, attention_mask, self.config)
        return self.head(self.text_encoder(input_ids, attention_mask))  # (batch, n_answers)


class ImageOnlyModel(nn.Module):
    """A baseline that never reads: the image's pooled ViT vector → answer MLP. The question is checked, then
    ignored, so the model can only learn the best answer per image over all questions."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = image_tower(config.vit_config(), config.image_position_std)
        self.head = answer_head(config.d_model, config)

    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """→ logits (batch, n_answers)."""
        check_vqa_inputs(images, input_ids, attention_mask, self.config)
        return self.head(self.image_encoder(images))  # (batch, n_answers)


COMBINATIONS = ("concat", "product", "concat_product")


class LateFusionModel(nn.Module):
    """Late fusion: a text tower and a ViT, each pooled to one vector; the vectors are combined — ``concat``
    [t; v], ``product`` t ⊙ v, or ``concat_product`` [t; v; t ⊙ v] — and an MLP reads the answer off them."""

    def __init__(self, config: FusionConfig, combine: str = "concat_product") -> None:
        super().__init__()
        if combine not in COMBINATIONS:
            raise ValueError(f"combine={combine!r} is not one of {COMBINATIONS}")
        self.config, self.combine = config, combine
        self.text_encoder = TextTower(config)
        self.image_encoder = image_tower(config.vit_config(), config.image_position_std)
        width = {"concat": 2, "product": 1, "concat_product": 3}[combine] * config.d_model
        self.head = answer_head(width, config)

    def fuse(self, text_vector: Tensor, image_vector: Tensor) -> Tensor:
        """(batch, d), (batch, d) → the combined vector (batch, k·d)."""
        if self.combine == "concat":
            return torch.cat([text_vector, image_vector], dim=-1)  # (batch, 2d)
        if self.combine == "product":
            return text_vector * image_vector  # (batch, d)
        return torch.cat([text_vector, image_vector, text_vector * image_vector], dim=-1)  # (batch, 3d)

    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """→ logits (batch, n_answers)."""
        check_vqa_inputs(images, input_ids, attention_mask, self.config)
        text_vector = self.text_encoder(input_ids, attention_mask)  # (batch, d_model)
        image_vector = self.image_encoder(images)  # (batch, d_model)
        return self.head(self.fuse(text_vector, image_vector))  # (batch, n_answers)


class LSTMCNNModel(nn.Module):
    """The classic late-fusion model: an LSTM reads the question, a small CNN the image, and their vectors are
    concatenated. Its layers mirror a common Keras recipe (Embedding → LSTM; Conv 3x3 → max-pool → Conv 3x3 →
    max-pool → Flatten → Dense; concatenate → Dense), with what that recipe leaves out put back: the LSTM skips
    padding (``pack_padded_sequence``; ``respect_padding=False`` runs it over the pads, as Keras does without
    ``mask_zero=True``), a ReLU after the fusion layer, and a classifier over the answers."""

    def __init__(
        self,
        config: FusionConfig,
        embedding_dim: int = 32,
        conv_widths: tuple[int, int] = (32, 64),
        respect_padding: bool = True,
    ) -> None:
        super().__init__()
        check_positive_int("embedding_dim", embedding_dim)
        if len(conv_widths) != 2:
            raise ValueError(f"conv_widths must be two ints (the two convolutions), got {conv_widths!r}")
        for width in conv_widths:
            check_positive_int("conv_widths", width)
        self.config, self.respect_padding = config, respect_padding
        hidden = config.d_model
        self.embedding = nn.Embedding(config.vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden, batch_first=True)
        side = ((config.image_size - 2) // 2 - 2) // 2  # two valid 3x3 convolutions, each followed by a 2x2 pool
        if side < 1:
            raise ValueError(f"image_size={config.image_size} is too small for two conv + pool stages")
        self.image_encoder = nn.Sequential(
            nn.Conv2d(config.channels, conv_widths[0], 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(conv_widths[0], conv_widths[1], 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(conv_widths[1] * side * side, hidden),
        )
        self.fusion = nn.Linear(2 * hidden, hidden)  # the recipe's fusion layer …
        self.classifier = nn.Linear(hidden, config.n_answers)  # … and the classifier it lacks

    def encode_question(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """(batch, L) → (batch, d_model): the LSTM's last hidden state, after the last real word."""
        embedded = self.embedding(input_ids)  # (batch, L, embedding_dim)
        if not self.respect_padding:
            _, (hidden, _) = self.lstm(embedded)  # reads the pads too: the state after the last *position*
            return hidden[-1]  # (batch, d_model)
        lengths = attention_mask.sum(dim=1).cpu()  # (batch,)
        packed = pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
        _, (hidden, _) = self.lstm(packed)  # hidden: (1, batch, d_model), each row at its own last word
        return hidden[-1]  # (batch, d_model)

    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """→ logits (batch, n_answers)."""
        check_vqa_inputs(images, input_ids, attention_mask, self.config)
        text_vector = self.encode_question(input_ids, attention_mask)  # (batch, d_model)
        image_vector = self.image_encoder(images)  # (batch, d_model)
        fused = F.relu(self.fusion(torch.cat([text_vector, image_vector], dim=-1)))  # (batch, d_model)
        return self.classifier(fused)  # (batch, n_answers)


class EarlyFusionModel(nn.Module):
    """Early fusion: one Transformer encoder over [CLS], the question's word tokens and the image's patch tokens,
    each with its own position embedding and a modality embedding (0 = text, 1 = image); the answer is read off
    the [CLS] state. Padded words are masked as keys, so padding never changes the answer."""

    TEXT, IMAGE = 0, 1

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        d_model = config.d_model
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))  # (1, 1, d_model)
        self.token_embedding = nn.Embedding(config.vocab_size, d_model)
        self.text_position = nn.Parameter(torch.randn(1, config.context_length, d_model) * 0.02)
        self.patch_embedding = PatchEmbedding(config.vit_config())
        self.image_position = nn.Parameter(torch.randn(1, config.n_patches, d_model) * config.image_position_std)
        self.modality_embedding = nn.Embedding(2, d_model)
        for embedding in (self.token_embedding, self.modality_embedding):
            nn.init.normal_(embedding.weight, std=0.02)  # N(0, 1) would drown the patches and the positions
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, config.n_heads, config.d_ff, config.dropout, "gelu", norm_first=True)
            for _ in range(config.n_layers + config.n_fusion_layers)  # as deep as a tower plus the fusion layers
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = answer_head(d_model, config)

    def embed(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """The joint sequence (batch, 1 + L + P, d_model) and its key mask (batch, 1, 1, 1 + L + P)."""
        words = self.token_embedding(input_ids) + self.text_position[:, : input_ids.size(1)]  # (batch, L, d)
        words = words + self.modality_embedding.weight[self.TEXT]
        patches = self.patch_embedding(images) + self.image_position  # (batch, P, d)
        patches = patches + self.modality_embedding.weight[self.IMAGE]
        cls = self.cls_token.expand(images.size(0), -1, -1) + self.modality_embedding.weight[self.TEXT]  # (batch, 1, d)
        sequence = torch.cat([cls, words, patches], dim=1)  # (batch, 1 + L + P, d)
        ones = attention_mask.new_ones(images.size(0), 1)  # (batch, 1)
        keep = torch.cat([ones, attention_mask, ones.expand(-1, patches.size(1))], dim=1)  # (batch, 1 + L + P)
        return sequence, padding_mask(keep)

    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """→ logits (batch, n_answers)."""
        check_vqa_inputs(images, input_ids, attention_mask, self.config)
        x, keep = self.embed(images, input_ids, attention_mask)
        for layer in self.layers:
            x, _ = layer(x, mask=keep)  # (batch, 1 + L + P, d_model)
        return self.head(self.norm(x[:, 0]))  # (batch, n_answers), from [CLS]


class CrossAttentionFusionModel(nn.Module):
    """Cross-attention fusion: a text tower and a ViT encode apart; then ``n_fusion_layers`` of chapter 2's decoder
    layer, with a padding mask instead of a causal one, let every word attend to the other words and to the image
    patches. The answer is read off the mean of the real words' fused states."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.config = config
        self.text_encoder = TextTower(config)
        self.image_encoder = image_tower(config.vit_config(), config.image_position_std)
        self.fusion_layers = nn.ModuleList(
            DecoderLayer(config.d_model, config.n_heads, config.d_ff, config.dropout, "gelu", norm_first=True)
            for _ in range(config.n_fusion_layers)
        )
        self.norm = nn.LayerNorm(config.d_model)
        self.head = answer_head(config.d_model, config)

    def fused_states(
        self, images: Tensor, input_ids: Tensor, attention_mask: Tensor, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Words after fusion (batch, L, d_model) and, if asked, the cross-attention weights over the patches
        (n_fusion_layers, batch, n_heads, L, n_patches)."""
        check_vqa_inputs(images, input_ids, attention_mask, self.config)
        words = self.text_encoder.hidden_states(input_ids, attention_mask)  # (batch, L, d)
        image_states, _ = self.image_encoder.hidden_states(images)  # (batch, 1 + P, d)
        patches = image_states[:, 1:]  # (batch, P, d): the patches, without the ViT's [CLS]
        keep = padding_mask(attention_mask)  # (batch, 1, 1, L): words attend to real words only
        weights = []
        for layer in self.fusion_layers:
            words, _, cross_weights = layer(words, patches, self_mask=keep, need_weights=need_weights)
            if need_weights:
                weights.append(cross_weights)  # (batch, n_heads, L, P)
        return self.norm(words), (torch.stack(weights) if need_weights else None)

    def attention_maps(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Cross-attention weights (n_fusion_layers, batch, n_heads, L, n_patches); each row sums to 1."""
        _, weights = self.fused_states(images, input_ids, attention_mask, need_weights=True)
        return weights

    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """→ logits (batch, n_answers)."""
        words, _ = self.fused_states(images, input_ids, attention_mask)  # (batch, L, d_model)
        return self.head(masked_mean(words, attention_mask))  # (batch, n_answers)


VQA_MODELS = {
    "question only": QuestionOnlyModel,
    "image only": ImageOnlyModel,
    "late fusion (concat + product)": LateFusionModel,
    "late fusion (LSTM + CNN)": LSTMCNNModel,
    "early fusion": EarlyFusionModel,
    "cross-attention fusion": CrossAttentionFusionModel,
}


@torch.no_grad()
def predict(
    model: nn.Module, images: Tensor, input_ids: Tensor, attention_mask: Tensor, batch_size: int = 500
) -> Tensor:
    """The model's answer ids (N,) for N (image, question) pairs, in chunks, in eval mode (restored after)."""
    check_positive_int("batch_size", batch_size)
    if images.size(0) != input_ids.size(0):
        raise ValueError(f"images and input_ids must have the same batch size, got {images.size(0)} and "
                         f"{input_ids.size(0)}")  # fmt: skip
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    answers = []
    for start in range(0, images.size(0), batch_size):
        chunk = slice(start, start + batch_size)
        logits = model(images[chunk].to(device), input_ids[chunk].to(device), attention_mask[chunk].to(device))
        answers.append(logits.argmax(dim=-1).cpu())  # (chunk,)
    model.train(was_training)
    return torch.cat(answers)  # (N,)


# ---------------------------------------------------------------------------------------------------------------
# Encoder–fusion–decoder: an image captioner
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptionerConfig:
    vocab_size: int  # caption words, special tokens included
    context_length: int = 16  # longest caption, in tokens, <bos> and <eos> included
    image_size: int = 48
    patch_size: int = 8
    channels: int = 3
    d_model: int = 64
    n_heads: int = 4
    n_encoder_layers: int = 2  # the ViT's layers
    n_decoder_layers: int = 2
    d_ff: int = 256
    dropout: float = 0.0
    pad_id: int = 0
    image_position_std: float = 0.5  # as FusionConfig's: see image_tower

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "image_size", "patch_size", "channels", "d_model", "n_heads",
                     "n_encoder_layers", "n_decoder_layers", "d_ff"):  # fmt: skip
            check_positive_int(name, getattr(self, name))
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} must be divisible by patch_size={self.patch_size}")
        if not self.image_position_std > 0:
            raise ValueError(f"image_position_std must be > 0, got {self.image_position_std}")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id must be in [0, vocab_size={self.vocab_size}), got {self.pad_id!r}")


class ImageCaptioner(nn.Module):
    """Encoder–decoder: chapter 5's ViT encodes the image into 1 + P states (the *memory*), and chapter 2's
    Transformer decoder writes the caption, cross-attending to them at every layer.

    ``encode`` and ``decode`` have the signatures of :class:`mmcourse.transformer.Seq2SeqTransformer`, so
    :func:`mmcourse.generation.greedy_decode` and :func:`~mmcourse.generation.beam_search` work unchanged, given the
    images as the source and an all-ones memory mask (see ``caption_images``).
    """

    def __init__(self, config: CaptionerConfig) -> None:
        super().__init__()
        if not isinstance(config, CaptionerConfig):
            raise ValueError(f"config must be a CaptionerConfig, got {type(config).__name__}")
        self.config = config
        vit_config = ViTConfig(
            image_size=config.image_size,
            patch_size=config.patch_size,
            channels=config.channels,
            d_model=config.d_model,
            n_heads=config.n_heads,
            n_layers=config.n_encoder_layers,
            d_ff=config.d_ff,
            dropout=config.dropout,
        )
        self.image_encoder = image_tower(vit_config, config.image_position_std)
        decoder_config = TransformerConfig(  # only the decoder's fields are read
            src_vocab_size=config.vocab_size, tgt_vocab_size=config.vocab_size, d_model=config.d_model,
            n_heads=config.n_heads, n_decoder_layers=config.n_decoder_layers, d_ff=config.d_ff,
            dropout=config.dropout, context_length=config.context_length, norm_first=True, activation="gelu",
            pad_id=config.pad_id,
        )  # fmt: skip
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.position_embedding = nn.Parameter(torch.randn(1, config.context_length, config.d_model) * 0.02)
        self.decoder = Decoder(decoder_config)
        self.output_projection = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.output_projection.weight = self.token_embedding.weight  # weight tying, as chapter 2

    @property
    def n_memory(self) -> int:
        """Memory positions: the ViT's [CLS] and its patches."""
        return 1 + (self.config.image_size // self.config.patch_size) ** 2

    def encode(self, images: Tensor, src_attention_mask: Tensor | None = None) -> Tensor:
        """images (batch, C, H, W) → memory (batch, 1 + P, d_model). Every memory position is real, so
        ``src_attention_mask`` is only checked: None or all ones (batch, 1 + P)."""
        if src_attention_mask is not None and (
            src_attention_mask.shape != (images.size(0), self.n_memory) or not bool(src_attention_mask.all())
        ):
            raise ValueError(f"src_attention_mask must be None or all ones of shape (batch, {self.n_memory}), got "
                             f"{tuple(src_attention_mask.shape)}")  # fmt: skip
        states, _ = self.image_encoder.hidden_states(images)  # (batch, 1 + P, d_model)
        return states

    def decode(
        self,
        tgt_ids: Tensor,
        memory: Tensor,
        src_attention_mask: Tensor | None = None,
        tgt_attention_mask: Tensor | None = None,
        need_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """tgt_ids (batch, T) → logits (batch, T, vocab_size); with ``need_weights`` also the cross-attention
        weights (n_decoder_layers, batch, n_heads, T, 1 + P)."""
        config = self.config
        if tgt_ids.dim() != 2 or not 1 <= tgt_ids.size(1) <= config.context_length:
            raise ValueError(f"tgt_ids must be (batch, T) with 1 <= T <= context_length={config.context_length}, got "
                             f"{tuple(tgt_ids.shape)}")  # fmt: skip
        if memory.dim() != 3 or memory.size(0) != tgt_ids.size(0) or memory.size(-1) != config.d_model:
            raise ValueError(f"memory must be (batch={tgt_ids.size(0)}, S, d_model={config.d_model}), got "
                             f"{tuple(memory.shape)}")  # fmt: skip
        if tgt_attention_mask is None:
            tgt_attention_mask = (tgt_ids != config.pad_id).long()  # (batch, T)
        self_mask = causal_mask(tgt_ids.size(1), device=tgt_ids.device) & padding_mask(tgt_attention_mask)
        memory_mask = None if src_attention_mask is None else padding_mask(src_attention_mask)  # (batch, 1, 1, S)
        x = self.token_embedding(tgt_ids) + self.position_embedding[:, : tgt_ids.size(1)]  # (batch, T, d_model)
        x, _, cross_weights = self.decoder(x, memory, self_mask, memory_mask, need_weights)  # (batch, T, d_model)
        logits = self.output_projection(x)  # (batch, T, vocab_size)
        return (logits, torch.stack(cross_weights)) if need_weights else logits

    def forward(self, images: Tensor, tgt_ids: Tensor, tgt_attention_mask: Tensor | None = None) -> Tensor:
        """Teacher forcing: images (batch, C, H, W), caption prefix (batch, T) → logits (batch, T, vocab_size).
        The ids' range is checked here, once; ``decode``, which generation calls once per token, leaves it out."""
        if images.dim() != 4 or images.size(0) != tgt_ids.size(0):
            raise ValueError(f"images must be (batch, C, H, W) with the batch of tgt_ids {tuple(tgt_ids.shape)}, got "
                             f"{tuple(images.shape)}")  # fmt: skip
        check_token_ids("tgt_ids", tgt_ids, self.config.vocab_size)
        return self.decode(tgt_ids, self.encode(images), None, tgt_attention_mask)


def caption_images(
    model: ImageCaptioner, images: Tensor, bos_id: int, eos_id: int, max_length: int, beam_size: int = 1
) -> Tensor:
    """Captions (batch, ≤ max_length) of images (batch, C, H, W): greedy when ``beam_size`` is 1, else the best
    beam of :func:`mmcourse.generation.beam_search`. Ends in ``<eos>``, padded after it."""
    from mmcourse.generation import beam_search, greedy_decode

    if not isinstance(model, ImageCaptioner):
        raise ValueError(f"model must be an ImageCaptioner, got {type(model).__name__}")
    check_positive_int("beam_size", beam_size)
    if images.dim() != 4:
        raise ValueError(f"images must be (batch, C, H, W), got shape {tuple(images.shape)}")
    memory_mask = torch.ones(images.size(0), model.n_memory, dtype=torch.long, device=images.device)  # all real
    if beam_size == 1:
        return greedy_decode(model, images, bos_id, eos_id, max_length, src_attention_mask=memory_mask)
    sequences, _ = beam_search(model, images, bos_id, eos_id, max_length, beam_size, src_attention_mask=memory_mask)
    return sequences[:, 0]  # (batch, ≤ max_length): the best beam
