"""Checkers for the chapter 6 exercises (fine-tuning). Each prints a pass line or a hint; none raises."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mmcourse.adversarial import fgm_perturbation
from mmcourse.distillation import distillation_loss
from mmcourse.exercises import CheckResult, Hint, expect, expect_close, expect_shape, run_check


def _close(answer: object, expected: Tensor, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    """True when ``answer`` is a tensor of ``expected``'s shape and values (a quiet test for the typical mistakes)."""
    return (
        isinstance(answer, Tensor)
        and answer.shape == expected.shape
        and torch.allclose(answer.detach().to(expected.dtype), expected, atol=atol, rtol=rtol)
    )


def check_lora_forward(my_lora_forward: Callable[..., Tensor]) -> CheckResult:
    """``my_lora_forward(x, weight, bias, lora_A, lora_B, alpha)`` → W x + b + (alpha / r) B A x, (..., d_out)."""

    def test() -> None:
        generator = torch.Generator().manual_seed(6)
        x = torch.randn(2, 5, 6, generator=generator)  # (batch, L, d_in)
        weight, bias = torch.randn(4, 6, generator=generator), torch.randn(4, generator=generator)  # (d_out, d_in)
        lora_A, lora_B = torch.randn(3, 6, generator=generator), torch.randn(4, 3, generator=generator)  # r = 3
        alpha = 6.0  # alpha / r = 2: different from alpha, from 1 / r and from r / alpha
        answer = my_lora_forward(x, weight, bias, lora_A, lora_B, alpha)
        expect_shape(answer, (2, 5, 4), "my_lora_forward(x (2, 5, 6), W (4, 6), ..., A (3, 6), B (4, 3))")
        base = x @ weight.T + bias  # (2, 5, 4)
        update = x @ lora_A.T @ lora_B.T  # (2, 5, 4)
        mistakes = {
            "scale the low-rank update by alpha / r before adding it.": base + update,
            "divide alpha by the rank r (lora_A.size(0)): the update is scaled by alpha / r.": base + alpha * update,
            "the scaling is alpha / r, not r / alpha.": base + 3 / alpha * update,
            "add the bias b of the frozen layer too.": x @ weight.T + alpha / 3 * update,
            "LoRA adds its update to the frozen layer's output W x + b; keep that output.": alpha / 3 * update,
        }
        for hint, wrong in mistakes.items():
            if _close(answer, wrong):
                raise Hint(hint)
        expect_close(answer, base + alpha / 3 * update, "compute x Aᵀ Bᵀ: first A (r × d_in), then B (d_out × r).")

    return run_check("LoRA forward", test)


def check_distillation_loss(my_distillation_loss: Callable[..., Tensor]) -> CheckResult:
    """``my_distillation_loss(student_logits, teacher_logits, labels, temperature, alpha)`` → Hinton et al.'s loss."""

    def test() -> None:
        generator = torch.Generator().manual_seed(6)
        student = (torch.randn(6, 3, generator=generator) * 2).requires_grad_(True)  # (batch, classes)
        teacher = (torch.randn(6, 3, generator=generator) * 3).requires_grad_(True)  # must get no gradient
        labels = torch.tensor([0, 2, 1, 1, 0, 2])
        temperature, alpha = 3.0, 0.3
        answer = my_distillation_loss(student, teacher, labels, temperature, alpha)
        expect(isinstance(answer, Tensor) and answer.dim() == 0, "return a scalar tensor (0-dim): the loss.")
        expected = distillation_loss(student, teacher, labels, temperature, alpha).detach()
        t = teacher.detach()
        hard = F.cross_entropy(student, labels)

        def soft(student_logits: Tensor, teacher_logits: Tensor, reverse: bool = False) -> Tensor:
            log_s, log_t = F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1)
            if reverse:
                return (log_s.exp() * (log_s - log_t)).sum(-1).mean()  # KL(student ‖ teacher)
            return (log_t.exp() * (log_t - log_s)).sum(-1).mean()  # KL(teacher ‖ student)

        kl = soft(student / temperature, t / temperature)  # KL(teacher ‖ student) at temperature T
        reversed_kl = soft(student / temperature, t / temperature, reverse=True)
        tempered_hard = F.cross_entropy(student / temperature, labels)
        mistakes = {
            "multiply the soft term by T² (section 6.13 says why).": alpha * hard + (1 - alpha) * kl,
            "the KL divergence goes from the teacher to the student, KL(p_teacher ‖ p_student): the teacher's "
            "probabilities weight the log-ratio.": alpha * hard + (1 - alpha) * temperature**2 * reversed_kl,
            "divide both sets of logits by the temperature before the softmax.": alpha * hard
            + (1 - alpha) * temperature**2 * soft(student, t),
            "alpha weighs the hard-label cross-entropy and 1 - alpha the soft term, not the other way round.": (
                (1 - alpha) * hard + alpha * temperature**2 * kl
            ),
            "average the KL divergence over the batch only (sum over the classes first), as reduction='batchmean' "
            "does.": alpha * hard + (1 - alpha) * temperature**2 * kl / 3,
            "the hard-label cross-entropy uses the plain logits, without the temperature.": alpha * tempered_hard
            + (1 - alpha) * temperature**2 * kl,
        }
        for hint, wrong in mistakes.items():
            if _close(answer, wrong.detach()):
                raise Hint(hint)
        expect_close(answer, expected, "α·CE(student, labels) + (1-α)·T²·KL(teacher ‖ student).", "the loss")
        answer.backward()
        expect(teacher.grad is None or not teacher.grad.abs().sum() > 0,
               "the teacher must get no gradient: detach its logits (teacher_logits.detach()).")  # fmt: skip

    return run_check("distillation loss", test)


