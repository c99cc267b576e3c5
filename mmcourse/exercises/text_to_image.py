"""Checkers for the chapter 10 exercises (text-to-image). Each prints a pass line or a hint; none raises."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import partial

import torch
from torch import Tensor

from mmcourse.dalle import image_token_sequences
from mmcourse.diffusion import NoiseSchedule, classifier_free_guidance, cosine_schedule, ddim_step, linear_schedule
from mmcourse.diffusion import q_sample as reference_q_sample
from mmcourse.exercises import CheckResult, Hint, expect, expect_close, expect_shape, run_check
from mmcourse.vqvae import nearest_codes

# A two-step schedule whose square roots are round: ᾱ = (0.64, 0.36), sqrt(ᾱ) = (0.8, 0.6), sqrt(1 - ᾱ) = (0.6, 0.8),
# and α_1 = 0.5625 differs from ᾱ_1. The hand-computed cases use it.
HAND_SCHEDULE = NoiseSchedule.from_betas(torch.tensor([0.36, 0.4375]))


def _matches(answer: object, candidate: Tensor) -> bool:
    """Whether ``answer`` is a tensor equal (to float tolerance) to ``candidate``, a typical wrong answer."""
    if not isinstance(answer, Tensor) or answer.shape != candidate.shape:
        return False
    return torch.allclose(answer.detach().to(candidate.dtype), candidate, atol=1e-5, rtol=1e-4)


def _hint_if_matches(answer: object, wrong: list[tuple[Tensor, str]]) -> None:
    """The hint of the first typical wrong answer in ``wrong`` that ``answer`` equals, if any."""
    for candidate, hint in wrong:
        if _matches(answer, candidate):
            raise Hint(hint)


def _unchanged(given: Tensor, original: Tensor, name: str) -> None:
    """A Hint if the student's function changed its input ``name`` in place."""
    expect(torch.equal(given, original), f"{name} itself has changed: compute a new tensor instead of changing it in "
                                         "place (no +=, *= or methods ending in _).")  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# VQ-VAE


def check_nearest_codes(my_nearest_codes: Callable[[Tensor, Tensor], Tensor]) -> CheckResult:
    """``my_nearest_codes(vectors (N, D), codebook (K, D))`` → (N,) int64: the index of each vector's nearest code,
    argmin_k ||v - e_k||²."""

    def test() -> None:
        generator = torch.Generator().manual_seed(10)
        codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])  # (3, 2): codes of different lengths
        vectors = torch.tensor([[0.1, 0.1], [0.9, -0.2], [0.2, 1.5], [5.0, 0.0], [-1.0, -1.0]])  # (5, 2)
        cases = [(vectors, codebook, torch.tensor([0, 1, 2, 1, 0]))]  # worked out by hand, no ties
        for n, k, d in ((40, 6, 3), (25, 16, 8)):
            random_vectors = torch.randn(n, d, generator=generator)
            random_codebook = torch.randn(k, d, generator=generator) * torch.linspace(0.3, 2.0, k)[:, None]
            cases.append((random_vectors, random_codebook, nearest_codes(random_vectors, random_codebook)))
        for vectors, codebook, expected in cases:
            (n, d), k = vectors.shape, len(codebook)
            given_vectors, given_codebook = vectors.clone(), codebook.clone()
            answer = my_nearest_codes(given_vectors, given_codebook)
            _unchanged(given_vectors, vectors, "vectors")
            _unchanged(given_codebook, codebook, "codebook")
            what = f"my_nearest_codes(vectors {tuple(vectors.shape)}, codebook {tuple(codebook.shape)})"
            if isinstance(answer, Tensor) and tuple(answer.shape) == (n, k):
                raise Hint(f"{what} has shape (N, K): those are the distances. Return, for each vector, the index "
                           "of the smallest one (argmin over the codes).")  # fmt: skip
            if isinstance(answer, Tensor) and tuple(answer.shape) == (n, d):
                raise Hint(f"{what} has shape (N, D): return the indices of the codes, not the code vectors "
                           "(codebook[indices] gives those).")  # fmt: skip
            if isinstance(answer, Tensor) and tuple(answer.shape) == (k,):
                raise Hint(f"{what} has one entry per code: take the minimum over the codes (dim=1 of the (N, K) "
                           "distances), giving one index per vector.")  # fmt: skip
            if isinstance(answer, Tensor) and tuple(answer.shape) == (n, 1):
                raise Hint(f"{what} has shape (N, 1): drop keepdim, one index per vector is (N,).")
            expect_shape(answer, (n,), what)
            assert isinstance(answer, Tensor)
            expect(answer.dtype == torch.int64, f"the indices are {answer.dtype}, but they should be int64 "
                   "(torch.long), what argmin returns and what codebook[indices] or an embedding needs.")  # fmt: skip
            if torch.equal(answer, expected):
                continue
            distances = (vectors[:, None, :] - codebook[None, :, :]).pow(2).sum(dim=-1)  # (N, K)
            if torch.equal(answer, distances.argmax(dim=1)):
                raise Hint("these are the farthest codes: the nearest code has the smallest distance (argmin).")
            if torch.equal(answer, (vectors @ codebook.T).argmax(dim=1)):
                raise Hint("the largest dot product v·e is the nearest code only when all codes have the same "
                           "length: ||v - e||² = ||v||² - 2 v·e + ||e||², and the ||e||² term matters.")  # fmt: skip
            if torch.equal(answer, (vectors[:, None, :] + codebook[None, :, :]).pow(2).sum(dim=-1).argmin(dim=1)):
                raise Hint("these are the codes nearest to -v: check the sign of the cross term, ||v - e||² = "
                           "||v||² - 2 v·e + ||e||².")  # fmt: skip
            raise Hint("each index should be the row of codebook nearest to its vector in squared Euclidean distance "
                       "(||v - e_k||² summed over the D features).")  # fmt: skip

    return run_check("nearest code", test)


