"""BEiT's block-wise masking (Bao et al., "BEiT: BERT Pre-Training of Image Transformers",
ICLR 2022): rectangles of patches with a random area and aspect ratio are hidden until the
mask ratio is reached.

BEiT stops when ten attempts in a row fail to place a block, so its ratio is a ceiling; here
blocks keep being placed, down to 1 x 1, until exactly the ratio is hidden (the MAE encoder
needs the same number of visible patches in every image of a batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from lightning_modules.components.patches import masking_from_scores
from lightning_modules.components.strategies.base import MaskDraw, MaskingStrategy
from lightning_modules.components.strategies.options import StrategyOptions, option_error

Rect = tuple[int, int, int, int]  # top, left, height, width in patches


def block_mask(grid: int, num_masked: int, min_patches: int, min_aspect: float, rng: np.random.Generator,
               attempts: int = 10) -> tuple[np.ndarray, list[Rect]]:
    """One image's mask (grid, grid) bool with exactly ``num_masked`` True, and the rectangles
    placed (each adds at least one new patch and never more than are still missing).

    Each block: area ~ U(min(min_patches, missing), missing), aspect ratio log-uniform in
    [min_aspect, 1 / min_aspect], a uniformly random position; after ``attempts`` failures a
    1 x 1 block on a random unmasked patch.
    """
    if not 0 <= num_masked <= grid * grid:
        raise ValueError(f"cannot hide {num_masked} of {grid * grid} patches")
    mask = np.zeros((grid, grid), dtype=bool)
    rects: list[Rect] = []
    count = 0
    log_lo, log_hi = math.log(min_aspect), math.log(1 / min_aspect)
    while count < num_masked:
        missing = num_masked - count
        placed = False
        for _ in range(attempts):
            area = rng.uniform(min(min_patches, missing), missing)
            aspect = math.exp(rng.uniform(log_lo, log_hi))
            h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if not (1 <= h <= grid and 1 <= w <= grid):
                continue
            top, left = int(rng.integers(0, grid - h + 1)), int(rng.integers(0, grid - w + 1))
            new = h * w - int(mask[top:top + h, left:left + w].sum())
            if 0 < new <= missing:
                mask[top:top + h, left:left + w] = True
                rects.append((top, left, h, w))
                count += new
                placed = True
                break
        if not placed:
            free = np.flatnonzero(~mask.reshape(-1))
            i = int(free[rng.integers(0, len(free))])
            mask[i // grid, i % grid] = True
            rects.append((i // grid, i % grid, 1, 1))
            count += 1
    return mask, rects


@dataclass(frozen=True)
class BlockOptions(StrategyOptions):
    """``model.masking=block``.

    min_patches: smallest block area in patches (BEiT: 16 of a 14 x 14 grid; None: that share of
        this grid, at least 1).
    min_aspect: aspect ratios are drawn log-uniformly from [min_aspect, 1 / min_aspect] (BEiT: 0.3).
    """

    name = "block"
    min_patches: int | None = None
    min_aspect: float = 0.3

    def __post_init__(self) -> None:
        if self.min_patches is not None and not (int(self.min_patches) == self.min_patches >= 1):
            raise option_error("min_patches", self.min_patches, "an integer >= 1, or null (BEiT's share of the grid)")
        if not 0 < self.min_aspect <= 1:
            raise option_error("min_aspect", self.min_aspect, "(0, 1]")


class BlockMasking(MaskingStrategy):
    """Block-wise masks at the MAE's ratio (options: ``BlockOptions``)."""

    score_label = "in a block"

    def __init__(self, mae: nn.Module, options: BlockOptions | None = None) -> None:
        super().__init__(mae.encoder.num_patches, mae.mask_ratio)
        self.options = options = options or BlockOptions()
        num_patches = self.num_patches
        self.grid = int(round(num_patches**0.5))
        if self.grid**2 != num_patches:
            raise ValueError(f"block masking needs a square patch grid, got {num_patches} patches")
        default = max(1, round(16 * num_patches / 196))
        self.min_patches = default if options.min_patches is None else int(options.min_patches)
        self.min_aspect = options.min_aspect

    def draw(self, images: Tensor, mae: nn.Module, progress: float = 1.0) -> MaskDraw:
        # numpy for the per-block loop, seeded from the global torch RNG: reproducible and resumable
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        masks = np.stack([block_mask(self.grid, self.num_masked, self.min_patches, self.min_aspect, rng)[0]
                          for _ in range(len(images))])
        scores = torch.from_numpy(masks.reshape(len(images), -1)).float().to(images.device)
        return MaskDraw(masking_from_scores(scores, self.mask_ratio), scores)
