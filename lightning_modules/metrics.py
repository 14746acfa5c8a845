"""Per-split classification metrics (torchmetrics), matching medmnist's Evaluator.

All metrics take probabilities (softmax for single-label tasks, sigmoid for multi-label):
- ``acc``: argmax accuracy (binary tasks use two logits, so this equals thresholding the
  positive-class probability at 0.5 as medmnist does); multi-label: mean per-label accuracy.
- ``auc``: unweighted mean of one-vs-rest AUROCs (per-label for multi-label) over the classes
  defined in the split (a positive and a negative sample; ``core.undefined_classes``): an
  undefined class is left out with a warning naming it, never counted as 0; NaN when none is
  defined. ``auc_defined_labels``: how many classes (labels) that mean is over.
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
from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from torchmetrics import MaxMetric, Metric, MetricCollection
from torchmetrics.classification import (
    BinaryF1Score,
    BinaryPrecision,
    BinaryRecall,
    BinarySpecificity,
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
    MulticlassSpecificity,
    MultilabelAccuracy,
    MultilabelF1Score,
    MultilabelPrecision,
    MultilabelRecall,
    MultilabelSpecificity,
)
from torchmetrics.functional.classification import binary_auroc, binary_average_precision
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.wrappers import ClasswiseWrapper
from torchmetrics.wrappers.transformations import MetricInputTransformer

from core.tasks import BINARY, MULTI_LABEL
from core.undefined_classes import defined_classes, warn_undefined

RANKING = {"auroc": binary_auroc, "ap": binary_average_precision}  # one-vs-rest, exact (no thresholds)


def _one_hot(target: torch.Tensor, num_classes: int, multi_label: bool) -> torch.Tensor:
    """(B, K) 0/1 long targets of (B,) class indices, or of (B, K) multi-label targets."""
    target = target.long()
    return target if multi_label else torch.nn.functional.one_hot(target, num_classes)


class DefinedRanking(Metric):
    """One-vs-rest AUROC or average precision per class (label), NaN where the class is
    undefined in the epoch's targets (no positive or no negative, counted over every process).

    Takes probabilities (B, K) and targets (B,) class indices ((B, K) 0/1 for multi-label); keeps
    every prediction of the epoch (``cat`` states, gathered across processes by torchmetrics before
    ``compute``, so the definedness and the values come from the synced epoch). ``compute``:
    ``average="macro"`` the mean over the defined classes (NaN when none is), ``None`` the (K,)
    values, an int ``c`` class c's value (a binary task's positive class). An undefined class is
    named in an ``UndefinedClassWarning`` (``names``; set them with ``name_classes``).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, kind: str, num_classes: int, multi_label: bool, average: str | int | None = "macro",
                 split: str = "", names: Sequence[str] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if kind not in RANKING:
            raise ValueError(f"kind={kind!r} is invalid; allowed: {sorted(RANKING)}")
        if not (average in ("macro", None) or (isinstance(average, int) and 0 <= average < num_classes)):
            raise ValueError(f"average={average!r} is invalid; allowed: 'macro', None or a class index < {num_classes}")
        self.kind, self.num_classes, self.multi_label, self.average = kind, num_classes, multi_label, average
        self.split = split
        self.names = [str(n) for n in names] if names is not None else [f"class {i}" for i in range(num_classes)]
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.preds.append(preds.detach().float())
        self.target.append(_one_hot(target, self.num_classes, self.multi_label))

    def compute(self) -> torch.Tensor:
        preds, target = dim_zero_cat(self.preds), dim_zero_cat(self.target)
        positives = target.sum(0).cpu().numpy()
        defined = defined_classes(positives, len(target))
        values = torch.full((self.num_classes,), float("nan"), device=preds.device)
        for c in np.flatnonzero(defined):
            values[c] = RANKING[self.kind](preds[:, c], target[:, c])
        warn_undefined(self.split, self.names, positives, len(target))
        if self.average is None:
            return values
        if isinstance(self.average, int):
            return values[self.average]
        if not defined.any():
            return torch.tensor(float("nan"), device=values.device)
        return values[torch.from_numpy(defined).to(values.device)].mean()


