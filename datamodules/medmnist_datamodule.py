"""LightningDataModule for every 2D MedMNIST flag at 28/64/128/224 px."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.data_identity import synthetic_class_names
from datamodules.base_datamodule import ClassificationDataModule
from datamodules.data_source import npz_identity, synthetic_marker
from datamodules.medmnist_files import (
    MedMNISTArrays,
    check_size,
    ensure_file,
    file_name,
    load_arrays,
    medmnist_info,
    resolve_root,
)
from datamodules.options import DataOptions, require
from datamodules.splits import stratified_split
from datamodules.synthetic import generator_settings, write_synthetic_medmnist

SPLIT_MODES = ("official", "stratified")
OWN_KEYS = ("flag", "size", "root", "download", "as_rgb", "split", "val_fraction", "synthetic", "num_classes",
            "in_chans", "task")


class MedMNISTDataModule(ClassificationDataModule):
    """MedMNIST ``.npz`` data with stratified splits, label fractions and oversampling.

    Args:
        flag: MedMNIST 2D flag, e.g. ``dermamnist``.
        size: source image size in px (28, 64, 128 or 224).
        root: folder holding the ``.npz`` files (else ``$MEDMNIST_ROOT``, else ``~/.medmnist``).
        download: download a missing file from the URL in ``medmnist.INFO``.
        as_rgb: repeat grayscale images to 3 channels.
        split: ``official`` or ``stratified`` (re-split of train+val with ``val_fraction``).
        synthetic: if set, write a fake file of these ``make_synthetic_arrays`` kwargs at the
            expected path when it is absent (tests and offline demos). The data are synthetic
            (not real) when this is set or when the file carries the generator's marker
            (``generator``): the class names are then marked as synthetic and
            ``source_identity`` says "not real data".
        num_classes, in_chans, task: optional cross-checks of values the configs interpolate.
        **options: the keys every labelled datamodule takes, in their typed groups
            (``options.DataOptions``): ``img_size`` (default ``size``: images are resized when
            it differs), ``normalization`` (default ``half``), ``augment``, ``batch_size``
            (default 128), ``eval_batch_size``, ``num_workers``, ``pin_memory``, ``on_device``,
            ``sampler``, ``epoch_length``, ``shuffle_seed``, ``split_seed``, ``label_fraction``,
            ``synthetic_train``, ``synthetic_max_ratio`` and ``mlo`` (MLO-MAE's level data,
            ``mlo_levels.MLOLevelOptions``).
    """

    def __init__(
        self,
        flag: str = "dermamnist",
        size: int = 28,
        root: str | None = None,
        download: bool = True,
        as_rgb: bool = False,
        split: str = "official",
        val_fraction: float = 0.1,
        synthetic: dict | None = None,
        num_classes: int | None = None,
        in_chans: int | None = None,
        task: str | None = None,
        **options,
    ) -> None:
        options = {"img_size": size, "normalization": "half", "batch_size": 128, **options}
        options["img_size"] = options["img_size"] or size
        super().__init__(DataOptions.from_keys(options, "MedMNISTDataModule", OWN_KEYS))
        self.info = medmnist_info(flag)
        check_size(size)
        require(split in SPLIT_MODES, "split", split, str(list(SPLIT_MODES)))
        require(0 < val_fraction < 1, "val_fraction", val_fraction, "(0, 1)")
        self.task = self.info["task"]
        self.flag, self.size, self.root, self.download = flag, size, root, download
        self.as_rgb = as_rgb
        self.split, self.val_fraction = split, val_fraction
        self.synthetic = dict(synthetic) if synthetic else None
        self._generator: tuple[dict | None] | None = None  # (settings or None,) once the file exists
        self._source: dict | None = None
        self.check_task()
        self.check_declared(flag, num_classes=num_classes, in_chans=in_chans, task=task)

    # ----- metadata ---------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.info["label"])

    @property
    def in_chans(self) -> int:
        return 3 if self.as_rgb else int(self.info["n_channels"])

    @property
    def class_names(self) -> list[str]:
        """MedMNIST's label names, or for synthetic data ``synthetic class i (like '<name>')``."""
        names = [self.info["label"][str(i)] for i in range(self.num_classes)]
        return synthetic_class_names(names) if self.generator is not None else names

    @property
    def generator(self) -> dict | None:
        """The synthetic generator's settings when the data are synthetic (the file's marker, else
        ``data.synthetic``, the config that writes the file); None for real data."""
        if self._generator is not None:
            return self._generator[0]
        exists = self.path.is_file()
        settings = synthetic_marker(self.path) if exists else None
        if settings is None and self.synthetic is not None:
            settings = generator_settings(size=self.size, **self.synthetic)
        if exists:  # the file decides from now on
            self._generator = (settings,)
        return settings

    def source_identity(self) -> dict:
        """The file this datamodule reads (``core.data_identity``: flag, size, path, sha256; the
        generator's settings and "not real data" for synthetic data). Needs the file."""
        if self._source is None:
            self._source = npz_identity(self.flag, self.size, self.path, self.generator)
        return self._source

    def sample_source(self) -> str:
        return f"MedMNIST {self.flag}"

    @property
    def path(self) -> Path:
        return resolve_root(self.root) / file_name(self.flag, self.size)

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
        keep = self.label_fraction_indices(self._labels(arrays, train[0])[train[1]])
        return {"train": (train[0], train[1][keep]), "val": val}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        arrays = self.load()
        idx = self.split_indices(arrays)
        images = {name: self._images(arrays, src)[i] for name, (src, i) in idx.items()}
        labels = {name: self._labels(arrays, src)[i] for name, (src, i) in idx.items()}
        images["test"], labels["test"] = arrays.images["test"], arrays.labels["test"]
        self.build_sets(images, labels, self.size, self.as_rgb)

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
