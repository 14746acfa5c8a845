"""Your own labelled images as records: an image table (CSV / TSV) or a folder of class folders.

A record set lists, in table order, each image's path (relative to the image root), its
class, and optionally its predefined split, group (patient / lesion id) and the extra
columns the split is stratified on or rows are filtered by. Each problem is one error
that names all the rows it affects (the first ten and the count) and the fix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from datamodules.medmnist_files import SPLITS, DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm")
MAX_LISTED = 10


@dataclass
class ImageRecords:
    """Rows of an image dataset, all arrays of length N in table order.

    ``rows`` are the names used in error messages (``line 12`` of a table, or the file path);
    ``columns`` holds the extra table columns named for stratification or filters (as str).
    """

    source: str
    root: Path
    paths: list[str]
    labels: np.ndarray  # (N,) int64 class index; multi-label: (N, K) int64 0 / 1
    classes: list[str]
    rows: list[str]
    splits: np.ndarray | None = None  # (N,) str, predefined split per row
    groups: np.ndarray | None = None  # (N,) str
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def multi_label(self) -> bool:
        return self.labels.ndim == 2

    def label_text(self, i: int) -> str:
        """Row ``i``'s label as written in splits.csv: the class, or the positive labels joined by ``|``."""
        if self.multi_label:
            return "|".join(c for c, on in zip(self.classes, self.labels[i]) if on)
        return self.classes[self.labels[i]]


def rows_error(source: str, problem: str, rows: Sequence[str], fix: str) -> DatasetError:
    """One message naming the first ten offending rows, the count and the fix."""
    listed = "\n".join(f"  {r}" for r in rows[:MAX_LISTED])
    more = f"\n  ... and {len(rows) - MAX_LISTED} more" if len(rows) > MAX_LISTED else ""
    return DatasetError(f"{source}: {len(rows)} row(s) {problem}:\n{listed}{more}\nFix: {fix}")


def sort_classes(values: Sequence[str]) -> list[str]:
    """Sorted unique class names; numerically when every name is an integer (2 before 10)."""
    unique = sorted(set(values))
    if unique and all(v.lstrip("-").isdigit() for v in unique):
        return sorted(unique, key=int)
    return unique


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A CSV (``,``) or TSV (``.tsv`` / ``.tab``: tab) table, every cell as a stripped string."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"data.table={str(path)!r} does not exist; point data.table at your CSV / TSV file")
    sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    try:
        table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise DatasetError(f"{path}: cannot be read as a {'TSV' if sep == chr(9) else 'CSV'} table ({err})") from err
    table.columns = [str(c).strip() for c in table.columns]
    return table.apply(lambda col: col.str.strip())


def table_classes(table: pd.DataFrame, label_column: str, classes: Sequence | None,
                  separator: str | None = None) -> list[str]:
    """The class list: ``classes`` when given (as str), else the sorted labels of the table
    (with ``separator``: the sorted names found in the multi-label cells)."""
    if classes:
        names = [str(c) for c in classes]
        if len(set(names)) != len(names):
            raise ValueError(f"data.classes={names} lists a class twice")
        return names
    cells = table[label_column].tolist()
    if separator:
        cells = [name.strip() for cell in cells for name in cell.split(separator) if name.strip()]
    return sort_classes(cells)


TEMPLATE_FIELD = re.compile(r"{([^{}:!]+)[^{}]*}")
ONE, ZERO = {"1", "1.0", "true", "True"}, {"0", "0.0", "false", "False", ""}


def template_paths(table: pd.DataFrame, template: str, source: str) -> list[str]:
    """``data.path_template`` filled from each row, e.g. ``"{image_id}.jpg"`` or
    ``"{patient}/{study}/{image_id}.png"``; every field must be a column of the table."""
    fields = TEMPLATE_FIELD.findall(template)
    if not fields:
        raise ValueError(f"data.path_template={template!r} names no column; write e.g. \"{{image_id}}.jpg\"")
    missing = [f for f in fields if f not in table.columns]
    if missing:
        raise ValueError(f"data.path_template={template!r} names {missing}, which are not columns of {source}; "
                         f"its columns are {list(table.columns)}")
    return [template.format(**row) for row in table[fields].to_dict("records")]


def hot_columns(table: pd.DataFrame, columns: Sequence[str], names: list[str], source: str) -> np.ndarray:
    """(N, K) bool of 0 / 1 columns; one error naming every row with another value."""
    values = table[list(columns)].astype(str)
    bad = [f"{n} ({', '.join(f'{c}={v!r}' for c, v in zip(columns, row) if v not in ONE | ZERO)})"
           for n, row in zip(names, values.itertuples(index=False)) if any(v not in ONE | ZERO for v in row)]
    if bad:
        raise rows_error(source, f"have a value other than 0 / 1 in data.label_columns {list(columns)}", bad,
                         "use 0 / 1 (one column per class)")
    return values.isin(ONE).to_numpy()


