"""Denoising diffusion (扩散模型): DDPM (Ho et al., 2020), DDIM (Song et al., 2021) and classifier-free guidance (Ho
and Salimans, 2021), for any denoiser that predicts the noise (the book's is :class:`mmcourse.unet.UNet`).

The forward process adds Gaussian noise in ``T`` small steps, ``x_t = sqrt(α_t) x_{t-1} + sqrt(β_t) ε``, so that in
closed form ``x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε`` with ``ᾱ_t = α_0 α_1 … α_t``. A network ε_θ(x_t, t, c) learns
to predict ε (a mean squared error); sampling starts from pure noise and walks back, one DDPM step per timestep or
DDIM steps over a subsequence of them. Timesteps count from 0, as in diffusers: ``t = 0`` is the first noising step
(the papers' t = 1), ``schedule.alphas_cumprod[t]`` is ᾱ after ``t + 1`` steps. Images live in [-1, 1] here
(``pixels_to_signed``), which is what clipping the predicted x_0 to [-1, 1] assumes.

A condition is a vector per image (a caption encoding, a class embedding); the *null condition*, meaning "no
condition", is the zero vector. Training drops the condition now and then (``drop_condition``), so that one network
predicts both ε(x_t, t, c) and ε(x_t, t, ∅), and guidance extrapolates from the second to the first.

The step functions and the denoiser check shapes and Python numbers only; the one check that reads a tensor (the
timesteps given to ``q_sample`` lie in [0, T)) runs where they enter, never in the loss or the samplers' loops.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcourse.checks import check_finite_number, check_int, check_positive_int

# A denoiser: (noisy images (batch, C, H, W), timesteps (batch,), condition (batch, condition_dim) or None) → noise.
Denoiser = Callable[[Tensor, Tensor, Tensor | None], Tensor]

# ---------------------------------------------------------------------------------------------------------------
# Noise schedules
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoiseSchedule:
    """β_t, α_t = 1 - β_t and ᾱ_t = α_0 α_1 … α_t for t = 0 … T - 1, float32 tensors of shape (T,)."""

    betas: Tensor
    alphas: Tensor
    alphas_cumprod: Tensor

    @classmethod
    def from_betas(cls, betas: Tensor) -> NoiseSchedule:
        """The schedule of the given β_t (T,), each in (0, 1); ᾱ is accumulated in float64, then stored in float32."""
        if not isinstance(betas, Tensor) or not betas.is_floating_point() or betas.dim() != 1 or len(betas) == 0:
            raise ValueError(f"betas must be a non-empty 1-D float tensor, got {betas!r:.80}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"betas must lie in (0, 1), got values from {betas.min().item()} to {betas.max().item()}")
        betas = betas.double()
        alphas = 1.0 - betas  # (T,)
        return cls(betas.float(), alphas.float(), torch.cumprod(alphas, dim=0).float())

    @property
    def n_timesteps(self) -> int:
        return len(self.betas)

    def to(self, device: torch.device | str) -> NoiseSchedule:
        """The same schedule with its tensors on ``device``."""
        return NoiseSchedule(self.betas.to(device), self.alphas.to(device), self.alphas_cumprod.to(device))


def linear_schedule(
    n_timesteps: int = 1000, beta_start: float | None = None, beta_end: float | None = None
) -> NoiseSchedule:
    """DDPM's β_t, linear from ``beta_start`` to ``beta_end``. None: 1e-4 and 0.02 (DDPM's values for T = 1000),
    scaled by 1000 / n_timesteps as in Nichol and Dhariwal (2021), so that ᾱ ends near 0 for any T."""
    check_positive_int("n_timesteps", n_timesteps)
    scale = 1000 / n_timesteps
    beta_start = 1e-4 * scale if beta_start is None else beta_start
    beta_end = 0.02 * scale if beta_end is None else beta_end
    for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        check_finite_number(name, value)
        if not 0 < value < 1:
            raise ValueError(f"{name} must be in (0, 1), got {value!r} (n_timesteps={n_timesteps} scales the default)")
    return NoiseSchedule.from_betas(torch.linspace(beta_start, beta_end, n_timesteps, dtype=torch.float64))


def cosine_alphas_cumprod(n_timesteps: int, offset: float = 0.008) -> Tensor:
    """ᾱ(t) = f(t) / f(0), f(t) = cos²((t/T + s) / (1 + s) · π/2), at t = 0 … T: (T + 1,) float64, from 1 down to 0."""
    check_positive_int("n_timesteps", n_timesteps)
    check_finite_number("offset", offset)
    if not offset > 0:
        raise ValueError(f"offset must be > 0, got {offset!r}")
    fraction = torch.arange(n_timesteps + 1, dtype=torch.float64) / n_timesteps  # (T + 1,)
    f = torch.cos((fraction + offset) / (1 + offset) * math.pi / 2) ** 2  # (T + 1,)
    return f / f[0]


def cosine_schedule(n_timesteps: int = 1000, offset: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
    """Nichol and Dhariwal's (2021) cosine schedule: β_t = 1 - ᾱ(t + 1) / ᾱ(t), capped at ``max_beta`` (the last
    ratio is 0, so without the cap the last step would wipe the image out in one go)."""
    check_finite_number("max_beta", max_beta)
    if not 0 < max_beta < 1:
        raise ValueError(f"max_beta must be in (0, 1), got {max_beta!r}")
    alphas_cumprod = cosine_alphas_cumprod(n_timesteps, offset)  # (T + 1,)
    betas = (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clamp(max=max_beta)  # (T,)
    return NoiseSchedule.from_betas(betas)


def _per_sample(values: Tensor, timesteps: Tensor, like: Tensor) -> Tensor:
    """values[timesteps], shaped (batch, 1, 1, …) to broadcast against ``like`` (batch, …)."""
    picked = values.to(like.device)[timesteps].to(like.dtype)  # (batch,)
    return picked.reshape(-1, *([1] * (like.dim() - 1)))  # (batch, 1, 1, 1)


# ---------------------------------------------------------------------------------------------------------------
# The forward process and the loss
# ---------------------------------------------------------------------------------------------------------------


def pixels_to_signed(images: Tensor) -> Tensor:
    """Pixel values in [0, 1] → [-1, 1], the range the diffusion works in."""
    return images * 2 - 1


def signed_to_pixels(x: Tensor) -> Tensor:
    """[-1, 1] → pixel values in [0, 1], clamped (a sample may overshoot a little)."""
    return ((x + 1) / 2).clamp(0, 1)


def check_timesteps(timesteps: Tensor, n_timesteps: int, batch: int) -> None:
    """TypeError unless ``timesteps`` is an int64 / int32 tensor; ValueError unless it is (batch,) with values in
    [0, n_timesteps). The range check reads the tensor: call it once where timesteps come in."""
    if not isinstance(timesteps, Tensor) or timesteps.dtype not in (torch.int64, torch.int32):
        kind = f"a {timesteps.dtype} tensor" if isinstance(timesteps, Tensor) else type(timesteps).__name__
        raise TypeError(f"timesteps must be an int64 or int32 tensor, got {kind}")
    if tuple(timesteps.shape) != (batch,):
        raise ValueError(f"timesteps must be (batch,) = ({batch},), got shape {tuple(timesteps.shape)}")
    outside = (timesteps < 0) | (timesteps >= n_timesteps)  # (batch,)
    if bool(outside.any()):
        found = timesteps[outside]
        raise ValueError(f"timesteps must lie in [0, n_timesteps={n_timesteps}), got {found.tolist()[:5]}")


def _check_step(schedule: NoiseSchedule, t: object) -> None:
    """A Python int timestep in [0, T): the checks of the step functions read no tensor."""
    check_int("t", t)
    if not 0 <= t < schedule.n_timesteps:
        raise ValueError(f"t must be in [0, n_timesteps={schedule.n_timesteps}), got {t}")


def _check_same_shape(name: str, x: Tensor, like: Tensor) -> None:
    if not isinstance(x, Tensor) or x.shape != like.shape:
        raise ValueError(f"{name} must have the shape {tuple(like.shape)}, got {getattr(x, 'shape', type(x))}")


def q_step(schedule: NoiseSchedule, x_previous: Tensor, t: int, noise: Tensor) -> Tensor:
    """One forward step q(x_t | x_{t-1}): sqrt(α_t) x_{t-1} + sqrt(β_t) ε, at one timestep ``t`` for the batch."""
    _check_step(schedule, t)
    _check_same_shape("noise", noise, x_previous)
    return schedule.alphas[t].sqrt() * x_previous + schedule.betas[t].sqrt() * noise


def _q_sample(schedule: NoiseSchedule, x0: Tensor, timesteps: Tensor, noise: Tensor) -> Tensor:
    alpha_cumprod = _per_sample(schedule.alphas_cumprod, timesteps, x0)  # (batch, 1, 1, 1): ᾱ_t of each image
    return alpha_cumprod.sqrt() * x0 + (1 - alpha_cumprod).sqrt() * noise  # (batch, C, H, W)


def q_sample(schedule: NoiseSchedule, x0: Tensor, timesteps: Tensor, noise: Tensor) -> Tensor:
    """x_t ~ q(x_t | x_0) in one go: sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε, each image at its own timestep (batch,)."""
    if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.dim() < 1:
        raise TypeError(f"x0 must be a float tensor (batch, …), got {type(x0).__name__}")
    check_timesteps(timesteps, schedule.n_timesteps, x0.size(0))
    _check_same_shape("noise", noise, x0)
    return _q_sample(schedule, x0, timesteps, noise)


def epsilon_loss(
    model: Denoiser,
    schedule: NoiseSchedule,
    x0: Tensor,
    condition: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """DDPM's simple loss: a random timestep and noise per image, x_t = q_sample(...), then MSE(ε_θ(x_t, t, c), ε).
    ``x0`` in [-1, 1]; ``generator`` (on x0's device) makes the draw repeatable."""
    batch = x0.size(0)
    timesteps = torch.randint(schedule.n_timesteps, (batch,), generator=generator, device=x0.device)  # (batch,)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)  # (batch, C, H, W)
    x_t = _q_sample(schedule, x0, timesteps, noise)  # (batch, C, H, W)
    return F.mse_loss(model(x_t, timesteps, condition), noise)


# ---------------------------------------------------------------------------------------------------------------
# Conditions and classifier-free guidance
# ---------------------------------------------------------------------------------------------------------------


def null_condition(condition: Tensor) -> Tensor:
    """The condition that means "no condition": zeros shaped like ``condition``."""
    return torch.zeros_like(condition)


def drop_condition(condition: Tensor, probability: float, generator: torch.Generator | None = None) -> Tensor:
    """For training with guidance: each row of ``condition`` (batch, condition_dim) replaced by the null condition
    with the given probability (0.1 to 0.2 is usual)."""
    check_finite_number("probability", probability)
    if not 0 <= probability <= 1:
        raise ValueError(f"probability must be in [0, 1], got {probability!r}")
    if not isinstance(condition, Tensor) or condition.dim() != 2:
        raise ValueError(f"condition must be (batch, condition_dim), got {getattr(condition, 'shape', condition)!r}")
    keep = torch.rand(condition.size(0), generator=generator, device=condition.device) >= probability  # (batch,)
    return torch.where(keep[:, None], condition, null_condition(condition))  # (batch, condition_dim)


def _check_guidance_scale(guidance_scale: float) -> None:
    check_finite_number("guidance_scale", guidance_scale)
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0 (0: unconditional, 1: conditional), got {guidance_scale!r}")


def classifier_free_guidance(noise_uncond: Tensor, noise_cond: Tensor, guidance_scale: float) -> Tensor:
    """ε_∅ + s (ε_c - ε_∅): s = 0 is the unconditional prediction, s = 1 the conditional one, s > 1 goes past it."""
    _check_guidance_scale(guidance_scale)
    return noise_uncond + guidance_scale * (noise_cond - noise_uncond)


def guided_noise(
    model: Denoiser, x_t: Tensor, timesteps: Tensor, condition: Tensor | None, guidance_scale: float = 1.0
) -> Tensor:
    """The noise prediction to sample with: the model's own without a condition or at scale 1; otherwise one batched
    call on (null condition, condition) and :func:`classifier_free_guidance`."""
    _check_guidance_scale(guidance_scale)
    if condition is None or guidance_scale == 1:
        return model(x_t, timesteps, condition)
    both = model(
        torch.cat([x_t, x_t]), torch.cat([timesteps, timesteps]), torch.cat([null_condition(condition), condition])
    )  # (2 * batch, C, H, W)
    noise_uncond, noise_cond = both.chunk(2)  # each (batch, C, H, W)
    return classifier_free_guidance(noise_uncond, noise_cond, guidance_scale)


# ---------------------------------------------------------------------------------------------------------------
# The reverse process: one step, then whole samplers
# ---------------------------------------------------------------------------------------------------------------


def predict_x0(schedule: NoiseSchedule, x_t: Tensor, t: int, noise: Tensor) -> Tensor:
    """The clean image the predicted noise implies: (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t)."""
    alpha_cumprod = schedule.alphas_cumprod[t]
    return (x_t - (1 - alpha_cumprod).sqrt() * noise) / alpha_cumprod.sqrt()


def ddpm_step(
    schedule: NoiseSchedule,
    x_t: Tensor,
    t: int,
    noise: Tensor,
    generator: torch.Generator | None = None,
    clip_x0: bool = True,
) -> Tensor:
    """One DDPM step, x_t → x_{t-1} ~ p(x_{t-1} | x_t): the posterior q(x_{t-1} | x_t, x̂_0) with x̂_0 from the predicted
    ``noise`` (clipped to [-1, 1] when ``clip_x0``), variance β̃_t = (1 - ᾱ_{t-1}) / (1 - ᾱ_t) β_t; no noise at t = 0.
    Equals diffusers' ``DDPMScheduler.step`` (``variance_type="fixed_small"``, ``clip_sample=clip_x0``)."""
    _check_step(schedule, t)
    _check_same_shape("noise", noise, x_t)
    alpha_cumprod = schedule.alphas_cumprod[t]
    alpha_cumprod_previous = schedule.alphas_cumprod[t - 1] if t > 0 else alpha_cumprod.new_ones(())
    alpha = alpha_cumprod / alpha_cumprod_previous  # α_t and β_t from the stored ᾱ (as diffusers does), so that in
    beta = 1 - alpha  # float32 the weights below stay consistent: at t = 0 the x̂_0 weight is exactly 1
    x0 = predict_x0(schedule, x_t, t, noise)  # (batch, C, H, W)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
    x0_weight = alpha_cumprod_previous.sqrt() * beta / (1 - alpha_cumprod)
    x_t_weight = alpha.sqrt() * (1 - alpha_cumprod_previous) / (1 - alpha_cumprod)
    mean = x0_weight * x0 + x_t_weight * x_t  # (batch, C, H, W): the posterior mean
    if t == 0:
        return mean
    variance = (1 - alpha_cumprod_previous) / (1 - alpha_cumprod) * beta
    z = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)  # (batch, C, H, W)
    return mean + variance.sqrt() * z


