import math
from collections.abc import Callable
from types import ModuleType

import pytest
import torch

from mmcourse.diffusion import (
    NoiseSchedule,
    classifier_free_guidance,
    cosine_alphas_cumprod,
    cosine_schedule,
    ddim_sample,
    ddim_step,
    ddim_timesteps,
    ddpm_sample,
    ddpm_step,
    drop_condition,
    epsilon_loss,
    guided_noise,
    linear_schedule,
    pixels_to_signed,
    predict_x0,
    q_sample,
    q_step,
    signed_to_pixels,
)
from mmcourse.unet import UNet, UNetConfig, timestep_embedding

TINY = UNetConfig(image_size=16, widths=(16, 32), time_dim=16, embedding_dim=32, condition_dim=6, groups=4)


def tiny_unet(seed: int = 0) -> UNet:
    """A small conditional U-Net whose output conv is not zero, so that its predictions depend on the inputs."""
    torch.manual_seed(seed)
    model = UNet(TINY)
    torch.nn.init.normal_(model.conv_out.weight, std=0.05)
    return model.eval()


def gaussian(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------------------------


def test_alphas_cumprod_is_the_running_product_of_one_minus_beta() -> None:
    schedule = linear_schedule(50)
    product, expected = 1.0, []
    for beta in schedule.betas.tolist():
        product *= 1 - beta
        expected.append(product)
    torch.testing.assert_close(schedule.alphas_cumprod, torch.tensor(expected))
    torch.testing.assert_close(schedule.alphas, 1 - schedule.betas)


def test_linear_schedule_is_ddpms_and_scales_with_the_number_of_steps() -> None:
    ddpm = linear_schedule(1000)
    assert ddpm.betas[0].item() == pytest.approx(1e-4) and ddpm.betas[-1].item() == pytest.approx(0.02)
    short = linear_schedule(100)
    assert short.betas[0].item() == pytest.approx(1e-3) and short.betas[-1].item() == pytest.approx(0.2)
    for schedule in (ddpm, short):  # both end in (nearly) pure noise
        assert schedule.alphas_cumprod[-1].item() < 1e-4


def test_cosine_schedule_follows_its_cosine_until_the_cap() -> None:
    schedule = cosine_schedule(100)
    target = cosine_alphas_cumprod(100)  # (101,): ᾱ at t = 0 … T, from 1 to 0
    assert target[0].item() == 1.0 and target[-1].item() == pytest.approx(0.0, abs=1e-12)
    # alphas_cumprod[t] is ᾱ after t + 1 steps: target[t + 1]; the cap only bends the very last step
    torch.testing.assert_close(schedule.alphas_cumprod[:-1], target[1:-1].float())
    assert schedule.betas[-1].item() == pytest.approx(0.999)
    assert (schedule.alphas_cumprod.diff() < 0).all()
    t = 50  # halfway through, ᾱ = cos²((0.5 + s) / (1 + s) · π/2) / f(0)
    halfway = math.cos((0.5 + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2
    assert schedule.alphas_cumprod[t - 1].item() == pytest.approx(halfway, rel=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# The forward process
# ---------------------------------------------------------------------------------------------------------------


def test_closed_form_matches_composed_single_steps_exactly() -> None:
    """x_t = sqrt(α_t) x_{t-1} + sqrt(β_t) ε_t is linear in x_0 and the ε's: its mean coefficient is the product
    of sqrt(α_s) and its variance follows v_t = α_t v_{t-1} + β_t, which q(x_t | x_0) says are sqrt(ᾱ_t), 1 - ᾱ_t."""
    schedule = cosine_schedule(60)
    x0 = torch.tensor([0.7, -0.3])
    mean, variance = x0, 0.0
    for t in range(schedule.n_timesteps):
        mean = q_step(schedule, mean, t, torch.zeros(2))  # the step with ε = 0 moves the mean
        variance = schedule.alphas[t].item() * variance + schedule.betas[t].item()
        torch.testing.assert_close(mean, schedule.alphas_cumprod[t].sqrt() * x0)
        assert variance == pytest.approx(1 - schedule.alphas_cumprod[t].item(), rel=1e-5)


def test_closed_form_matches_composed_single_steps_by_monte_carlo() -> None:
    schedule = linear_schedule(40)
    samples, x0 = 20_000, 0.8
    generator = torch.Generator().manual_seed(0)
    x = torch.full((samples,), x0)
    for t in range(schedule.n_timesteps):
        x = q_step(schedule, x, t, torch.randn(samples, generator=generator))
        if t in (4, 39):
            alpha_cumprod = schedule.alphas_cumprod[t].item()
            mean, variance = math.sqrt(alpha_cumprod) * x0, 1 - alpha_cumprod
            assert x.mean().item() == pytest.approx(mean, abs=4 * math.sqrt(variance / samples))
            assert x.var().item() == pytest.approx(variance, rel=0.05)
            direct = q_sample(schedule, torch.full((samples, 1), x0), torch.full((samples,), t), gaussian(samples, 1))
            assert direct.mean().item() == pytest.approx(mean, abs=4 * math.sqrt(variance / samples))
            assert direct.var().item() == pytest.approx(variance, rel=0.05)


def test_q_sample_puts_each_image_at_its_own_timestep() -> None:
    schedule = linear_schedule(100)
    x0, noise = gaussian(3, 3, 4, 4, seed=1), gaussian(3, 3, 4, 4, seed=2)
    timesteps = torch.tensor([0, 50, 99])
    x_t = q_sample(schedule, x0, timesteps, noise)
    for row, t in enumerate(timesteps.tolist()):
        alpha_cumprod = schedule.alphas_cumprod[t]
        torch.testing.assert_close(x_t[row], alpha_cumprod.sqrt() * x0[row] + (1 - alpha_cumprod).sqrt() * noise[row])
    torch.testing.assert_close(predict_x0(schedule, x_t[1:2], 50, noise[1:2]), x0[1:2])


def test_pixels_go_to_signed_and_back() -> None:
    pixels = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(signed_to_pixels(pixels_to_signed(pixels)), pixels)
    assert pixels_to_signed(torch.tensor([0.0, 1.0])).tolist() == [-1.0, 1.0]


# ---------------------------------------------------------------------------------------------------------------
# Reverse steps
# ---------------------------------------------------------------------------------------------------------------


def test_ddpm_step_mean_is_the_epsilon_form_of_the_posterior_mean() -> None:
    """With x̂_0 unclipped, the posterior mean equals (x_t - β_t / sqrt(1 - ᾱ_t) ε) / sqrt(α_t) (DDPM, eq. 11)."""
    schedule = linear_schedule(100)
    x_t, noise, t = gaussian(2, 3, 4, 4, seed=1), gaussian(2, 3, 4, 4, seed=2), 60
    step = ddpm_step(schedule, x_t, t, noise, generator=torch.Generator().manual_seed(5), clip_x0=False)
    beta, alpha, alpha_cumprod = schedule.betas[t], schedule.alphas[t], schedule.alphas_cumprod[t]
    mean = (x_t - beta / (1 - alpha_cumprod).sqrt() * noise) / alpha.sqrt()
    variance = (1 - schedule.alphas_cumprod[t - 1]) / (1 - alpha_cumprod) * beta
    torch.testing.assert_close(step, mean + variance.sqrt() * gaussian(2, 3, 4, 4, seed=5))


def test_ddpm_step_at_zero_returns_the_predicted_clean_image() -> None:
    schedule = linear_schedule(100)
    x_t, noise = gaussian(2, 3, 4, 4, seed=1), gaussian(2, 3, 4, 4, seed=2)
    torch.testing.assert_close(ddpm_step(schedule, x_t, 0, noise, clip_x0=False), predict_x0(schedule, x_t, 0, noise))
    assert ddpm_step(schedule, 3 * x_t, 0, noise).abs().max() <= 1  # clipped to [-1, 1]


def test_ddim_step_with_the_true_noise_jumps_exactly_along_the_forward_process() -> None:
    schedule = cosine_schedule(100)
    x0, noise = torch.rand(2, 3, 4, 4) * 2 - 1, gaussian(2, 3, 4, 4)
    x_t = q_sample(schedule, x0, torch.full((2,), 80), noise)
    for t_previous in (40, 0):
        expected = q_sample(schedule, x0, torch.full((2,), t_previous), noise)
        torch.testing.assert_close(ddim_step(schedule, x_t, 80, t_previous, noise), expected)
    torch.testing.assert_close(ddim_step(schedule, x_t, 80, -1, noise), x0)


def test_ddim_with_eta_one_over_every_timestep_is_ddpm() -> None:
    """Without clipping x̂_0 (with it, DDPM's mean mixes the clipped x̂_0 with x_t and DDIM's with ε)."""
    schedule = linear_schedule(50)
    x_t, noise = gaussian(2, 3, 4, 4, seed=1), gaussian(2, 3, 4, 4, seed=2)
    for t in (30, 1):
        generators = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        ddim = ddim_step(schedule, x_t, t, t - 1, noise, eta=1.0, generator=generators[0], clip_x0=False)
        ddpm = ddpm_step(schedule, x_t, t, noise, generator=generators[1], clip_x0=False)
        torch.testing.assert_close(ddim, ddpm)


def test_ddim_timesteps_are_evenly_spaced_latest_first() -> None:
    assert ddim_timesteps(1000, 4) == [750, 500, 250, 0]
    assert ddim_timesteps(10, 10) == list(range(9, -1, -1))
    assert ddim_timesteps(10, 3) == [6, 3, 0]


# ---------------------------------------------------------------------------------------------------------------
# Conditions and guidance
# ---------------------------------------------------------------------------------------------------------------


def test_guidance_scale_zero_is_unconditional_one_is_conditional() -> None:
    uncond, cond = gaussian(2, 3, 4, 4, seed=1), gaussian(2, 3, 4, 4, seed=2)
    torch.testing.assert_close(classifier_free_guidance(uncond, cond, 1.0), cond)
    torch.testing.assert_close(classifier_free_guidance(uncond, cond, 0.0), uncond)
    torch.testing.assert_close(classifier_free_guidance(uncond, cond, 3.0), uncond + 3 * (cond - uncond))


def test_guided_noise_at_scale_one_is_the_conditional_prediction() -> None:
    model = tiny_unet()
    x, timesteps, condition = gaussian(2, 3, 16, 16), torch.tensor([3, 70]), gaussian(2, 6, seed=1)
    with torch.no_grad():
        conditional = model(x, timesteps, condition)
        unconditional = model(x, timesteps)  # None: the null condition
        torch.testing.assert_close(guided_noise(model, x, timesteps, condition, 1.0), conditional)
        torch.testing.assert_close(unconditional, model(x, timesteps, torch.zeros(2, 6)))
        guided = guided_noise(model, x, timesteps, condition, 2.5)  # one batched call on (null, condition)
    torch.testing.assert_close(guided, unconditional + 2.5 * (conditional - unconditional), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(conditional, unconditional, atol=1e-4)


def test_drop_condition_replaces_rows_by_the_null_condition() -> None:
    condition = torch.ones(4000, 3)
    torch.testing.assert_close(drop_condition(condition, 0.0), condition)
    assert drop_condition(condition, 1.0).abs().sum() == 0
    dropped = drop_condition(condition, 0.25, generator=torch.Generator().manual_seed(0))
    rows_dropped = (dropped.sum(dim=1) == 0).float()  # (4000,): a row is all kept or all dropped
    assert set(dropped.sum(dim=1).tolist()) <= {0.0, 3.0}
    assert rows_dropped.mean().item() == pytest.approx(0.25, abs=0.03)


# ---------------------------------------------------------------------------------------------------------------
# The denoiser and the samplers
# ---------------------------------------------------------------------------------------------------------------


def test_timestep_embedding_is_sines_then_cosines() -> None:
    embedding = timestep_embedding(torch.tensor([0, 1, 500]), 8)  # (3, 8)
    assert embedding.shape == (3, 8)
    torch.testing.assert_close(embedding[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    frequencies = 10000.0 ** (-torch.arange(4) / 4)  # ω_i = base^(-2i/dim)
    torch.testing.assert_close(embedding[1], torch.cat([frequencies.sin(), frequencies.cos()]))


def test_the_unet_predicts_noise_of_the_image_shape_and_starts_at_zero() -> None:
    torch.manual_seed(0)
    model = UNet(TINY)
    x = gaussian(2, 3, 16, 16)
    output = model(x, torch.tensor([0, 999]), gaussian(2, 6))
    assert output.shape == x.shape and output.abs().max() == 0  # the output conv starts at zero
    assert 50_000 < sum(p.numel() for p in model.parameters()) < 200_000
    assert 200_000 < sum(p.numel() for p in UNet(UNetConfig(condition_dim=64)).parameters()) < 1_000_000


def test_coordinate_channels_tell_the_unet_where_each_pixel_is() -> None:
    x = gaussian(2, 3, 16, 16)
    channels = UNet.coordinate_channels(x)  # (2, 2, 16, 16): column, row
    assert channels.shape == (2, 2, 16, 16)
    torch.testing.assert_close(channels[0, :, 0, 0], torch.tensor([-1.0, -1.0]))  # top left
    torch.testing.assert_close(channels[1, :, 15, 0], torch.tensor([-1.0, 1.0]))  # bottom left
    torch.testing.assert_close(channels[0, 0, 3], torch.linspace(-1, 1, 16))  # x grows along a row
    torch.manual_seed(0)
    model = UNet(UNetConfig(**{**TINY.__dict__, "coordinates": True}))
    assert model.conv_in.in_channels == TINY.channels + 2
    assert model(x, torch.tensor([0, 5]), gaussian(2, 6)).shape == x.shape


def test_seeded_sampling_repeats_exactly() -> None:
    model, schedule = tiny_unet(), linear_schedule(25)
    condition = gaussian(2, 6, seed=1)

    def sample(sampler: Callable, seed: int, **options: object) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return sampler(model, schedule, (2, 3, 16, 16), condition=condition, generator=generator, **options)

    first, again, other = sample(ddpm_sample, 0), sample(ddpm_sample, 0), sample(ddpm_sample, 1)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, other)
    assert first.shape == (2, 3, 16, 16) and first.abs().max() <= 1 + 1e-6
    guided = sample(ddim_sample, 0, steps=5, guidance_scale=2.0)
    torch.testing.assert_close(guided, sample(ddim_sample, 0, steps=5, guidance_scale=2.0), rtol=0, atol=0)
    noisy, noisy_again = sample(ddim_sample, 0, steps=5, eta=0.5), sample(ddim_sample, 0, steps=5, eta=0.5)
    torch.testing.assert_close(noisy, noisy_again, rtol=0, atol=0)
    assert not torch.allclose(noisy, sample(ddim_sample, 0, steps=5))


def test_samplers_run_an_unconditional_callable() -> None:
    """Any callable (x_t, timesteps, condition) → noise will do. With one step the only timestep is 0 ("leading"
    spacing), so a model predicting ε = 0 gets back x̂_0 = x / sqrt(ᾱ_0) of the starting noise x, clipped."""
    schedule = cosine_schedule(10)

    def zero_noise(x: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        assert condition is None and timesteps.dtype == torch.long
        return torch.zeros_like(x)

    start = torch.randn((1, 3, 2, 2), generator=torch.Generator().manual_seed(0))
    sample = ddim_sample(zero_noise, schedule, (1, 3, 2, 2), steps=1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sample, (start / schedule.alphas_cumprod[0].sqrt()).clamp(-1, 1))


@pytest.mark.slow
def test_overfitting_one_batch_lowers_the_denoising_loss() -> None:
    schedule = linear_schedule(100)
    torch.manual_seed(0)
    model = UNet(TINY)
    x0 = pixels_to_signed(torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)).round())
    condition = gaussian(4, 6, seed=1)

    def evaluation_loss() -> float:  # the same timesteps and noise every time
        with torch.no_grad():
            losses = [epsilon_loss(model, schedule, x0, condition, torch.Generator().manual_seed(k)) for k in range(4)]
        return sum(loss.item() for loss in losses) / len(losses)

    before = evaluation_loss()
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        optimiser.zero_grad()
        epsilon_loss(model, schedule, x0, drop_condition(condition, 0.1)).backward()
        optimiser.step()
    model.eval()
    after = evaluation_loss()
    assert before == pytest.approx(1.0, abs=0.2)  # the zero output's loss is E[ε²] = 1
    assert after < 0.4 * before, (before, after)


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


def test_sampling_errors_name_the_argument() -> None:
    model, schedule = tiny_unet(), linear_schedule(50)
    with pytest.raises(ValueError, match=r"steps must be in \[1, n_timesteps=50\], got 0"):
        ddim_sample(model, schedule, (1, 3, 16, 16), steps=0)
    with pytest.raises(ValueError, match="steps must be in"):
        ddim_timesteps(50, 51)
    with pytest.raises(ValueError, match="guidance_scale must be >= 0"):
        ddpm_sample(model, schedule, (1, 3, 16, 16), condition=torch.zeros(1, 6), guidance_scale=-1.0)
    with pytest.raises(ValueError, match="guidance_scale must be >= 0"):
        classifier_free_guidance(torch.zeros(1), torch.zeros(1), -0.5)
    with pytest.raises(ValueError, match="shape must be a tuple"):
        ddpm_sample(model, schedule, (3, 16, 16))
    with pytest.raises(ValueError, match=r"condition must be \(batch=2, condition_dim\)"):
        ddim_sample(model, schedule, (2, 3, 16, 16), condition=torch.zeros(3, 6))
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\]"):
        ddim_sample(model, schedule, (1, 3, 16, 16), steps=2, eta=1.5)
    with pytest.raises(ValueError, match="probability must be in"):
        drop_condition(torch.zeros(2, 6), 1.5)


def test_timestep_errors_name_the_range() -> None:
    schedule = linear_schedule(50)
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, n_timesteps=50\), got \[50\]"):
        q_sample(schedule, x, torch.tensor([3, 50]), x)
    with pytest.raises(ValueError, match=r"timesteps must be \(batch,\) = \(2,\)"):
        q_sample(schedule, x, torch.tensor([3]), x)
    with pytest.raises(TypeError, match="timesteps must be an int64 or int32 tensor"):
        q_sample(schedule, x, torch.tensor([3.0, 4.0]), x)
    with pytest.raises(ValueError, match=r"t must be in \[0, n_timesteps=50\), got 50"):
        ddpm_step(schedule, x, 50, x)
    with pytest.raises(ValueError, match=r"t must be in \[0, n_timesteps=50\), got -1"):
        q_step(schedule, x, -1, x)
    with pytest.raises(ValueError, match="t_previous must be earlier than t=5"):
        ddim_step(schedule, x, 5, 5, x)
    with pytest.raises(ValueError, match=r"noise must have the shape \(2, 3, 4, 4\)"):
        ddpm_step(schedule, x, 5, x[:1])


def test_unet_input_errors_say_what_was_expected() -> None:
    model = tiny_unet()
    x, timesteps = torch.zeros(2, 3, 16, 16), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"x must be \(batch, 3, 16, 16\), got shape \(2, 3, 8, 8\)"):
        model(torch.zeros(2, 3, 8, 8), timesteps)
    with pytest.raises(TypeError, match="x must be a float tensor"):
        model(torch.zeros(2, 3, 16, 16, dtype=torch.long), timesteps)
    with pytest.raises(ValueError, match=r"timesteps must be an int tensor \(batch,\) = \(2,\)"):
        model(x, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"condition must be \(batch, condition_dim\) = \(2, 6\), got \(2, 5\)"):
        model(x, timesteps, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="condition_dim=0"):
        UNet(UNetConfig(image_size=16, widths=(8,), groups=4))(x, timesteps, torch.zeros(2, 6))


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("image_size", 17, ValueError),  # not divisible by 2**(levels - 1) = 2
        ("widths", (16, 30), ValueError),  # 30 is not divisible by groups=4
        ("widths", [16, 32], ValueError),
        ("time_dim", 15, ValueError),
        ("condition_dim", -1, ValueError),
        ("embedding_dim", 2.0, TypeError),
        ("groups", 0, ValueError),
        ("coordinates", 1, TypeError),
    ],
)
def test_unet_config_errors_name_the_field(field: str, value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=field):
        UNetConfig(**{**TINY.__dict__, field: value})


