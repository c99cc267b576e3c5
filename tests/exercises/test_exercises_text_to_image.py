"""Chapter 10 checkers: the reference passes, typical wrong answers get a helpful hint, errors are reported."""

from __future__ import annotations

import pytest
import torch
from conftest import Outcome, raises

from mmcourse.dalle import image_token_sequences
from mmcourse.diffusion import classifier_free_guidance, cosine_schedule, ddim_step, linear_schedule, q_sample
from mmcourse.exercises.text_to_image import (
    HAND_SCHEDULE,
    check_ddim_step,
    check_guidance,
    check_image_token_sequences,
    check_nearest_codes,
    check_q_sample,
    check_schedule_measurement,
)
from mmcourse.vqvae import nearest_codes


def unanswered(*_: object) -> None:
    raise NotImplementedError()  # what the student's cleared cell does


# The notebook's solutions, as a student would write them.


def my_nearest_codes(vectors, codebook):
    distances = (vectors[:, None, :] - codebook[None, :, :]).pow(2).sum(dim=-1)  # (N, K)
    return distances.argmin(dim=1)


def my_q_sample(schedule, x0, timesteps, noise):
    alpha_cumprod = schedule.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    return alpha_cumprod.sqrt() * x0 + (1 - alpha_cumprod).sqrt() * noise


def my_ddim_step(schedule, x_t, t, t_previous, noise):
    alpha_cumprod = schedule.alphas_cumprod[t]
    alpha_cumprod_previous = torch.tensor(1.0)
    if t_previous >= 0:
        alpha_cumprod_previous = schedule.alphas_cumprod[t_previous]
    x0 = (x_t - (1 - alpha_cumprod).sqrt() * noise) / alpha_cumprod.sqrt()
    return alpha_cumprod_previous.sqrt() * x0 + (1 - alpha_cumprod_previous).sqrt() * noise


def my_image_token_sequences(text_ids, codes, text_vocab_size):
    return torch.cat([text_ids, codes.flatten(1) + text_vocab_size], dim=1)


def test_the_hand_cases_agree_with_the_package() -> None:
    """The checkers' hand-computed expectations are the package's answers too."""
    assert HAND_SCHEDULE.alphas_cumprod.tolist() == pytest.approx([0.64, 0.36])
    x0 = torch.tensor([2.0, -1.0]).view(2, 1, 1, 1).expand(2, 1, 2, 2)
    x_t = q_sample(HAND_SCHEDULE, x0, torch.tensor([1, 0]), torch.ones(2, 1, 2, 2))
    assert x_t[:, 0, 0, 0].tolist() == pytest.approx([2.0, -0.2])
    ones = torch.ones(1, 1, 1, 1)
    for t, t_previous, expected in ((1, 0, 1.8), (1, -1, 3.0), (0, -1, 2.0)):
        assert ddim_step(HAND_SCHEDULE, ones, t, t_previous, -ones, clip_x0=False).item() == pytest.approx(expected)
    codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    vectors = torch.tensor([[0.1, 0.1], [0.9, -0.2], [0.2, 1.5], [5.0, 0.0], [-1.0, -1.0]])
    assert nearest_codes(vectors, codebook).tolist() == [0, 1, 2, 1, 0]
    sequence = image_token_sequences(torch.tensor([[5, 6, 7]]), torch.arange(6).view(1, 2, 3), 10, 16)
    assert sequence.tolist() == [[5, 6, 7, 10, 11, 12, 13, 14, 15]]


def test_nearest_codes_checker(outcome: Outcome) -> None:
    assert outcome(check_nearest_codes(nearest_codes))[0]
    assert outcome(check_nearest_codes(my_nearest_codes))[0]
    assert outcome(check_nearest_codes(lambda v, c: torch.cdist(v, c).argmin(dim=1)))[0]  # the root: same argmin

    def distances(v, c):
        return (v[:, None, :] - c[None, :, :]).pow(2).sum(dim=-1)  # (N, K)

    def in_place(v, c):
        v -= 0  # harmless, but changes nothing: allowed
        c.mul_(2)
        return nearest_codes(v, c)

    for answer, hint in (
        (lambda v, c: distances(v, c).argmax(dim=1), "farthest codes"),
        (lambda v, c: (v @ c.T).argmax(dim=1), "largest dot product"),
        (lambda v, c: (v.pow(2).sum(1, keepdim=True) + 2 * v @ c.T + c.pow(2).sum(1)).argmin(dim=1), "sign"),
        (lambda v, c: (v.pow(2).sum(1, keepdim=True) - 2 * v @ c.T).argmin(dim=1), "||e||² term matters"),
        (distances, "those are the distances"),
        (lambda v, c: c[nearest_codes(v, c)], "not the code vectors"),
        (lambda v, c: distances(v, c).argmin(dim=0), "one entry per code"),
        (lambda v, c: distances(v, c).argmin(dim=1, keepdim=True), "drop keepdim"),
        (lambda v, c: nearest_codes(v, c).float(), "should be int64"),
        (lambda v, c: nearest_codes(v, c).int(), "should be int64"),
        (lambda v, c: (nearest_codes(v, c) + 1) % len(c), "squared Euclidean distance"),
        (lambda v, c: nearest_codes(v, c).tolist(), "should be a torch.Tensor"),
        (in_place, "codebook itself has changed"),
        (unanswered, "not answered yet"),
        (raises, "raised RuntimeError"),
    ):
        passed, out = outcome(check_nearest_codes(answer))
        assert not passed and hint in out, (hint, out)


