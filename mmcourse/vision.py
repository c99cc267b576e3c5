"""Image towers for CLIP: a small Vision Transformer (ViT, Dosovitskiy et al., 2021) and a small CNN.

A ViT cuts the image into ``patch_size``² patches, projects each linearly (a convolution whose stride equals its
kernel), prepends a learned [CLS] vector, adds learned position embeddings and runs chapter 2's pre-LN encoder
layers; the image's vector is the final [CLS] state or the mean of the patch states. The CNN stacks 3x3
convolutions with batch normalisation and max pooling, then flattens the last feature map into a linear layer, so
that *where* an object is survives (a global average pool would throw position away). Both expose
``out_features``, the width of the vector they return, which CLIP's projection maps into the shared space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmcourse.checks import check_dropout, check_positive_int, check_stage_widths
from mmcourse.layers import EncoderLayer

POOLINGS = ("cls", "mean")  # an encoder's vector: token 0's final state ([CLS]), or the mean of the token states


def check_images(images: Tensor, channels: int, image_size: int) -> None:
    """TypeError unless ``images`` is a float tensor; ValueError unless it is (batch, channels, size, size)."""
    if not isinstance(images, Tensor) or not images.is_floating_point():
        kind = f"a {images.dtype} tensor" if isinstance(images, Tensor) else type(images).__name__
        raise TypeError(f"images must be a float tensor (pixel values in [0, 1]), got {kind}")
    if images.dim() != 4 or tuple(images.shape[1:]) != (channels, image_size, image_size):
        raise ValueError(
            f"images must be (batch, {channels}, {image_size}, {image_size}), got shape {tuple(images.shape)}"
        )


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = 48
    patch_size: int = 8
    channels: int = 3
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int = 512
    dropout: float = 0.0
    pooling: str = "cls"  # "cls": the [CLS] token's final state; "mean": the mean of the patch states

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "channels", "d_model", "n_heads", "n_layers", "d_ff"):
            check_positive_int(name, getattr(self, name))
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} must be divisible by patch_size={self.patch_size}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        check_dropout("dropout", self.dropout)
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r} is not one of {POOLINGS}")

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(batch, C, H, W) → (batch, n_patches, C·p·p): patches in row-major order, each flattened channel-first."""
    check_positive_int("patch_size", patch_size)
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be (batch, channels, height, width), got shape {shape}")
    batch, channels, height, width = images.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"image height {height} and width {width} must be divisible by patch_size={patch_size}")
    rows, columns = height // patch_size, width // patch_size
    patches = images.reshape(batch, channels, rows, patch_size, columns, patch_size)
    patches = patches.permute(0, 2, 4, 1, 3, 5)  # (batch, rows, columns, C, p, p)
    return patches.reshape(batch, rows * columns, channels * patch_size * patch_size)  # (batch, n_patches, C·p·p)


class PatchEmbedding(nn.Module):
    """A linear map of every patch to d_model, computed as a Conv2d with kernel = stride = patch_size."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.projection = nn.Conv2d(config.channels, config.d_model, config.patch_size, stride=config.patch_size)

    def forward(self, images: Tensor) -> Tensor:
        """(batch, C, H, W) → (batch, n_patches, d_model)."""
        check_images(images, self.config.channels, self.config.image_size)
        return self.projection(images).flatten(2).transpose(1, 2)  # (batch, n_patches, d_model)


class VisionTransformer(nn.Module):
    """Patch embedding + [CLS] + learned positions → pre-LN encoder layers → LayerNorm → pooled (batch, d_model).

    ``forward`` returns the image's vector; ``hidden_states`` every token's final state; ``attention_weights``
    every layer's self-attention weights.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        if not isinstance(config, ViTConfig):
            raise TypeError(f"config must be a ViTConfig, got {type(config).__name__}")
        self.config = config
        self.out_features = config.d_model
        self.patch_embedding = PatchEmbedding(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.d_model))  # (1, 1, d_model)
        self.position_embedding = nn.Parameter(torch.randn(1, config.n_patches + 1, config.d_model) * 0.02)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(config.d_model, config.n_heads, config.d_ff, config.dropout, "gelu", norm_first=True)
            for _ in range(config.n_layers)
        )
        self.norm = nn.LayerNorm(config.d_model)

    def embed(self, images: Tensor) -> Tensor:
        """The encoder's input: [CLS], then the patch vectors, positions added: (batch, 1 + n_patches, d_model)."""
        patches = self.patch_embedding(images)  # (batch, n_patches, d_model)
        cls = self.cls_token.expand(patches.size(0), -1, -1)  # (batch, 1, d_model)
        return self.dropout(torch.cat([cls, patches], dim=1) + self.position_embedding)  # (batch, 1 + P, d_model)

    def hidden_states(self, images: Tensor) -> Tensor:
        """Final states (batch, 1 + n_patches, d_model), [CLS] first."""
        x = self.embed(images)  # (batch, 1 + P, d_model)
        for layer in self.layers:
            x, _ = layer(x)  # (batch, 1 + P, d_model)
        return self.norm(x)

    def attention_weights(self, images: Tensor) -> Tensor:
        """Every layer's self-attention weights, stacked: (n_layers, batch, n_heads, 1 + P, 1 + P)."""
        x, weights = self.embed(images), []
        for layer in self.layers:
            x, attn_weights = layer(x, need_weights=True)  # attn_weights: (batch, n_heads, 1 + P, 1 + P)
            weights.append(attn_weights)
        return torch.stack(weights)

    def forward(self, images: Tensor) -> Tensor:
        """(batch, C, H, W) → (batch, d_model): the [CLS] state, or the mean patch state."""
        states = self.hidden_states(images)  # (batch, 1 + P, d_model)
        return states[:, 0] if self.config.pooling == "cls" else states[:, 1:].mean(dim=1)


@dataclass(frozen=True)
class CNNConfig:
    image_size: int = 48
    channels: int = 3
    widths: tuple[int, ...] = (32, 64, 128)  # channels of each stage; every stage halves the resolution
    out_features: int = 256  # width of the vector the flattened last feature map is projected to

    def __post_init__(self) -> None:
        for name in ("image_size", "channels", "out_features"):
            check_positive_int(name, getattr(self, name))
        check_stage_widths(self.widths, self.image_size)


class ConvNet(nn.Module):
    """Stages of (3x3 conv → BatchNorm → ReLU) x 2 → 2x2 max pool, then flatten → linear: (batch, out_features)."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        if not isinstance(config, CNNConfig):
            raise TypeError(f"config must be a CNNConfig, got {type(config).__name__}")
        self.config = config
        self.out_features = config.out_features
        stages, previous = [], config.channels
        for width in config.widths:
            stages += [
                nn.Conv2d(previous, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            previous = width
        self.features = nn.Sequential(*stages)
        side = config.image_size // 2 ** len(config.widths)
        self.head = nn.Linear(previous * side * side, config.out_features)

    def forward(self, images: Tensor) -> Tensor:
        """(batch, C, H, W) → (batch, out_features)."""
        check_images(images, self.config.channels, self.config.image_size)
        feature_map = self.features(images)  # (batch, widths[-1], H / 2^stages, W / 2^stages)
        return self.head(feature_map.flatten(1))  # (batch, out_features)