class DefinedClasses(Metric):
    """How many classes (labels) are defined for AUROC / AP in the epoch's targets (a positive
    and a negative sample, counted over every process): the count the macro means are over."""

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    def __init__(self, num_classes: int, multi_label: bool, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.multi_label = num_classes, multi_label
        self.add_state("positives", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.positives += _one_hot(target, self.num_classes, self.multi_label).sum(0)
        self.total += len(target)

    def compute(self) -> torch.Tensor:
        defined = (self.positives > 0) & (self.positives < self.total)
        return defined.sum().float()


def name_classes(metrics: MetricCollection, names: Sequence[str]) -> None:
    """Give every ``DefinedRanking`` of ``metrics`` the class names its warnings use."""
    for metric in metrics.modules():
        if isinstance(metric, DefinedRanking):
            metric.names = [str(n) for n in names]


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


def binary_metrics(split: str = "", threshold: float = 0.5) -> dict[str, Metric]:
    """The positive-class (class 1) metrics of binary tasks, keyed without prefix: precision,
    recall, specificity and F1 of ``probs[:, 1] > threshold`` (strict, as medmnist), AUPRC. The
    one definition: the training loop logs them, ``evaluation.metrics.positive_class_summary``
    computes them on saved predictions."""
    return {
        "precision": PositiveClass(BinaryPrecision(threshold=threshold)),
        "recall": PositiveClass(BinaryRecall(threshold=threshold)),
        "specificity": PositiveClass(BinarySpecificity(threshold=threshold)),
        "f1": PositiveClass(BinaryF1Score(threshold=threshold)),
        # NaN when the split has no positive or no negative (core.undefined_classes)
        "auprc": DefinedRanking("ap", 2, multi_label=False, average=1, split=split),
    }


def classification_metrics(num_classes: int, task: str, prefix: str,
                           class_names: Sequence[str] | None = None) -> MetricCollection:
    """A MetricCollection whose keys are ``{prefix}acc``, ``{prefix}auc``, ... (see the module
    docstring); it takes probabilities (B, K) and targets (B,) ((B, K) for multi-label).
    ``class_names`` name the undefined classes in warnings (also later: ``name_classes``)."""
    multi_label, split = task == MULTI_LABEL, prefix.rstrip("/_")
    ranking = {"auc": DefinedRanking("auroc", num_classes, multi_label, "macro", split, class_names),
               "auc_defined_labels": DefinedClasses(num_classes, multi_label)}
    if multi_label:
        metrics = {
            "acc": MultilabelAccuracy(num_labels=num_classes, average="macro"),
            "f1_macro": MultilabelF1Score(num_labels=num_classes, average="macro"),
            "f1_weighted": MultilabelF1Score(num_labels=num_classes, average="weighted"),
        }
    else:
        metrics = {
            "acc": MulticlassAccuracy(num_classes=num_classes, average="micro"),
            "bal_acc": MulticlassRecall(num_classes=num_classes, average="macro"),
            "f1_macro": MulticlassF1Score(num_classes=num_classes, average="macro"),
            "f1_weighted": MulticlassF1Score(num_classes=num_classes, average="weighted"),
        }
        if task == BINARY:
            if num_classes != 2:
                raise ValueError(f"task={task!r} needs num_classes=2 (two softmax outputs), got {num_classes}")
            metrics.update(binary_metrics(split))
    return MetricCollection({**metrics, **ranking}, prefix=prefix)


def metric_name(class_name: str) -> str:
    """A class name as a short, logger-safe key part: ``"basal cell carcinoma"`` -> ``basal_cell_carcinoma``."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", class_name).strip("_").lower()[:32] or "class"


def classwise_metrics(num_classes: int, task: str, prefix: str, class_names: list[str]) -> MetricCollection:
    """Per-class (per-label) metrics for validation and test, synced under DDP by torchmetrics.

    Keys ``{prefix}{metric}/{class}`` for precision, recall, specificity and F1 (argmax decision;
    0.5 per label for multi-label), one-vs-rest AUROC and average precision (``ap``); and
    ``{prefix}ap_macro`` (unweighted mean AP, the macro AUPRC) and, for single-label tasks,
    ``{prefix}ece`` (expected calibration error of the top-class confidence, 15 equal bins).
    AUROC and AP of a class undefined in the split (no positive or no negative) are NaN and left
    out of ``ap_macro`` (``DefinedRanking``). Takes what ``classification_metrics`` takes. AUROC / AP
    keep every prediction of the epoch.
    """
    labels = [metric_name(n) for n in class_names]
    if len(set(labels)) != len(labels):
        labels = [f"{i}_{n}" for i, n in enumerate(labels)]
    multi_label, split = task == MULTI_LABEL, prefix.rstrip("/_")
    ranking = {k: DefinedRanking(k, num_classes, multi_label, None, split, class_names) for k in ("auroc", "ap")}
    summary = {"ap_macro": DefinedRanking("ap", num_classes, multi_label, "macro", split, class_names)}
    if multi_label:
        kinds = {"precision": MultilabelPrecision, "recall": MultilabelRecall, "specificity": MultilabelSpecificity,
                 "f1": MultilabelF1Score}
        made = {k: cls(num_labels=num_classes, average=None) for k, cls in kinds.items()}
    else:
        kinds = {"precision": MulticlassPrecision, "recall": MulticlassRecall, "specificity": MulticlassSpecificity,
                 "f1": MulticlassF1Score}
        made = {k: cls(num_classes=num_classes, average=None) for k, cls in kinds.items()}
        summary["ece"] = MulticlassCalibrationError(num_classes=num_classes, n_bins=15, norm="l1")
    made.update(ranking)
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
        if torch.isnan(values[key]):  # undefined this epoch (e.g. no class defined for AUROC): no best
            continue
        tracker.update(values[key])
        module.log(f"{key}_best", tracker.compute(), prog_bar=True)
    return values
