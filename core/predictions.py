"""Prediction files of a run: ``<split>_predictions.npz`` (+ a CSV copy) and the validation
confusion history. Rows are in dataset order."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from core.io import atomic_files, atomic_write_text


def save_predictions(
    folder: Path, split: str, probs: np.ndarray, labels: np.ndarray, ids: list[str] | None = None
) -> Path:
    """Write ``{split}_predictions.npz`` (probs (N, K) float32, labels (N,) or (N, K)[, ids (N,)])
    and ``{split}_predictions.csv`` atomically; ``ids`` (e.g. image paths) add a ``path`` column."""
    path = Path(folder) / f"{split}_predictions.npz"
    extra = {} if ids is None else {"ids": np.asarray(ids, dtype=str)}
    with atomic_files(path, path.with_suffix(".csv")) as (npz, table):
        with open(npz, "wb") as f:
            np.savez(f, probs=probs.astype(np.float32), labels=labels, **extra)
        with open(table, "w", newline="") as f:
            writer = csv.writer(f)
            label_cols = ["label"] if labels.ndim == 1 else [f"label_{k}" for k in range(labels.shape[1])]
            id_cols = [] if ids is None else ["path"]
            writer.writerow(["index", *id_cols, *label_cols, *[f"prob_{k}" for k in range(probs.shape[1])]])
            for i, (lab, p) in enumerate(zip(labels, probs)):
                row_id = [] if ids is None else [ids[i]]
                writer.writerow([i, *row_id, *np.atleast_1d(lab).tolist(), *[f"{v:.6f}" for v in p]])
    return path


def load_predictions(folder: Path, split: str) -> dict[str, np.ndarray]:
    """``{"probs", "labels"[, "ids"]}`` of ``save_predictions``' file, or FileNotFoundError."""
    path = Path(folder) / f"{split}_predictions.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (no {split} predictions were saved in {folder})")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def record_confusion(path: Path, epoch: int, matrix: np.ndarray) -> None:
    """Adds (or, after a resume, replaces) ``epoch``'s confusion matrix (K, K; row = true class)
    in the JSON history ``{"<epoch>": [[...], ...]}`` at ``path``; written atomically."""
    history = json.loads(path.read_text()) if path.is_file() else {}
    history[str(epoch)] = np.asarray(matrix).astype(int).tolist()
    atomic_write_text(path, json.dumps(history))