def ddim_step(
    schedule: NoiseSchedule,
    x_t: Tensor,
    t: int,
    t_previous: int,
    noise: Tensor,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    clip_x0: bool = True,
) -> Tensor:
    """One DDIM step, x_t → x_{t_previous} (any earlier timestep; -1 means all the way to ᾱ = 1):
    sqrt(ᾱ_prev) x̂_0 + sqrt(1 - ᾱ_prev - σ²) ε + σ z, with σ = η sqrt((1 - ᾱ_prev) / (1 - ᾱ_t) · (1 - ᾱ_t / ᾱ_prev)).
    η = 0 is deterministic. The direction term uses the model's ε, not one re-derived from the clipped x̂_0, as
    diffusers' ``DDIMScheduler.step`` does by default."""
    _check_step(schedule, t)
    check_int("t_previous", t_previous, minimum=-1)
    if t_previous >= t:
        raise ValueError(f"t_previous must be earlier than t={t} (>= -1), got {t_previous}")
    _check_same_shape("noise", noise, x_t)
    check_finite_number("eta", eta)
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1] (0: DDIM, 1: DDPM-like noise), got {eta!r}")
    alpha_cumprod = schedule.alphas_cumprod[t]
    alpha_cumprod_previous = schedule.alphas_cumprod[t_previous] if t_previous >= 0 else alpha_cumprod.new_ones(())
    x0 = predict_x0(schedule, x_t, t, noise)  # (batch, C, H, W)
    if clip_x0:
        x0 = x0.clamp(-1, 1)
    variance = (1 - alpha_cumprod_previous) / (1 - alpha_cumprod) * (1 - alpha_cumprod / alpha_cumprod_previous)
    sigma = eta * variance.sqrt()
    x_previous = alpha_cumprod_previous.sqrt() * x0 + (1 - alpha_cumprod_previous - sigma**2).sqrt() * noise
    if eta == 0:
        return x_previous
    z = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)  # (batch, C, H, W)
    return x_previous + sigma * z