def one_hot_labels(table: pd.DataFrame, columns: Sequence[str], names: list[str], source: str) -> list[str]:
    """The label of each row of a one-hot table (ISIC's ground truth: one 0 / 1 column per
    class): the name of the one column holding 1. One error naming every row that has a value
    other than 0 / 1, or not exactly one 1."""
    hot = hot_columns(table, columns, names, source)
    wrong = [f"{n} ({int(k)} classes marked)" for n, k in zip(names, hot.sum(1)) if k != 1]
    if wrong:
        raise rows_error(source, f"mark not exactly one of data.label_columns {list(columns)} with 1", wrong,
                         "mark one class per row (several findings per image: data.multi_label=true)")
    return [columns[i] for i in hot.argmax(1)]


@dataclass(frozen=True)
class TableColumns:
    """How a table names its images and labels (``data=image_table``'s keys), checked when
    built: the options exclude each other as documented in ``ImageTableDataModule``.

    Paths come from ``path_column``, or from ``path_template`` filled from each row's columns;
    labels from ``label_column``, or from one-hot ``label_columns`` (their order is the class
    order unless ``classes`` says otherwise). ``multi_label``: any number of labels per row,
    from 0 / 1 ``label_columns`` or from ``label_column`` cells split by ``label_separator``.
    ``image_root``: the folder the paths are relative to (None: the table's folder).
    """

    image_root: str | None = None
    path_column: str | None = "path"
    path_template: str | None = None
    label_column: str | None = "label"
    label_columns: tuple[str, ...] | None = None
    classes: tuple[str, ...] | None = None
    multi_label: bool = False
    label_separator: str | None = None
    split_column: str | None = None
    group_column: str | None = None

    def __post_init__(self) -> None:
        if (self.path_template is None) == (self.path_column is None):
            raise ValueError("set exactly one of data.path_column and data.path_template (e.g. "
                             "data.path_column=null data.path_template=\"{image_id}.jpg\")")
        if (self.label_columns is None) == (self.label_column is None):
            raise ValueError("set exactly one of data.label_column and data.label_columns (one-hot: "
                             "data.label_column=null data.label_columns=[MEL,NV,...])")
        if self.label_separator and not self.multi_label:
            raise ValueError(f"data.label_separator={self.label_separator!r} splits multi-label cells: set "
                             "data.multi_label=true (or data.label_separator=null for one class per row)")
        if self.multi_label and self.label_columns is None and not self.label_separator:
            raise ValueError("data.multi_label=true needs data.label_columns (one 0 / 1 column per label) or "
                             "data.label_separator (e.g. '|' for cells like 'Atelectasis|Effusion')")
        for key in ("label_columns", "classes"):
            if (value := getattr(self, key)) is not None:
                object.__setattr__(self, key, tuple(str(c) for c in value))

    def named(self, extra_columns: Sequence[str]) -> dict[str, str]:
        """``{config key: column}`` of every column these options (and ``extra_columns``) read."""
        named = {"path_column": self.path_column, "label_column": self.label_column,
                 "split_column": self.split_column, "group_column": self.group_column}
        named.update({f"stratify_columns/exclude ({c})": c for c in extra_columns})
        named.update({f"label_columns ({c})": c for c in self.label_columns or ()})
        return {k: c for k, c in named.items() if c is not None}


@dataclass
class TableRows:
    """The cells of a table as parsed: one string per row (``paths`` filled from the template
    when there is one), the row names of error messages (``line 12: <path>``)."""

    source: str
    table: pd.DataFrame
    paths: list[str]
    names: list[str]


def read_rows(table_path: str | os.PathLike, columns: TableColumns, extra_columns: Sequence[str]) -> TableRows:
    """Parse the table: the columns the options name must exist, the paths are read or filled."""
    path = Path(table_path).expanduser()
    table, source = read_table(path), str(path)
    for key, column in columns.named(extra_columns).items():
        if column not in table.columns:
            raise ValueError(f"data.{key}={column!r} is not a column of {source}; its columns are {list(table.columns)}")
    if table.empty:
        raise DatasetError(f"{source} has a header but no rows")
    if columns.path_template is not None:
        paths = template_paths(table, columns.path_template, source)
    else:
        paths = table[columns.path_column].tolist()
    return TableRows(source, table, paths, [f"line {i + 2}: {p}" for i, p in enumerate(paths)])  # line 1: header


