"""Per-split classification metrics (torchmetrics), matching medmnist's Evaluator.

All metrics take probabilities (softmax for single-label tasks, sigmoid for multi-label):
- ``acc``: argmax accuracy (binary tasks use two logits, so this equals thresholding the
  positive-class probability at 0.5 as medmnist does); multi-label: mean per-label accuracy.
- ``auc``: unweighted mean of one-vs-rest AUROCs (per-label for multi-label).
- ``bal_acc``: balanced accuracy = macro recall (single-label tasks only).
- ``f1_macro``, ``f1_weighted``.
"""

from __future__ import annotations

import lightning as L
import torch
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MulticlassRecall,
    MultilabelAccuracy,
    MultilabelAUROC,
    MultilabelF1Score,
)

from datamodules.medmnist_files import MULTI_LABEL


def classification_metrics(num_classes: int, task: str, prefix: str) -> MetricCollection:
    """A MetricCollection whose keys are ``{prefix}acc``, ``{prefix}auc``, ..."""
    if task == MULTI_LABEL:
        metrics = {
            "acc": MultilabelAccuracy(num_labels=num_classes, average="macro"),
            "auc": MultilabelAUROC(num_labels=num_classes, average="macro"),
            "f1_macro": MultilabelF1Score(num_labels=num_classes, average="macro"),
            "f1_weighted": MultilabelF1Score(num_labels=num_classes, average="weighted"),
        }
    else:
        metrics = {
            "acc": MulticlassAccuracy(num_classes=num_classes, average="micro"),
            "bal_acc": MulticlassRecall(num_classes=num_classes, average="macro"),
            "auc": MulticlassAUROC(num_classes=num_classes, average="macro"),
            "f1_macro": MulticlassF1Score(num_classes=num_classes, average="macro"),
            "f1_weighted": MulticlassF1Score(num_classes=num_classes, average="weighted"),
        }
    return MetricCollection(metrics, prefix=prefix)


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Softmax over classes, or per-label sigmoid for multi-label tasks. Shape (B, K)."""
    return logits.sigmoid() if task == MULTI_LABEL else logits.softmax(dim=-1)


def log_epoch_metrics(module: L.LightningModule, metrics: MetricCollection, bests: dict[str, MaxMetric]) -> dict:
    """Compute, log and reset ``metrics``; track and log ``<key>_best`` for each key of ``bests``."""
    values = metrics.compute()
    metrics.reset()
    module.log_dict(values)
    for key, tracker in bests.items():
        tracker.update(values[key])
        module.log(f"{key}_best", tracker.compute(), prog_bar=True)
    return values