def test_q_sample_checker(outcome: Outcome) -> None:
    assert outcome(check_q_sample(q_sample))[0]
    assert outcome(check_q_sample(my_q_sample))[0]

    def weights(pick):
        """x_t with a ᾱ of each image chosen by ``pick(schedule, timesteps)`` → (batch,)."""

        def sample(schedule, x0, timesteps, noise):
            alpha_cumprod = pick(schedule, timesteps).view(-1, 1, 1, 1)
            return alpha_cumprod.sqrt() * x0 + (1 - alpha_cumprod).sqrt() * noise

        return sample

    def unbroadcast(schedule, x0, timesteps, noise):  # (batch,) against (batch, C, H, W): lines up with W
        alpha_cumprod = schedule.alphas_cumprod[timesteps]
        return alpha_cumprod.sqrt() * x0 + (1 - alpha_cumprod).sqrt() * noise

    def one_number(schedule, x0, timesteps, noise):
        alpha_cumprod = schedule.alphas_cumprod[int(timesteps)]
        return alpha_cumprod.sqrt() * x0 + (1 - alpha_cumprod).sqrt() * noise

    def no_square_roots(schedule, x0, timesteps, noise):
        alpha_cumprod = schedule.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        return alpha_cumprod * x0 + (1 - alpha_cumprod) * noise

    def noise_weight_unrooted(schedule, x0, timesteps, noise):
        alpha_cumprod = schedule.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        return alpha_cumprod.sqrt() * x0 + (1 - alpha_cumprod) * noise

    def swapped(schedule, x0, timesteps, noise):
        alpha_cumprod = schedule.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        return (1 - alpha_cumprod).sqrt() * x0 + alpha_cumprod.sqrt() * noise

    def in_place(schedule, x0, timesteps, noise):
        alpha_cumprod = schedule.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        return x0.mul_(alpha_cumprod.sqrt()) + (1 - alpha_cumprod).sqrt() * noise

    for answer, hint in (
        (weights(lambda schedule, timesteps: schedule.alphas[timesteps]), "not α_t, schedule.alphas"),
        (weights(lambda schedule, timesteps: schedule.alphas_cumprod[timesteps - 1]), "not [t - 1]"),
        (weights(lambda schedule, timesteps: schedule.alphas_cumprod[timesteps[:1]]), "not only the first"),
        (unbroadcast, "view it as (batch, 1, 1, 1)"),
        (one_number, "index the schedule with the whole tensor"),
        (no_square_roots, "take the square roots"),
        (noise_weight_unrooted, "noise's weight is sqrt(1 - ᾱ_t)"),
        (swapped, "other way round"),
        (lambda *args: q_sample(*args) + 0.01, "wrong values"),
        (lambda schedule, x0, *_: x0[:, :1], "the expected shape is (4, 3, 4, 4)"),
        (in_place, "x0 itself has changed"),
        (unanswered, "not answered yet"),
        (raises, "raised RuntimeError"),
    ):
        passed, out = outcome(check_q_sample(answer))
        assert not passed and hint in out, (hint, out)


def test_guidance_checker(outcome: Outcome) -> None:
    assert outcome(check_guidance(classifier_free_guidance))[0]
    assert outcome(check_guidance(lambda u, c, s: u + s * (c - u)))[0]
    assert outcome(check_guidance(lambda u, c, s: s * c + (1 - s) * u))[0]  # the same, written as a mixture

    def in_place(u, c, s):
        return u.add_(s * (c - u))

    for answer, hint in (
        (lambda u, c, s: c + s * (u - c), "other way round"),
        (lambda u, c, s: c + s * (c - u), "other convention"),
        (lambda u, c, s: s * (c - u), "only the step"),
        (lambda u, c, s: u + s * c, "the difference ε_c - ε_∅"),
        (lambda u, c, s: u + s * (c - u) + (s == 0), "scale 0 must give the unconditional"),
        (lambda u, c, s: u + s * (c - u) + (s == 1), "scale 1 must give the conditional"),
        (lambda u, c, s: u + s * (c - u) * 1.01, "wrong values"),
        (lambda u, c, s: (u + s * (c - u)).tolist(), "should be a torch.Tensor"),
        (in_place, "noise_uncond itself has changed"),
        (unanswered, "not answered yet"),
        (raises, "raised RuntimeError"),
    ):
        passed, out = outcome(check_guidance(answer))
        assert not passed and hint in out, (hint, out)


