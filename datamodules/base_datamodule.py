"""What every labelled datamodule shares: its typed options (``options.py``), datasets built
from uint8 arrays, label fractions, class weights, samplers and DDP-safe eval loaders (MLO-MAE's
level loaders come from ``mlo_levels.py`` when ``data.mlo`` is set).

Subclasses (MedMNIST ``.npz`` files, image folders, image tables) only read their source and
decide the split; ``build_sets`` does the rest the same way for all of them.
"""

from __future__ import annotations

import abc
from dataclasses import replace

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning_utilities.core.apply_func import apply_to_collection
from torch.utils.data import DataLoader

from core.tasks import MULTI_LABEL
from datamodules.batch_transforms import BatchTransform
from datamodules.generated_set import (
    IDENTITY_KEYS,
    cap_generated_share,
    load_generated_set,
    train_fingerprint,
)
from datamodules.mlo_levels import MLOLevelOptions, level_indices, level_loaders
from datamodules.on_device import DeviceImages, IndexBatch, IndexDataset, keep_batch
from datamodules.options import DataOptions, require
from datamodules.samplers import ClassBalancedSampler, UnpaddedDistributedSampler
from datamodules.splits import label_fraction_subset
from datamodules.transforms import ArrayDataset, AugmentConfig, build_transform, normalization_stats


