"""The denoiser of chapter 10's diffusion models: a small U-Net ε_θ(x_t, t, c) that predicts the noise, told the
timestep and the condition (a caption encoding, a class embedding) through FiLM (Perez et al., 2018): every residual
block scales and shifts its normalised features by a linear map of MLP(timestep_embedding(t)) + Linear(c). The
samplers and the loss of :mod:`mmcourse.diffusion` take any callable of that shape; this is the one the book trains.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcourse.checks import check_int, check_positive_int
from mmcourse.positional import sinusoidal_frequencies


def timestep_embedding(timesteps: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """(batch,) → (batch, dim): [sin(t ω_i) …, cos(t ω_i) …] with chapter 2's frequencies ω_i = base^(-2i/dim), sines
    first as in DDPM and diffusers' ``get_timestep_embedding``."""
    frequencies = sinusoidal_frequencies(dim, base).float().to(timesteps.device)  # (dim/2,); MPS has no float64
    angles = timesteps.float()[:, None] * frequencies  # (batch, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)  # (batch, dim)


@dataclass(frozen=True)
class UNetConfig:
    image_size: int = 32
    channels: int = 3
    widths: tuple[int, ...] = (32, 64, 64)  # channels at each resolution; every level after the first halves it
    time_dim: int = 64  # width of the sinusoidal timestep features
    embedding_dim: int = 128  # width of the timestep (+ condition) embedding that modulates every block
    condition_dim: int = 0  # width of the condition vector (caption encoding, class embedding); 0: unconditional
    groups: int = 8  # GroupNorm groups; must divide every width
    coordinates: bool = False  # two extra input channels with each pixel's (x, y) in [-1, 1] (CoordConv)

    def __post_init__(self) -> None:
        for name in ("image_size", "channels", "time_dim", "embedding_dim", "groups"):
            check_positive_int(name, getattr(self, name))
        check_int("condition_dim", self.condition_dim, minimum=0)
        if not isinstance(self.coordinates, bool):
            raise TypeError(f"coordinates must be a bool, got {self.coordinates!r}")
        if self.time_dim % 2:
            raise ValueError(f"time_dim must be even (sines and cosines), got {self.time_dim}")
        if not isinstance(self.widths, tuple) or not self.widths:
            raise ValueError(f"widths must be a non-empty tuple of ints, got {self.widths!r}")
        for width in self.widths:
            check_positive_int("widths", width)
            if width % self.groups:
                raise ValueError(f"widths {self.widths} must each be divisible by groups={self.groups}")
        if self.image_size % 2 ** (len(self.widths) - 1):
            raise ValueError(f"image_size={self.image_size} must be divisible by 2**(len(widths) - 1)="
                             f"{2 ** (len(self.widths) - 1)}: each level after the first halves it")  # fmt: skip


