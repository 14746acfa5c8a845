"""The on-device data path (``data.on_device=true``): loaders yield sample indices, and the
datamodule's ``on_after_batch_transfer`` turns them into augmented images on the device.

The uint8 images of each split move to the device once; every batch is then one gather and
one batched augmentation (``batch_transforms``) instead of per-image Python calls. Samplers
(oversampling, label fractions, MLO-MAE's level loaders) and Lightning's distributed sampler
work unchanged, because they only ever see indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from datamodules.batch_transforms import BatchTransform
from datamodules.transforms import ArrayDataset


@dataclass
class IndexBatch:
    """A batch of ``split``'s samples before they become images: index (B,) into the split's
    arrays, the labels (B,) or (B, K) and, with a generated set joined, the generated flags (B,)."""

    split: str
    index: Tensor
    label: Tensor
    generated: Tensor | None = None


class IndexDataset(Dataset):
    """A split as indices: ``__getitems__`` (the DataLoader's batched fetch) returns one
    ``IndexBatch``; use it with ``collate_fn=keep_batch``."""

    def __init__(self, split: str, labels: Tensor, generated: Tensor | None = None) -> None:
        self.split, self.labels, self.generated = split, labels, generated

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> IndexBatch:
        return self.__getitems__([i])

    def __getitems__(self, indices: list[int]) -> IndexBatch:
        index = torch.as_tensor(indices, dtype=torch.long)
        flags = None if self.generated is None else self.generated[index]
        return IndexBatch(self.split, index, self.labels[index], flags)


def keep_batch(batch: IndexBatch) -> IndexBatch:
    """Collate function of ``IndexDataset`` loaders: the fetch already built the batch."""
    return batch


class DeviceImages:
    """Each split's uint8 images (N, C, H, W), moved to a device on first use, and the batched
    transform of each split (augmentation for ``train`` only)."""

    def __init__(self, sets: dict[str, ArrayDataset], transforms: dict[str, BatchTransform]) -> None:
        self.sets, self.transforms = sets, transforms
        self._on_device: dict[tuple[str, torch.device], Tensor] = {}

    def images(self, split: str, device: torch.device) -> Tensor:
        key = (split, device)
        if key not in self._on_device:
            self._on_device[key] = self.sets[split].images.to(device, non_blocking=True)
        return self._on_device[key]

    def materialize(self, batch: IndexBatch) -> tuple[Tensor, ...]:
        """``(images (B, C, S, S) float, labels[, generated flags])`` on the batch's device."""
        device = batch.index.device
        images = self.transforms[batch.split](self.images(batch.split, device)[batch.index])
        return (images, batch.label) if batch.generated is None else (images, batch.label, batch.generated)