# ----------------------------------------------------------------------------------------------------------------
# Diffusion

_BROADCAST = (
    "ᾱ_t of each image is one number per image, a (batch,) tensor: view it as (batch, 1, 1, 1) so that it "
    "multiplies the whole image, not one column of pixels per image."
)


def _call_q_sample(my_q_sample: Callable, *args: object) -> object:
    """The student's answer; a broadcasting or one-timestep error becomes its hint."""
    try:
        return my_q_sample(*args)
    except (RuntimeError, ValueError) as error:
        if "must match the size of tensor" in str(error):
            raise Hint(_BROADCAST) from None
        if "cannot be converted to Scalar" in str(error) or "only one element tensors" in str(error):
            raise Hint("timesteps holds one timestep per image: index the schedule with the whole tensor, "
                       "schedule.alphas_cumprod[timesteps], not one number.") from None  # fmt: skip
        raise


def check_q_sample(my_q_sample: Callable[[NoiseSchedule, Tensor, Tensor, Tensor], Tensor]) -> CheckResult:
    """``my_q_sample(schedule, x0 (batch, C, H, W), timesteps (batch,), noise)`` → x_t = sqrt(ᾱ_t) x_0 +
    sqrt(1 - ᾱ_t) ε, each image at its own timestep."""

    def test() -> None:
        generator = torch.Generator().manual_seed(11)
        hand_x0 = torch.tensor([2.0, -1.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2).contiguous()  # (2, 1, 2, 2)
        hand_expected = torch.tensor([2.0, -0.2]).view(2, 1, 1, 1).expand(2, 1, 2, 2)  # 0.6·2 + 0.8, 0.8·-1 + 0.6
        cases = []
        schedule = linear_schedule(100)
        for shape, timesteps in (((4, 3, 4, 4), [0, 99, 40, 7]), ((3, 2, 5, 6), [70, 3, 99])):
            x0 = torch.randn(shape, generator=generator)
            noise = torch.randn(shape, generator=generator)
            timesteps = torch.tensor(timesteps)
            cases.append((schedule, x0, timesteps, noise, reference_q_sample(schedule, x0, timesteps, noise)))
        # The hand case comes last: in its two-step schedule ᾱ_{t-1} swaps the weights, so two hints would coincide.
        cases.append((HAND_SCHEDULE, hand_x0, torch.tensor([1, 0]), torch.ones(2, 1, 2, 2), hand_expected))
        for schedule, x0, timesteps, noise, expected in cases:
            given_x0, given_noise = x0.clone(), noise.clone()
            answer = _call_q_sample(my_q_sample, schedule, given_x0, timesteps.clone(), given_noise)
            _unchanged(given_x0, x0, "x0")
            _unchanged(given_noise, noise, "noise")
            expect_shape(answer, x0.shape, f"my_q_sample(schedule, x0 {tuple(x0.shape)}, ...)")
            if _matches(answer, expected):
                continue
            per_image = schedule.alphas_cumprod[timesteps].view(-1, 1, 1, 1)  # (batch, 1, 1, 1)
            alphas = schedule.alphas[timesteps].view(-1, 1, 1, 1)
            flat = schedule.alphas_cumprod[timesteps]  # (batch,): broadcast against the last axis, W
            first = schedule.alphas_cumprod[timesteps[:1]].view(1, 1, 1, 1)
            earlier = schedule.alphas_cumprod[timesteps - 1].view(-1, 1, 1, 1)
            wrong = [
                (per_image * x0 + (1 - per_image) * noise, "take the square roots: x_t = sqrt(ᾱ_t) x_0 + "
                 "sqrt(1 - ᾱ_t) ε, so that the variances ᾱ_t + (1 - ᾱ_t) add up to 1."),
                (per_image.sqrt() * x0 + (1 - per_image) * noise, "the noise's weight is sqrt(1 - ᾱ_t): take its "
                 "square root too."),
                (per_image * x0 + (1 - per_image).sqrt() * noise, "the image's weight is sqrt(ᾱ_t): take its "
                 "square root too."),
                (alphas.sqrt() * x0 + (1 - alphas).sqrt() * noise, "use ᾱ_t, schedule.alphas_cumprod (the product "
                 "α_0 α_1 … α_t of all the steps up to t), not α_t, schedule.alphas (the one step at t)."),
                ((1 - per_image).sqrt() * x0 + per_image.sqrt() * noise, "the weights are the other way round: "
                 "sqrt(ᾱ_t) multiplies x_0 (ᾱ_t starts near 1, so x_t starts as the image)."),
                (first.sqrt() * x0 + (1 - first).sqrt() * noise, "each image has its own timestep: use all of "
                 "timesteps, not only the first."),
                (earlier.sqrt() * x0 + (1 - earlier).sqrt() * noise, "timesteps count from 0: ᾱ_t is "
                 "schedule.alphas_cumprod[t], not [t - 1]."),
            ]  # fmt: skip
            if x0.size(-1) == len(timesteps):
                wrong.append((flat.sqrt() * x0 + (1 - flat).sqrt() * noise, _BROADCAST))
            _hint_if_matches(answer, wrong)
            expect_close(answer, expected, "x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε, with ᾱ_t = "
                                           "schedule.alphas_cumprod[t] of each image's own t.")  # fmt: skip

    return run_check("noising in one step", test)


def check_guidance(my_guidance: Callable[[Tensor, Tensor, float], Tensor]) -> CheckResult:
    """``my_guidance(noise_uncond, noise_cond, scale)`` → ε_∅ + s (ε_c - ε_∅)."""

    def test() -> None:
        generator = torch.Generator().manual_seed(12)
        hand = (torch.tensor([1.0, 2.0, -1.0]), torch.tensor([3.0, 2.0, 1.0]), 2.0, torch.tensor([5.0, 2.0, 3.0]))
        cases = [hand]
        uncond, cond = torch.randn(2, 3, 4, 4, generator=generator), torch.randn(2, 3, 4, 4, generator=generator)
        for scale in (3.0, 0.0, 1.0, 7.5):
            cases.append((uncond, cond, scale, classifier_free_guidance(uncond, cond, scale)))
        for uncond, cond, scale, expected in cases:
            given_uncond, given_cond = uncond.clone(), cond.clone()
            answer = my_guidance(given_uncond, given_cond, scale)
            _unchanged(given_uncond, uncond, "noise_uncond")
            _unchanged(given_cond, cond, "noise_cond")
            expect_shape(answer, uncond.shape, f"my_guidance(noise_uncond {tuple(uncond.shape)}, ...)")
            if _matches(answer, expected):
                continue
            if scale == 0:
                raise Hint("scale 0 must give the unconditional prediction noise_uncond exactly: start from ε_∅.")
            if scale == 1:
                raise Hint("scale 1 must give the conditional prediction noise_cond exactly.")
            for candidate, hint in (
                (cond + scale * (uncond - cond), "the two predictions are the other way round: s = 0 must give the "
                 "unconditional ε_∅ and s = 1 the conditional ε_c, so start from ε_∅ and move towards ε_c."),
                (cond + scale * (cond - uncond), "this is the paper's other convention, ε_c + w (ε_c - ε_∅) with "
                 "w = s - 1: here the scale s is such that s = 1 gives ε_c exactly."),
                (scale * (cond - uncond), "s (ε_c - ε_∅) is only the step: add it to ε_∅."),
                (uncond + scale * cond, "the step is the difference ε_c - ε_∅, the direction the caption adds."),
            ):  # fmt: skip
                if _matches(answer, candidate):
                    raise Hint(hint)
            expect_close(answer, expected, "the guided noise is ε_∅ + s (ε_c - ε_∅).")

    return run_check("classifier-free guidance", test)


def _ddim(
    x_t: Tensor, noise: Tensor, alpha_cumprod: Tensor, alpha_cumprod_previous: Tensor, clip: bool = False
) -> Tensor:
    """A DDIM step (η = 0) with the given ᾱ_t and ᾱ_prev, x̂_0 clipped to [-1, 1] if ``clip``: the checker builds
    typical wrong answers from it."""
    x0 = (x_t - (1 - alpha_cumprod).sqrt() * noise) / alpha_cumprod.sqrt()  # (batch, C, H, W)
    x0 = x0.clamp(-1, 1) if clip else x0
    return alpha_cumprod_previous.sqrt() * x0 + (1 - alpha_cumprod_previous).sqrt() * noise


def check_ddim_step(my_ddim_step: Callable[[NoiseSchedule, Tensor, int, int, Tensor], Tensor]) -> CheckResult:
    """``my_ddim_step(schedule, x_t, t, t_previous, noise)`` → x_{t_previous} of a deterministic DDIM step (η = 0, no
    clipping): sqrt(ᾱ_prev) x̂_0 + sqrt(1 - ᾱ_prev) ε, x̂_0 = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t), ᾱ_{-1} = 1."""

    def test() -> None:
        generator = torch.Generator().manual_seed(13)
        ones = torch.ones(2, 1, 2, 2)  # x_t = 1 and ε = -1 at t = 1: x̂_0 = (1 + 0.8) / 0.6 = 3
        cases = [
            (HAND_SCHEDULE, ones, 1, 0, -ones, 1.8 * ones),  # 0.8 · 3 + 0.6 · (-1)
            (HAND_SCHEDULE, ones, 1, -1, -ones, 3.0 * ones),  # all the way: x̂_0
            (HAND_SCHEDULE, ones, 0, -1, -ones, 2.0 * ones),  # x̂_0 = (1 + 0.6) / 0.8
        ]
        schedule = linear_schedule(50)
        for t, t_previous in ((40, 30), (10, -1), (49, 0), (5, 4)):
            x_t = torch.randn(2, 3, 4, 4, generator=generator)
            noise = torch.randn(2, 3, 4, 4, generator=generator)
            expected = ddim_step(schedule, x_t, t, t_previous, noise, eta=0.0, clip_x0=False)
            cases.append((schedule, x_t, t, t_previous, noise, expected))
        for schedule, x_t, t, t_previous, noise, expected in cases:
            given_x_t, given_noise = x_t.clone(), noise.clone()
            answer = my_ddim_step(schedule, given_x_t, t, t_previous, given_noise)
            _unchanged(given_x_t, x_t, "x_t")
            _unchanged(given_noise, noise, "noise")
            expect_shape(answer, x_t.shape, f"my_ddim_step(schedule, x_t {tuple(x_t.shape)}, t={t}, "
                                            f"t_previous={t_previous}, noise)")  # fmt: skip
            if _matches(answer, expected):
                continue
            step = partial(_ddim, x_t, noise)
            alphas_cumprod = schedule.alphas_cumprod
            now = alphas_cumprod[t]
            previous = alphas_cumprod[t_previous] if t_previous >= 0 else torch.tensor(1.0)
            x0 = (x_t - (1 - now).sqrt() * noise) / now.sqrt()
            wrong = []  # the hints of t_previous first: in the hand cases some later ones coincide with them
            if t_previous == -1:
                wrong.append((step(now, alphas_cumprod[-1]), "t_previous = -1 means all the way to x_0, where "
                                 "ᾱ_{-1} = 1: alphas_cumprod[-1] is Python's last entry of the schedule, the "
                                 "noisiest, so handle -1 yourself."))  # fmt: skip
            if t - 1 != t_previous:
                previous_step = alphas_cumprod[t - 1] if t >= 1 else torch.tensor(1.0)
                wrong.append((step(now, previous_step), "step to t_previous, which may lie many timesteps before "
                                                        "t, not to t - 1: that is how DDIM skips steps."))  # fmt: skip
            wrong += [
                (x0, "this is x̂_0, the clean image the noise implies: the step goes on to x_{t_previous} = "
                 "sqrt(ᾱ_prev) x̂_0 + sqrt(1 - ᾱ_prev) ε, which is x̂_0 only when t_previous = -1."),
                (step(now, previous, clip=True), "no clipping in this exercise: leave x̂_0 as it is (the "
                 "package's clip_x0=False)."),
                (previous.sqrt() * x0 + (1 - now).sqrt() * noise, "the noise term uses the earlier timestep's "
                 "sqrt(1 - ᾱ_prev), not sqrt(1 - ᾱ_t): the result must be as noisy as x at t_previous."),
                (previous.sqrt() * (x_t - (1 - now).sqrt() * noise) + (1 - previous).sqrt() * noise, "divide by "
                 "sqrt(ᾱ_t) in x̂_0 = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t)."),
                (previous * (x_t - (1 - now) * noise) / now + (1 - previous) * noise, "take the square roots: "
                 "each weight is sqrt(ᾱ) or sqrt(1 - ᾱ)."),
            ]  # fmt: skip
            alphas = schedule.alphas
            alpha_previous = alphas[t_previous] if t_previous >= 0 else torch.tensor(1.0)
            wrong.append((step(alphas[t], alpha_previous), "use ᾱ, schedule.alphas_cumprod, not α, schedule.alphas "
                                                           "(one step's factor)."))  # fmt: skip
            _hint_if_matches(answer, wrong)
            expect_close(answer, expected, "x̂_0 = (x_t - sqrt(1 - ᾱ_t) ε) / sqrt(ᾱ_t), then sqrt(ᾱ_prev) x̂_0 + "
                                           "sqrt(1 - ᾱ_prev) ε, with ᾱ_prev = 1 when t_previous = -1.")  # fmt: skip

    return run_check("a DDIM step", test)


def _timestep(value: object, what: str) -> int:
    """``value`` as an int timestep (a 0-d integer tensor counts), or a Hint naming ``what``."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    expect(isinstance(value, int) and not isinstance(value, bool), f"{what} should be a timestep, an int, but it is "
                                                                   f"{type(value).__name__} {value!r}.")  # fmt: skip
    assert isinstance(value, int)
    return value


def _share(value: object, what: str) -> float:
    """``value`` as a float (a one-element tensor counts), or a Hint naming ``what``."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    expect(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
           f"{what} should be a number, but it is {type(value).__name__} {value!r}.")  # fmt: skip
    return float(value)


