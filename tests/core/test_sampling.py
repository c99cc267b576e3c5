from __future__ import annotations

import pytest
import torch

from mmcourse.generation import (
    GREEDY_TEMPERATURE,
    apply_repetition_penalty,
    sample_next_token,
    top_k_filter,
    top_p_filter,
)

PROBS = torch.tensor([[0.05, 0.5, 0.1, 0.2, 0.15]])  # sorted: 0.5 (id 1), 0.2 (3), 0.15 (4), 0.1 (2), 0.05 (0)
LOGITS = PROBS.log()  # (1, 5)


def kept(logits: torch.Tensor) -> set[int]:
    return set(torch.nonzero(torch.isfinite(logits[0])).flatten().tolist())


@pytest.mark.parametrize(("top_k", "expected"), [(1, {1}), (2, {1, 3}), (3, {1, 3, 4}), (5, {0, 1, 2, 3, 4})])
def test_top_k_keeps_the_k_largest(top_k: int, expected: set[int]) -> None:
    filtered = top_k_filter(LOGITS, top_k)
    assert kept(filtered) == expected
    torch.testing.assert_close(filtered[0, sorted(expected)], LOGITS[0, sorted(expected)])  # kept ones unchanged


def test_top_k_keeps_ties_and_caps_at_the_vocabulary() -> None:
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0]])
    assert kept(top_k_filter(logits, 1)) == {1, 2}
    assert torch.equal(top_k_filter(logits, 10), logits)


@pytest.mark.parametrize(
    ("top_p", "expected"),
    [
        (0.01, {1}),  # the most likely token always stays
        (0.45, {1}),  # 0.5 already reaches 0.45
        (0.55, {1, 3}),  # 0.5 < 0.55 ≤ 0.5 + 0.2
        (0.69, {1, 3}),
        (0.71, {1, 3, 4}),  # 0.7 < 0.71 ≤ 0.85
        (0.9, {1, 3, 4, 2}),  # 0.85 < 0.9 ≤ 0.95
        (0.96, {0, 1, 2, 3, 4}),
        (1.0, {0, 1, 2, 3, 4}),
    ],
)
def test_top_p_keeps_the_smallest_set_reaching_p(top_p: float, expected: set[int]) -> None:
    assert kept(top_p_filter(LOGITS, top_p)) == expected


def test_top_p_works_row_by_row() -> None:
    logits = torch.cat([LOGITS, LOGITS.flip(-1)])  # (2, 5): the same distribution, ids reversed
    filtered = top_p_filter(logits, 0.69)
    assert kept(filtered[:1]) == {1, 3} and kept(filtered[1:]) == {3, 1}  # ids 1, 3 reversed: 3, 1


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0], [2.0, -1.0, 0.5, -3.0]])
    input_ids = torch.tensor([[0, 1, 1], [3, 3, 3]])  # repeated ids are penalised once
    penalised = apply_repetition_penalty(logits, input_ids, 2.0)
    expected = torch.tensor([[1.0, -2.0, 0.5, -3.0], [2.0, -1.0, 0.5, -6.0]])
    torch.testing.assert_close(penalised, expected)
    assert torch.equal(apply_repetition_penalty(logits, input_ids, 1.0), logits)


def test_temperature_zero_is_the_argmax() -> None:
    logits = torch.randn(6, 11, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample_next_token(logits, temperature=0.0), logits.argmax(-1))
    assert torch.equal(sample_next_token(logits, top_k=1), logits.argmax(-1))


def test_a_temperature_below_the_greedy_threshold_is_the_argmax_and_others_sample() -> None:
    """1e-40 used to pass the check and then make NaN probabilities (logits / 1e-40 overflows float32)."""
    logits = 10 * torch.randn(6, 11, generator=torch.Generator().manual_seed(0))
    for temperature in (1e-40, 5e-324, GREEDY_TEMPERATURE / 2):
        assert torch.equal(sample_next_token(logits, temperature=temperature), logits.argmax(-1))
        assert torch.equal(sample_next_token(logits, temperature, top_k=3, top_p=0.5), logits.argmax(-1))
    sampled = sample_next_token(1000 * logits, temperature=GREEDY_TEMPERATURE, generator=torch.Generator())
    assert torch.equal(sampled, logits.argmax(-1))  # at the threshold it samples, without overflowing


@pytest.mark.parametrize("temperature", [float("inf"), float("nan"), -1, -1e-40])
def test_temperature_must_be_finite_and_not_negative(temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature must be"):
        sample_next_token(LOGITS, temperature=temperature)


@pytest.mark.parametrize("temperature", ["1", True, None, torch.tensor(1.0)])
def test_temperature_of_another_type_is_a_type_error(temperature: object) -> None:
    with pytest.raises(TypeError, match="temperature must be a number"):
        sample_next_token(LOGITS, temperature=temperature)  # type: ignore[arg-type]


def test_seeded_sampling_is_reproducible_and_follows_the_distribution() -> None:
    logits = LOGITS.expand(20000, 5)  # (20000, 5)
    first = sample_next_token(logits, generator=torch.Generator().manual_seed(0))
    second = sample_next_token(logits, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, second)
    frequencies = torch.bincount(first, minlength=5).float() / len(first)
    torch.testing.assert_close(frequencies, PROBS[0], atol=0.01, rtol=0)


def test_sampling_respects_the_filters() -> None:
    logits = LOGITS.expand(2000, 5)
    generator = torch.Generator().manual_seed(1)
    assert set(sample_next_token(logits, top_k=2, generator=generator).tolist()) == {1, 3}
    assert set(sample_next_token(logits, top_p=0.71, generator=generator).tolist()) == {1, 3, 4}
    low = sample_next_token(logits, temperature=0.1, generator=generator)
    assert (low == 1).float().mean() > 0.99  # a low temperature sharpens towards the argmax


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: top_k_filter(LOGITS, 0), "top_k"),
        (lambda: top_k_filter(LOGITS[0], 2), "logits"),
        (lambda: top_p_filter(LOGITS, 0.0), "top_p"),
        (lambda: top_p_filter(LOGITS, 1.2), "top_p"),
        (lambda: top_p_filter(torch.zeros(1, 5, dtype=torch.long), 0.5), "logits"),
        (lambda: apply_repetition_penalty(LOGITS, torch.tensor([[1]]), 0.0), "penalty"),
        (lambda: apply_repetition_penalty(LOGITS, torch.tensor([1]), 1.2), "input_ids"),
        (lambda: sample_next_token(LOGITS, temperature=-0.5), "temperature"),
    ],
)
def test_bad_arguments_name_the_field(call, field: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=field):
        call()


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: sample_next_token(LOGITS, top_k=2.5), "top_k must be a positive int"),
        (lambda: top_p_filter(LOGITS, "0.9"), "top_p must be a number"),
        (lambda: apply_repetition_penalty(LOGITS, torch.tensor([[1]]), True), "penalty must be a number"),
    ],
)
def test_arguments_of_another_type_are_a_type_error(call, field: str) -> None:  # noqa: ANN001
    with pytest.raises(TypeError, match=field):
        call()
