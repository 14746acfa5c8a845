"""Batched twins of ``transforms.build_transform``: whole uint8 batches in, augmented float
batches out, on whatever device the batch is on (the on-device data path, ``data.on_device``).

Each random operation draws per image, with the same distribution and in the same order as
the per-sample torchvision pipeline (resize, crop, flips, rotation, normalise, erasing);
``tests/test_batch_transforms.py`` compares the two. Random numbers come from the torch
generator of the batch's device, which ``callbacks.seeding`` seeds per epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from datamodules.transforms import AugmentConfig

ERASE_SCALE = (0.02, 0.33)  # torchvision RandomErasing's defaults: area fraction, aspect ratio
ERASE_RATIO = (0.3, 3.3)
ERASE_ATTEMPTS = 10


def resize(x: Tensor, size: int) -> Tensor:
    """(B, C, H, W) float -> (B, C, size, size): bilinear with antialiasing (torchvision's Resize)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def random_crop(x: Tensor, padding: int) -> Tensor:
    """Zero-pad by ``padding`` px, then crop the original size at a uniform offset per image."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    left = torch.randint(0, 2 * padding + 1, (b,), device=x.device)
    rows = (top[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)


def random_flip(x: Tensor, dim: int, p: float = 0.5) -> Tensor:
    """Flip each image along ``dim`` (-1 horizontal, -2 vertical) with probability ``p``."""
    flip = torch.rand(len(x), device=x.device) < p
    return torch.where(flip[:, None, None, None], x.flip(dim), x)


def expanded_size(angles: Tensor, size: int) -> Tensor:
    """Side (px) of the canvas that holds a ``size`` square rotated by ``angles`` (degrees),
    rounded as torchvision's ``rotate(expand=True)`` does (to 1e-4 before the ceiling)."""
    rad = torch.deg2rad(angles.double())
    half = 0.5 * size * (rad.cos().abs() + rad.sin().abs())  # half the rotated square's extent
    hi, lo = (torch.trunc((0.5 * size + d) / 1e-4) * 1e-4 for d in (half, -half))  # corners in pixel units
    return (torch.ceil(hi) - torch.floor(lo)).long()


def rotate(x: Tensor, angles: Tensor, canvas: int | None = None) -> Tensor:
    """Rotate each image counter-clockwise by ``angles`` (B,) degrees about its centre, nearest
    neighbour, zero fill; onto a ``canvas`` x ``canvas`` output (default: the input size)."""
    b, c, h, w = x.shape
    out = canvas or w
    rad = torch.deg2rad(angles.to(torch.float64))
    cos, sin = rad.cos(), rad.sin()
    # Output normalised coordinates -> input normalised coordinates (square images).
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(cos)], -1),
                         torch.stack([sin, cos, torch.zeros_like(cos)], -1)], 1) * (out / w)
    grid = F.affine_grid(theta.to(x.dtype), [b, c, out, out], align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def random_rotation(x: Tensor, degrees: float, p: float = 1.0, expand: bool = False) -> Tensor:
    """Rotate each image with probability ``p`` by a uniform angle in [-degrees, degrees].

    With ``expand`` each image is rotated onto the canvas that holds all of it, then resized
    back (torchvision's ``RandomRotation(expand=True)`` + ``Resize``); images sharing a canvas
    size are processed together.
    """
    b, _, _, size = x.shape
    angles = torch.empty(b, device=x.device).uniform_(-degrees, degrees)
    apply = torch.rand(b, device=x.device) < p if p < 1 else torch.ones(b, dtype=torch.bool, device=x.device)
    if not expand:
        return torch.where(apply[:, None, None, None], rotate(x, angles), x)
    out = x.clone()
    canvases = expanded_size(angles, size)
    for canvas in torch.unique(canvases[apply]).tolist():
        rows = torch.nonzero(apply & (canvases == canvas)).squeeze(1)
        out[rows] = resize(rotate(x[rows], angles[rows], int(canvas)), size)
    return out


def normalize(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(x - mean) / std per channel; ``mean`` and ``std`` (C,) on x's device."""
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def random_erasing(x: Tensor, p: float) -> Tensor:
    """Zero one rectangle per image with probability ``p`` (torchvision's ``RandomErasing``:
    area fraction in [0.02, 0.33], log-uniform aspect ratio in [0.3, 3.3], up to 10 attempts
    at a rectangle that fits; none fits -> unchanged)."""
    b, _, h, w = x.shape
    dev, n = x.device, ERASE_ATTEMPTS
    area = h * w * torch.empty(b, n, device=dev).uniform_(*ERASE_SCALE)
    aspect = torch.exp(torch.empty(b, n, device=dev).uniform_(math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])))
    eh = torch.round(torch.sqrt(area * aspect)).long()
    ew = torch.round(torch.sqrt(area / aspect)).long()
    fits = (eh < h) & (ew < w)
    first = fits.float().argmax(1)  # the first attempt that fits
    pick = torch.arange(b, device=dev)
    eh, ew = eh[pick, first], ew[pick, first]
    apply = (torch.rand(b, device=dev) < p) & fits.any(1)
    top = (torch.rand(b, device=dev) * (h - eh + 1)).long()
    left = (torch.rand(b, device=dev) * (w - ew + 1)).long()
    r = torch.arange(h, device=dev)[None, :, None]
    c = torch.arange(w, device=dev)[None, None, :]
    box = ((r >= top[:, None, None]) & (r < (top + eh)[:, None, None])
           & (c >= left[:, None, None]) & (c < (left + ew)[:, None, None]))
    return x.masked_fill((box & apply[:, None, None])[:, None], 0.0)


class BatchTransform:
    """uint8 (B, C, H, W) -> float (B, C, img_size, img_size), as ``build_transform`` does per
    image (same arguments); ``augment=None`` is the evaluation transform."""

    def __init__(
        self,
        img_size: int,
        stats: tuple[Sequence[float], Sequence[float]] | None,
        augment: AugmentConfig | None = None,
    ) -> None:
        if augment is not None and augment.random_resized_crop is not None:
            raise ValueError("data.augment.random_resized_crop runs on the loader path only: set data.on_device=false")
        self.img_size, self.stats, self.augment = img_size, stats, augment
        self._stats_on: dict[torch.device, tuple[Tensor, Tensor]] = {}  # moved once per device, not per batch

    def stats_on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._stats_on:
            self._stats_on[device] = tuple(torch.tensor(v, dtype=torch.float32, device=device) for v in self.stats)
        return self._stats_on[device]

    def __call__(self, images: Tensor) -> Tensor:
        x = resize(images.float().div_(255.0), self.img_size)
        a = self.augment
        if a is not None:
            if a.crop_padding > 0:
                x = random_crop(x, a.crop_padding)
            if a.hflip:
                x = random_flip(x, -1)
            if a.vflip:
                x = random_flip(x, -2)
            if a.rotation > 0:
                x = random_rotation(x, a.rotation, a.rotation_p, a.rotation_expand)
        if self.stats is not None:
            x = normalize(x, *self.stats_on(x.device))
        if a is not None and a.erasing > 0:
            x = random_erasing(x, a.erasing)
        return x