SCHEDULE_NAMES = ("linear", "cosine")


def check_schedule_measurement(
    half_signal: Mapping[str, int] | None, noise_share: Mapping[str, float] | None, n_timesteps: int = 1000
) -> CheckResult:
    """For ``linear_schedule`` and ``cosine_schedule`` of ``n_timesteps``: ``half_signal[name]``, the first timestep
    at which ᾱ_t < 0.5, and ``noise_share[name]``, the share of the timesteps at which ᾱ_t < 0.01."""

    def test() -> None:
        if half_signal is None or noise_share is None:
            raise NotImplementedError  # the variables still hold their placeholder: not answered yet
        for name, measured in (("half_signal", half_signal), ("noise_share", noise_share)):
            expect(isinstance(measured, Mapping), f"{name} should be a dict with the keys 'linear' and 'cosine', "
                                                  f"but it is a {type(measured).__name__}.")  # fmt: skip
            missing = [key for key in SCHEDULE_NAMES if key not in measured]
            expect(not missing, f"{name} has no {' or '.join(repr(key) for key in missing)}: one value per schedule.")
        schedules = {"linear": linear_schedule(n_timesteps), "cosine": cosine_schedule(n_timesteps)}
        halves = {key: _timestep(half_signal[key], f"half_signal[{key!r}]") for key in SCHEDULE_NAMES}
        shares = {key: _share(noise_share[key], f"noise_share[{key!r}]") for key in SCHEDULE_NAMES}
        expected_halves = {key: int((s.alphas_cumprod >= 0.5).sum()) for key, s in schedules.items()}
        expected_counts = {key: int((s.alphas_cumprod < 0.01).sum()) for key, s in schedules.items()}
        if halves == {"linear": expected_halves["cosine"], "cosine": expected_halves["linear"]}:
            raise Hint("half_signal has the two schedules the other way round.")
        for key in SCHEDULE_NAMES:
            if halves[key] == expected_halves[key] - 1:
                raise Hint(f"half_signal[{key!r}] is the last timestep with ᾱ_t >= 0.5: the first with ᾱ_t < 0.5 "
                           "comes right after it.")  # fmt: skip
            if halves[key] == expected_halves[key] + 1:
                raise Hint(f"half_signal[{key!r}] is one too late: timesteps count from 0 (t = 0 is the first "
                           "step), so t is the index in schedule.alphas_cumprod of the first ᾱ_t < 0.5.")  # fmt: skip
            alphas_below = (schedules[key].alphas < 0.5).nonzero()
            if len(alphas_below) and halves[key] == int(alphas_below[0]):
                raise Hint(f"half_signal[{key!r}] reads α_t, one step's factor: the signal left after t + 1 steps "
                           "is ᾱ_t, schedule.alphas_cumprod.")  # fmt: skip
            expect(halves[key] == expected_halves[key], f"half_signal[{key!r}] should be the first timestep t at "
                   f"which schedule.alphas_cumprod[t] < 0.5 (with {key}_schedule({n_timesteps})).")  # fmt: skip
        expected_shares = {key: count / n_timesteps for key, count in expected_counts.items()}
        if all(math.isclose(shares[key], expected_shares[key], abs_tol=1e-6) for key in SCHEDULE_NAMES):
            return
        if all(math.isclose(shares[key], expected_counts[key], abs_tol=1e-3) for key in SCHEDULE_NAMES):
            raise Hint(f"noise_share is a share of the {n_timesteps} timesteps, in [0, 1]: divide the count by "
                       f"{n_timesteps}.")  # fmt: skip
        if all(math.isclose(shares[key], 100 * expected_shares[key], abs_tol=1e-4) for key in SCHEDULE_NAMES):
            raise Hint("noise_share is a share in [0, 1], not a percentage.")
        for key in SCHEDULE_NAMES:
            expect(math.isclose(shares[key], expected_shares[key], abs_tol=1e-6),
                   f"noise_share[{key!r}] should be the share of the {n_timesteps} timesteps at which "
                   "schedule.alphas_cumprod < 0.01, e.g. (alphas_cumprod < 0.01).float().mean().")  # fmt: skip

    return run_check("where the signal goes", test)