def row_problems(rows: TableRows, columns: TableColumns) -> list[DatasetError]:
    """Every problem of the rows that needs no labels parsed, each naming all its rows: empty
    path / label / group cells, an image listed twice, split values other than train / val / test."""
    problems = []
    cells = [(rows.paths, "path", columns.path_column or "path_template")]
    cells += [(rows.table[c].tolist(), what, c) for c, what in ((columns.label_column, "label"),
                                                                (columns.group_column, "group")) if c is not None]
    for values, what, column in cells:
        if blank := [n for n, v in zip(rows.names, values) if not v]:
            problems.append(rows_error(rows.source, f"have an empty {what} cell ({column!r})", blank,
                                       "fill in these cells or remove the rows"))
    seen: dict[str, str] = {}
    duplicates = []
    for name, path in zip(rows.names, rows.paths):
        if path in seen:
            duplicates.append(f"{name} (also {seen[path]})")
        seen.setdefault(path, name)
    if duplicates:
        problems.append(rows_error(rows.source, "list an image that an earlier row already lists (it could land in "
                                   "two splits)", duplicates, "keep one row per image"))
    if (column := columns.split_column) is not None:
        splits = rows.table[column].str.lower()
        if bad := [f"{n} ({column}={v!r})" for n, v in zip(rows.names, splits) if v not in SPLITS]:
            problems.append(rows_error(rows.source, f"have a {column!r} value other than {list(SPLITS)}", bad,
                                       f"use train / val / test in {column!r}, or set data.split_column=null"))
    return problems


def missing_files(rows: TableRows, root: Path) -> list[DatasetError]:
    """The rows whose image file does not exist under ``root`` (as one problem; empty paths are
    ``row_problems``' own)."""
    if missing := [n for n, p in zip(rows.names, rows.paths) if p and not (root / str(p)).is_file()]:
        return [rows_error(rows.source, f"name image files that do not exist under {root}", missing,
                           "fix the paths (relative to data.image_root) or remove these rows")]
    return []