def test_ddim_step_checker(outcome: Outcome) -> None:
    assert outcome(check_ddim_step(lambda *args: ddim_step(*args, eta=0.0, clip_x0=False)))[0]
    assert outcome(check_ddim_step(my_ddim_step))[0]

    def step(previous=None, now=None, clip=False, noise_level=None):
        """A DDIM step whose ᾱ_prev (and ᾱ_t, and the noise term's ᾱ) come from the given functions."""

        def answer(schedule, x_t, t, t_previous, noise):
            alpha_cumprod = now(schedule, t) if now else schedule.alphas_cumprod[t]
            alpha_cumprod_previous = previous(schedule, t, t_previous)
            x0 = (x_t - (1 - alpha_cumprod).sqrt() * noise) / alpha_cumprod.sqrt()
            x0 = x0.clamp(-1, 1) if clip else x0
            level = noise_level(alpha_cumprod, alpha_cumprod_previous) if noise_level else alpha_cumprod_previous
            return alpha_cumprod_previous.sqrt() * x0 + (1 - level).sqrt() * noise

        return answer

    def right(schedule, t, t_previous):
        return schedule.alphas_cumprod[t_previous] if t_previous >= 0 else torch.tensor(1.0)

    def x0_only(schedule, x_t, t, t_previous, noise):
        alpha_cumprod = schedule.alphas_cumprod[t]
        return (x_t - (1 - alpha_cumprod).sqrt() * noise) / alpha_cumprod.sqrt()

    def undivided(schedule, x_t, t, t_previous, noise):
        alpha_cumprod, alpha_cumprod_previous = schedule.alphas_cumprod[t], right(schedule, t, t_previous)
        x0 = x_t - (1 - alpha_cumprod).sqrt() * noise
        return alpha_cumprod_previous.sqrt() * x0 + (1 - alpha_cumprod_previous).sqrt() * noise

    def no_square_roots(schedule, x_t, t, t_previous, noise):
        alpha_cumprod, alpha_cumprod_previous = schedule.alphas_cumprod[t], right(schedule, t, t_previous)
        x0 = (x_t - (1 - alpha_cumprod) * noise) / alpha_cumprod
        return alpha_cumprod_previous * x0 + (1 - alpha_cumprod_previous) * noise

    def alphas(schedule, t, t_previous):
        return schedule.alphas[t_previous] if t_previous >= 0 else torch.tensor(1.0)

    def in_place(schedule, x_t, t, t_previous, noise):
        x_t.sub_((1 - schedule.alphas_cumprod[t]).sqrt() * noise)
        return my_ddim_step(schedule, x_t, t, t_previous, noise)

    for answer, hint in (
        (step(lambda schedule, t, t_previous: schedule.alphas_cumprod[t_previous]), "handle -1 yourself"),
        (step(lambda schedule, t, t_previous: right(schedule, t, t - 1)), "not to t - 1"),
        (step(right, clip=True), "no clipping"),
        (step(right, noise_level=lambda now, previous: now), "not sqrt(1 - ᾱ_t)"),
        (step(alphas, now=lambda schedule, t: schedule.alphas[t]), "not α, schedule.alphas"),
        (x0_only, "this is x̂_0"),
        (undivided, "divide by sqrt(ᾱ_t)"),
        (no_square_roots, "take the square roots"),
        (lambda *args: my_ddim_step(*args) * 1.01, "wrong values"),
        (lambda schedule, x_t, *_: x_t[0], "the expected shape is (2, 1, 2, 2)"),
        (in_place, "x_t itself has changed"),
        (unanswered, "not answered yet"),
        (raises, "raised RuntimeError"),
    ):
        passed, out = outcome(check_ddim_step(answer))
        assert not passed and hint in out, (hint, out)


