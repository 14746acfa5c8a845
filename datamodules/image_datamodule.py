"""LightningDataModules for your own images: a folder of class folders or a CSV / TSV table.

Both decode every image once into a uint8 cache (see ``image_cache``), split the rows
(predefined, or seeded, stratified and grouped; see ``splits.assign_splits``), apply the
row filters, write ``splits.csv`` for audit, and then behave exactly like the MedMNIST
datamodule (label fractions, samplers, class weights, augmentation, MLO-MAE levels).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from lightning.pytorch.utilities import rank_zero_only

from core.io import atomic_path
from core.tasks import BINARY, MULTI_CLASS, MULTI_LABEL
from datamodules.base_datamodule import ClassificationDataModule, require
from datamodules.data_source import records_identity
from datamodules.dicom_frames import DICOM_FRAMES, expand_frames, frame_counts
from datamodules.image_cache import RESIZE_MODES, cached_images, dataset_depth, file_stats
from datamodules.image_records import (
    ImageRecords,
    folder_records,
    table_records,
)
from datamodules.image_rows import FileImages, Rows
from datamodules.intensity import IntensityConfig
from datamodules.medmnist_files import SPLITS, DatasetError
from datamodules.splits import assign_splits, combined_strata

DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
DECODE_MODES = ("cache", "lazy")


def check_fractions(fractions: dict | None) -> dict[str, float]:
    """``{train, val, test}`` fractions, each in [0, 1], train > 0, summing to 1. ``val: 0``
    (with no predefined validation rows) is the "no validation set" protocol: no model
    selection, the last epoch is tested (``experiment=resnet18_mhist_noval``)."""
    fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    require(set(fractions) == set(SPLITS), "fractions", fractions, "keys train, val and test")
    ok = all(0 <= float(v) <= 1 for v in fractions.values()) and fractions["train"] > 0
    require(ok and abs(sum(map(float, fractions.values())) - 1) < 1e-6, "fractions", fractions,
            "values in [0, 1] with train > 0, summing to 1 (e.g. {train: 0.7, val: 0.1, test: 0.2})")
    return {k: float(v) for k, v in fractions.items()}


def task_of(num_classes: int) -> str:
    """The medmnist task string of a single-label dataset with ``num_classes`` classes."""
    return BINARY if num_classes == 2 else MULTI_CLASS


class ImageDataModule(ClassificationDataModule):
    """Base of ``ImageTableDataModule`` and ``ImageFolderDataModule``.

    Args:
        channels: 1 (grayscale) or 3 (RGB); every image is converted.
        intensity: how pixel values become 8 bits (``IntensityConfig``: mode auto, minmax,
            percentile, window or fixed); 12/16-bit files keep their grey levels under auto;
            ``windows`` (window mode): one channel per window, so ``channels`` must equal their count.
        dicom_frames: multi-frame DICOM files as ``all`` their frames (one item each, the file
            their group), or only the ``first`` / ``middle`` frame (``dicom_frames``).
        img_size: images become img_size x img_size px when decoded (bicubic; see ``resize``).
        resize: ``shorter_side_crop`` (shorter side to img_size, centre crop: timm's eval
            transform), ``pad`` (longer side to img_size, black borders) or ``stretch``.
        fractions: ``{train, val, test}`` used for the splits the data do not predefine.
        exclude: ``{column: [values]}``: rows with any listed value are dropped from the
            splits in ``exclude_from`` (after splitting, so the split itself is unchanged).
        decode: ``cache`` (every file decoded once, checked, into a memory-mapped file under
            ``cache_dir`` that the loaders read row by row) or ``lazy`` (each file decoded when
            its item is read, in the loader's worker processes; nothing is written, and
            ``augment.random_resized_crop`` crops the full-size training images).
        cache_dir: folder of the decoded-image cache; None decodes into memory on every setup.
        splits_file: where to write ``splits.csv`` (path, label, group, split, excluded per
            row, in table order); None writes nothing.
        Others as ``MedMNISTDataModule``.
    """

    def __init__(
        self,
        records: ImageRecords,
        stratify_columns: Sequence[str] = (),
        exclude: dict | None = None,
        exclude_from: Sequence[str] = ("train",),
        fractions: dict | None = None,
        channels: int = 3,
        intensity: dict | None = None,
        dicom_frames: str = "all",
        resize: str = "shorter_side_crop",
        img_size: int = 224,
        decode: str = "cache",
        cache_dir: str | None = None,
        splits_file: str | None = None,
        normalization: str = "imagenet",
        augment: dict | None = None,
        label_fraction: float = 1.0,
        sampler: str = "none",
        epoch_length: str = "original",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        split_seed: int = 0,
        mlo: dict | None = None,
        on_device: bool = False,
        synthetic_train: str | None = None,
        shuffle_seed: int | None = None,
        synthetic_max_ratio: float | None = None,
        declared: dict | None = None,
    ) -> None:
        super().__init__(img_size, normalization, augment, label_fraction, sampler, epoch_length,
                         batch_size, eval_batch_size, num_workers, pin_memory, split_seed, mlo, on_device, synthetic_train,
                         shuffle_seed, synthetic_max_ratio)
        require(channels in (1, 3), "channels", channels, "1 or 3")
        require(dicom_frames in DICOM_FRAMES, "dicom_frames", dicom_frames, str(list(DICOM_FRAMES)))
        records = expand_frames(records, frame_counts(records.root, records.paths), dicom_frames)
        require(set(exclude_from) <= set(SPLITS), "exclude_from", list(exclude_from), str(list(SPLITS)))
        named = [*stratify_columns, *(exclude or {})]
        unknown = [c for c in named if c not in records.columns]
        require(not unknown, "stratify_columns / data.exclude", unknown,
                f"columns of the table ({sorted(records.columns) or 'an image folder has none'})")
        self.records = records
        self.stratify_columns = list(stratify_columns)
        self.exclude = {str(k): {str(v) for v in vals} for k, vals in (exclude or {}).items()}
        self.exclude_from = list(exclude_from)
        self.fractions = check_fractions(fractions)
        self.channels = channels
        self.intensity = IntensityConfig(**(intensity or {}))
        windows = len(self.intensity.windows or ())
        require(not windows or windows == channels, "channels", channels,
                f"{windows}: data.intensity.windows lists {windows} window(s), one channel each")
        self.dicom_frames = dicom_frames
        require(resize in RESIZE_MODES, "resize", resize, str(list(RESIZE_MODES)))
        self.resize = resize
        require(decode in DECODE_MODES, "decode", decode, str(list(DECODE_MODES)))
        require(decode == "cache" or not self.on_device, "decode", decode,
                "'cache' with data.on_device=true (the device path holds every image); or set data.on_device=false")
        self.decode = decode
        require(not (decode == "lazy" and self.augment.random_resized_crop is not None and synthetic_train),
                "synthetic_train", synthetic_train, "null with data.decode=lazy and random_resized_crop (training "
                "images of different sizes cannot be joined with a synthetic set): use data.decode=cache")
        self.cache_dir, self.splits_file = cache_dir, splits_file
        self.task = MULTI_LABEL if records.multi_label else task_of(self.num_classes)
        self.check_task()
        self.check_declared(records.source, **{k: v for k, v in (declared or {}).items()})
        self.images: np.ndarray | None = None
        self.from_cache: bool | None = None
        self.split_of: np.ndarray | None = None  # (N,) final split per row, "" when excluded
        self._plan: tuple[np.ndarray, np.ndarray] | None = None
        self._depth: tuple[int | None] | None = None
        self.source_location = ("folder", records.root)  # (kind, path) of source_identity; tables set theirs
        self._source: dict | None = None

    # ----- metadata ---------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.records.classes)

    @property
    def in_chans(self) -> int:
        return self.channels

    @property
    def class_names(self) -> list[str]:
        return list(self.records.classes)

    def sample_source(self) -> str:
        return str(self.records.root.resolve())

    def source_identity(self) -> dict:
        """The table (or folder), its row count and the fingerprint of its listing
        (``core.data_identity``; computed once: a stat of every image file)."""
        if self._source is None:
            self._source = records_identity(*self.source_location, self.records)
        return self._source

    def sample_ids(self, split: str) -> list[str] | None:
        """Image paths (relative to the image root) of ``split``, in table order."""
        if self.split_of is None:
            return None
        return [self.records.paths[i] for i in np.flatnonzero(self.split_of == split)]

    # ----- splits -----------------------------------------------------------------------
    def plan(self) -> tuple[np.ndarray, np.ndarray]:
        """(assigned split, excluded flag) per row; checked before anything is decoded or written."""
        if self._plan is not None:
            return self._plan
        rec = self.records
        if rec.multi_label:  # iterative stratification on the labels and the one-hot extra columns
            extra = [(rec.columns[c][:, None] == np.unique(rec.columns[c])[None, :]) for c in self.stratify_columns]
            strata = np.hstack([rec.labels, *extra]).astype(np.int64)
        else:
            strata = combined_strata(rec.labels, *(rec.columns[c] for c in self.stratify_columns))
        try:
            assigned = assign_splits(strata, self.fractions, self.split_seed, rec.groups, rec.splits)
        except ValueError as err:
            raise DatasetError(f"{rec.source}: {err}") from err
        excluded = np.zeros(len(rec), dtype=bool)
        for column, values in self.exclude.items():
            present = rec.columns[column].astype(str)
            unmatched = sorted(values - set(present.tolist()))
            if unmatched:  # e.g. 3.0 against a column of 3: the filter would silently drop nothing
                found = sorted(set(present.tolist()))
                raise DatasetError(f"{rec.source}: data.exclude.{column} lists {unmatched}, which no row has; "
                                   f"column {column!r} holds {found[:20]}{' ...' if len(found) > 20 else ''}")
            excluded |= np.isin(present, list(values))
        dropped = excluded & np.isin(assigned, self.exclude_from)
        for split in SPLITS:
            if split == "val" and self.fractions["val"] == 0 and not (assigned == "val").any():
                continue  # no validation set, on purpose
            if not ((assigned == split) & ~dropped).any():
                raise DatasetError(
                    f"{rec.source}: the {split} split is empty (data.fractions.{split}="
                    f"{self.fractions[split]}, no {split} rows predefined, or all of them excluded); give it "
                    "a fraction > 0, predefine it, or exclude fewer rows"
                )
        train = rec.labels[(assigned == "train") & ~dropped]
        present = train.any(0) if rec.multi_label else np.isin(np.arange(len(rec.classes)), train)
        absent = [c for c, ok in zip(rec.classes, present) if not ok]
        if absent:
            raise DatasetError(f"{rec.source}: class(es) {absent} have no training image after splitting and "
                               "data.exclude; every class needs training images")
        self._plan = (assigned, dropped)
        return self._plan

    # ----- Lightning hooks --------------------------------------------------------------
    def prepare_data(self) -> None:
        self.plan()
        if self.decode == "cache":
            self._load_images()
        else:
            rec = self.records
            file_stats(rec.root, rec.paths, rec.rows, rec.source)  # every file exists

    def _load_images(self) -> None:
        if self.images is None:
            rec = self.records
            self.images, self.from_cache = cached_images(
                rec.root, rec.paths, rec.rows, rec.source, self.img_size, self.channels, self.cache_dir,
                self.intensity, self.resize,
            )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        assigned, dropped = self.plan()
        split_of = np.where(dropped, "", assigned)
        train_rows = np.flatnonzero(split_of == "train")
        keep = self.label_fraction_indices(self.records.labels[train_rows])
        split_of[np.setdiff1d(train_rows, train_rows[keep])] = ""  # left out by label_fraction
        self.split_of = split_of
        rows = {s: np.flatnonzero(split_of == s) for s in SPLITS}
        self.build_sets({s: self._split_images(s, i) for s, i in rows.items()},
                        {s: self.records.labels[i] for s, i in rows.items()}, self.img_size)
        if self.decode == "lazy" and self.augment.random_resized_crop is not None:  # identity: the square images
            self._real_train = (self._files(rows["train"], self.img_size), self.records.labels[rows["train"]])
        if self.splits_file and rank_zero_only.rank == 0:
            reason = np.where(dropped, "exclude", np.where(split_of == "", "label_fraction", ""))
            self.write_splits(Path(self.splits_file), assigned, reason)

    def _split_images(self, split: str, rows: np.ndarray) -> Rows | FileImages:
        """The images of ``split`` (table rows ``rows``), read per item: rows of the decoded
        cache, or files decoded when read (full size for a random-resized-crop training split)."""
        if self.decode == "cache":
            self._load_images()
            return Rows(self.images, rows)
        full = split == "train" and self.augment.random_resized_crop is not None
        return self._files(rows, None if full else self.img_size)

    def _files(self, rows: np.ndarray, size: int | None) -> FileImages:
        rec = self.records
        return FileImages(rec.root, [rec.paths[i] for i in rows], size, self.channels, self.intensity,
                          self.fallback_bits, self.resize)

    @property
    def fallback_bits(self) -> int | None:
        """The bit depth ``intensity.mode=auto`` gives the deep files that declare none (the
        same for every file: ``image_cache.dataset_depth``); None for 8-bit data. One scan of
        the files' headers, kept: lazy decoding and the export's preprocessing record need it."""
        if self._depth is None:
            rec = self.records
            self._depth = (dataset_depth(rec.root, rec.paths, self.intensity),)
        return self._depth[0]

    def write_splits(self, path: Path, assigned: np.ndarray, excluded: np.ndarray) -> None:
        """``splits.csv``, one row per table row in table order: path, label, group, split and
        ``excluded`` (empty, ``exclude`` for data.exclude or ``label_fraction``); atomic."""
        rec = self.records
        groups = rec.groups if rec.groups is not None else [""] * len(rec)
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "group", "split", "excluded"])
            writer.writerows([rec.paths[i], rec.label_text(i), groups[i], assigned[i], excluded[i]]
                             for i in range(len(rec)))


class ImageTableDataModule(ImageDataModule):
    """Images listed in a CSV / TSV table (one row per image).

    Args:
        table: the CSV (``,``) or TSV (``.tsv``: tab) file.
        image_root: folder the path column is relative to; None = the table's folder.
        path_column, label_column: column names; labels are strings or integers.
        path_template: instead of ``path_column`` (set it to None), each row's path from its
            columns, e.g. ``"{image_id}.jpg"`` (HAM10000) or ``"{patient}/{study}/{image_id}.png"``.
        label_columns: instead of ``label_column`` (set it to None), one-hot columns, one per
            class, exactly one 1 per row (ISIC's ground-truth tables); they give the classes.
        multi_label: several labels per image (sigmoid + BCE, per-label metrics): from 0 / 1
            ``label_columns`` (any number of 1s) or ``label_column`` cells split by
            ``label_separator``; splits by iterative stratification.
        classes: class names in index order; None = sorted labels of the table.
        split_column: optional column of train / val / test; missing splits are carved
            out of its train rows with ``fractions``.
        group_column: optional patient / lesion id: no group ever crosses splits.
        stratify_columns: extra columns the split is stratified on (with the label).
        num_classes, in_chans, task: optional cross-checks of values the configs interpolate.
        Others as ``ImageDataModule``.
    """

    def __init__(
        self,
        table: str,
        image_root: str | None = None,
        path_column: str | None = "path",
        label_column: str | None = "label",
        classes: Sequence | None = None,
        split_column: str | None = None,
        group_column: str | None = None,
        stratify_columns: Sequence[str] = (),
        exclude: dict | None = None,
        num_classes: int | None = None,
        in_chans: int | None = None,
        task: str | None = None,
        path_template: str | None = None,
        label_columns: Sequence[str] | None = None,
        multi_label: bool = False,
        label_separator: str | None = None,
        **kwargs,
    ) -> None:
        extra = list(dict.fromkeys([*stratify_columns, *(exclude or {})]))
        records = table_records(table, image_root, path_column, label_column, classes, split_column,
                                group_column, extra, path_template, label_columns, multi_label, label_separator)
        super().__init__(records, stratify_columns, exclude, **kwargs,
                         declared={"num_classes": num_classes, "in_chans": in_chans, "task": task})
        self.source_location = ("table", table)


class ImageFolderDataModule(ImageDataModule):
    """``root/<class>/<image>`` (ImageNet layout) or ``root/{train,val,test}/<class>/<image>``.

    Splits missing from the folder are carved out of train with ``fractions``.
    Args as ``ImageDataModule`` plus the config cross-checks of ``ImageTableDataModule``.
    """

    def __init__(
        self,
        root: str,
        num_classes: int | None = None,
        in_chans: int | None = None,
        task: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(folder_records(root), **kwargs,
                         declared={"num_classes": num_classes, "in_chans": in_chans, "task": task})
