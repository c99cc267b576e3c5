"""Chapter 6 checkers: the reference passes, typical wrong answers get a helpful hint, errors are reported."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from conftest import Outcome, raises

from mmcourse.distillation import distillation_loss
from mmcourse.exercises.finetune import (
    check_attack_experiment,
    check_distillation_loss,
    check_fgm_perturbation,
    check_lora_forward,
    check_soft_targets_experiment,
)


def lora_forward(x, weight, bias, lora_A, lora_B, alpha):
    return x @ weight.T + bias + alpha / lora_A.size(0) * (x @ lora_A.T @ lora_B.T)


def test_lora_forward_checker(outcome: Outcome) -> None:
    assert outcome(check_lora_forward(lora_forward))[0]

    def unscaled(x, weight, bias, lora_A, lora_B, alpha):
        return x @ weight.T + bias + x @ lora_A.T @ lora_B.T

    def alpha_only(x, weight, bias, lora_A, lora_B, alpha):
        return x @ weight.T + bias + alpha * (x @ lora_A.T @ lora_B.T)

    def update_only(x, weight, bias, lora_A, lora_B, alpha):
        return alpha / lora_A.size(0) * (x @ lora_A.T @ lora_B.T)

    passed, out = outcome(check_lora_forward(unscaled))
    assert not passed and "alpha / r" in out
    passed, out = outcome(check_lora_forward(alpha_only))
    assert not passed and "divide alpha by the rank" in out
    passed, out = outcome(check_lora_forward(update_only))
    assert not passed and "W x + b" in out
    passed, out = outcome(check_lora_forward(lambda x, weight, *rest: x @ weight.T))
    assert not passed and "wrong values" in out
    passed, out = outcome(check_lora_forward(raises))
    assert not passed and "raised" in out


def test_distillation_checker(outcome: Outcome) -> None:
    assert outcome(check_distillation_loss(distillation_loss))[0]

    def soft_term(student_logits, teacher_logits, temperature, reverse=False):
        log_s = F.log_softmax(student_logits / temperature, -1)
        log_t = F.log_softmax(teacher_logits.detach() / temperature, -1)
        if reverse:
            return (log_s.exp() * (log_s - log_t)).sum(-1).mean()
        return (log_t.exp() * (log_t - log_s)).sum(-1).mean()

    def without_t_squared(student_logits, teacher_logits, labels, temperature, alpha):
        hard = F.cross_entropy(student_logits, labels)
        return alpha * hard + (1 - alpha) * soft_term(student_logits, teacher_logits, temperature)

    def reversed_kl(student_logits, teacher_logits, labels, temperature, alpha):
        hard = F.cross_entropy(student_logits, labels)
        soft = soft_term(student_logits, teacher_logits, temperature, reverse=True)
        return alpha * hard + (1 - alpha) * temperature**2 * soft

    def elementwise_mean(student_logits, teacher_logits, labels, temperature, alpha):
        log_s = F.log_softmax(student_logits / temperature, -1)
        log_t = F.log_softmax(teacher_logits.detach() / temperature, -1)
        soft = (log_t.exp() * (log_t - log_s)).mean()  # averages over the classes too
        return alpha * F.cross_entropy(student_logits, labels) + (1 - alpha) * temperature**2 * soft

    def teacher_not_detached(student_logits, teacher_logits, labels, temperature, alpha):
        log_s = F.log_softmax(student_logits / temperature, -1)
        log_t = F.log_softmax(teacher_logits / temperature, -1)  # the teacher gets a gradient
        soft = (log_t.exp() * (log_t - log_s)).sum(-1).mean()
        return alpha * F.cross_entropy(student_logits, labels) + (1 - alpha) * temperature**2 * soft

    passed, out = outcome(check_distillation_loss(without_t_squared))
    assert not passed and "T²" in out
    passed, out = outcome(check_distillation_loss(reversed_kl))
    assert not passed and "from the teacher to the student" in out
    passed, out = outcome(check_distillation_loss(elementwise_mean))
    assert not passed and "batchmean" in out
    passed, out = outcome(check_distillation_loss(teacher_not_detached))
    assert not passed and "detach" in out
    passed, out = outcome(check_distillation_loss(lambda s, t, y, temperature, alpha: distillation_loss(s, t, y, 1.0)))
    assert not passed
    passed, out = outcome(check_distillation_loss(raises))
    assert not passed and "raised" in out


def test_fgm_checker(outcome: Outcome) -> None:
    def reference(gradient, epsilon):
        norm = gradient.norm()
        return torch.zeros_like(gradient) if norm == 0 else epsilon * gradient / norm

    assert outcome(check_fgm_perturbation(reference))[0]
    passed, out = outcome(check_fgm_perturbation(lambda gradient, epsilon: epsilon * gradient.sign()))
    assert not passed and "FGSM" in out
    per_row = lambda gradient, epsilon: epsilon * gradient / gradient.norm(dim=1, keepdim=True)  # noqa: E731
    passed, out = outcome(check_fgm_perturbation(per_row))
    assert not passed and "whole matrix" in out
    passed, out = outcome(check_fgm_perturbation(lambda gradient, epsilon: epsilon * gradient / gradient.norm()))
    assert not passed and "zero" in out  # NaN for a zero gradient
    passed, out = outcome(check_fgm_perturbation(lambda gradient, epsilon: -reference(gradient, epsilon)))
    assert not passed and "along the gradient" in out

    def in_place(gradient, epsilon):
        norm = gradient.norm()
        return gradient.mul_(epsilon / norm) if norm > 0 else gradient

    passed, out = outcome(check_fgm_perturbation(in_place))
    assert not passed and "not in place" in out
    passed, out = outcome(check_fgm_perturbation(raises))
    assert not passed and "raised" in out


def entropies_at(temperatures, logits, unit=1.0):
    values = []
    for temperature in temperatures:
        log_p = (logits / temperature).log_softmax(-1)  # (N, 2)
        values.append(-(log_p.exp() * log_p).sum(-1).mean().item() / unit)
    return values


def test_soft_targets_checker(outcome: Outcome) -> None:
    logits = torch.randn(100, 2, generator=torch.Generator().manual_seed(0)) * 4
    temperatures = [0.5, 1.0, 2.0, 4.0, 8.0]
    assert outcome(check_soft_targets_experiment(temperatures, entropies_at(temperatures, logits)))[0]
    passed, out = outcome(check_soft_targets_experiment(None, None))
    assert not passed and "not answered yet" in out
    multiplied = entropies_at([1 / t for t in temperatures], logits)  # logits × T instead of / T
    passed, out = outcome(check_soft_targets_experiment(temperatures, multiplied))
    assert not passed and "divide the logits by T" in out
    bits = entropies_at(temperatures, logits, unit=math.log(2))
    passed, out = outcome(check_soft_targets_experiment(temperatures, bits))
    assert not passed and "natural logarithm" in out
    negative = [-h for h in entropies_at(temperatures, logits)]
    passed, out = outcome(check_soft_targets_experiment(temperatures, negative))
    assert not passed and "never negative" in out
    passed, out = outcome(check_soft_targets_experiment(temperatures, [math.log(2)] * 4))
    assert not passed and "one entropy each" in out


def test_attack_checker(outcome: Outcome) -> None:
    epsilons = [0.0, 1.0, 4.0]
    assert outcome(check_attack_experiment(epsilons, [0.85, 0.40, 0.05], [0.84, 0.70, 0.20]))[0]
    passed, out = outcome(check_attack_experiment(None, None, None))
    assert not passed and "not answered yet" in out
    passed, out = outcome(check_attack_experiment(epsilons, [0.85, 0.85, 0.85], [0.84, 0.70, 0.20]))
    assert not passed and "should fall" in out
    passed, out = outcome(check_attack_experiment(epsilons, [0.85, 0.30, 0.60], [0.84, 0.70, 0.20]))
    assert not passed and "should not help" in out
    passed, out = outcome(check_attack_experiment([1.0, 0.5, 4.0], [0.85, 0.40, 0.05], [0.84, 0.70, 0.20]))
    assert not passed and "epsilon = 0" in out
    passed, out = outcome(check_attack_experiment(epsilons, [85, 40, 5], [84, 70, 20]))
    assert not passed and "[0, 1]" in out
