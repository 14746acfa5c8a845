"""Null maskers a learned masker must beat, and their diagnostics (plain torch).

A masker's diagnostic is evidence of learning only where it exceeds what these give on the
same images:

- ``shuffled``: the masker's own draw paired with the content of other images (a
  derangement): what its position preferences alone produce;
- fixed maps (``fixed_maps``), the same mask for every image: ``mean_intensity`` (the training
  images' mean patch intensity, brightest positions hidden first), ``centre`` (minus the
  distance of each patch centre from the image centre: the centre hidden first),
  ``fixed_random`` (one seeded random map);
- ``random``: fresh uniform scores per image (MAE's random masks).

Shapes: images (N, C, H, W); maps (L,); patches in row-major order.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_modules.components.mask_diagnostics import correlations, patch_intensity
from lightning_modules.components.masking import mask_diversity
from lightning_modules.components.patches import masking_from_scores
from lightning_modules.components.strategies import MaskDraw

FIXED_MAPS = ("mean_intensity", "centre", "fixed_random")


def centre_bias(rows: int, cols: int) -> Tensor:
    """Minus the distance (rows * cols,) of each patch centre from the image centre, in patches."""
    r = torch.arange(rows, dtype=torch.float64) - (rows - 1) / 2
    c = torch.arange(cols, dtype=torch.float64) - (cols - 1) / 2
    return -(r[:, None] ** 2 + c[None, :] ** 2).sqrt().flatten().float()


def fixed_maps(train_images: Tensor, patch_size: int, seed: int = 0) -> dict[str, Tensor]:
    """The image-independent maps (L,) of ``FIXED_MAPS`` for the patch grid of ``train_images``
    (N, C, H, W); ``mean_intensity`` is their mean patch intensity."""
    if len(train_images) == 0:
        raise ValueError("fixed_maps needs training images to average (got none)")
    rows, cols = train_images.shape[-2] // patch_size, train_images.shape[-1] // patch_size
    g = torch.Generator().manual_seed(seed)
    return {"mean_intensity": patch_intensity(train_images, patch_size).mean(0).cpu(),
            "centre": centre_bias(rows, cols),
            "fixed_random": torch.rand(rows * cols, generator=g)}


def fixed_map_draw(scores: Tensor, num_images: int, mask_ratio: float) -> MaskDraw:
    """One map (L,) as a masker: the same scores and the same top-k mask for each of ``num_images``."""
    masking = masking_from_scores(scores[None].float(), mask_ratio)
    return MaskDraw(tuple(t.expand(num_images, -1) for t in masking), scores[None].expand(num_images, -1))


def random_draw(num_images: int, num_patches: int, mask_ratio: float,
                generator: torch.Generator | None = None) -> MaskDraw:
    """MAE's random masks: uniform scores, fresh for every image, and their top-k."""
    scores = torch.rand(num_images, num_patches, generator=generator)
    return MaskDraw(masking_from_scores(scores, mask_ratio), scores)


def draw_summary(draw: MaskDraw, features: dict[str, Tensor]) -> dict[str, float]:
    """``correlations`` of a draw with ``features`` and the ``diversity`` of its masks."""
    return correlations(draw, features) | {"diversity": mask_diversity(draw.mask).item()}


def null_diagnostics(draw: MaskDraw, features: dict[str, Tensor], maps: dict[str, Tensor], mask_ratio: float,
                     shuffle: Tensor, generator: torch.Generator | None = None) -> dict[str, dict[str, float]]:
    """``draw_summary`` of every null for a masker's ``draw`` of N images with ``features`` (N, L):
    ``shuffled`` (the draw of image i beside the content of image ``shuffle[i]``), each of ``maps``
    and ``random``."""
    n, length = draw.mask.shape
    for name, m in maps.items():
        if m.shape != (length,):
            raise ValueError(f"fixed map {name!r} has shape {tuple(m.shape)}; the masker draws {length} patches: "
                             "compute the maps on the same patch grid (fixed_maps with the arm's patch size)")
    device = draw.mask.device
    out = {"shuffled": draw_summary(draw, {k: v[shuffle.to(v.device)] for k, v in features.items()})}
    for name, m in maps.items():
        out[name] = draw_summary(fixed_map_draw(m.to(device), n, mask_ratio), features)
    rnd = random_draw(n, length, mask_ratio, generator)
    out["random"] = draw_summary(MaskDraw(tuple(t.to(device) for t in rnd.masking), rnd.scores.to(device)), features)
    return out
