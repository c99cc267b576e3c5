"""Knowledge distillation (知识蒸馏, Hinton et al. 2015): a small student learns from a large teacher's soft targets
as well as from the labels (chapter 6)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from mmcourse.checks import check_finite_number


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> Tensor:
    """alpha · CE(student, labels) + (1 - alpha) · T² · KL(softmax(teacher/T) || softmax(student/T)), batchmean.

    Why T²: the soft term's gradient w.r.t. a student logit is (p_student - p_teacher) / T, and for logits small
    next to T, softmax(z/T) ≈ (1 + (z - mean z)/T) / classes, so it is ≈ (z_student - z_teacher) / (classes · T²),
    centred: multiplying by T² keeps its size independent of T (Hinton et al. 2015). The teacher gets no gradient.
    ``labels`` may be None when alpha is 0 (no hard labels, only the teacher).
    """
    if student_logits.dim() != 2 or teacher_logits.shape != student_logits.shape:
        raise ValueError(f"student_logits and teacher_logits must both be (batch, classes), got "
                         f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}")  # fmt: skip
    for name, value in (("temperature", temperature), ("alpha", alpha)):
        check_finite_number(name, value)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if labels is None and alpha > 0:
        raise ValueError("labels are needed when alpha > 0 (the hard-label cross-entropy); pass alpha=0 without them")
    if labels is not None and labels.shape != student_logits.shape[:1]:
        raise ValueError(f"labels must be (batch,)={tuple(student_logits.shape[:1])}, got {tuple(labels.shape)}")
    student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)  # (batch, classes)
    teacher_log_probs = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)  # (batch, classes)
    soft = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)  # KL(t || s)
    loss = (1.0 - alpha) * temperature**2 * soft
    if labels is not None and alpha > 0:
        loss = loss + alpha * F.cross_entropy(student_logits, labels)
    return loss