def class_weights_from_labels(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """``n / (K * n_c)`` per class (sklearn's "balanced"), shape (K,). Absent classes get 0."""
    counts = np.bincount(np.asarray(labels).reshape(-1), minlength=num_classes).astype(float)
    weights = np.zeros(num_classes)
    present = counts > 0
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


class ClassificationDataModule(L.LightningDataModule, abc.ABC):
    """Base of the labelled datamodules. ``options``: the shared options in their typed groups
    (``options.DataOptions``; a subclass builds them from its flat config keys with
    ``DataOptions.from_keys``, see ``MedMNISTDataModule`` for what each key does).

    Subclasses set ``task`` and implement ``num_classes``, ``in_chans``, ``class_names`` and
    ``setup`` (which calls ``build_sets``).
    """

    task: str

    def __init__(self, options: DataOptions) -> None:
        super().__init__()
        self.options = options
        self.generated_card: dict | None = None  # the card of data.synthetic_train's generated set
        self._real_train: tuple | None = None  # (images, labels) of the real training split
        self._identity: dict | None = None
        self.device_images: DeviceImages | None = None
        self.level_indices: dict[str, np.ndarray] = {}  # MLO-MAE's levels II / III (mlo_levels.py)
        self.train_set = self.val_set = self.test_set = None
        self.train_labels: np.ndarray | None = None

    # ----- the options other layers read ---------------------------------------------------
    @property
    def img_size(self) -> int:
        return self.options.input.img_size

    @property
    def normalization(self) -> str:
        return self.options.input.normalization

    @property
    def augment(self) -> AugmentConfig:
        return self.options.augment

    @property
    def mlo(self) -> MLOLevelOptions | None:
        return self.options.mlo

    @property
    def batch_size(self) -> int:
        return self.options.loader.batch_size

    @property
    def eval_batch_size(self) -> int:
        return self.options.loader.eval_batch_size

    @property
    def on_device(self) -> bool:
        return self.options.loader.on_device

    @property
    def label_fraction(self) -> float:
        return self.options.split.label_fraction

    @property
    def split_seed(self) -> int:
        return self.options.split.split_seed

    @property
    def shuffle_seed(self) -> int:
        """The training order's seed (``data.shuffle_seed``; None: ``split_seed``)."""
        seed = self.options.sampling.shuffle_seed
        return self.split_seed if seed is None else seed

    @property
    def synthetic_train(self) -> str | None:
        return self.options.generated.synthetic_train

    def check_task(self) -> None:
        """Cross-checks that need the task (call at the end of a subclass ``__init__``)."""
        require(self.synthetic_train is None or self.task != MULTI_LABEL,
                "synthetic_train", self.synthetic_train, "null for multi-label tasks")
        require(self.options.sampling.sampler == "none" or self.task != MULTI_LABEL,
                "sampler", self.options.sampling.sampler, "'none' for multi-label tasks")
        require(self.mlo is None or self.task != MULTI_LABEL, "mlo", self.mlo, "null (off) for multi-label tasks")

    def check_declared(self, source: str, **declared) -> None:
        """The config's interpolated ``num_classes`` / ``in_chans`` / ``task`` must match the data."""
        for key, given in declared.items():
            actual = getattr(self, key)
            if given is not None and given != actual:
                raise ValueError(f"data.{key}={given!r} disagrees with {source} ({actual!r}); "
                                 f"remove the data.{key} override (or fix the data)")

    @property
    def class_weights(self) -> torch.Tensor:
        """Balanced class weights (K,) of the (possibly subsampled) training labels."""
        if self.train_labels is None:
            raise RuntimeError("class_weights is available after setup('fit')")
        if self.task == MULTI_LABEL:  # positive weight per label: negatives / positives
            pos = self.train_labels.sum(axis=0).clip(min=1)
            return torch.tensor((len(self.train_labels) - pos) / pos, dtype=torch.float32)
        return class_weights_from_labels(self.train_labels, self.num_classes)

    @abc.abstractmethod
    def sample_source(self) -> str:
        """Where the samples come from (a MedMNIST flag, an image folder): ensembles compare it."""

    @property
    def real_train_identity(self) -> dict | None:
        """``data_identity`` of the real training split (computed when first asked: it reads
        every training image), or None before ``setup``."""
        if self._identity is None and self._real_train is not None:
            self._identity = self.data_identity(*self._real_train)
        return self._identity

    def data_identity(self, train_images: np.ndarray, train_labels: np.ndarray) -> dict:
        """What a generated training set must have been made for (see ``generated_set.py``):
        this dataset, its classes, source image size and channels, and these real training
        images (uint8 (N, H, W[, 3])) and labels."""
        return {"data_source": self.sample_source(), "num_classes": int(self.num_classes),
                "image_size": int(train_images.shape[1]), "channels": 1 if train_images.ndim == 3 else 3,
                "train_fingerprint": train_fingerprint(train_images, train_labels)}

    def sample_ids(self, split: str) -> list[str] | None:
        """One identifier per sample of ``split`` in dataset order (e.g. image paths), or None."""
        return None

    def label_fraction_indices(self, labels: np.ndarray) -> np.ndarray:
        """Sorted indices of the stratified, seeded ``label_fraction`` subset of ``labels``."""
        return label_fraction_subset(labels, self.label_fraction, self.split_seed + 1)

    def build_sets(
        self, images: dict[str, np.ndarray], labels: dict[str, np.ndarray], source_size: int, as_rgb: bool = False
    ) -> None:
        """Datasets of the final train / val / test arrays (uint8 (N, H, W[, 3]), labels).

        Normalisation statistics come from the training images only; augmentation is
        applied to the training set only. With ``on_device`` the loaders yield indices and the
        same transforms run batched on the device (``on_after_batch_transfer``).
        """
        stats = normalization_stats(self.normalization, self.in_chans, images["train"])  # real images only
        self.input_stats, self.source_size = stats, source_size  # what a deployed model's input needs
        self.source_channels = 1 if images["train"].ndim == 3 else 3
        self._real_train = (images["train"], labels["train"])
        self._identity = None
        generated = None  # (N,) bool: which training images come from the generated set
        if self.synthetic_train:
            identity = self.real_train_identity
            gen = load_generated_set(self.synthetic_train, {k: identity[k] for k in IDENTITY_KEYS})
            self.generated_card = gen.card
            if (ratio := self.options.generated.synthetic_max_ratio) is not None:
                keep = cap_generated_share(labels["train"], gen.labels, ratio, self.split_seed + 3)
                gen = replace(gen, images=gen.images[keep], labels=gen.labels[keep])
            generated = np.r_[np.zeros(len(labels["train"]), bool), np.ones(len(gen.labels), bool)]
            images = {**images, "train": np.concatenate([np.asarray(images["train"]), gen.images])}
            labels = {**labels, "train": np.concatenate([labels["train"].reshape(-1, 1), gen.labels])}
        self.train_labels = labels["train"]
        train_tf = build_transform(self.img_size, source_size, stats, self.augment)
        eval_tf = build_transform(self.img_size, source_size, stats, None)
        multi = self.task == MULTI_LABEL
        self.train_set = ArrayDataset(images["train"], labels["train"], train_tf, as_rgb, multi, generated)
        self.val_set = ArrayDataset(images["val"], labels["val"], eval_tf, as_rgb, multi)
        self.test_set = ArrayDataset(images["test"], labels["test"], eval_tf, as_rgb, multi)
        if self.on_device:
            sets = {"train": self.train_set, "val": self.val_set, "test": self.test_set}
            transforms = {"train": BatchTransform(self.img_size, stats, self.augment),
                          "val": BatchTransform(self.img_size, stats), "test": BatchTransform(self.img_size, stats)}
            self.device_images = DeviceImages(sets, transforms)
        if self.mlo is not None:  # levels II and III: real images only (level I sees the generated ones too)
            self.level_indices = level_indices(self.mlo, self.train_labels, generated, self.split_seed)

    # ----- loaders ----------------------------------------------------------------------
    def _split_set(self, split: str):
        """The Dataset the ``split`` loader reads: images, or indices on the on-device path."""
        dataset = getattr(self, f"{split}_set")
        if self.device_images is None:
            return dataset
        return IndexDataset(split, dataset.labels, dataset.generated)

    def _loader(self, dataset, batch_size: int, train: bool = True, **kwargs) -> DataLoader:
        if self.device_images is not None:
            # Indices only: no workers, nothing to pin; the images are already on the device.
            return DataLoader(dataset, batch_size=batch_size, collate_fn=keep_batch, **kwargs)
        # Training workers start afresh every epoch: their augmentation seeds then come from the
        # epoch's seed (callbacks.seeding), so a resumed run draws what an uninterrupted one does.
        # Persistent workers would carry their generators over from earlier epochs.
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.options.loader.num_workers,
            pin_memory=self.options.loader.pin_memory,
            persistent_workers=self.options.loader.num_workers > 0 and not train,
            **kwargs,
        )

    def train_dataloader(self):
        train_set = self._split_set("train")
        if self.mlo is not None:
            return level_loaders(self.mlo, train_set, self.level_indices, self.batch_size, self.shuffle_seed,
                                 self._loader)
        drop_last = len(train_set) > self.batch_size  # no size-1 batch for BatchNorm
        sampling = self.options.sampling
        if sampling.sampler == "none":
            return self._loader(train_set, self.batch_size, shuffle=True, drop_last=drop_last)
        sampler = ClassBalancedSampler(
            self.train_labels.reshape(-1), sampling.sampler, sampling.epoch_length, seed=self.shuffle_seed
        )
        return self._loader(train_set, self.batch_size, sampler=sampler, drop_last=drop_last)

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = self._split_set(split)
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        sampler = UnpaddedDistributedSampler(dataset) if distributed else None
        return self._loader(dataset, self.eval_batch_size, train=False, shuffle=False, sampler=sampler)

    def val_dataloader(self) -> DataLoader | list:
        """The validation loader; none (``[]``: Lightning skips validation) without a validation set."""
        return self._eval_loader("val") if len(self._split_set("val")) else []

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """On the on-device path: every ``IndexBatch`` (one, or one per MLO-MAE level) becomes
        ``(images, labels)``, gathered and augmented on the batch's device."""
        if self.device_images is None:
            return batch
        return apply_to_collection(batch, IndexBatch, self.device_images.materialize)
