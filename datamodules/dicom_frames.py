"""Multi-frame DICOM files as dataset items (``data.dicom_frames``).

An item names one frame of a multi-frame file as ``<path>#frame=<k>`` (0-based), so the
decoded cache, ``splits.csv`` and the prediction files tell the frames apart. Per file:

- ``all`` (default): every frame is an item with the file's row (label, split, columns); the
  file is the group of its frames, so a split never puts frames of one file into two splits
  (with ``data.group_column`` the row's own group, e.g. the patient, is kept: it already
  holds every frame of the file);
- ``first``: frame 0 only; ``middle``: frame ``F // 2`` of F frames only (one item per file).

Single-frame files and other images stay one item each under their plain path.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from datamodules.image_records import ImageRecords

DICOM_FRAMES = ("all", "first", "middle")
FRAME_MARK = "#frame="


def frame_ref(path: str, frame: int) -> str:
    """The item name of frame ``frame`` of the file ``path``."""
    return f"{path}{FRAME_MARK}{frame}"


def split_frame(path: str | os.PathLike) -> tuple[Path, int | None]:
    """(file, frame) of an item name; frame None for a plain path."""
    head, mark, tail = str(path).rpartition(FRAME_MARK)
    if mark and tail.isdigit():
        return Path(head), int(tail)
    return Path(path), None


def frame_count(path: Path) -> int:
    """Number of Frames (0028,0008) of a ``.dcm`` file from its header; 1 for other files and
    for files that cannot be read here (decoding reports those, with every other bad file)."""
    if path.suffix.lower() != ".dcm":
        return 1
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["NumberOfFrames"])
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except Exception:  # any unreadable header (or no pydicom): the decoding pass names the file
        return 1


def frame_counts(root: Path, paths: Sequence[str], workers: int | None = None) -> list[int]:
    """``frame_count`` of every path (headers only, read in threads)."""
    if not any(p.lower().endswith(".dcm") for p in paths):
        return [1] * len(paths)
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda p: frame_count(root / p), paths))


def expand_frames(records: ImageRecords, counts: Sequence[int], mode: str) -> ImageRecords:
    """``records`` with each multi-frame file (``counts[i] > 1``) as its frames by ``mode``
    (see the module docstring); unchanged when no file has several frames."""
    if mode not in DICOM_FRAMES:
        raise ValueError(f"data.dicom_frames={mode!r} is invalid; allowed: {list(DICOM_FRAMES)}")
    if all(c <= 1 for c in counts):
        return records
    items: list[tuple[int, int | None]] = []
    for i, count in enumerate(counts):
        if count <= 1:
            items.append((i, None))
        elif mode == "all":
            items += [(i, k) for k in range(count)]
        else:
            items.append((i, 0 if mode == "first" else count // 2))
    index = np.array([i for i, _ in items], dtype=np.int64)
    groups = records.groups
    if mode == "all":  # the file groups its frames unless a coarser group (patient) is given
        groups = records.groups[index] if records.groups is not None else np.array([records.paths[i] for i in index])
    elif groups is not None:
        groups = groups[index]
    return dataclasses.replace(
        records,
        paths=[records.paths[i] if k is None else frame_ref(records.paths[i], k) for i, k in items],
        rows=[records.rows[i] if k is None else f"{records.rows[i]} (frame {k})" for i, k in items],
        labels=records.labels[index],
        splits=None if records.splits is None else records.splits[index],
        groups=groups,
        columns={c: v[index] for c, v in records.columns.items()},
    )
