"""Classification losses as pure functions plus one configurable module."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("ce", "focal")


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Multi-class focal loss, mean over the batch (weighted mean when ``weight`` is given).

    ``(1 - p_t)^gamma * CE``, where p_t is the (unsmoothed) probability of the true class
    and CE is the per-sample (optionally label-smoothed) cross-entropy. With ``gamma=0`` it
    equals ``F.cross_entropy`` with the same ``weight`` and ``label_smoothing``.
    Shapes: logits (B, K), target (B,) long.
    """
    log_p = F.log_softmax(logits, dim=-1)
    p_t = log_p.gather(1, target[:, None]).squeeze(1).exp()
    ce = F.cross_entropy(logits, target, reduction="none", label_smoothing=label_smoothing)
    loss = (1 - p_t).pow(gamma) * ce
    if weight is None:
        return loss.mean()
    w = weight[target]
    return (w * loss).sum() / w.sum()


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s soft-target term ``T^2 * KL(softmax(t / T) || softmax(s / T))``, mean over
    the batch; the T^2 keeps its gradient scale independent of T. Shapes (B, K)."""
    t = temperature
    log_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return t * t * F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")


class ClassificationLoss(nn.Module):
    """Cross-entropy or focal loss, optionally class-weighted; BCE for multi-label tasks.

    Args:
        name: ``ce`` or ``focal``.
        class_weighted: weight classes by ``class_weights`` (set via ``set_class_weights``,
            typically the balanced weights of the training labels).
        label_smoothing: in [0, 1).
        focal_gamma: focusing parameter of the focal loss.
        multi_label: targets are (B, K) 0/1 floats; the weights become BCE ``pos_weight``.
    """

    def __init__(
        self,
        name: str = "ce",
        class_weighted: bool = False,
        label_smoothing: float = 0.0,
        focal_gamma: float = 2.0,
        multi_label: bool = False,
    ) -> None:
        super().__init__()
        if name not in LOSSES:
            raise ValueError(f"model.loss.name={name!r} is invalid; allowed: {list(LOSSES)}")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"model.loss.label_smoothing={label_smoothing} is invalid; allowed: [0, 1)")
        if focal_gamma < 0:
            raise ValueError(f"model.loss.focal_gamma={focal_gamma} is invalid; allowed: >= 0")
        self.name, self.class_weighted = name, class_weighted
        self.label_smoothing, self.focal_gamma, self.multi_label = label_smoothing, focal_gamma, multi_label
        self.register_buffer("weight", None, persistent=False)

    def set_class_weights(self, weight: torch.Tensor) -> None:
        self.weight = weight.float()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self.class_weighted else None
        if self.class_weighted and weight is None:
            raise RuntimeError("class_weighted loss used before set_class_weights()")
        if self.multi_label:
            if self.name == "focal":
                from torchvision.ops import sigmoid_focal_loss

                return sigmoid_focal_loss(logits, target, gamma=self.focal_gamma, reduction="mean")
            return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)
        if self.name == "focal":
            return focal_loss(logits, target, self.focal_gamma, weight, self.label_smoothing)
        return F.cross_entropy(logits, target, weight=weight, label_smoothing=self.label_smoothing)
