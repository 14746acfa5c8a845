"""Synthetic datasets in exactly the MedMNIST ``.npz`` format, for tests and offline demos.

"Synthetic" in this project means this: whole datasets that are not real data (and runs on
them say so). DerMAE's diffusion samples joined to a real training split are a *generated* set
(``datamodules.generated_set``).

Each class has its own smooth pattern (a bright blob at a class-specific position and
a class-specific tint) plus pixel noise, so a small network can learn it but not
trivially. Class proportions default to DermaMNIST's training distribution.

A written file carries one extra entry, ``synthetic_generator``: the generator's settings as
JSON. Whatever config later reads the file (``data=synthetic``, or ``data=dermamnist
data.root=<its folder>``), the run then names its data as synthetic (``datamodules.data_source``).
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import numpy as np

from core.io import atomic_path

# DermaMNIST training counts: akiec, bcc, bkl, df, mel, nv, vasc (7007 images).
DERMA_PROPORTIONS = np.array([228, 359, 769, 80, 779, 4693, 99]) / 7007


def _class_counts(n: int, proportions: np.ndarray) -> np.ndarray:
    """Counts per class summing to n, each at least 1."""
    counts = np.maximum(1, np.floor(proportions * n).astype(int))
    counts[np.argmax(proportions)] += n - counts.sum()
    if counts.min() < 1:
        raise ValueError(f"{n} images are too few for {len(proportions)} classes")
    return counts


def _images_for(labels: np.ndarray, size: int, channels: int, noise: float, rng) -> np.ndarray:
    num_classes = int(labels.max()) + 1
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    out = np.empty((len(labels), size, size, channels), dtype=np.float64)
    for i, c in enumerate(labels):
        angle = 2 * np.pi * c / max(num_classes, 1)
        cy, cx = 0.5 + 0.25 * np.sin(angle), 0.5 + 0.25 * np.cos(angle)
        cy, cx = cy + rng.normal(0, 0.04), cx + rng.normal(0, 0.04)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 0.12**2))
        tint = 0.6 + 0.4 * np.cos(angle + np.arange(channels) * 2 * np.pi / 3)
        out[i] = 0.25 + 0.6 * blob[..., None] * tint
    out += rng.normal(0, noise, out.shape)
    out = np.clip(out * 255, 0, 255).astype(np.uint8)
    return out[..., 0] if channels == 1 else out


def make_synthetic_arrays(
    num_classes: int = 7,
    channels: int = 3,
    size: int = 28,
    n_train: int = 700,
    n_val: int = 100,
    n_test: int = 200,
    proportions: np.ndarray | None = None,
    noise: float = 0.15,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The six MedMNIST arrays: images uint8 (N, H, W) or (N, H, W, 3), labels uint8 (N, 1)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if proportions is None:
        proportions = DERMA_PROPORTIONS if num_classes == 7 else np.full(num_classes, 1 / num_classes)
    proportions = np.asarray(proportions, dtype=float)
    if len(proportions) != num_classes:
        raise ValueError(f"{len(proportions)} proportions given for {num_classes} classes")
    proportions = proportions / proportions.sum()
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        labels = np.repeat(np.arange(num_classes), _class_counts(n, proportions))
        labels = rng.permutation(labels)
        arrays[f"{split}_images"] = _images_for(labels, size, channels, noise, rng)
        arrays[f"{split}_labels"] = labels.astype(np.uint8).reshape(-1, 1)
    return arrays


SYNTHETIC_KEY = "synthetic_generator"  # the marker entry of a written file


def generator_settings(**kwargs) -> dict:
    """Every argument of ``make_synthetic_arrays`` (defaults filled in) as JSON-ready values."""
    bound = inspect.signature(make_synthetic_arrays).bind(**kwargs)
    bound.apply_defaults()
    settings = dict(bound.arguments)
    if settings["proportions"] is not None:
        settings["proportions"] = [float(v) for v in np.asarray(settings["proportions"], dtype=float)]
    return {"generator": "datamodules.synthetic.make_synthetic_arrays", **settings}


def write_synthetic_medmnist(path: str | os.PathLike, **kwargs) -> Path:
    """Write ``make_synthetic_arrays(**kwargs)`` to ``path`` atomically, with the generator's
    settings as the ``synthetic_generator`` entry (a JSON string); returns the path."""
    path = Path(path)
    arrays = make_synthetic_arrays(**kwargs)
    marker = np.asarray(json.dumps(generator_settings(**kwargs)))  # a 0-d string: no pickle to read it
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays, **{SYNTHETIC_KEY: marker})
    return path
