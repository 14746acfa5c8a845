"""Image transforms: resize, normalisation choices and train-only augmentation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import v2

NORMALIZATIONS = ("imagenet", "half", "dataset", "none")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AugmentConfig:
    """``data.augment``: train-only augmentation, checked when built. All off by default
    (protocols opt in)."""

    crop_padding: int = 0  # random crop of img_size after zero padding by this many px
    hflip: bool = False
    vflip: bool = False
    rotation: float = 0.0  # max degrees, uniform in [-rotation, rotation]; 180 = any angle
    rotation_p: float = 1.0  # probability of rotating an image
    rotation_expand: bool = False  # rotate onto a larger canvas, then resize: no corner is cut off
    erasing: float = 0.0  # probability of random erasing (cutout)
    # [min, max] area share of a random crop resized to img_size (timm / torchvision's
    # RandomResizedCrop, aspect 3/4 to 4/3); with data.decode=lazy, of the full-size file
    random_resized_crop: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        def check(ok: bool, what: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"data.augment.{what} is invalid; allowed: {allowed}")

        check(self.crop_padding >= 0, f"crop_padding={self.crop_padding}", "an integer >= 0 (px)")
        check(0 <= self.erasing <= 1, f"erasing={self.erasing}", "a probability in [0, 1]")
        check(self.rotation == 0 or (0 < self.rotation <= 180 and 0 < self.rotation_p <= 1),
              f"rotation={self.rotation} / rotation_p={self.rotation_p}",
              "rotation 0 (off) or in (0, 180] degrees, rotation_p in (0, 1]")
        crop = self.random_resized_crop
        if crop is not None:
            crop = tuple(float(v) for v in crop)
            check(len(crop) == 2 and 0 < crop[0] <= crop[1] <= 1, f"random_resized_crop={list(crop)}",
                  "[min, max] area shares with 0 < min <= max <= 1, e.g. [0.08, 1.0]")
            object.__setattr__(self, "random_resized_crop", crop)


def channel_stats(images) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units of uint8 images (N, H, W) or (N, H, W, 3) (an
    array or an ``image_rows`` sequence), streamed in chunks: float64 sums of x and x^2."""
    from datamodules.image_rows import chunks

    total = total_sq = 0.0
    count = 0
    for chunk in chunks(images):
        x = chunk.astype(np.float64) / 255.0
        x = x[..., None] if x.ndim == 3 else x
        total = total + x.sum(axis=(0, 1, 2))
        total_sq = total_sq + np.square(x).sum(axis=(0, 1, 2))
        count += x.shape[0] * x.shape[1] * x.shape[2]
    mean = total / count
    return mean.tolist(), np.sqrt(np.maximum(total_sq / count - mean**2, 0)).tolist()


def normalization_stats(
    name: str, channels: int, train_images: np.ndarray | None = None
) -> tuple[Sequence[float], Sequence[float]] | None:
    """(mean, std) per output channel for a normalisation choice, or None for ``none``."""
    if name == "none":
        return None
    if name == "half":  # [0, 1] -> [-1, 1]
        return [0.5] * channels, [0.5] * channels
    if name == "imagenet":
        if channels == 3:
            return _IMAGENET_MEAN, _IMAGENET_STD
        return [float(np.mean(_IMAGENET_MEAN))], [float(np.mean(_IMAGENET_STD))]
    if name == "dataset":
        if train_images is None:
            raise ValueError("normalization=dataset needs the training images")
        mean, std = channel_stats(train_images)
        if channels == 3 and len(mean) == 1:  # grayscale repeated to RGB
            mean, std = mean * 3, std * 3
        return mean, [max(s, 1e-6) for s in std]
    raise ValueError(f"data.normalization={name!r} is invalid; allowed: {list(NORMALIZATIONS)}")


def _rotation(augment: AugmentConfig, img_size: int) -> v2.Transform:
    rotate: v2.Transform = v2.RandomRotation(augment.rotation, expand=augment.rotation_expand)
    if augment.rotation_expand:
        rotate = v2.Compose([rotate, v2.Resize((img_size, img_size), antialias=True)])
    return rotate if augment.rotation_p == 1 else v2.RandomApply([rotate], p=augment.rotation_p)


