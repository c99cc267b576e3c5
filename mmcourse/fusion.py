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
``attention_mask`` 1 for real tokens. The forward passes check shapes only: the ids come from
:class:`mmcourse.data.vqa.WordVocabulary`, which only writes ids of its vocabulary and refuses an empty text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from mmcourse.attention import causal_mask, padding_mask
from mmcourse.bert import mean_pool
from mmcourse.checks import check_int, check_positive_int, check_positive_number
from mmcourse.layers import DecoderLayer, EncoderLayer
from mmcourse.transformer import Decoder, TransformerConfig
from mmcourse.vision import PatchEmbedding, VisionTransformer, ViTConfig, check_images


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
        for name in ("vocab_size", "n_answers", "context_length", "n_fusion_layers", "head_hidden"):
            check_positive_int(name, getattr(self, name))
        self.vit_config()  # checks the image and width fields: sizes, divisibility, dropout
        check_positive_number("image_position_std", self.image_position_std)

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
    """Shapes and types only: images (B, C, H, W) float, input_ids (B, L) integer, attention_mask (B, L)."""
    check_images(images, config.channels, config.image_size)
    if not isinstance(input_ids, Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input_ids must be an integer tensor (batch, L), got {getattr(input_ids, 'dtype', input_ids)}")
    if input_ids.dim() != 2 or not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape:
        shape = getattr(attention_mask, "shape", attention_mask)
        raise ValueError(f"input_ids must be (batch, L) and attention_mask must have the shape of input_ids, got "
                         f"{tuple(input_ids.shape)} and {shape}")  # fmt: skip
    if images.size(0) != input_ids.size(0):
        raise ValueError(f"images and input_ids must have the same batch size (one question per image), got "
                         f"images {images.size(0)} and input_ids {input_ids.size(0)}")  # fmt: skip
    if input_ids.size(1) > config.context_length:
        raise ValueError(f"input_ids has {input_ids.size(1)} tokens, more than context_length={config.context_length}")


def answer_head(in_features: int, config: FusionConfig) -> nn.Sequential:
    """The decoder of a VQA model: LayerNorm → Linear → GELU → Linear to the answer logits."""
    return nn.Sequential(
        nn.LayerNorm(in_features),
        nn.Linear(in_features, config.head_hidden),
        nn.GELU(),
        nn.Linear(config.head_hidden, config.n_answers),
    )


def encoder_layers(config: FusionConfig, count: int) -> nn.ModuleList:
    """``count`` of chapter 2's pre-LN encoder layers (GELU) at the config's widths."""
    return nn.ModuleList(
        EncoderLayer(config.d_model, config.n_heads, config.d_ff, config.dropout, "gelu", norm_first=True)
        for _ in range(count)
    )


class TextTower(nn.Module):
    """Word + learned position embeddings → pre-LN encoder layers (padding masked) → LayerNorm: the question's
    token states (batch, L, d_model); ``forward`` pools them by the mean of the real tokens."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        nn.init.normal_(self.token_embedding.weight, std=0.02)  # the scale of the positions: word order stays visible
        self.position_embedding = nn.Parameter(torch.randn(1, config.context_length, config.d_model) * 0.02)
        self.layers = encoder_layers(config, config.n_layers)
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
        return mean_pool(self.hidden_states(input_ids, attention_mask), attention_mask)


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


COMBINATIONS = {"concat": 2, "product": 1, "concat_product": 3}  # how to combine t and v → width in d_model


class LateFusionModel(nn.Module):
    """Late fusion: a text tower and a ViT, each pooled to one vector; the vectors are combined — ``concat``
    [t; v], ``product`` t ⊙ v, or ``concat_product`` [t; v; t ⊙ v] — and an MLP reads the answer off them."""

    def __init__(self, config: FusionConfig, combine: str = "concat_product") -> None:
        super().__init__()
        if combine not in COMBINATIONS:
            raise ValueError(f"combine={combine!r} is not one of {tuple(COMBINATIONS)}")
        self.config, self.combine = config, combine
        self.text_encoder = TextTower(config)
        self.image_encoder = image_tower(config.vit_config(), config.image_position_std)
        self.head = answer_head(COMBINATIONS[combine] * config.d_model, config)

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
        side = ((config.image_size - 2) // 2 - 2) // 2  # two valid 3x3 convolutions, each followed by a 2x2 pool
        if side < 1:
            raise ValueError(f"image_size={config.image_size} is too small for two conv + pool stages")
        self.config, self.respect_padding = config, respect_padding
        hidden = config.d_model
        self.embedding = nn.Embedding(config.vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden, batch_first=True)
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
        self.layers = encoder_layers(config, config.n_layers + config.n_fusion_layers)  # a tower + fusion deep
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
    patches. The answer is read off the mean of the real words' fused states; ``cross_attention_weights`` shows
    where each word looked."""

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

    def _encode(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The towers' outputs: words (batch, L, d), patches (batch, P, d) and the words' key mask."""
        check_vqa_inputs(images, input_ids, attention_mask, self.config)
        words = self.text_encoder.hidden_states(input_ids, attention_mask)  # (batch, L, d)
        patches = self.image_encoder.hidden_states(images)[:, 1:]  # (batch, P, d): without the ViT's [CLS]
        return words, patches, padding_mask(attention_mask)  # keep (batch, 1, 1, L): words attend to real words

    def fused_states(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Words after fusion: (batch, L, d_model)."""
        words, patches, keep = self._encode(images, input_ids, attention_mask)
        for layer in self.fusion_layers:
            words, _, _ = layer(words, patches, self_mask=keep)  # (batch, L, d_model)
        return self.norm(words)

    def cross_attention_weights(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Words over patches: (n_fusion_layers, batch, n_heads, L, n_patches); each row sums to 1."""
        words, patches, keep = self._encode(images, input_ids, attention_mask)
        weights = []
        for layer in self.fusion_layers:
            words, _, cross_weights = layer(words, patches, self_mask=keep, need_weights=True)
            weights.append(cross_weights)  # (batch, n_heads, L, P)
        return torch.stack(weights)

    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """→ logits (batch, n_answers)."""
        words = self.fused_states(images, input_ids, attention_mask)  # (batch, L, d_model)
        return self.head(mean_pool(words, attention_mask))  # (batch, n_answers)


VQA_MODELS = {
    "question only": QuestionOnlyModel,
    "image only": ImageOnlyModel,
    "late fusion (concat + product)": LateFusionModel,
    "late fusion (LSTM + CNN)": LSTMCNNModel,
    "early fusion": EarlyFusionModel,
    "cross-attention fusion": CrossAttentionFusionModel,
}

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
        for name in ("vocab_size", "context_length", "n_encoder_layers", "n_decoder_layers"):
            check_positive_int(name, getattr(self, name))
        self.vit_config()  # checks the image and width fields: sizes, divisibility, dropout
        check_positive_number("image_position_std", self.image_position_std)
        check_int("pad_id", self.pad_id, minimum=0)
        if self.pad_id >= self.vocab_size:
            raise ValueError(f"pad_id must be in [0, vocab_size={self.vocab_size}), got {self.pad_id!r}")

    def vit_config(self) -> ViTConfig:
        """The image encoder: chapter 5's ViT at this config's sizes."""
        return ViTConfig(image_size=self.image_size, patch_size=self.patch_size, channels=self.channels,
                         d_model=self.d_model, n_heads=self.n_heads, n_layers=self.n_encoder_layers,
                         d_ff=self.d_ff, dropout=self.dropout)  # fmt: skip


class ImageCaptioner(nn.Module):
    """Encoder–decoder: chapter 5's ViT encodes the image into 1 + P states (the *memory*), and chapter 2's
    Transformer decoder writes the caption, cross-attending to them at every layer.

    ``encode`` and ``decode`` have the signatures of :class:`mmcourse.transformer.Seq2SeqTransformer`, so
    :func:`mmcourse.generation.greedy_decode` and :func:`~mmcourse.generation.beam_search` work unchanged, given the
    images as the source and an all-ones memory mask (see ``caption_images``, which checks the ids once).
    """

    def __init__(self, config: CaptionerConfig) -> None:
        super().__init__()
        if not isinstance(config, CaptionerConfig):
            raise TypeError(f"config must be a CaptionerConfig, got {type(config).__name__}")
        self.config = config
        self.image_encoder = image_tower(config.vit_config(), config.image_position_std)
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
        """images (batch, C, H, W) → memory (batch, 1 + P, d_model). Every memory position is real:
        ``src_attention_mask``, when given, must be (batch, 1 + P); ``decode`` is the one that uses it."""
        if src_attention_mask is not None and src_attention_mask.shape != (images.size(0), self.n_memory):
            raise ValueError(f"src_attention_mask must be None or of shape (batch, {self.n_memory}), got "
                             f"{tuple(src_attention_mask.shape)}")  # fmt: skip
        return self.image_encoder.hidden_states(images)  # (batch, 1 + P, d_model)

    def _decode_states(
        self,
        tgt_ids: Tensor,
        memory: Tensor,
        src_attention_mask: Tensor | None,
        tgt_attention_mask: Tensor | None,
        need_weights: bool,
    ) -> tuple[Tensor, list[Tensor] | None, list[Tensor] | None]:
        """The decoder's states (batch, T, d_model) and, with ``need_weights``, its per-layer attention weights."""
        if tgt_ids.dim() != 2 or not 1 <= tgt_ids.size(1) <= self.config.context_length:
            raise ValueError(f"tgt_ids must be (batch, T) with 1 <= T <= context_length={self.config.context_length},"
                             f" got {tuple(tgt_ids.shape)}")  # fmt: skip
        if memory.dim() != 3 or memory.size(0) != tgt_ids.size(0) or memory.size(-1) != self.config.d_model:
            raise ValueError(f"memory must be (batch={tgt_ids.size(0)}, S, d_model={self.config.d_model}), got "
                             f"{tuple(memory.shape)}")  # fmt: skip
        if tgt_attention_mask is None:
            tgt_attention_mask = (tgt_ids != self.config.pad_id).long()  # (batch, T)
        self_mask = causal_mask(tgt_ids.size(1), device=tgt_ids.device) & padding_mask(tgt_attention_mask)
        memory_mask = None if src_attention_mask is None else padding_mask(src_attention_mask)  # (batch, 1, 1, S)
        x = self.token_embedding(tgt_ids) + self.position_embedding[:, : tgt_ids.size(1)]  # (batch, T, d_model)
        return self.decoder(x, memory, self_mask, memory_mask, need_weights)

    def decode(
        self,
        tgt_ids: Tensor,
        memory: Tensor,
        src_attention_mask: Tensor | None = None,
        tgt_attention_mask: Tensor | None = None,
    ) -> Tensor:
        """tgt_ids (batch, T), memory (batch, 1 + P, d_model) → logits (batch, T, vocab_size). Shapes only: the
        ids are checked once by whoever feeds them (``caption_images``, a vocabulary), not once per token."""
        states, _, _ = self._decode_states(tgt_ids, memory, src_attention_mask, tgt_attention_mask, False)
        return self.output_projection(states)  # (batch, T, vocab_size)

    def cross_attention_weights(
        self, images: Tensor, tgt_ids: Tensor, tgt_attention_mask: Tensor | None = None
    ) -> Tensor:
        """Caption tokens over the image: (n_decoder_layers, batch, n_heads, T, 1 + P); each row sums to 1."""
        _, _, weights = self._decode_states(tgt_ids, self.encode(images), None, tgt_attention_mask, True)
        return torch.stack(weights)

    def forward(self, images: Tensor, tgt_ids: Tensor, tgt_attention_mask: Tensor | None = None) -> Tensor:
        """Teacher forcing: images (batch, C, H, W), caption prefix (batch, T) → logits (batch, T, vocab_size)."""
        if images.dim() != 4 or images.size(0) != tgt_ids.size(0):
            raise ValueError(f"images must be (batch, C, H, W) with the batch of tgt_ids {tuple(tgt_ids.shape)}, got "
                             f"{tuple(images.shape)}")  # fmt: skip
        if tgt_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"tgt_ids must be an int64 or int32 tensor of token ids, got {tgt_ids.dtype}")
        return self.decode(tgt_ids, self.encode(images), None, tgt_attention_mask)


def caption_images(
    model: ImageCaptioner, images: Tensor, bos_id: int, eos_id: int, max_length: int, beam_size: int = 1
) -> Tensor:
    """Captions (batch, ≤ max_length) of images (batch, C, H, W): greedy when ``beam_size`` is 1, else the best
    beam of :func:`mmcourse.generation.beam_search`. Ends in ``<eos>``, padded after it.

    The ids that enter the decoder are checked here, once, not at every generated token."""
    from mmcourse.generation import beam_search, greedy_decode

    if not isinstance(model, ImageCaptioner):
        raise TypeError(f"model must be an ImageCaptioner, got {type(model).__name__}")
    config = model.config
    check_positive_int("beam_size", beam_size)
    check_positive_int("max_length", max_length)
    for name, value in (("bos_id", bos_id), ("eos_id", eos_id)):
        check_int(name, value)
        if not 0 <= value < config.vocab_size:
            raise ValueError(f"{name} must be an id in [0, vocab_size={config.vocab_size}), got {value!r}")
    if max_length > config.context_length:
        raise ValueError(f"max_length={max_length} is more than the captioner's context_length={config.context_length}")
    if images.dim() != 4:
        raise ValueError(f"images must be (batch, C, H, W), got shape {tuple(images.shape)}")
    memory_mask = torch.ones(images.size(0), model.n_memory, dtype=torch.long, device=images.device)  # all real
    if beam_size == 1:
        return greedy_decode(model, images, bos_id, eos_id, max_length, src_attention_mask=memory_mask)
    sequences, _ = beam_search(model, images, bos_id, eos_id, max_length, beam_size, src_attention_mask=memory_mask)
    return sequences[:, 0]  # (batch, ≤ max_length): the best beam