def test_schedule_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"beta_end must be in \(0, 1\), got 2.0 \(n_timesteps=10 scales"):
        linear_schedule(10)
    with pytest.raises(ValueError, match="n_timesteps must be a positive int"):
        cosine_schedule(0)
    with pytest.raises(ValueError, match="max_beta"):
        cosine_schedule(10, max_beta=1.0)
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\)"):
        NoiseSchedule.from_betas(torch.tensor([0.1, 0.0]))


# ---------------------------------------------------------------------------------------------------------------
# Parity with diffusers (skipped where it is not installed)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diffusers() -> ModuleType:
    return pytest.importorskip("diffusers")


@pytest.mark.parametrize(("ours", "theirs"), [(linear_schedule, "linear"), (cosine_schedule, "squaredcos_cap_v2")])
def test_schedules_match_diffusers(diffusers: ModuleType, ours: Callable, theirs: str) -> None:
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=theirs)
    schedule = ours(1000)
    torch.testing.assert_close(schedule.betas, scheduler.betas)
    torch.testing.assert_close(schedule.alphas_cumprod, scheduler.alphas_cumprod, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("t", [999, 420, 1, 0])
def test_ddpm_step_matches_diffusers(diffusers: ModuleType, t: int) -> None:
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    schedule = cosine_schedule(1000)
    x_t, noise = gaussian(2, 3, 8, 8, seed=1), gaussian(2, 3, 8, 8, seed=2)
    theirs = scheduler.step(noise, t, x_t, generator=torch.Generator().manual_seed(7)).prev_sample
    ours = ddpm_step(schedule, x_t, t, noise, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_steps_match_diffusers(diffusers: ModuleType, eta: float) -> None:
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    scheduler.set_timesteps(20)
    schedule = linear_schedule(1000)
    assert scheduler.timesteps.tolist() == ddim_timesteps(1000, 20)
    x_t, noise = gaussian(2, 3, 8, 8, seed=1), gaussian(2, 3, 8, 8, seed=2)
    for t, t_previous in ((950, 900), (50, 0), (0, -1)):
        generator = torch.Generator().manual_seed(3)
        theirs = scheduler.step(noise, t, x_t, eta=eta, generator=generator).prev_sample
        ours = ddim_step(schedule, x_t, t, t_previous, noise, eta=eta, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_ddim_sampling_loop_matches_diffusers(diffusers: ModuleType) -> None:
    def toy_model(x: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        return torch.tanh(x) * (timesteps[:, None, None, None] / 1000)

    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    scheduler.set_timesteps(10)
    generator = torch.Generator().manual_seed(0)
    ours = ddim_sample(toy_model, cosine_schedule(1000), (2, 3, 4, 4), steps=10, generator=generator)
    x = torch.randn((2, 3, 4, 4), generator=torch.Generator().manual_seed(0))  # the same starting noise
    for t in scheduler.timesteps:
        x = scheduler.step(toy_model(x, t.repeat(2), None), t, x).prev_sample
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=1e-4)


def test_timestep_embedding_matches_diffusers(diffusers: ModuleType) -> None:
    from diffusers.models.embeddings import get_timestep_embedding

    timesteps = torch.tensor([0, 1, 17, 500, 999])
    theirs = get_timestep_embedding(timesteps, 32, flip_sin_to_cos=False, downscale_freq_shift=0)
    torch.testing.assert_close(timestep_embedding(timesteps, 32), theirs, atol=1e-4, rtol=0)  # float32 angles near 1000
