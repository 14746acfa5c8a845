"""Synthetic training images (``data.synthetic_train=<npz>``): the file format ``synthesize.py``
writes, and its checks against the dataset it is added to.

A synthetic set is a MedMNIST-style ``.npz`` with only ``train_images`` (uint8, (N, H, W) or
(N, H, W, 3)) and ``train_labels`` (int64 (N, 1)), plus a JSON card of the same stem that says
which data and diffusion checkpoint it was made for. Validation and test data never come
from such a file: it can only be added to the training split.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CARD_FORMAT = "medmae-synthetic-v1"
IDENTITY_KEYS = ("data_source", "num_classes", "image_size", "channels", "train_fingerprint")


def train_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 (16 hex digits) of the real training split as a run uses it (after the split and
    the label fraction): a synthetic set may only join the training set its generator saw."""
    h = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    h.update(np.asarray(labels, dtype=np.int64).reshape(-1).tobytes())
    return h.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class SyntheticSet:
    images: np.ndarray  # uint8 (N, H, W) or (N, H, W, 3)
    labels: np.ndarray  # int64 (N, 1)
    card: dict


def card_path(npz: Path) -> Path:
    return npz.with_suffix(".json")


def load_synthetic(path: str | Path, identity: dict) -> SyntheticSet:
    """Read and check a synthetic set against ``identity`` (``diffusion.data_identity`` of the
    datamodule it is added to: data_source, num_classes, image_size, channels)."""
    npz = Path(path).expanduser()
    card_file = card_path(npz)
    fix = "make it with synthesize.py for this dataset, or drop data.synthetic_train"
    if not npz.is_file() or not card_file.is_file():
        missing = npz if not npz.is_file() else card_file
        raise FileNotFoundError(f"data.synthetic_train={path}: {missing} does not exist; {fix}")
    card = json.loads(card_file.read_text())
    if card.get("format") != CARD_FORMAT:
        raise ValueError(f"data.synthetic_train={path}: {card_file} is not a synthetic-set card "
                         f"(format {card.get('format')!r}, expected {CARD_FORMAT!r}); {fix}")
    mismatched = {k: (card.get(k), identity[k]) for k in IDENTITY_KEYS if card.get(k) != identity[k]}
    if mismatched:
        detail = ", ".join(f"{k} {made!r} vs {ours!r}" for k, (made, ours) in mismatched.items())
        hint = (" (train_fingerprint: the generator saw another real training set: another split, split_seed "
                "or label fraction)" if list(mismatched) == ["train_fingerprint"] else "")
        raise ValueError(f"data.synthetic_train={path} was made for another dataset ({detail}: the set's vs this "
                         f"run's){hint}; {fix}")
    if card.get("sha256") != file_sha256(npz):
        raise ValueError(f"data.synthetic_train={path}: the file's sha256 differs from its card's (the .npz was "
                         f"replaced or is incomplete); {fix}")
    with np.load(npz) as f:
        keys = set(f.files)
        if keys != {"train_images", "train_labels"}:
            raise ValueError(f"data.synthetic_train={path} holds {sorted(keys)}; a synthetic set has exactly "
                             "train_images and train_labels (validation and test stay real)")
        images, labels = f["train_images"], f["train_labels"].reshape(-1, 1).astype(np.int64)
    size, channels = identity["image_size"], identity["channels"]
    shape = (size, size) if channels == 1 else (size, size, 3)
    if images.dtype != np.uint8 or images.shape[1:] != shape or len(images) != len(labels):
        raise ValueError(f"data.synthetic_train={path}: images {images.dtype} {images.shape} with {len(labels)} "
                         f"labels; expected uint8 (N, {', '.join(map(str, shape))}) and N labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= identity["num_classes"]):
        raise ValueError(f"data.synthetic_train={path}: labels outside [0, {identity['num_classes']})")
    return SyntheticSet(images, labels, card)