def test_image_token_sequences_checker(outcome: Outcome) -> None:
    assert outcome(check_image_token_sequences(lambda t, c, v: image_token_sequences(t, c, v, int(c.max()) + 1)))[0]
    assert outcome(check_image_token_sequences(my_image_token_sequences))[0]

    def in_place(text_ids, codes, text_vocab_size):
        codes += text_vocab_size
        return torch.cat([text_ids, codes.flatten(1)], dim=1)

    for answer, hint in (
        (lambda t, c, v: torch.cat([t, c.flatten(1)], dim=1), "shift the codes past the words"),
        (lambda t, c, v: torch.cat([t, c.transpose(1, 2).flatten(1) + v], dim=1), "row by row"),
        (lambda t, c, v: torch.cat([t, c.flatten(1)], dim=1) + v, "only the codes are shifted"),
        (lambda t, c, v: torch.cat([c.flatten(1) + v, t], dim=1), "the caption comes first"),
        (lambda t, c, v: torch.cat([t, c.flatten(1) + v + 1], dim=1), "one off"),
        (lambda t, c, v: torch.cat([t, c.flatten(1) + v - 1], dim=1), "one off"),
        (lambda t, c, v: my_image_token_sequences(t, c, v).flip(0), "each row of the grid in turn"),
        (lambda t, c, v: my_image_token_sequences(t, c, v).float(), "token ids are int64"),
        (lambda t, c, v: torch.cat([t, c[:, 0] + v], dim=1), "the expected shape is (1, 9)"),
        (in_place, "codes itself has changed"),
        (unanswered, "not answered yet"),
        (raises, "raised RuntimeError"),
    ):
        passed, out = outcome(check_image_token_sequences(answer))
        assert not passed and hint in out, (hint, out)


def test_schedule_measurement_checker(outcome: Outcome) -> None:
    schedules = {"linear": linear_schedule(1000), "cosine": cosine_schedule(1000)}
    half_signal = {key: int((s.alphas_cumprod < 0.5).nonzero()[0]) for key, s in schedules.items()}
    noise_share = {key: (s.alphas_cumprod < 0.01).float().mean().item() for key, s in schedules.items()}
    assert half_signal["linear"] < half_signal["cosine"] and noise_share["linear"] > noise_share["cosine"]
    assert outcome(check_schedule_measurement(half_signal, noise_share))[0]
    tensors = ({key: torch.tensor(value) for key, value in d.items()} for d in (half_signal, noise_share))
    assert outcome(check_schedule_measurement(*tensors))[0]
    small = {"linear": linear_schedule(50), "cosine": cosine_schedule(50)}
    assert outcome(
        check_schedule_measurement(
            {key: int((s.alphas_cumprod >= 0.5).sum()) for key, s in small.items()},
            {key: (s.alphas_cumprod < 0.01).float().mean() for key, s in small.items()},
            n_timesteps=50,
        )
    )[0]

    def shifted(by):
        return {key: value + by for key, value in half_signal.items()}

    swapped = {"linear": half_signal["cosine"], "cosine": half_signal["linear"]}
    alphas = {**half_signal, "cosine": int((schedules["cosine"].alphas < 0.5).nonzero()[0])}
    counts = {key: value * 1000 for key, value in noise_share.items()}
    percents = {key: value * 100 for key, value in noise_share.items()}
    for measured, hint in (
        ((None, None), "not answered yet"),
        ((half_signal, None), "not answered yet"),
        ((swapped, noise_share), "other way round"),
        ((shifted(1), noise_share), "one too late"),
        ((shifted(-1), noise_share), "last timestep with ᾱ_t >= 0.5"),
        ((shifted(5), noise_share), "first timestep t at which"),
        ((alphas, noise_share), "reads α_t"),
        ((half_signal, counts), "divide the count by 1000"),
        ((half_signal, percents), "not a percentage"),
        ((half_signal, {**noise_share, "cosine": 0.5}), "share of the 1000 timesteps"),
        ((half_signal, {"linear": 0.3}), "has no 'cosine'"),
        (([259, 496], noise_share), "should be a dict"),
        (({**half_signal, "linear": 259.0}, noise_share), "should be a timestep, an int"),
        ((half_signal, {**noise_share, "linear": "a third"}), "should be a number"),
    ):
        passed, out = outcome(check_schedule_measurement(*measured))
        assert not passed and hint in out, (hint, out)


@pytest.mark.parametrize(
    "check",
    [check_nearest_codes, check_q_sample, check_guidance, check_ddim_step, check_image_token_sequences],
)
def test_checkers_never_raise(check, outcome: Outcome) -> None:
    """Whatever a student's function returns or raises, the checker prints a line and returns False."""
    for answer in (lambda *_: None, lambda *_: "x", lambda *_: torch.tensor(float("nan")), raises, unanswered):
        passed, out = outcome(check(answer))
        assert not passed and out.startswith("[") and out.count("\n") == 1, out
    passed, out = outcome(check(42))  # not even a function
    assert not passed and "raised TypeError" in out
