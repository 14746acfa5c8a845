"""LightningDataModules for your own images: a folder of class folders or a CSV / TSV table.

Both decode every image once into a uint8 cache (see ``image_cache``), split the rows
(predefined, or seeded, stratified and grouped; see ``splits.assign_splits``), apply the
row filters, write ``splits.csv`` for audit, and then behave exactly like the MedMNIST
datamodule (label fractions, samplers, class weights, augmentation, MLO-MAE levels).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from lightning.pytorch.utilities import rank_zero_only

from core.io import atomic_path
from core.options import field_names, take
from core.tasks import BINARY, MULTI_CLASS, MULTI_LABEL
from datamodules.base_datamodule import ClassificationDataModule
from datamodules.data_source import records_identity
from datamodules.dicom_frames import expand_frames, frame_counts
from datamodules.image_cache import cached_images, dataset_depth, file_stats
from datamodules.image_options import DecodeOptions, RowOptions
from datamodules.image_records import ImageRecords, TableColumns, folder_records, table_records
from datamodules.image_rows import FileImages, Rows
from datamodules.intensity import IntensityConfig
from datamodules.medmnist_files import SPLITS, DatasetError
from datamodules.options import DataOptions, require
from datamodules.splits import assign_splits, combined_strata


def task_of(num_classes: int) -> str:
    """The medmnist task string of a single-label dataset with ``num_classes`` classes."""
    return BINARY if num_classes == 2 else MULTI_CLASS


class ImageDataModule(ClassificationDataModule):
    """Base of ``ImageTableDataModule`` and ``ImageFolderDataModule``.

    Args:
        records: the images, their labels and optional predefined splits / groups / columns.
        declared: the config's ``num_classes`` / ``in_chans`` / ``task``, cross-checked.
        **options: flat config keys, in typed groups: ``image_options.DecodeOptions``
            (``channels``, ``intensity``, ``dicom_frames``, ``resize``, ``decode``, ``cache_dir``),
            ``image_options.RowOptions`` (``fractions``, ``stratify_columns``, ``exclude``,
            ``exclude_from``, ``splits_file``) and the shared ``options.DataOptions``
            (``img_size``, default 224: images become img_size x img_size when decoded;
            ``normalization``, default ``imagenet``; ``batch_size``, default 32; ...).
            With ``decode=lazy``, ``augment.random_resized_crop`` crops the full-size files.
    """

    DEFAULTS = {"img_size": 224, "normalization": "imagenet", "batch_size": 32}
    OWN_KEYS: tuple[str, ...] = ()  # the subclass's own config keys, listed in unknown-key errors

    def __init__(self, records: ImageRecords, declared: dict | None = None, **options) -> None:
        decode, options = take(DecodeOptions, options)
        rows, options = take(RowOptions, options)
        own = (*field_names(DecodeOptions, RowOptions), *self.OWN_KEYS)
        super().__init__(DataOptions.from_keys({**self.DEFAULTS, **options}, type(self).__name__, own))
        self.decoding, self.rows = decode, rows
        records = expand_frames(records, frame_counts(records.root, records.paths), decode.dicom_frames)
        unknown = [c for c in rows.named_columns if c not in records.columns]
        require(not unknown, "stratify_columns / data.exclude", unknown,
                f"columns of the table ({sorted(records.columns) or 'an image folder has none'})")
        self.records = records
        require(decode.decode == "cache" or not self.on_device, "decode", decode.decode,
                "'cache' with data.on_device=true (the device path holds every image); or set data.on_device=false")
        require(not (decode.decode == "lazy" and self.augment.random_resized_crop is not None and self.synthetic_train),
                "synthetic_train", self.synthetic_train, "null with data.decode=lazy and random_resized_crop (training "
                "images of different sizes cannot be joined with a synthetic set): use data.decode=cache")
        self.task = MULTI_LABEL if records.multi_label else task_of(self.num_classes)
        self.check_task()
        self.check_declared(records.source, **(declared or {}))
        self.images: np.ndarray | None = None
        self.from_cache: bool | None = None
        self.split_of: np.ndarray | None = None  # (N,) final split per row, "" when excluded
        self._plan: tuple[np.ndarray, np.ndarray] | None = None
        self._depth: tuple[int | None] | None = None
        self.source_location = ("folder", records.root)  # (kind, path) of source_identity; tables set theirs
        self._source: dict | None = None

    @property
    def channels(self) -> int:
        return self.decoding.channels

    @property
    def intensity(self) -> IntensityConfig:
        return self.decoding.intensity

    @property
    def resize(self) -> str:
        return self.decoding.resize

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
            extra = [(rec.columns[c][:, None] == np.unique(rec.columns[c])[None, :]) for c in self.rows.stratify_columns]
            strata = np.hstack([rec.labels, *extra]).astype(np.int64)
        else:
            strata = combined_strata(rec.labels, *(rec.columns[c] for c in self.rows.stratify_columns))
        try:
            assigned = assign_splits(strata, self.rows.fractions, self.split_seed, rec.groups, rec.splits)
        except ValueError as err:
            raise DatasetError(f"{rec.source}: {err}") from err
        excluded = np.zeros(len(rec), dtype=bool)
        for column, values in self.rows.exclude.items():
            present = rec.columns[column].astype(str)
            unmatched = sorted(values - set(present.tolist()))
            if unmatched:  # e.g. 3.0 against a column of 3: the filter would silently drop nothing
                found = sorted(set(present.tolist()))
                raise DatasetError(f"{rec.source}: data.exclude.{column} lists {unmatched}, which no row has; "
                                   f"column {column!r} holds {found[:20]}{' ...' if len(found) > 20 else ''}")
            excluded |= np.isin(present, list(values))
        dropped = excluded & np.isin(assigned, self.rows.exclude_from)
        for split in SPLITS:
            if split == "val" and self.rows.fractions["val"] == 0 and not (assigned == "val").any():
                continue  # no validation set, on purpose
            if not ((assigned == split) & ~dropped).any():
                raise DatasetError(
                    f"{rec.source}: the {split} split is empty (data.fractions.{split}="
                    f"{self.rows.fractions[split]}, no {split} rows predefined, or all of them excluded); give it "
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
        if self.decoding.decode == "cache":
            self._load_images()
        else:
            rec = self.records
            file_stats(rec.root, rec.paths, rec.rows, rec.source)  # every file exists

    def _load_images(self) -> None:
        if self.images is None:
            rec = self.records
            self.images, self.from_cache = cached_images(
                rec.root, rec.paths, rec.rows, rec.source, self.img_size, self.channels, self.decoding.cache_dir,
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
        if self.decoding.decode == "lazy" and self.augment.random_resized_crop is not None:  # identity: the square images
            self._real_train = (self._files(rows["train"], self.img_size), self.records.labels[rows["train"]])
        if self.rows.splits_file and rank_zero_only.rank == 0:
            reason = np.where(dropped, "exclude", np.where(split_of == "", "label_fraction", ""))
            self.write_splits(Path(self.rows.splits_file), assigned, reason)

    def _split_images(self, split: str, rows: np.ndarray) -> Rows | FileImages:
        """The images of ``split`` (table rows ``rows``), read per item: rows of the decoded
        cache, or files decoded when read (full size for a random-resized-crop training split)."""
        if self.decoding.decode == "cache":
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
        num_classes, in_chans, task: optional cross-checks of values the configs interpolate.
        **options: the table's columns (``image_records.TableColumns``):
            ``image_root`` (the folder the paths are relative to; None: the table's folder);
            ``path_column``, or ``path_template`` (with ``path_column=None``: each row's path from
            its columns, e.g. ``"{image_id}.jpg"`` for HAM10000); ``label_column`` (strings or
            integers), or one-hot ``label_columns`` (with ``label_column=None``: one 0 / 1 column
            per class, ISIC's ground truth); ``classes`` (names in index order; None: the sorted
            labels); ``multi_label`` (several labels per image, from 0 / 1 ``label_columns`` or
            ``label_column`` cells split by ``label_separator``; iterative stratification);
            ``split_column`` (train / val / test per row; missing splits are carved out of its
            train rows with ``fractions``); ``group_column`` (patient / lesion id: no group ever
            crosses splits). The other keys as ``ImageDataModule``.
    """

    OWN_KEYS = ("table", "num_classes", "in_chans", "task", *field_names(TableColumns))

    def __init__(self, table: str, num_classes: int | None = None, in_chans: int | None = None,
                 task: str | None = None, **options) -> None:
        columns, options = take(TableColumns, options)
        rows, _ = take(RowOptions, options)  # the columns stratification and filters read
        records = table_records(table, columns, rows.named_columns)
        super().__init__(records, {"num_classes": num_classes, "in_chans": in_chans, "task": task}, **options)
        self.source_location = ("table", table)


class ImageFolderDataModule(ImageDataModule):
    """``root/<class>/<image>`` (ImageNet layout) or ``root/{train,val,test}/<class>/<image>``.

    Splits missing from the folder are carved out of train with ``fractions``.
    Args as ``ImageDataModule`` plus the config cross-checks of ``ImageTableDataModule``.
    """

    OWN_KEYS = ("root", "num_classes", "in_chans", "task")

    def __init__(self, root: str, num_classes: int | None = None, in_chans: int | None = None,
                 task: str | None = None, **options) -> None:
        super().__init__(folder_records(root), {"num_classes": num_classes, "in_chans": in_chans, "task": task},
                         **options)
