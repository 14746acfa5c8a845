"""Per-split classification metrics (torchmetrics), matching medmnist's Evaluator.

All metrics take probabilities (softmax for single-label tasks, sigmoid for multi-label):
- ``acc``: argmax accuracy (binary tasks use two logits, so this equals thresholding the
  positive-class probability at 0.5 as medmnist does); multi-label: mean per-label accuracy.
- ``auc``: unweighted mean of one-vs-rest AUROCs (per-label for multi-label).
- ``bal_acc``: balanced accuracy = macro recall (single-label tasks only).
- ``f1_macro``, ``f1_weighted``.

Binary tasks (``task == "binary-class"``, class 1 positive; two softmax outputs) also get,
for the positive class, ``precision``, ``recall`` (sensitivity), ``specificity`` and ``f1``
of ``probs[:, 1] > 0.5``, and ``auprc`` (average precision of ``probs[:, 1]``). For two-class
softmax ``probs[:, 1] > 0.5`` is ``argmax == 1`` (an exact tie 0.5 / 0.5 gives class 0 both
ways; only float rounding at 0.5 may differ), and ``acc`` / ``auc`` already are the
positive-class accuracy / AUROC (the AUROC of class 0 on ``1 - p`` equals that of class 1).
"""

from __future__ import annotations

import re

import lightning as L
import torch
from torchmetrics import MaxMetric, Metric, MetricCollection
from torchmetrics.classification import (
    BinaryAveragePrecision,
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    BinarySpecificity,
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassAveragePrecision,
    MulticlassCalibrationError,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
    MulticlassSpecificity,
    MultilabelAccuracy,
    MultilabelAUROC,
    MultilabelAveragePrecision,
    MultilabelF1Score,
    MultilabelPrecision,
    MultilabelRecall,
    MultilabelSpecificity,
)
from torchmetrics.wrappers import ClasswiseWrapper
from torchmetrics.wrappers.transformations import MetricInputTransformer

from core.tasks import BINARY, MULTI_LABEL


class PositiveClass(MetricInputTransformer):
    """Feeds the positive-class column ``probs[:, 1]`` (B,) of two-class probabilities (B, 2)
    to a ``Binary*`` metric; the integer targets (B,) pass unchanged.

    The wrapped metric holds every state: it is the one reset, moved by ``.to()`` (it is a
    submodule) and synced across processes by its own ``compute``. The wrapper holds no
    state, so MetricCollection never puts it into a compute group with another metric.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def transform_pred(self, pred: torch.Tensor) -> torch.Tensor:
        if pred.ndim != 2 or pred.shape[1] != 2:
            raise ValueError(f"PositiveClass expects probabilities of shape (B, 2), got {tuple(pred.shape)}")
        # clamp: a rounding error above 1 would make torchmetrics treat the batch as logits
        return pred[:, 1].clamp(0, 1)


def binary_metrics() -> dict[str, PositiveClass]:
    """The positive-class metrics of binary tasks, keyed without prefix."""
    return {
        "precision": PositiveClass(BinaryPrecision(threshold=0.5)),
        "recall": PositiveClass(BinaryRecall(threshold=0.5)),
        "specificity": PositiveClass(BinarySpecificity(threshold=0.5)),
        "f1": PositiveClass(BinaryF1Score(threshold=0.5)),
        "auprc": PositiveClass(BinaryAveragePrecision(thresholds=None)),
    }


def classification_metrics(num_classes: int, task: str, prefix: str) -> MetricCollection:
    """A MetricCollection whose keys are ``{prefix}acc``, ``{prefix}auc``, ... (see the module
    docstring); it takes probabilities (B, K) and targets (B,) ((B, K) for multi-label)."""
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
        if task == BINARY:
            if num_classes != 2:
                raise ValueError(f"task={task!r} needs num_classes=2 (two softmax outputs), got {num_classes}")
            metrics.update(binary_metrics())
    return MetricCollection(metrics, prefix=prefix)


def metric_name(class_name: str) -> str:
    """A class name as a short, logger-safe key part: ``"basal cell carcinoma"`` -> ``basal_cell_carcinoma``."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", class_name).strip("_").lower()[:32] or "class"


