"""The interface every masking strategy implements, and the pieces they share.

A strategy decides which patches an MAE hides. Every image of a batch hides the same number
(the encoder batches the visible tokens): ``L - num_kept(L, mask_ratio)`` through
``masking_from_scores``, the top-k that random MAE masking uses, or another count the method
prescribes for the whole batch (AttMask's ratio range and hints) through ``masking_from_hidden``.
Here too: the teachers' EMA helpers (their schedules: ``schedules.py``; options:
``options.py``). Shapes: images (B, C, H, W); L patches per image.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lightning_modules.components.patches import masking_from_scores, num_kept
from lightning_modules.components.strategies.schedules import TrainingClock

Masking = tuple[Tensor, Tensor, Tensor]  # ids_keep (B, K), mask (B, L) with 1 = masked, ids_restore (B, L)


@dataclass
class MaskDraw:
    """One draw of masks.

    masking: ``masking_from_scores``'s (ids_keep, mask, ids_restore).
    scores: (B, L) in [0, 1], what the strategy ranked the patches by (higher = hidden first): the
        masking probability, the predicted loss, the attention, or random noise for random
        masking. Mask maps draw it; the content diagnostics correlate it with the images.
    extra: tensors the strategy's ``auxiliary_loss`` needs again (with their graph).
    token_scale: None, or (B, L) factors (value 1) by which the MAE multiplies its embedded
        patch tokens: a strategy's straight-through path from the reconstruction loss into its
        mask generator (AutoMAE).
    """

    masking: Masking
    scores: Tensor
    extra: dict[str, Tensor] = field(default_factory=dict)
    token_scale: Tensor | None = None

    @property
    def mask(self) -> Tensor:
        return self.masking[1]


class MaskingStrategy(nn.Module, ABC):
    """Base class: ``draw`` masks; optionally an ``auxiliary_loss`` added to the MAE's loss (one
    backward, one optimiser over the MAE and one over the strategy's trainable parameters), a
    ``critic_loss`` trained before that step with an optimiser of its own (AutoMAE's
    discriminator, the modules named in ``critics``), and an ``after_step`` (e.g. an EMA teacher's
    update) after each optimiser step.

    Strategies keep their own modules only: the MAE is passed to every call, never stored, so
    its parameters are not registered twice.
    """

    score_label = "masking score"  # what ``MaskDraw.scores`` is, for mask maps
    teachers: tuple[str, ...] = ()  # names of frozen teacher submodules: always in eval mode
    critics: tuple[str, ...] = ()  # names of submodules trained by ``critic_loss`` alone
    scheduled = False  # follows a schedule over training (needs trainer.max_epochs or max_steps)

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

    def critic_loss(self, images: Tensor, mae: nn.Module, draw: MaskDraw) -> tuple[Tensor | None, dict]:
        """The loss of the ``critics`` (their gradient only), stepped before the main step, and scalar logs."""
        return None, {}

    def start(self, mae: nn.Module) -> None:
        """Called once before the first training step (teachers start as copies of the MAE)."""

    def after_step(self, mae: nn.Module, clock: TrainingClock | None = None) -> None:
        """Called after each optimiser step, with the step's place in training (None: the start)."""


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
        combined.scatter_(1, ranked(scores)[:, :top], 2.0)  # above every random value: always hidden
    return masking_from_scores(combined, mask_ratio)


def ranked(scores: Tensor, descending: bool = True) -> Tensor:
    """Patch ids (B, L) of each row of ``scores`` from the highest score (``descending``) or the
    lowest; equal scores (bf16 teachers quantise them) in random order. Uses the global RNG."""
    s = scores.detach().float()
    tie_break = torch.rand_like(s) * 1e-6 * s.abs().amax(1, keepdim=True).clamp(min=1e-30)
    return torch.argsort(s + tie_break, dim=1, descending=descending)


def masking_from_hidden(hidden: Tensor) -> Masking:
    """``masking_from_scores``'s (ids_keep, mask, ids_restore) for a boolean (B, L) hidden set
    with the same count in every row (the encoder batches the visible tokens)."""
    counts = hidden.sum(1)
    if len(counts) and (counts != counts[0]).any():
        raise ValueError(f"every image must hide as many patches; got counts {counts.tolist()}")
    keep = hidden.shape[1] - int(counts[0]) if len(counts) else 0
    ids_shuffle = torch.argsort(hidden.float(), dim=1, stable=True)  # visible first
    return ids_shuffle[:, :keep], hidden.float(), torch.argsort(ids_shuffle, dim=1)


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


@contextmanager
def frozen_parameters(module: nn.Module) -> Iterator[None]:
    """Gradients off for ``module``'s parameters inside the block (a critic used by a generator's
    loss: the gradient reaches the generator through the critic's input, never the critic)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)