class FiLMResidualBlock(nn.Module):
    """GroupNorm → SiLU → 3x3 conv → GroupNorm, FiLM by the embedding (h · (1 + scale) + shift) → SiLU → 3x3 conv,
    added to the input (through a 1x1 conv when the widths differ)."""

    def __init__(self, in_channels: int, out_channels: int, embedding_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.film = nn.Linear(embedding_dim, 2 * out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, embedding: Tensor) -> Tensor:
        """x (batch, in, H, W), embedding (batch, embedding_dim) → (batch, out, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))  # (batch, out, H, W)
        scale, shift = self.film(F.silu(embedding))[:, :, None, None].chunk(2, dim=1)  # each (batch, out, 1, 1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))  # (batch, out, H, W)


class UNet(nn.Module):
    """ε_θ(x_t, t, c): a U-Net with one residual block per level on the way down and up, skip connections joined by
    concatenation, strided convs to halve and nearest upsampling to double; every block FiLM-modulated by
    MLP(timestep_embedding(t)) + Linear(c). ``condition=None`` is the null condition. Output conv starts at zero."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise TypeError(f"config must be a UNetConfig, got {type(config).__name__}")
        self.config = config
        widths, dim, groups = config.widths, config.embedding_dim, config.groups
        self.time_mlp = nn.Sequential(nn.Linear(config.time_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.condition_projection = nn.Linear(config.condition_dim, dim) if config.condition_dim else None
        extra = 2 if config.coordinates else 0  # the x and y channels
        self.conv_in = nn.Conv2d(config.channels + extra, widths[0], 3, padding=1)
        self.down_blocks, self.downsamples = nn.ModuleList(), nn.ModuleList()
        previous = widths[0]
        for level, width in enumerate(widths):
            self.down_blocks.append(FiLMResidualBlock(previous, width, dim, groups))
            last = level == len(widths) - 1
            self.downsamples.append(nn.Identity() if last else nn.Conv2d(width, width, 3, stride=2, padding=1))
            previous = width
        self.middle_block = FiLMResidualBlock(previous, previous, dim, groups)
        self.up_blocks, self.upsamples = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(len(widths))):
            self.up_blocks.append(FiLMResidualBlock(previous + widths[level], widths[level], dim, groups))
            upsample = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(widths[level], widths[level], 3, padding=1))
            self.upsamples.append(upsample if level > 0 else nn.Identity())
            previous = widths[level]
        self.norm_out = nn.GroupNorm(groups, widths[0])
        self.conv_out = nn.Conv2d(widths[0], config.channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def embed(self, timesteps: Tensor, condition: Tensor | None) -> Tensor:
        """(batch,) timesteps and (batch, condition_dim) condition or None → (batch, embedding_dim)."""
        embedding = self.time_mlp(timestep_embedding(timesteps, self.config.time_dim))  # (batch, embedding_dim)
        if self.condition_projection is not None:
            if condition is None:
                condition = embedding.new_zeros(len(timesteps), self.config.condition_dim)  # the null condition
            embedding = embedding + self.condition_projection(condition)
        return embedding

    def forward(self, x: Tensor, timesteps: Tensor, condition: Tensor | None = None) -> Tensor:
        """x_t (batch, C, H, W), timesteps (batch,) ints, condition (batch, condition_dim) or None → predicted ε,
        (batch, C, H, W)."""
        self._check_inputs(x, timesteps, condition)
        embedding = self.embed(timesteps, condition)  # (batch, embedding_dim)
        if self.config.coordinates:
            x = torch.cat([x, self.coordinate_channels(x)], dim=1)  # (batch, C + 2, H, W)
        h, skips = self.conv_in(x), []  # (batch, widths[0], H, W)
        for block, downsample in zip(self.down_blocks, self.downsamples, strict=True):
            h = block(h, embedding)  # (batch, width, H / 2^level, W / 2^level)
            skips.append(h)
            h = downsample(h)
        h = self.middle_block(h, embedding)  # (batch, widths[-1], H / 2^(levels - 1), …)
        for block, upsample in zip(self.up_blocks, self.upsamples, strict=True):
            h = block(torch.cat([h, skips.pop()], dim=1), embedding)  # (batch, width, H / 2^level, W / 2^level)
            h = upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (batch, C, H, W)

    @staticmethod
    def coordinate_channels(x: Tensor) -> Tensor:
        """(batch, 2, H, W): each pixel's column and row, from -1 to 1. A convolution sees only a neighbourhood and
        cannot tell where it is; with these channels it can, so a condition such as "on the left" has something to
        act on (CoordConv: Liu et al., 2018). FiLM's scale and shift are the same at every pixel."""
        batch, _, height, width = x.shape
        rows = torch.linspace(-1, 1, height, device=x.device, dtype=x.dtype)[:, None].expand(height, width)
        columns = torch.linspace(-1, 1, width, device=x.device, dtype=x.dtype)[None, :].expand(height, width)
        return torch.stack([columns, rows])[None].expand(batch, 2, height, width)

    def _check_inputs(self, x: Tensor, timesteps: Tensor, condition: Tensor | None) -> None:
        """Shapes and dtypes only: nothing here reads the data."""
        config = self.config
        expected = (config.channels, config.image_size, config.image_size)
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a float tensor of noisy images, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must be (batch, {', '.join(map(str, expected))}), got shape {tuple(x.shape)}")
        if not isinstance(timesteps, Tensor) or timesteps.is_floating_point() or tuple(timesteps.shape) != (len(x),):
            found = tuple(timesteps.shape) if isinstance(timesteps, Tensor) else type(timesteps).__name__
            raise ValueError(f"timesteps must be an int tensor (batch,) = ({len(x)},), got {found}")
        if condition is None:
            return
        if not config.condition_dim:
            raise ValueError("condition must be None: this UNet has condition_dim=0 (unconditional)")
        if not isinstance(condition, Tensor) or tuple(condition.shape) != (len(x), config.condition_dim):
            found = tuple(condition.shape) if isinstance(condition, Tensor) else type(condition).__name__
            expected = f"({len(x)}, {config.condition_dim})"
            raise ValueError(f"condition must be (batch, condition_dim) = {expected}, got {found}")
