"""LightningDataModule for every 2D MedMNIST flag at 28/64/128/224 px."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Subset

from datamodules.medmnist_files import (
    MULTI_LABEL,
    MedMNISTArrays,
    check_size,
    ensure_file,
    file_name,
    load_arrays,
    medmnist_info,
    resolve_root,
)
from datamodules.samplers import (
    EPOCH_LENGTHS,
    SAMPLER_MODES,
    ClassBalancedSampler,
    CyclingShuffleSampler,
    UnpaddedDistributedSampler,
)
from datamodules.splits import label_fraction_subset, stratified_split
from datamodules.synthetic import write_synthetic_medmnist
from datamodules.transforms import (
    NORMALIZATIONS,
    ArrayDataset,
    AugmentConfig,
    build_transform,
    normalization_stats,
)

SPLIT_MODES = ("official", "stratified")


def class_weights_from_labels(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """``n / (K * n_c)`` per class (sklearn's "balanced"), shape (K,). Absent classes get 0."""
    counts = np.bincount(np.asarray(labels).reshape(-1), minlength=num_classes).astype(float)
    weights = np.zeros(num_classes)
    present = counts > 0
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(weights, dtype=torch.float32)


def _require(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ValueError(f"data.{key}={value!r} is invalid; allowed: {allowed}")


class MedMNISTDataModule(L.LightningDataModule):
    """MedMNIST ``.npz`` data with stratified splits, label fractions and oversampling.

    Args:
        flag: MedMNIST 2D flag, e.g. ``dermamnist``.
        size: source image size in px (28, 64, 128 or 224).
        root: folder holding the ``.npz`` files (else ``$MEDMNIST_ROOT``, else ``~/.medmnist``).
        download: download a missing file from the URL in ``medmnist.INFO``.
        img_size: model input size in px; images are resized when it differs from ``size``.
        as_rgb: repeat grayscale images to 3 channels.
        normalization: ``imagenet``, ``half`` ([-1, 1]), ``dataset`` (train mean/std) or ``none``.
        augment: train-only augmentation (see ``AugmentConfig``).
        split: ``official`` or ``stratified`` (re-split of train+val with ``val_fraction``).
        label_fraction: stratified, seeded fraction of the training set to keep, in (0, 1].
        sampler: ``none``, ``oversample`` (inverse class frequency) or ``sqrt``.
        epoch_length: ``original`` or ``balanced`` (classes x majority count), with a sampler.
        split_seed: seed of every split we make; defaults to the run's seed in the configs.
        mlo: MLO-MAE level data, ``{level3_fraction: 0.2, cadence: [2, 1, 1]}``: the training
            loader then yields ``{"level1": ..., "level2": ..., "level3": ...}`` per step, with
            level I on the whole training set and levels II / III on a stratified, seeded
            split of it; batch sizes are ``batch_size`` times the cadence (one cycle a step).
        synthetic: if set, write a synthetic file of these ``make_synthetic_arrays`` kwargs
            at the expected path when it is absent (tests and offline demos).
        num_classes, in_chans, task: optional cross-checks of values the configs interpolate.
    """

    def __init__(
        self,
        flag: str = "dermamnist",
        size: int = 28,
        root: str | None = None,
        download: bool = True,
        img_size: int | None = None,
        as_rgb: bool = False,
        normalization: str = "half",
        augment: dict | None = None,
        split: str = "official",
        val_fraction: float = 0.1,
        label_fraction: float = 1.0,
        sampler: str = "none",
        epoch_length: str = "original",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        split_seed: int = 0,
        mlo: dict | None = None,
        synthetic: dict | None = None,
        num_classes: int | None = None,
        in_chans: int | None = None,
        task: str | None = None,
    ) -> None:
        super().__init__()
        self.info = medmnist_info(flag)
        check_size(size)
        _require(split in SPLIT_MODES, "split", split, str(list(SPLIT_MODES)))
        _require(0 < val_fraction < 1, "val_fraction", val_fraction, "(0, 1)")
        _require(0 < label_fraction <= 1, "label_fraction", label_fraction, "(0, 1]")
        _require(sampler in SAMPLER_MODES, "sampler", sampler, str(list(SAMPLER_MODES)))
        _require(epoch_length in EPOCH_LENGTHS, "epoch_length", epoch_length, str(list(EPOCH_LENGTHS)))
        _require(normalization in NORMALIZATIONS, "normalization", normalization, str(list(NORMALIZATIONS)))
        _require(batch_size > 0, "batch_size", batch_size, "an integer >= 1")
        _require(eval_batch_size is None or eval_batch_size > 0, "eval_batch_size", eval_batch_size, ">= 1")
        _require(num_workers >= 0, "num_workers", num_workers, "an integer >= 0")
        _require(img_size is None or img_size >= 8, "img_size", img_size, "an integer >= 8")
        self.task = self.info["task"]
        _require(
            sampler == "none" or self.task != MULTI_LABEL,
            "sampler", sampler, "'none' for multi-label tasks",
        )
        self.flag, self.size, self.root, self.download = flag, size, root, download
        self.img_size = img_size or size
        self.as_rgb = as_rgb
        self.normalization = normalization
        self.augment = AugmentConfig(**(augment or {}))
        self.split, self.val_fraction, self.label_fraction = split, val_fraction, label_fraction
        self.sampler, self.epoch_length = sampler, epoch_length
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.split_seed = split_seed
        self.synthetic = dict(synthetic) if synthetic else None
        self.mlo = dict(mlo) if mlo else None
        if self.mlo is not None:
            fraction = self.mlo.get("level3_fraction", 0.2)
            cadence = list(self.mlo.get("cadence", [2, 1, 1]))
            _require(0 < fraction < 1, "mlo.level3_fraction", fraction, "(0, 1)")
            _require(len(cadence) == 3 and all(int(c) == c and c >= 1 for c in cadence),
                     "mlo.cadence", cadence, "three integers >= 1 (level I : II : III)")
            _require(self.task != MULTI_LABEL, "mlo", self.mlo, "single-label tasks only")
            self.mlo = {"level3_fraction": fraction, "cadence": [int(c) for c in cadence]}
        self.level_indices: dict[str, np.ndarray] = {}
        for key, given, actual in (
            ("num_classes", num_classes, self.num_classes),
            ("in_chans", in_chans, self.in_chans),
            ("task", task, self.task),
        ):
            if given is not None and given != actual:
                raise ValueError(f"data.{key}={given!r} disagrees with {flag} ({actual!r}); remove the override")
        self.train_set = self.val_set = self.test_set = None
        self.train_labels: np.ndarray | None = None

    # ----- metadata ---------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.info["label"])

    @property
    def in_chans(self) -> int:
        return 3 if self.as_rgb else int(self.info["n_channels"])

    @property
    def class_names(self) -> list[str]:
        return [self.info["label"][str(i)] for i in range(self.num_classes)]

    @property
    def path(self) -> Path:
        return resolve_root(self.root) / file_name(self.flag, self.size)

    @property
    def class_weights(self) -> torch.Tensor:
        """Balanced class weights (K,) of the (possibly subsampled) training labels."""
        if self.train_labels is None:
            raise RuntimeError("class_weights is available after setup('fit')")
        if self.task == MULTI_LABEL:  # positive weight per label: negatives / positives
            pos = self.train_labels.sum(axis=0).clip(min=1)
            return torch.tensor((len(self.train_labels) - pos) / pos, dtype=torch.float32)
        return class_weights_from_labels(self.train_labels, self.num_classes)

    # ----- Lightning hooks --------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.synthetic is not None:
            if not self.path.is_file():
                write_synthetic_medmnist(self.path, size=self.size, **self.synthetic)
            return
        ensure_file(self.flag, self.size, self.root, self.download)

    def load(self) -> MedMNISTArrays:
        return load_arrays(self.path, self.num_classes, self.task, size=self.size)

    def split_indices(self, arrays: MedMNISTArrays) -> dict[str, tuple[str, np.ndarray]]:
        """For train and val: (source split, indices into it); deterministic from split_seed."""
        n_train = len(arrays.labels["train"])
        if self.split == "official":
            train = ("train", np.arange(n_train))
            val = ("val", np.arange(len(arrays.labels["val"])))
        else:  # re-split train+val; indices refer to the concatenation "trainval"
            pooled = np.concatenate([arrays.labels["train"], arrays.labels["val"]])
            rest, part = stratified_split(pooled, self.val_fraction, self.split_seed, "data.val_fraction")
            train, val = ("trainval", rest), ("trainval", part)
        labels = self._labels(arrays, train[0])[train[1]]
        keep = label_fraction_subset(labels, self.label_fraction, self.split_seed + 1)
        return {"train": (train[0], train[1][keep]), "val": val}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        arrays = self.load()
        idx = self.split_indices(arrays)
        (tr_src, tr_idx), (va_src, va_idx) = idx["train"], idx["val"]
        train_images = self._images(arrays, tr_src)[tr_idx]
        self.train_labels = self._labels(arrays, tr_src)[tr_idx]
        stats = normalization_stats(self.normalization, self.in_chans, train_images)
        train_tf = build_transform(self.img_size, self.size, stats, self.augment)
        eval_tf = build_transform(self.img_size, self.size, stats, None)
        multi = self.task == MULTI_LABEL
        self.train_set = ArrayDataset(train_images, self.train_labels, train_tf, self.as_rgb, multi)
        self.val_set = ArrayDataset(
            self._images(arrays, va_src)[va_idx], self._labels(arrays, va_src)[va_idx], eval_tf, self.as_rgb, multi
        )
        self.test_set = ArrayDataset(
            arrays.images["test"], arrays.labels["test"], eval_tf, self.as_rgb, multi
        )
        if self.mlo is not None:
            level2, level3 = stratified_split(
                self.train_labels, self.mlo["level3_fraction"], self.split_seed + 2, "data.mlo.level3_fraction"
            )
            self.level_indices = {"level2": level2, "level3": level3}

    @staticmethod
    def _images(arrays: MedMNISTArrays, source: str) -> np.ndarray:
        if source == "trainval":
            return np.concatenate([arrays.images["train"], arrays.images["val"]])
        return arrays.images[source]

    @staticmethod
    def _labels(arrays: MedMNISTArrays, source: str) -> np.ndarray:
        if source == "trainval":
            return np.concatenate([arrays.labels["train"], arrays.labels["val"]])
        return arrays.labels[source]

    # ----- loaders ----------------------------------------------------------------------
    def _loader(self, dataset, batch_size: int, **kwargs) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            **kwargs,
        )

    def train_dataloader(self):
        if self.mlo is not None:
            return self._mlo_loaders()
        drop_last = len(self.train_set) > self.batch_size  # no size-1 batch for BatchNorm
        if self.sampler == "none":
            return self._loader(self.train_set, self.batch_size, shuffle=True, drop_last=drop_last)
        sampler = ClassBalancedSampler(
            self.train_labels.reshape(-1), self.sampler, self.epoch_length, seed=self.split_seed
        )
        return self._loader(self.train_set, self.batch_size, sampler=sampler, drop_last=drop_last)

    def _mlo_loaders(self) -> CombinedLoader:
        """One MLO-MAE cycle per step. The shorter level loaders restart within an epoch; each
        pass gets a new order from (seed, epoch, pass), sharded per rank under DDP."""
        n1, n2, n3 = self.mlo["cadence"]
        sets = {
            "level1": (self.train_set, n1),
            "level2": (Subset(self.train_set, self.level_indices["level2"]), n2),
            "level3": (Subset(self.train_set, self.level_indices["level3"]), n3),
        }
        loaders = {
            name: self._loader(ds, self.batch_size * n, sampler=CyclingShuffleSampler(ds, seed=self.split_seed + i),
                               drop_last=len(ds) > self.batch_size * n)
            for i, (name, (ds, n)) in enumerate(sets.items())
        }
        return CombinedLoader(loaders, mode="max_size_cycle")

    def _eval_loader(self, dataset) -> DataLoader:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        sampler = UnpaddedDistributedSampler(dataset) if distributed else None
        return self._loader(dataset, self.eval_batch_size, shuffle=False, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)
