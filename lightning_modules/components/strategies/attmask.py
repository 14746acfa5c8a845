"""Attention-guided masking (AttMask; Kakogeorgiou et al., "What to Hide from Your Students:
Attention-Guided Masked Image Modeling", ECCV 2022), as its code (gkakogeorgiou/attmask,
``attmask.py``) draws the masks, with an EMA teacher of the MAE's encoder as the attention source.

Per image: with probability ``masking_prob`` the attention-guided mask (``high``: the most attended
patches; ``low``: the least; ``hints``: the most attended, then a few of the top ``show_max``
share revealed again), else a random mask of the same size (AttMask leaves those images
unmasked; a MAE image without hidden patches has no loss, and the encoder batches equal counts).
The attention is the teacher's last-block [CLS] attention averaged over heads; the teacher's
momentum follows DINO's cosine 0.996 -> 1 per iteration. The ratio is the MAE's, or one value per
batch drawn from ``ratio_range`` (AttMask / iBOT: 0.3 +- 0.2, i.e. U(0.1, 0.5)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_modules.components.patches import num_kept
from lightning_modules.components.strategies.attention import QUERIES, last_block_attention
from lightning_modules.components.strategies.base import (
    MaskDraw,
    MaskingStrategy,
    ema_update,
    frozen_copy,
    masking_from_hidden,
    normalise_rows,
    ranked,
)
from lightning_modules.components.strategies.options import (
    StrategyOptions,
    check_range,
    momentum_pair,
    option_error,
)
from lightning_modules.components.strategies.schedules import TrainingClock, cosine_momentum

VARIANTS = ("high", "hints", "low")


@dataclass(frozen=True)
class AttMaskOptions(StrategyOptions):
    """``model.masking=attmask``; the defaults are AttMask's code's (its ImageNet runs).

    variant: ``high`` (AttMask-High), ``hints`` (AttMask-Hint) or ``low`` (AttMask-Low).
    masking_prob: share of the images that get the attention-guided mask (0.5); the others get
        a random mask of the same size.
    ratio_range: None (the MAE's mask ratio, e.g. 0.75) or [low, high]: each training batch draws
        its ratio uniformly from it (AttMask / iBOT: [0.1, 0.5]); validation, diagnostics and
        maps use the MAE's ratio.
    show_max: ``hints``: int(show_max * ratio * L) patches are revealed again, drawn uniformly
        from the int(show_max * L) most attended (0.1).
    query: ``cls`` (AttMask: the [CLS] query) or ``mean`` (averaged over the patch queries).
    momentum: the teacher's EMA momentum: [start, end] by DINO's cosine per iteration
        ([0.996, 1]), or one number (constant; 0.99 suits runs of a few hundred steps).
    """

    name = "attmask"
    variant: str = "high"
    masking_prob: float = 0.5
    ratio_range: tuple[float, float] | None = None
    show_max: float = 0.1
    query: str = "cls"
    momentum: float | tuple[float, float] = (0.996, 1.0)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise option_error("variant", self.variant, str(list(VARIANTS)))
        check_range("masking_prob", self.masking_prob, 0.0, 1.0)
        if self.ratio_range is not None:
            pair = tuple(float(v) for v in self.ratio_range)
            if len(pair) != 2 or not 0 < pair[0] <= pair[1] < 1:
                raise option_error("ratio_range", self.ratio_range, "null (the MAE's ratio) or [low, high] with "
                                   "0 < low <= high < 1, e.g. AttMask's [0.1, 0.5]")
            object.__setattr__(self, "ratio_range", pair)
        check_range("show_max", self.show_max, 0.0, 1.0)
        if self.query not in QUERIES:
            raise option_error("query", self.query, str(list(QUERIES)))
        object.__setattr__(self, "momentum", momentum_pair("momentum", self.momentum))


def attmask_hidden(attention: Tensor, ratio: float, variant: str, masking_prob: float, show_max: float) -> Tensor:
    """AttMask's hidden set (B, L) bool for an attention map (B, L), as ``attmask.AttMask`` draws it.

    M = L - round(L * (1 - ratio)) patches (the MAE's count) ranked by attention (``high`` /
    ``hints``: most attended first; ``low``: least); ``hints`` then reveals int(show_max * ratio
    * L) of the int(show_max * L) most attended, uniformly without replacement. Each image takes
    that mask with probability ``masking_prob`` (``rand <= masking_prob``, as AttMask), else a
    uniformly random mask of the same count. Uses the global RNG.
    """
    b, n = attention.shape
    count = n - num_kept(n, ratio)
    order = ranked(attention, descending=variant != "low")
    informed = torch.zeros(b, n, dtype=torch.bool, device=attention.device).scatter_(1, order[:, :count], True)
    reveal = int(show_max * ratio * n) if variant == "hints" else 0
    if reveal:
        top = order[:, : int(show_max * n)]
        picks = torch.multinomial(torch.ones(top.shape, device=attention.device), reveal)
        informed.scatter_(1, top.gather(1, picks), False)
    chosen = torch.rand(b, device=attention.device) <= masking_prob
    noise = torch.rand(b, n, device=attention.device)
    random = torch.zeros_like(informed).scatter_(1, noise.topk(count - reveal, dim=1).indices, True)
    return torch.where(chosen.unsqueeze(1), informed, random)


class AttentionMasking(MaskingStrategy):
    """AttMask for the MAE ``mae`` (options: ``AttMaskOptions``); the teacher starts as a copy of
    the encoder (``start``) and follows it by EMA after every step (``after_step``)."""

    score_label = "teacher's attention (scaled per image)"
    teachers = ("teacher",)

    def __init__(self, mae: nn.Module, options: AttMaskOptions | None = None) -> None:
        super().__init__(mae.encoder.num_patches, mae.mask_ratio)
        self.options = options = options or AttMaskOptions()
        lowest = min((self.mask_ratio, *(options.ratio_range or ())))
        if options.variant == "hints" and options.show_max > lowest:
            raise option_error("show_max", options.show_max, f"at most the lowest mask ratio ({lowest}): the hints "
                               "are revealed from the top show_max share, which must lie inside the hidden set")
        self.scheduled = options.momentum[0] != options.momentum[1]
        self.teacher = frozen_copy(mae.encoder)

    def ratio(self) -> float:
        """This batch's mask ratio: drawn from ``ratio_range`` in training (global RNG), else the MAE's."""
        if self.training and self.options.ratio_range is not None:
            low, high = self.options.ratio_range
            return low + (high - low) * torch.rand(()).item()
        return self.mask_ratio

    def draw(self, images: Tensor, mae: nn.Module, progress: float = 1.0) -> MaskDraw:
        o = self.options
        attention = last_block_attention(self.teacher, images, o.query)
        hidden = attmask_hidden(attention, self.ratio(), o.variant, o.masking_prob, o.show_max)
        return MaskDraw(masking_from_hidden(hidden), normalise_rows(attention))

    def momentum(self, clock: TrainingClock | None) -> float:
        """The momentum of the step at ``clock`` (None: outside a run, the start value)."""
        start, end = self.options.momentum
        return start if start == end or clock is None else cosine_momentum(self.options.momentum, clock.step_share())

    def start(self, mae: nn.Module) -> None:
        self.teacher.load_state_dict(mae.encoder.state_dict())

    def after_step(self, mae: nn.Module, clock: TrainingClock | None = None) -> None:
        ema_update(self.teacher, mae.encoder, self.momentum(clock))
