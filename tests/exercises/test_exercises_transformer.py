"""Chapter 2 checkers: the reference passes, typical wrong answers get a helpful hint, errors are reported."""

from __future__ import annotations

import torch
from conftest import Outcome, raises

from mmcourse.exercises.transformer import (
    check_padding_experiment,
    check_pre_ln_forward,
    check_teacher_forcing,
    check_warmup_schedule,
)
from mmcourse.transformer import Seq2SeqTransformer, TransformerConfig, warmup_inverse_sqrt


def test_teacher_forcing_checker(outcome: Outcome) -> None:
    assert outcome(check_teacher_forcing(lambda t: (t[:, :-1], t[:, 1:])))[0]
    passed, out = outcome(check_teacher_forcing(lambda t: (t[:, 1:], t[:, :-1])))
    assert not passed and "swapped" in out
    passed, out = outcome(check_teacher_forcing(lambda t: (t, t)))
    assert not passed and "shift by one" in out
    passed, out = outcome(check_teacher_forcing(lambda t: t[:, :-1]))
    assert not passed and "pair" in out
    passed, out = outcome(check_teacher_forcing(raises))
    assert not passed and "RuntimeError: boom" in out


def test_warmup_checker(outcome: Outcome) -> None:
    assert outcome(check_warmup_schedule(warmup_inverse_sqrt))[0]
    passed, out = outcome(check_warmup_schedule(lambda s, d, w: min(s**-0.5, s * w**-1.5)))
    assert not passed and "d_model^-0.5" in out
    passed, out = outcome(check_warmup_schedule(lambda s, d, w: d**-0.5 * s**-0.5))
    assert not passed and "rise linearly" in out
    passed, out = outcome(check_warmup_schedule(lambda s, d, w: d**-0.5 * s * w**-1.5))
    assert not passed and "decays" in out
    passed, out = outcome(check_warmup_schedule(lambda s, d, w: "fast"))
    assert not passed and "float" in out


def test_pre_ln_checker(outcome: Outcome) -> None:
    def pre_ln(layer, x):
        x = x + layer.self_attention(layer.norm1(x))[0]
        return x + layer.feed_forward(layer.norm2(x))

    def post_ln(layer, x):
        x = layer.norm1(x + layer.self_attention(x)[0])
        return layer.norm2(x + layer.feed_forward(x))

    def no_residual(layer, x):
        x = layer.self_attention(layer.norm1(x))[0]
        return layer.feed_forward(layer.norm2(x))

    assert outcome(check_pre_ln_forward(pre_ln))[0]
    passed, out = outcome(check_pre_ln_forward(post_ln))
    assert not passed and "post-LN" in out
    passed, out = outcome(check_pre_ln_forward(no_residual))
    assert not passed and "residual" in out
    passed, out = outcome(check_pre_ln_forward(raises))
    assert not passed and "raised" in out


def test_padding_experiment_checker(outcome: Outcome) -> None:
    """The real experiment on a small random model gives numbers the checker accepts."""
    torch.manual_seed(0)
    model = Seq2SeqTransformer(TransformerConfig(12, 12, d_model=16, n_heads=2, d_ff=32, dropout=0.0)).eval()
    src_ids, tgt_ids = torch.randint(4, 12, (2, 5)), torch.randint(4, 12, (2, 4))
    padded = torch.cat([src_ids, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    with torch.no_grad():
        reference = model(src_ids, tgt_ids)
        masked = model(padded, tgt_ids, (padded != 0).long())
        unmasked = model(padded, tgt_ids, torch.ones_like(padded))
    with_mask = (masked - reference).abs().max().item()
    without_mask = (unmasked - reference).abs().max().item()
    assert outcome(check_padding_experiment(with_mask, without_mask))[0]
    passed, out = outcome(check_padding_experiment(without_mask, without_mask))
    assert not passed and "with the attention mask" in out
    passed, out = outcome(check_padding_experiment(with_mask, with_mask))
    assert not passed and "without the mask" in out
    passed, out = outcome(check_padding_experiment(torch.tensor(0.0), 1.0))  # type: ignore[arg-type]
    assert not passed and ".item()" in out


def test_padding_checker_says_not_answered_for_the_placeholder(outcome: Outcome) -> None:
    passed, out = outcome(check_padding_experiment(None, None))
    assert not passed and "not answered yet" in out