def check_fgm_perturbation(my_fgm_perturbation: Callable[[Tensor, float], Tensor]) -> CheckResult:
    """``my_fgm_perturbation(gradient, epsilon)`` → epsilon · g / ||g|| (whole-matrix norm); zeros for g = 0."""

    def test() -> None:
        generator = torch.Generator().manual_seed(6)
        gradient = torch.randn(5, 4, generator=generator) * torch.tensor([[0.1], [1.0], [3.0], [0.5], [2.0]])
        kept = gradient.clone()
        epsilon = 0.7
        answer = my_fgm_perturbation(gradient, epsilon)
        expect_shape(answer, (5, 4), "my_fgm_perturbation(gradient (5, 4), 0.7)")
        expect(torch.equal(gradient, kept), "leave the gradient as it is: compute a new tensor, not in place.")
        norm = gradient.norm()
        direction = gradient / norm  # (5, 4), unit norm
        per_row = gradient / gradient.norm(dim=1, keepdim=True)
        mistakes = {
            "FGM divides the gradient by its L2 norm; epsilon · sign(g) is FGSM.": epsilon * gradient.sign(),
            "take the norm of the whole matrix, not of each row.": epsilon * per_row,
            "multiply by epsilon: the perturbation's norm must be epsilon.": direction,
            "divide by the gradient's norm, so that the perturbation's norm is epsilon.": epsilon * gradient,
            "move along the gradient, which increases the loss, not against it.": -epsilon * direction,
        }
        for hint, wrong in mistakes.items():
            if _close(answer, wrong):
                raise Hint(hint)
        expect_close(answer, fgm_perturbation(gradient, epsilon), "r = epsilon · g / ‖g‖₂.", "the perturbation")
        zero = my_fgm_perturbation(torch.zeros(3, 2), epsilon)
        expect(isinstance(zero, Tensor) and bool(torch.isfinite(zero).all()) and not zero.abs().sum() > 0,
               "when the gradient is zero, return zeros: dividing by a zero norm gives NaN.")  # fmt: skip

    return run_check("FGM perturbation", test)


def check_soft_targets_experiment(temperatures: Sequence[float], entropies: Sequence[float]) -> CheckResult:
    """Mean entropy (nats) of the teacher's softmax(logits / T) over the training snippets, at rising temperatures."""

    def test() -> None:
        if temperatures is None or entropies is None:
            raise NotImplementedError  # still the placeholders: not answered yet
        expect(len(temperatures) == len(entropies) >= 3, "measure at least three temperatures, one entropy each.")
        numbers = [*temperatures, *entropies]
        expect(all(isinstance(x, (int, float)) and math.isfinite(x) for x in numbers), "use plain numbers (float).")
        expect(list(temperatures) == sorted(temperatures) and temperatures[0] > 0,
               "list positive temperatures in increasing order.")  # fmt: skip
        expect(all(h >= -1e-6 for h in entropies), "an entropy is -Σ p log p, never negative: check the sign.")
        if any(h > math.log(2) + 1e-6 for h in entropies):
            if all(h <= 1 + 1e-6 for h in entropies):
                raise Hint("use the natural logarithm (nats): with two classes the entropy is at most ln 2 ≈ 0.693.")
            raise Hint("two classes have an entropy of at most ln 2 ≈ 0.693: take the softmax over the classes of "
                       "each snippet, then average the entropies over the snippets.")  # fmt: skip
        rising = all(b >= a - 1e-6 for a, b in zip(entropies, entropies[1:], strict=False))
        expect(rising and entropies[-1] > entropies[0],
               "the entropy should rise with the temperature: divide the logits by T (a higher T flattens the "
               "distribution), do not multiply.")  # fmt: skip

    return run_check("soft targets, measured", test)


def check_attack_experiment(
    epsilons: Sequence[float], standard_accuracies: Sequence[float], adversarial_accuracies: Sequence[float]
) -> CheckResult:
    """Accuracy of the standard and the adversarially trained model under FGM attacks of growing size."""

    def test() -> None:
        if epsilons is None or standard_accuracies is None or adversarial_accuracies is None:
            raise NotImplementedError  # still the placeholders: not answered yet
        expect(len(epsilons) == len(standard_accuracies) == len(adversarial_accuracies) >= 3,
               "measure at least three attack sizes, with one accuracy per model each.")  # fmt: skip
        numbers = [*epsilons, *standard_accuracies, *adversarial_accuracies]
        expect(all(isinstance(x, (int, float)) and math.isfinite(x) for x in numbers), "use plain numbers (float).")
        expect(
            epsilons[0] == 0 and list(epsilons) == sorted(set(epsilons)),
            "start at epsilon = 0 (no attack: the clean accuracy), then list the sizes in increasing order.",
        )
        expect(all(0 <= x <= 1 for x in [*standard_accuracies, *adversarial_accuracies]),
               "accuracies are shares in [0, 1].")  # fmt: skip
        for name, accuracies in (("standard", standard_accuracies), ("adversarial", adversarial_accuracies)):
            expect(accuracies[-1] < accuracies[0],
                   f"the {name} model's accuracy should fall under the largest attack: pass each epsilon to "
                   "embedding_attack_accuracy.")  # fmt: skip
            expect(all(b <= a + 0.05 for a, b in zip(accuracies, accuracies[1:], strict=False)),
                   f"a larger attack should not help the {name} model: attack each model with its own gradient, on "
                   "the same batches, with the true labels.")  # fmt: skip

    return run_check("attack size, measured", test)
