"""VQ-VAE (van den Oord et al., 2017): an image becomes a small grid of codebook indices, and back.

A conv encoder maps an image (batch, C, H, W) to vectors z (batch, D, h, w), h = H / 2^len(widths); the vector
quantiser replaces each vector by its nearest code e_k of a learned codebook (K, D), so the image is now a grid of
ints (batch, h, w), tokens a transformer or a diffusion model can learn a prior over; the decoder maps the codes
back to pixels. The argmin has no gradient: the straight-through estimator copies the decoder's gradient onto z.
The loss is reconstruction + ||sg[z] - e||² (moves the codes, the *codebook loss*) + β ||z - sg[e]||² (keeps the
encoder near its codes, the *commitment loss*), sg = stop-gradient. With ``ema=True`` the codes follow exponential
moving averages of the vectors assigned to them instead of the codebook loss; with ``dead_code_threshold > 0`` a
code hardly anyone uses is restarted at a random encoder output of the batch. Both happen in training mode only,
in the quantiser's forward, without reading a tensor back to Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcourse.checks import check_finite_number, check_positive_int, check_stage_widths, check_token_ids
from mmcourse.vision import check_images

LAPLACE_EPSILON = 1e-5  # keeps an EMA code's count away from 0 (Laplace smoothing of the counts)


@dataclass(frozen=True)
class VQVAEConfig:
    image_size: int = 32
    channels: int = 3
    widths: tuple[int, ...] = (32, 64)  # encoder stages, each a stride-2 conv: 32x32 images → 8x8 codes
    codebook_size: int = 128  # K, the number of code vectors
    code_dim: int = 32  # D, the width of each code vector
    beta: float = 0.25  # weight of the commitment loss
    ema: bool = False  # codes follow moving averages of their vectors instead of learning from the codebook loss
    ema_decay: float = 0.99  # γ of the moving averages (code counts, and with ema the codes themselves)
    dead_code_threshold: float = 0.0  # restart a code whose average count per batch falls below this; 0: never

    def __post_init__(self) -> None:
        for name in ("image_size", "channels", "codebook_size", "code_dim"):
            check_positive_int(name, getattr(self, name))
        check_stage_widths(self.widths, self.image_size)
        for name in ("beta", "ema_decay", "dead_code_threshold"):
            check_finite_number(name, getattr(self, name))
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.dead_code_threshold < 0:
            raise ValueError(f"dead_code_threshold must be >= 0 (0: no restarts), got {self.dead_code_threshold}")
        if not isinstance(self.ema, bool):
            raise TypeError(f"ema must be a bool, got {self.ema!r}")

    @property
    def latent_size(self) -> int:
        """Side h = w of the code grid."""
        return self.image_size // 2 ** len(self.widths)


# ---------------------------------------------------------------------------------------------------------------
# The quantiser's pieces: nearest code, straight-through gradient, the two losses, codebook usage
# ---------------------------------------------------------------------------------------------------------------


def nearest_codes(vectors: Tensor, codebook: Tensor) -> Tensor:
    """argmin_k ||v - e_k||² for each row of ``vectors`` (N, D) over ``codebook`` (K, D): (N,) indices (ties: lowest).
    ||v - e||² = ||v||² - 2 v·e + ||e||², so one matrix product gives all N·K distances."""
    distances = (
        vectors.pow(2).sum(dim=1, keepdim=True) - 2 * vectors @ codebook.T + codebook.pow(2).sum(dim=1)
    )  # (N, K)
    return distances.argmin(dim=1)  # (N,)


def straight_through(inputs: Tensor, quantised: Tensor) -> Tensor:
    """Forward: ``quantised``. Backward: the gradient goes to ``inputs`` unchanged, as if quantising were the
    identity: inputs + sg[quantised - inputs]."""
    return inputs + (quantised - inputs).detach()


def vq_losses(inputs: Tensor, quantised: Tensor) -> tuple[Tensor, Tensor]:
    """(codebook_loss, commitment_loss) = (mean (sg[z] - e)², mean (z - sg[e])²): equal values, but the first only
    moves the codes and the second only the encoder."""
    return F.mse_loss(quantised, inputs.detach()), F.mse_loss(inputs, quantised.detach())


def code_usage(indices: Tensor, codebook_size: int) -> Tensor:
    """How often each code is used among ``indices`` (any shape): (codebook_size,) frequencies summing to 1."""
    counts = torch.bincount(indices.flatten(), minlength=codebook_size).float()  # (K,)
    return counts / counts.sum().clamp(min=1)


def perplexity(usage: Tensor) -> Tensor:
    """exp(entropy) of a usage distribution (K,): the number of codes in effective use, from 1 (one code) to K
    (all equally). 0 · log 0 counts as 0."""
    return torch.special.entr(usage).sum().exp()


# ---------------------------------------------------------------------------------------------------------------
# The vector quantiser
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class QuantiserOutput:
    quantised: Tensor  # (batch, D, h, w) the nearest codes, with the straight-through gradient to the inputs
    indices: Tensor  # (batch, h, w) which code each position took
    codebook_loss: Tensor  # () mean (sg[z] - e)²
    commitment_loss: Tensor  # () mean (z - sg[e])²
    loss: Tensor  # () codebook_loss + beta · commitment_loss (with ema: beta · commitment_loss only)


class VectorQuantiser(nn.Module):
    """Nearest-code quantisation of (batch, D, h, w) vectors against a (K, D) codebook; straight-through gradient.

    Buffers: ``cluster_size`` (K,), the moving average of how many vectors each code received per batch (for dead
    codes, and with ema for the codes), and ``embed_sum`` (K, D), the moving average of their sum (ema only).
    """

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        if not isinstance(config, VQVAEConfig):
            raise TypeError(f"config must be a VQVAEConfig, got {type(config).__name__}")
        self.config = config
        size, dim = config.codebook_size, config.code_dim
        codebook = torch.empty(size, dim).uniform_(-1 / size, 1 / size)  # (K, D), as in the paper's code
        self.codebook = nn.Parameter(codebook, requires_grad=not config.ema)
        self.register_buffer("cluster_size", torch.ones(size))  # (K,)
        self.register_buffer("embed_sum", codebook.clone())  # (K, D): with cluster_size 1, the codes themselves

    @torch.no_grad()
    def restart_dead_codes(self, vectors: Tensor) -> None:
        """Move every code whose ``cluster_size`` is below ``dead_code_threshold`` onto a random row of ``vectors``
        (N, D), the batch's encoder outputs, and give it that count, so it starts again where the data is."""
        threshold = self.config.dead_code_threshold
        dead = self.cluster_size < threshold  # (K,)
        picks = vectors[torch.randint(len(vectors), (self.config.codebook_size,), device=vectors.device)]  # (K, D)
        self.codebook.copy_(torch.where(dead[:, None], picks, self.codebook))
        self.cluster_size.copy_(torch.where(dead, torch.full_like(self.cluster_size, threshold), self.cluster_size))
        self.embed_sum.copy_(torch.where(dead[:, None], picks * threshold, self.embed_sum))

    @torch.no_grad()
    def update_averages(self, vectors: Tensor, indices: Tensor) -> None:
        """Moving averages of the batch: N_k ← γ N_k + (1 - γ) n_k; with ema also m_k ← γ m_k + (1 - γ) Σ z assigned
        to k, and e_k = m_k / N_k (N Laplace-smoothed so that it never reaches 0; an unused code keeps its place)."""
        decay = self.config.ema_decay
        assigned = F.one_hot(indices, self.config.codebook_size).type(vectors.dtype)  # (N, K)
        self.cluster_size.mul_(decay).add_(assigned.sum(dim=0), alpha=1 - decay)  # (K,)
        if not self.config.ema:
            return
        self.embed_sum.mul_(decay).add_(assigned.T @ vectors, alpha=1 - decay)  # (K, D)
        total = self.cluster_size.sum()
        size = self.config.codebook_size
        smoothed = (self.cluster_size + LAPLACE_EPSILON) / (total + size * LAPLACE_EPSILON) * total  # (K,)
        self.codebook.copy_(self.embed_sum / smoothed[:, None])

    def forward(self, latents: Tensor) -> QuantiserOutput:
        """latents (batch, D, h, w) → QuantiserOutput; in training mode, restarts dead codes first, then updates the
        moving averages (and with ema the codes) after the assignment."""
        if not isinstance(latents, Tensor) or latents.dim() != 4 or latents.size(1) != self.config.code_dim:
            found = tuple(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__
            raise ValueError(f"latents must be (batch, code_dim={self.config.code_dim}, h, w), got {found}")
        batch, dim, height, width = latents.shape
        vectors = latents.permute(0, 2, 3, 1).reshape(-1, dim)  # (batch·h·w, D)
        if self.training and self.config.dead_code_threshold > 0:
            self.restart_dead_codes(vectors.detach())
        indices = nearest_codes(vectors.detach(), self.codebook.detach())  # (batch·h·w,)
        quantised = self.codebook[indices]  # (batch·h·w, D)
        if self.training:
            self.update_averages(vectors.detach(), indices)
        codebook_loss, commitment_loss = vq_losses(vectors, quantised)
        loss = self.config.beta * commitment_loss + (0 if self.config.ema else codebook_loss)
        quantised = straight_through(vectors, quantised)  # (batch·h·w, D)
        return QuantiserOutput(
            quantised=quantised.reshape(batch, height, width, dim).permute(0, 3, 1, 2),  # (batch, D, h, w)
            indices=indices.reshape(batch, height, width),  # (batch, h, w)
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            loss=loss,
        )


# ---------------------------------------------------------------------------------------------------------------
# Encoder, decoder and the whole model
# ---------------------------------------------------------------------------------------------------------------


class ResidualBlock(nn.Module):
    """x + 1x1 conv(ReLU(3x3 conv(ReLU(x)))), the paper's residual block: widths unchanged."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(batch, width, H, W) → (batch, width, H, W)."""
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class Encoder(nn.Module):
    """One 4x4 stride-2 conv + ReLU per width (each halves H and W), a residual block, a 1x1 conv to code_dim."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = config.channels
        for width in config.widths:
            layers += [nn.Conv2d(previous, width, 4, stride=2, padding=1), nn.ReLU()]
            previous = width
        layers += [ResidualBlock(previous), nn.ReLU(), nn.Conv2d(previous, config.code_dim, 1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        """(batch, C, H, W) → (batch, code_dim, h, w)."""
        return self.layers(images)


class Decoder(nn.Module):
    """The encoder mirrored: a 3x3 conv from code_dim, a residual block, one 4x4 stride-2 transposed conv per width
    (each doubles H and W). No squashing at the end: a sigmoid there saturates early in training and stalls it, so
    pixels come out near [0, 1], not inside it (clamp them to show them)."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        widths = config.widths
        layers: list[nn.Module] = [nn.Conv2d(config.code_dim, widths[-1], 3, padding=1), ResidualBlock(widths[-1])]
        for level in reversed(range(len(widths))):
            out = widths[level - 1] if level > 0 else config.channels
            layers += [nn.ReLU(), nn.ConvTranspose2d(widths[level], out, 4, stride=2, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, quantised: Tensor) -> Tensor:
        """(batch, code_dim, h, w) → (batch, C, H, W)."""
        return self.layers(quantised)


@dataclass
class VQVAEOutput:
    reconstruction: Tensor  # (batch, C, H, W), near [0, 1]
    indices: Tensor  # (batch, h, w) the code grid
    reconstruction_loss: Tensor  # () mean squared error against the input images
    codebook_loss: Tensor  # ()
    commitment_loss: Tensor  # ()
    loss: Tensor  # () reconstruction_loss + the quantiser's loss


class VQVAE(nn.Module):
    """Encoder → vector quantiser → decoder. ``forward`` returns a VQVAEOutput; ``encode`` turns images into code
    grids (batch, h, w) and ``decode`` code grids into images, for a prior trained on the codes."""

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        if not isinstance(config, VQVAEConfig):
            raise TypeError(f"config must be a VQVAEConfig, got {type(config).__name__}")
        self.config = config
        self.encoder = Encoder(config)
        self.quantiser = VectorQuantiser(config)
        self.decoder = Decoder(config)

    def forward(self, images: Tensor) -> VQVAEOutput:
        """images (batch, C, H, W) in [0, 1] → VQVAEOutput."""
        check_images(images, self.config.channels, self.config.image_size)
        coded = self.quantiser(self.encoder(images))  # coded.quantised: (batch, D, h, w)
        reconstruction = self.decoder(coded.quantised)  # (batch, C, H, W)
        reconstruction_loss = F.mse_loss(reconstruction, images)
        return VQVAEOutput(
            reconstruction=reconstruction,
            indices=coded.indices,
            reconstruction_loss=reconstruction_loss,
            codebook_loss=coded.codebook_loss,
            commitment_loss=coded.commitment_loss,
            loss=reconstruction_loss + coded.loss,
        )

    def encode(self, images: Tensor) -> Tensor:
        """images (batch, C, H, W) → code indices (batch, h, w). Only looks codes up: no restarts, no averages."""
        check_images(images, self.config.channels, self.config.image_size)
        latents = self.encoder(images)  # (batch, D, h, w)
        batch, dim, height, width = latents.shape
        vectors = latents.permute(0, 2, 3, 1).reshape(-1, dim)  # (batch·h·w, D)
        return nearest_codes(vectors, self.quantiser.codebook).reshape(batch, height, width)  # (batch, h, w)

    def decode(self, indices: Tensor) -> Tensor:
        """code indices (batch, h, w) → images (batch, C, H, W), near [0, 1]."""
        check_token_ids("indices", indices, self.config.codebook_size, "codebook_size")
        if indices.dim() != 3:
            raise ValueError(f"indices must be (batch, h, w), got shape {tuple(indices.shape)}")
        quantised = self.quantiser.codebook[indices].permute(0, 3, 1, 2)  # (batch, D, h, w)
        return self.decoder(quantised)

    def encode_latents(self, images: Tensor) -> Tensor:
        """images (batch, C, H, W) → their code vectors (batch, D, h, w), the codebook rows ``encode`` picks: the
        continuous latents a latent diffusion model learns to generate."""
        return self.quantiser.codebook[self.encode(images)].permute(0, 3, 1, 2)  # (batch, D, h, w)

    def decode_latents(self, latents: Tensor) -> Tensor:
        """latents (batch, D, h, w), e.g. sampled by a diffusion model → each vector snapped to its nearest code →
        images (batch, C, H, W), near [0, 1]."""
        dim = self.config.code_dim
        if not isinstance(latents, Tensor) or latents.dim() != 4 or latents.size(1) != dim:
            found = tuple(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__
            raise ValueError(f"latents must be (batch, code_dim={dim}, h, w), got {found}")
        batch, _, height, width = latents.shape
        vectors = latents.permute(0, 2, 3, 1).reshape(-1, dim)  # (batch·h·w, D)
        indices = nearest_codes(vectors, self.quantiser.codebook).reshape(batch, height, width)  # (batch, h, w)
        return self.decode(indices)


def vqvae_loss(model: VQVAE, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """For :func:`mmcourse.train.train`: the VQ-VAE loss, and as metrics the reconstruction error and the batch's
    codebook perplexity (tensors: the loop reads them after its step)."""
    output = model(images)
    usage = code_usage(output.indices, model.config.codebook_size)  # (K,)
    return output.loss, {"reconstruction": output.reconstruction_loss.detach(), "perplexity": perplexity(usage)}
