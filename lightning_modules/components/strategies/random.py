"""MAE's random masking (He et al., CVPR 2022): a uniformly random subset of patches per image."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_modules.components.patches import masking_from_scores
from lightning_modules.components.strategies.base import MaskDraw, MaskingStrategy


class RandomMasking(MaskingStrategy):
    """Argsort of uniform noise (the same draws as ``patches.random_masking``); scores = the noise."""

    score_label = "random score"

    def draw(self, images: Tensor, mae: nn.Module, progress: float = 1.0) -> MaskDraw:
        noise = torch.rand(len(images), self.num_patches, device=images.device)
        return MaskDraw(masking_from_scores(noise, self.mask_ratio), noise)
