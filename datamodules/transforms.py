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


@dataclass
class AugmentConfig:
    """Train-only augmentation. All off by default (protocols opt in)."""

    crop_padding: int = 0  # random crop of img_size after zero padding by this many px
    hflip: bool = False
    vflip: bool = False
    rotation: float = 0.0  # max degrees, uniform in [-rotation, rotation]; 180 = any angle
    rotation_p: float = 1.0  # probability of rotating an image
    rotation_expand: bool = False  # rotate onto a larger canvas, then resize: no corner is cut off
    erasing: float = 0.0  # probability of random erasing (cutout)


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units of uint8 images (N, H, W) or (N, H, W, 3)."""
    x = images.astype(np.float64) / 255.0
    axes = (0, 1, 2)
    x = x[..., None] if x.ndim == 3 else x
    return x.mean(axis=axes).tolist(), x.std(axis=axes).tolist()


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


def check_rotation(augment: AugmentConfig) -> None:
    if not 0 < augment.rotation <= 180 or not 0 < augment.rotation_p <= 1:
        raise ValueError(f"data.augment.rotation={augment.rotation} / rotation_p={augment.rotation_p} are invalid; "
                         "allowed: rotation in (0, 180] degrees, rotation_p in (0, 1]")


def _rotation(augment: AugmentConfig, img_size: int) -> v2.Transform:
    check_rotation(augment)
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
    if img_size != source_size:
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
    Grayscale images are repeated to 3 channels when ``as_rgb``. With ``synthetic`` (N,) bool
    (a training split with synthetic images added) items are ``(image, label, synthetic)``.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        transform: v2.Compose,
        as_rgb: bool = False,
        multi_label: bool = False,
        synthetic: np.ndarray | None = None,
    ) -> None:
        x = torch.from_numpy(np.ascontiguousarray(images))
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # (N, C, H, W) uint8
        if as_rgb and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        self.images = x.contiguous()
        y = torch.from_numpy(labels)
        self.labels = y.float() if multi_label else y.reshape(-1).long()
        self.transform = transform
        self.synthetic = None if synthetic is None else torch.from_numpy(np.asarray(synthetic, dtype=bool))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        x = self.transform(self.images[i].float().div_(255.0))
        return (x, self.labels[i]) if self.synthetic is None else (x, self.labels[i], self.synthetic[i])