def ddim_timesteps(n_timesteps: int, steps: int) -> list[int]:
    """``steps`` timesteps, evenly spaced from 0 by n_timesteps // steps, latest first (diffusers' "leading")."""
    check_positive_int("n_timesteps", n_timesteps)
    check_int("steps", steps)
    if not 1 <= steps <= n_timesteps:
        raise ValueError(f"steps must be in [1, n_timesteps={n_timesteps}], got {steps}")
    stride = n_timesteps // steps
    return list(range(0, steps * stride, stride))[::-1]


def _check_sampling(shape: tuple[int, ...], condition: Tensor | None, guidance_scale: float) -> None:
    if not isinstance(shape, tuple) or len(shape) != 4:
        raise ValueError(f"shape must be a tuple (batch, channels, height, width), got {shape!r}")
    for size in shape:
        check_positive_int("shape", size)
    wrong = not isinstance(condition, Tensor) or condition.dim() != 2 or len(condition) != shape[0]
    if condition is not None and wrong:
        found = tuple(condition.shape) if isinstance(condition, Tensor) else type(condition).__name__
        raise ValueError(f"condition must be (batch={shape[0]}, condition_dim), got {found}")
    _check_guidance_scale(guidance_scale)


def _sampling_device(model: Denoiser, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    parameter = next(model.parameters(), None) if isinstance(model, nn.Module) else None
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def ddpm_sample(
    model: Denoiser,
    schedule: NoiseSchedule,
    shape: tuple[int, int, int, int],
    condition: Tensor | None = None,
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
    clip_x0: bool = True,
    device: torch.device | str | None = None,
) -> Tensor:
    """Ancestral sampling: x_{T-1} ~ N(0, I), then one :func:`ddpm_step` per timestep down to 0. Returns x_0 in
    [-1, 1] (batch, C, H, W). Put the model in eval mode first; ``generator`` (on ``device``) makes it repeatable."""
    _check_sampling(shape, condition, guidance_scale)
    device = _sampling_device(model, device)
    x = torch.randn(shape, generator=generator, device=device)  # (batch, C, H, W)
    for t in reversed(range(schedule.n_timesteps)):
        timesteps = torch.full((shape[0],), t, dtype=torch.long, device=device)  # (batch,)
        noise = guided_noise(model, x, timesteps, condition, guidance_scale)  # (batch, C, H, W)
        x = ddpm_step(schedule, x, t, noise, generator=generator, clip_x0=clip_x0)
    return x


@torch.no_grad()
def ddim_sample(
    model: Denoiser,
    schedule: NoiseSchedule,
    shape: tuple[int, int, int, int],
    steps: int = 50,
    condition: Tensor | None = None,
    guidance_scale: float = 1.0,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    clip_x0: bool = True,
    device: torch.device | str | None = None,
) -> Tensor:
    """DDIM sampling over ``steps`` of the schedule's timesteps (:func:`ddim_timesteps`), one :func:`ddim_step`
    each; deterministic given the starting noise when ``eta = 0``. Returns x_0 in [-1, 1] (batch, C, H, W)."""
    _check_sampling(shape, condition, guidance_scale)
    timesteps_used = ddim_timesteps(schedule.n_timesteps, steps)
    device = _sampling_device(model, device)
    x = torch.randn(shape, generator=generator, device=device)  # (batch, C, H, W)
    for index, t in enumerate(timesteps_used):
        t_previous = timesteps_used[index + 1] if index + 1 < len(timesteps_used) else -1
        timesteps = torch.full((shape[0],), t, dtype=torch.long, device=device)  # (batch,)
        noise = guided_noise(model, x, timesteps, condition, guidance_scale)  # (batch, C, H, W)
        x = ddim_step(schedule, x, t, t_previous, noise, eta=eta, generator=generator, clip_x0=clip_x0)
    return x