def raise_problems(problems: Sequence[DatasetError]) -> None:
    """One DatasetError carrying every problem found (none: nothing happens)."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise DatasetError(f"{len(problems)} problems:\n\n" + "\n\n".join(str(p) for p in problems))


def table_labels(rows: TableRows, columns: TableColumns) -> tuple[np.ndarray, list[str]]:
    """(labels: (N,) int64 class index, or (N, K) int64 0 / 1 for multi-label, class names)."""
    table, source, names = rows.table, rows.source, rows.names
    if columns.multi_label:
        return multi_hot_labels(table, source, names, columns.label_column, columns.label_columns,
                                columns.label_separator, columns.classes)
    label_column, classes = columns.label_column, columns.classes
    if columns.label_columns is not None:
        label_column, classes = "__label__", classes or columns.label_columns
        table = table.assign(__label__=one_hot_labels(table, list(columns.label_columns), names, source))
    class_list = table_classes(table, label_column, classes)
    index = {c: i for i, c in enumerate(class_list)}
    raw = table[label_column].to_numpy()
    if unknown := [n for n, v in zip(names, raw) if v not in index]:
        raise rows_error(source, f"have a label outside data.classes={class_list}", unknown,
                         "fix the labels or list every class in data.classes")
    return np.array([index[v] for v in raw], dtype=np.int64), class_list


def table_records(table_path: str | os.PathLike, columns: TableColumns,
                  extra_columns: Sequence[str] = ()) -> ImageRecords:
    """Records of an image table (parse, then validate: every problem of the rows, missing image
    files and labels outside the classes are reported at once). ``extra_columns``: columns kept
    for stratification or filters."""
    rows = read_rows(table_path, columns, extra_columns)
    root = Path(columns.image_root).expanduser() if columns.image_root else Path(table_path).expanduser().parent
    problems = row_problems(rows, columns) + missing_files(rows, root)
    blank_labels = columns.label_column is not None and not all(rows.table[columns.label_column])
    try:
        labels, class_list = table_labels(rows, columns)
    except DatasetError as err:  # reported with the rows' other problems (an empty label cell is one already)
        if not blank_labels:
            problems.append(err)
        raise_problems(problems or [err])
    raise_problems(problems)
    _check_no_empty_class(rows.source, labels, class_list)
    table = rows.table
    records = ImageRecords(
        source=rows.source, root=root, paths=rows.paths, labels=labels, classes=class_list, rows=rows.names,
        splits=table[columns.split_column].str.lower().to_numpy() if columns.split_column is not None else None,
        groups=table[columns.group_column].to_numpy() if columns.group_column is not None else None,
        columns={c: table[c].to_numpy() for c in extra_columns},
    )
    check_groups_in_one_split(records)
    return records


def multi_hot_labels(table: pd.DataFrame, source: str, names: list[str], label_column: str | None,
                     label_columns: Sequence[str] | None, separator: str | None,
                     classes: Sequence | None) -> tuple[np.ndarray, list[str]]:
    """(labels (N, K) int64 0 / 1, label names) of a multi-label table: from 0 / 1 columns
    (``classes`` may reorder them) or from cells split by ``separator``."""
    if label_columns is not None:
        columns = [str(c) for c in label_columns]
        class_list = [str(c) for c in classes] if classes else columns
        if sorted(class_list) != sorted(columns):
            raise ValueError(f"data.classes={class_list} must list the data.label_columns {columns} (in any order)")
        hot = hot_columns(table, columns, names, source)
        return hot[:, [columns.index(c) for c in class_list]].astype(np.int64), class_list
    class_list = table_classes(table, label_column, classes, separator)
    index = {c: i for i, c in enumerate(class_list)}
    labels = np.zeros((len(table), len(class_list)), dtype=np.int64)
    unknown = []
    for row, (name, cell) in enumerate(zip(names, table[label_column])):
        for label in (part.strip() for part in cell.split(separator)):
            if label in index:
                labels[row, index[label]] = 1
            elif label:
                unknown.append(f"{name} ({label!r})")
    if unknown:
        raise rows_error(source, f"have a label outside data.classes={class_list}", unknown,
                         "fix the labels or list every label in data.classes")
    return labels, class_list


def _check_no_empty_class(source: str, labels: np.ndarray, classes: list[str]) -> None:
    counts = labels.sum(0) if labels.ndim == 2 else np.bincount(labels, minlength=len(classes))
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise DatasetError(f"{source}: class(es) {empty} have no images; remove them from data.classes or add images")
    if len(classes) < 2:
        raise DatasetError(f"{source}: only one class ({classes}); classification needs at least two")


def check_groups_in_one_split(records: ImageRecords) -> None:
    """A group listed in two predefined splits would leak between them: an error."""
    if records.groups is None or records.splits is None:
        return
    frame = pd.DataFrame({"group": records.groups, "split": records.splits})
    per_group = frame.groupby("group")["split"].nunique()
    crossing = set(per_group.index[per_group > 1])
    if crossing:
        rows = [f"{n} (group {g!r}, split {s})" for n, g, s in zip(records.rows, records.groups, records.splits)
                if g in crossing]
        raise rows_error(records.source, f"belong to {len(crossing)} group(s) that appear in more than one split",
                         rows, "put every image of a patient / lesion in one split (or drop data.split_column "
                         "and let the grouped split assign them)")


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def folder_layout(root: Path) -> tuple[list[str], dict[str, Path]]:
    """(classes, {split or "": folder of class folders}) of an image folder."""
    if not root.is_dir():
        raise DatasetError(f"data.root={str(root)!r} is not a folder; point it at a folder of class folders")
    predefined = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if predefined and "train" not in predefined:
        raise DatasetError(f"{root} has {sorted(predefined)} folders but no train/; add train/<class>/ folders")
    parts = predefined or {"": root}
    classes = [d.name for d in _class_dirs(parts.get("train", root))]
    if not classes:
        raise DatasetError(f"{parts.get('train', root)} has no class folders; expected <class>/<image> files")
    return sort_classes(classes), parts


def folder_records(root: str | os.PathLike) -> ImageRecords:
    """Records of ``root/<class>/*`` (ImageNet layout) or ``root/{train,val,test}/<class>/*``.

    Classes are the sorted class-folder names of ``train/`` (or of ``root``); images are
    PNG, JPEG, TIFF or BMP files anywhere below a class folder, in sorted path order.
    """
    root = Path(root).expanduser()
    classes, parts = folder_layout(root)
    index = {c: i for i, c in enumerate(classes)}
    paths, labels, splits, empty, unknown = [], [], [], [], []
    for split, folder in parts.items():
        for class_dir in _class_dirs(folder):
            files = _images_in(class_dir)
            if class_dir.name not in index:
                unknown += [str(f.relative_to(root)) for f in files] or [str(class_dir.relative_to(root))]
                continue
            if not files and split in ("", "train"):
                empty.append(class_dir.name)
            paths += [str(f.relative_to(root)) for f in files]
            labels += [index[class_dir.name]] * len(files)
            splits += [split] * len(files)
    source = f"image folder {root}"
    if unknown:
        raise rows_error(source, f"are in a class folder that train/ does not have (classes: {classes})", unknown,
                         "use the same class folder names in train/, val/ and test/")
    if empty:
        raise DatasetError(f"{source}: class folder(s) {empty} hold no PNG / JPEG / TIFF / BMP / DICOM images")
    return ImageRecords(
        source=source, root=root, paths=paths, labels=np.array(labels, dtype=np.int64), classes=classes,
        rows=list(paths), splits=np.array(splits) if "" not in parts else None,
    )