# ----------------------------------------------------------------------------------------------------------------
# DALL·E


def check_image_token_sequences(my_image_token_sequences: Callable[[Tensor, Tensor, int], Tensor]) -> CheckResult:
    """``my_image_token_sequences(text_ids (batch, L), codes (batch, h, w), text_vocab_size)`` → (batch, L + h·w):
    the caption ids, then the codes read row by row, each + text_vocab_size."""

    def test() -> None:
        generator = torch.Generator().manual_seed(14)
        hand = (torch.tensor([[5, 6, 7]]), torch.tensor([[[0, 1, 2], [3, 4, 5]]]), 10, 16)  # a 2 × 3 grid
        hand_expected = torch.tensor([[5, 6, 7, 10, 11, 12, 13, 14, 15]])
        cases = [(*hand, hand_expected)]
        for batch, length, grid, text_vocab_size, codebook_size in ((3, 4, (3, 2), 20, 8), (2, 1, (4, 4), 50, 64)):
            text_ids = torch.randint(text_vocab_size, (batch, length), generator=generator)
            codes = torch.randint(codebook_size, (batch, *grid), generator=generator)
            expected = image_token_sequences(text_ids, codes, text_vocab_size, codebook_size)
            cases.append((text_ids, codes, text_vocab_size, codebook_size, expected))
        for text_ids, codes, text_vocab_size, _, expected in cases:
            given_text, given_codes = text_ids.clone(), codes.clone()
            answer = my_image_token_sequences(given_text, given_codes, text_vocab_size)
            _unchanged(given_text, text_ids, "text_ids")
            _unchanged(given_codes, codes, "codes")
            expect_shape(answer, expected.shape, f"my_image_token_sequences(text_ids {tuple(text_ids.shape)}, codes "
                                                 f"{tuple(codes.shape)}, ...)")  # fmt: skip
            assert isinstance(answer, Tensor)
            expect(answer.dtype == torch.int64, f"the sequence is {answer.dtype}, but token ids are int64 "
                                                "(torch.long), like text_ids and codes.")  # fmt: skip
            if torch.equal(answer, expected):
                continue
            rows = codes.flatten(1)  # (batch, h·w), row by row
            columns = codes.transpose(1, 2).flatten(1)  # column by column
            for candidate, hint in (
                (torch.cat([text_ids, rows], dim=1), "shift the codes past the words: code k is token "
                 "text_vocab_size + k, so that one vocabulary holds both and a code is never read as a word."),
                (torch.cat([text_ids, columns + text_vocab_size], dim=1), "read the grid row by row (the whole "
                 "first row, left to right, then the second), not column by column: flatten (h, w) as it is."),
                (torch.cat([text_ids + text_vocab_size, rows + text_vocab_size], dim=1), "only the codes are "
                 "shifted: the caption's ids stay as they are."),
                (torch.cat([rows + text_vocab_size, text_ids], dim=1), "the caption comes first, so that every "
                 "image token is predicted from the whole caption."),
                (torch.cat([text_ids, rows + text_vocab_size - 1], dim=1), "one off: code 0 becomes "
                 "text_vocab_size, the first id past the words."),
                (torch.cat([text_ids, rows + text_vocab_size + 1], dim=1), "one off: code 0 becomes "
                 "text_vocab_size, the first id past the words."),
            ):  # fmt: skip
                if torch.equal(answer, candidate):
                    raise Hint(hint)
            raise Hint("the sequence is the caption's ids, then each row of the grid in turn, every code + "
                       "text_vocab_size.")  # fmt: skip

    return run_check("DALL·E's token sequence", test)
