"""MAE's random masking (He et al., CVPR 2022): a uniformly random subset of patches per image."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_modules.components.patches import masking_from_scores
from lightning_modules.components.strategies.base import MaskDraw, MaskingStrategy
from lightning_modules.components.strategies.options import StrategyOptions


@dataclass(frozen=True)
class RandomOptions(StrategyOptions):
    """``model.masking=random``: no options."""

    name = "random"


class RandomMasking(MaskingStrategy):
    """Argsort of uniform noise (the same draws as ``patches.random_masking``); scores = the noise."""

    score_label = "random score"

    def __init__(self, mae: nn.Module, options: RandomOptions | None = None) -> None:
        super().__init__(mae.encoder.num_patches, mae.mask_ratio)
        self.options = options or RandomOptions()

    def draw(self, images: Tensor, mae: nn.Module, progress: float = 1.0) -> MaskDraw:
        noise = torch.rand(len(images), self.num_patches, device=images.device)
        return MaskDraw(masking_from_scores(noise, self.mask_ratio), noise)
