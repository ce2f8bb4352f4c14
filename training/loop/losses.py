"""Losses: cross-entropy against soft targets (label smoothing and VideoMix give soft targets) and
knowledge distillation from a teacher's logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_k targets_k * log_softmax(logits)_k``; logits, targets (B, K).

    Computed in float32 whatever the autocast dtype, since log-softmax in bf16/fp16 loses the small
    probabilities that smoothing puts on every class.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, K)
    return -(targets.float() * logp).sum(dim=-1).mean()


def distillation_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, mean over the batch (Hinton et al.: the T^2
    keeps the soft term's gradient scale independent of T)."""
    t = float(temperature)
    log_ps = F.log_softmax(student_logits.float() / t, dim=-1)  # (B, K)
    log_pt = F.log_softmax(teacher_logits.float() / t, dim=-1)  # (B, K)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1).mean()
    return kl * (t * t)


def distillation_loss(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    weight: float,
    temperature: float,
) -> torch.Tensor:
    """``(1 - w) * hard + w * T^2 * KL(p_teacher || p_student)``; with ``w == 0`` this is exactly the
    hard loss (the same tensor operations as plain training), and no teacher logits are needed."""
    hard = soft_cross_entropy(student_logits, targets)
    if weight == 0.0:
        return hard
    if teacher_logits is None:
        raise ValueError("distillation weight > 0 needs teacher logits")
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher logits {tuple(teacher_logits.shape)} do not match student {tuple(student_logits.shape)}"
        )
    return (1.0 - weight) * hard + weight * distillation_kl(student_logits, teacher_logits, temperature)
