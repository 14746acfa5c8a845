"""The interface every masking strategy implements, and the pieces they share.

A strategy decides which patches an MAE hides. Every strategy hides exactly
``L - num_kept(L, mask_ratio)`` patches of every image (the encoder batches the visible tokens,
so each image of a batch must keep the same number) through ``masking_from_scores``, the top-k
that random MAE masking uses. Shapes: images (B, C, H, W); L patches per image.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lightning_modules.components.patches import masking_from_scores, num_kept

Masking = tuple[Tensor, Tensor, Tensor]  # ids_keep (B, K), mask (B, L) with 1 = masked, ids_restore (B, L)


@dataclass
class MaskDraw:
    """One draw of masks.

    masking: ``masking_from_scores``'s (ids_keep, mask, ids_restore).
    scores: (B, L) in [0, 1], what the strategy ranked the patches by (higher = hidden first): the
        masking probability, the predicted loss, the attention, or random noise for random
        masking. Mask maps draw it; the content diagnostics correlate it with the images.
    extra: tensors the strategy's ``auxiliary_loss`` needs again (with their graph).
    """

    masking: Masking
    scores: Tensor
    extra: dict[str, Tensor] = field(default_factory=dict)

    @property
    def mask(self) -> Tensor:
        return self.masking[1]


class MaskingStrategy(nn.Module, ABC):
    """Base class: ``draw`` masks; optionally an ``auxiliary_loss`` added to the MAE's loss (one
    backward, one optimiser over the MAE and the strategy's trainable parameters) and an
    ``after_step`` (e.g. an EMA teacher's update) after each optimiser step.

    Strategies keep their own modules only: the MAE is passed to every call, never stored, so
    its parameters are not registered twice.
    """

    score_label = "masking score"  # what ``MaskDraw.scores`` is, for mask maps
    teachers: tuple[str, ...] = ()  # names of EMA teacher submodules: always in eval mode
    scheduled = False  # uses ``progress`` (needs trainer.max_epochs or max_steps)

    def __init__(self, num_patches: int, mask_ratio: float) -> None:
        super().__init__()
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio={mask_ratio} is invalid for a masking strategy; allowed: (0, 1)")
        self.num_patches, self.mask_ratio = num_patches, mask_ratio

    @property
    def num_masked(self) -> int:
        return self.num_patches - num_kept(self.num_patches, self.mask_ratio)

    def train(self, mode: bool = True) -> MaskingStrategy:
        super().train(mode)
        for name in self.teachers:  # no dropout / drop path in a teacher, whatever the module's mode
            getattr(self, name).eval()
        return self

    @abstractmethod
    def draw(self, images: Tensor, mae: nn.Module, progress: float = 1.0) -> MaskDraw:
        """Masks for ``images``; ``progress`` in (0, 1] is the share of training done (for schedules)."""

    def auxiliary_loss(self, images: Tensor, mae: nn.Module, draw: MaskDraw, out) -> tuple[Tensor | None, dict]:
        """Extra loss of this strategy given the MAE's output ``out`` (an ``MAEOutput``) and scalar logs."""
        return None, {}

    def start(self, mae: nn.Module) -> None:
        """Called once before the first training step (teachers start as copies of the MAE)."""

    def after_step(self, mae: nn.Module) -> None:
        """Called after each optimiser step."""


def mixed_top_k(scores: Tensor, mask_ratio: float, informed_share: float) -> Masking:
    """Hide the ``int(M * informed_share)`` patches of highest ``scores`` (B, L) and ``M`` in all,
    the rest drawn uniformly at random from the other patches (M = hidden patches per image).

    ``informed_share`` 1 = plain top-k of the scores, 0 = random masking. Equal scores (bf16
    teachers quantise them) are ordered at random, not by ``topk``'s implementation. Uses the
    global RNG.
    """
    if not 0 <= informed_share <= 1:
        raise ValueError(f"informed share {informed_share} is invalid; allowed: [0, 1]")
    b, n = scores.shape
    hidden = n - num_kept(n, mask_ratio)
    top = int(hidden * informed_share)
    combined = torch.rand(b, n, device=scores.device)  # in [0, 1): the random part
    if top > 0:
        s = scores.detach().float()
        tie_break = torch.rand_like(s) * 1e-6 * s.abs().amax(1, keepdim=True).clamp(min=1e-30)
        ids = (s + tie_break).topk(top, dim=1).indices
        combined.scatter_(1, ids, 2.0)  # above every random value: always hidden
    return masking_from_scores(combined, mask_ratio)


def normalise_rows(values: Tensor) -> Tensor:
    """(B, L) -> each row min-max scaled to [0, 1] (0.5 for a constant row), for mask maps."""
    lo, hi = values.amin(1, keepdim=True), values.amax(1, keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (values - lo) / span.clamp(min=1e-12), torch.full_like(values, 0.5))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.lerp_(s.detach(), 1 - momentum)


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with gradients off, in eval mode (an EMA teacher)."""
    return copy.deepcopy(module).requires_grad_(False).eval()


def check_momentum(momentum: float) -> float:
    if not 0 <= momentum < 1:
        raise ValueError(f"model.masking_args.ema_momentum={momentum} is invalid; allowed: [0, 1)")
    return float(momentum)