def build_transform(
    img_size: int,
    source_size: int,
    stats: tuple[Sequence[float], Sequence[float]] | None,
    augment: AugmentConfig | None = None,
) -> v2.Compose:
    """Transform for a float image tensor (C, H, W) in [0, 1] -> (C, img_size, img_size)."""
    steps: list = []
    crop = augment.random_resized_crop if augment is not None else None
    if crop is not None:
        steps.append(v2.RandomResizedCrop(img_size, scale=crop, antialias=True))
    elif img_size != source_size:
        steps.append(v2.Resize((img_size, img_size), antialias=True))
    if augment is not None:
        if augment.crop_padding > 0:
            steps.append(v2.RandomCrop(img_size, padding=augment.crop_padding))
        if augment.hflip:
            steps.append(v2.RandomHorizontalFlip())
        if augment.vflip:
            steps.append(v2.RandomVerticalFlip())
        if augment.rotation > 0:
            steps.append(_rotation(augment, img_size))
    if stats is not None:
        steps.append(v2.Normalize(mean=list(stats[0]), std=list(stats[1])))
    if augment is not None and augment.erasing > 0:
        steps.append(v2.RandomErasing(p=augment.erasing))
    return v2.Compose(steps)


class ArrayDataset(torch.utils.data.Dataset):
    """MedMNIST arrays as a Dataset of ``(image (C, H, W) float, label)``.

    Labels are a scalar long for single-label tasks, a float vector (K,) for multi-label.
    Grayscale images are repeated to 3 channels when ``as_rgb``. With ``generated`` (N,) bool (a
    training split with a generated set joined, ``generated_set.py``) items are
    ``(image, label, generated)``.
    """

    def __init__(
        self,
        images,
        labels: np.ndarray,
        transform: v2.Compose,
        as_rgb: bool = False,
        multi_label: bool = False,
        generated: np.ndarray | None = None,
    ) -> None:
        self.as_rgb = as_rgb
        if isinstance(images, np.ndarray):  # in memory: one tensor
            self._tensor: torch.Tensor | None = self._to_tensor(images)
            self._lazy = None
        else:  # an ``image_rows`` sequence: read per item, never all in memory
            self._tensor, self._lazy = None, images
        y = torch.from_numpy(labels)
        self.labels = y.float() if multi_label else y.reshape(-1).long()
        self.transform = transform
        self.generated = None if generated is None else torch.from_numpy(np.asarray(generated, dtype=bool))

    def _to_tensor(self, images: np.ndarray, batch: bool = True) -> torch.Tensor:
        """uint8 (N, H, W[, 3]) -> (N, C, H, W), or one image (H, W[, 3]) -> (C, H, W)."""
        x = torch.from_numpy(np.ascontiguousarray(images))
        x = x.movedim(-1, -3) if x.ndim == (4 if batch else 3) else x.unsqueeze(-3)
        if self.as_rgb and x.shape[-3] == 1:
            x = x.expand(*x.shape[:-3], 3, *x.shape[-2:])
        return x.contiguous()

    @property
    def images(self) -> torch.Tensor:
        """Every image, (N, C, H, W) uint8 (reads a lazy set whole: for the on-device path and synthesis)."""
        if self._tensor is not None:
            return self._tensor
        if len(self._lazy) and 0 in self._lazy.image_shape:
            raise ValueError("the training images are read at their own sizes (data.decode=lazy with "
                             "data.augment.random_resized_crop); this step needs them at one size: use data.decode=cache")
        return self._to_tensor(np.asarray(self._lazy))

    def uint8(self, i: int) -> torch.Tensor:
        """Image ``i`` before the transform, (C, H, W) uint8."""
        return self._tensor[i] if self._tensor is not None else self._to_tensor(self._lazy[i], batch=False)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        x = self.transform(self.uint8(i).float().div_(255.0))
        return (x, self.labels[i]) if self.generated is None else (x, self.labels[i], self.generated[i])
