"""Generated training sets (DerMAE: images a diffusion model sampled, ``synthesize.py``), joined
to a real training split with ``data.synthetic_train=<npz>``: the file format, and its checks
against the data it joins or is judged against. (Not ``datamodules.synthetic``, the generator
of fake MedMNIST-format files for tests and offline demos: those are whole datasets that are
not real data.)

A generated set is a MedMNIST-style ``.npz`` with only ``train_images`` (uint8, (N, H, W) or
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

from core.file_hash import file_sha256

CARD_FORMAT = "medmae-synthetic-v1"
IDENTITY_KEYS = ("data_source", "num_classes", "image_size", "channels", "train_fingerprint")


def train_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 (16 hex digits) of the real training split as a run uses it (after the split and
    the label fraction): a generated set may only join the training set its generator saw."""
    from datamodules.image_rows import chunks

    h = hashlib.sha256()
    for chunk in chunks(images):  # the bytes of the whole array, streamed (lazy splits stay lazy)
        h.update(np.ascontiguousarray(chunk).tobytes())
    h.update(np.asarray(labels, dtype=np.int64).reshape(-1).tobytes())
    return h.hexdigest()[:16]


class MissingGeneratedFile(FileNotFoundError, ValueError):
    """The ``.npz`` or its card is not there (a ValueError too: one kind of bad input)."""


@dataclass
class GeneratedSet:
    images: np.ndarray  # uint8 (N, H, W) or (N, H, W, 3)
    labels: np.ndarray  # int64 (N, 1)
    card: dict
    path: Path


def card_path(npz: Path) -> Path:
    return npz.with_suffix(".json")


def read_card(npz: str | Path) -> dict:
    """The card of a generated set, after checking that both files exist and the card is one."""
    npz = Path(npz).expanduser()
    card_file = card_path(npz)
    for f in (npz, card_file):
        if not f.is_file():
            raise MissingGeneratedFile(f"{f} does not exist (a synthetic set is {npz.name} plus its card "
                                       f"{card_file.name}, both written by synthesize.py)")
    try:
        card = json.loads(card_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{card_file} is not valid JSON: {err}") from None
    if card.get("format") != CARD_FORMAT:
        raise ValueError(f"{card_file} is not a synthetic-set card (format {card.get('format')!r}, expected "
                         f"{CARD_FORMAT!r})")
    return card


def read_arrays(npz: str | Path, card: dict) -> GeneratedSet:
    """The images and labels of ``npz``, checked against its ``card``: exactly the two keys,
    uint8 at the card's size and channels, labels in range, the card's per-class counts and
    the file's sha256."""
    npz = Path(npz).expanduser()
    if card.get("sha256") != file_sha256(npz):
        raise ValueError(f"{npz}: the file's sha256 differs from its card's (the .npz was replaced or is "
                         "incomplete)")
    with np.load(npz) as f:
        keys = set(f.files)
        if keys != {"train_images", "train_labels"}:
            raise ValueError(f"{npz} holds {sorted(keys)}; a synthetic set has exactly train_images and "
                             "train_labels (validation and test stay real)")
        images, labels = f["train_images"], f["train_labels"].reshape(-1, 1).astype(np.int64)
    size, channels, k = card["image_size"], card["channels"], card["num_classes"]
    shape = (size, size) if channels == 1 else (size, size, 3)
    if images.dtype != np.uint8 or images.shape[1:] != shape or len(images) != len(labels):
        raise ValueError(f"{npz}: images {images.dtype} {images.shape} with {len(labels)} labels; its card "
                         f"promises uint8 (N, {', '.join(map(str, shape))}) and N labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"{npz}: labels outside [0, {k})")
    counts = np.bincount(labels.reshape(-1), minlength=k).tolist()
    claimed = [int((card.get("counts") or {}).get(str(c), 0)) for c in range(k)]
    if claimed != counts:
        raise ValueError(f"{npz}: card counts {claimed} but the file holds {counts}")
    return GeneratedSet(images, labels, card, npz)


def load_generated_set(path: str | Path, expected: dict, key: str = "data.synthetic_train",
                   fix: str = "make it with synthesize.py for this dataset, or drop data.synthetic_train") -> GeneratedSet:
    """The one loader of generated sets: read ``path`` and its card, check the card against
    ``expected`` (card entries the data it joins or is judged against must have, e.g. a
    datamodule's ``real_train_identity``: data_source, num_classes, image_size, channels,
    train_fingerprint; or the quality report's classes and geometry), then the arrays against the
    card. Every error names ``key`` (where the path came from) and ``fix``."""
    try:
        card = read_card(path)
    except ValueError as err:
        raise type(err)(f"{key}={path}: {err}; {fix}") from None
    mismatched = {k: (card.get(k), v) for k, v in expected.items() if card.get(k) != v}
    if mismatched:
        detail = ", ".join(f"{k} {made!r} vs {ours!r}" for k, (made, ours) in mismatched.items())
        hint = (" (train_fingerprint: the generator saw another real training set: another split, split_seed "
                "or label fraction)" if list(mismatched) == ["train_fingerprint"] else "")
        raise ValueError(f"{key}={path} was made for another dataset ({detail}: the set's vs this "
                         f"run's){hint}; {fix}")
    try:
        return read_arrays(path, card)
    except ValueError as err:
        raise ValueError(f"{key}={path}: {err}; {fix}") from None


def cap_generated_share(real_labels: np.ndarray, syn_labels: np.ndarray, max_ratio: float,
                        seed: int) -> np.ndarray:
    """Sorted indices of the synthetic images to keep so that, in every class, at most
    ``max_ratio`` of the training images are synthetic: s_c <= floor(max_ratio / (1 - max_ratio)
    x r_c) for r_c real images of class c (a seeded subset of that class's synthetic images)."""
    if not 0 < max_ratio < 1:
        raise ValueError(f"max_ratio={max_ratio} must lie in (0, 1)")
    real_labels, syn_labels = np.asarray(real_labels).reshape(-1), np.asarray(syn_labels).reshape(-1)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(syn_labels):
        pool = np.flatnonzero(syn_labels == c)
        limit = int(np.floor(max_ratio / (1 - max_ratio) * (real_labels == c).sum() + 1e-9))
        keep.append(pool if len(pool) <= limit else rng.choice(pool, size=limit, replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.array([], dtype=np.int64)