def classwise_metrics(num_classes: int, task: str, prefix: str, class_names: list[str]) -> MetricCollection:
    """Per-class (per-label) metrics for validation and test, synced under DDP by torchmetrics.

    Keys ``{prefix}{metric}/{class}`` for precision, recall, specificity and F1 (argmax decision;
    0.5 per label for multi-label), one-vs-rest AUROC and average precision (``ap``); and
    ``{prefix}ap_macro`` (unweighted mean AP, the macro AUPRC) and, for single-label tasks,
    ``{prefix}ece`` (expected calibration error of the top-class confidence, 15 equal bins).
    Takes what ``classification_metrics`` takes. AUROC / AP keep every prediction of the epoch.
    """
    labels = [metric_name(n) for n in class_names]
    if len(set(labels)) != len(labels):
        labels = [f"{i}_{n}" for i, n in enumerate(labels)]
    if task == MULTI_LABEL:
        kinds = {"precision": MultilabelPrecision, "recall": MultilabelRecall, "specificity": MultilabelSpecificity,
                 "f1": MultilabelF1Score, "auroc": MultilabelAUROC, "ap": MultilabelAveragePrecision}
        made = {k: cls(num_labels=num_classes, average=None) for k, cls in kinds.items()}
        summary = {"ap_macro": MultilabelAveragePrecision(num_labels=num_classes, average="macro")}
    else:
        kinds = {"precision": MulticlassPrecision, "recall": MulticlassRecall, "specificity": MulticlassSpecificity,
                 "f1": MulticlassF1Score, "auroc": MulticlassAUROC, "ap": MulticlassAveragePrecision}
        made = {k: cls(num_classes=num_classes, average=None) for k, cls in kinds.items()}
        summary = {"ap_macro": MulticlassAveragePrecision(num_classes=num_classes, average="macro"),
                   "ece": MulticlassCalibrationError(num_classes=num_classes, n_bins=15, norm="l1")}
    wrapped = {k: ClasswiseWrapper(m, labels=labels, prefix=f"{k}/") for k, m in made.items()}
    return MetricCollection({**wrapped, **summary}, prefix=prefix, compute_groups=False)


def fill_missing_metric_states(module: torch.nn.Module, checkpoint: dict) -> None:
    """Checkpoints written before a metric's state was saved (e.g. the best-so-far trackers) lack
    its keys: keep the fresh metric's state so that resuming from them still loads strictly.
    Only torchmetrics states are filled in; a missing weight still fails the load."""
    state = checkpoint.get("state_dict")
    if state is None:
        return
    for name, metric in module.named_modules():
        if isinstance(metric, Metric):
            for key, value in metric.state_dict(prefix=f"{name}.").items():
                state.setdefault(key, value)


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Softmax over classes, or per-label sigmoid for multi-label tasks. Shape (B, K)."""
    return logits.sigmoid() if task == MULTI_LABEL else logits.softmax(dim=-1)


def log_epoch_metrics(module: L.LightningModule, metrics: MetricCollection, bests: dict[str, MaxMetric]) -> dict:
    """Compute, log and reset ``metrics``; track and log ``<key>_best`` for each key of ``bests``
    (not during the sanity check: its few batches are no epoch, and a resumed run keeps the bests
    restored from its checkpoint)."""
    values = metrics.compute()
    metrics.reset()
    module.log_dict(values)
    if module._trainer is not None and module.trainer.sanity_checking:
        return values
    for key, tracker in bests.items():
        tracker.update(values[key])
        module.log(f"{key}_best", tracker.compute(), prog_bar=True)
    return values
