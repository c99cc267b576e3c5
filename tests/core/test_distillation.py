"""Chapter 6's knowledge distillation loss: the formula, the T² factor, bad input."""

import pytest
import torch
import torch.nn.functional as F

from mmcourse.distillation import distillation_loss


def test_distillation_loss_equals_the_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 4, 3, generator=generator)  # (batch, classes) each
    labels = torch.tensor([0, 2, 1, 2])
    temperature, alpha = 3.0, 0.3
    soft = 0.0
    for row in range(4):
        p_teacher = torch.softmax(teacher[row] / temperature, dim=0)
        p_student = torch.softmax(student[row] / temperature, dim=0)
        soft += float((p_teacher * (p_teacher / p_student).log()).sum())
    hard = float(F.cross_entropy(student, labels))
    expected = alpha * hard + (1 - alpha) * temperature**2 * soft / 4
    loss = distillation_loss(student, teacher, labels, temperature, alpha)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert distillation_loss(student, teacher, labels, 5.0, 1.0).item() == pytest.approx(hard, rel=1e-6)
    assert distillation_loss(teacher, teacher, None, 2.0, 0.0).item() == pytest.approx(0.0, abs=1e-6)


def test_t_squared_keeps_the_soft_gradient_size_independent_of_temperature() -> None:
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 16, 5, generator=generator) * 0.5  # logits small next to T = 2 and 8

    def gradient_norm(temperature: float, scaled: bool) -> float:
        logits = student.clone().requires_grad_(True)
        loss = distillation_loss(logits, teacher, None, temperature, alpha=0.0)  # = T² KL
        (loss if scaled else loss / temperature**2).backward()
        return logits.grad.norm().item()

    scaled_ratio = gradient_norm(2.0, True) / gradient_norm(8.0, True)
    unscaled_ratio = gradient_norm(2.0, False) / gradient_norm(8.0, False)
    assert scaled_ratio == pytest.approx(1.0, abs=0.1)
    assert unscaled_ratio == pytest.approx(16.0, rel=0.1)  # (8/2)² without the T² factor


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"alpha": 1.5}, "alpha"),
        ({"teacher_logits": torch.zeros(4, 2)}, "teacher_logits"),
        ({"labels": torch.zeros(3, dtype=torch.long)}, "labels"),
        ({"labels": None}, "labels"),
    ],
)
def test_distillation_loss_rejects_bad_input(arguments: dict, field: str) -> None:
    base = {"student_logits": torch.zeros(4, 3), "teacher_logits": torch.zeros(4, 3), "labels": torch.zeros(4).long()}
    with pytest.raises(ValueError, match=field):
        distillation_loss(**{**base, **arguments})
