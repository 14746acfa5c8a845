"""Per-class evaluation of saved predictions, computed with torchmetrics.

Inputs everywhere: ``probs`` (N, K) probabilities (softmax; per-label sigmoid for
multi-label tasks), ``labels`` (N,) ints or (N, K) 0/1 for multi-label. Outputs are numpy
/ Python numbers. ACC and AUC follow ``medmnist.Evaluator`` exactly (its own functions are
called) on splits where every class is defined. Binary tasks (class 1 positive) also get
positive-class metrics, see ``positive_class_summary``. A ratio with a zero denominator is 0, as in
scikit-learn. AUROC and average precision of a class with no positive or no negative sample
in the split are undefined (``core.undefined_classes``): NaN in the tables, left out of the
macro and weighted means and of the summary's AUC (a mean over the defined classes, their
count in ``auc_defined_labels``), and named in a warning; never counted as 0.
"""

from __future__ import annotations

import numpy as np
import torch
from medmnist.evaluator import getACC, getAUC
from torchmetrics.functional import classification as tmf

from core.tasks import BINARY, MULTI_LABEL
from core.undefined_classes import defined_classes, mean_over_defined, warn_undefined
from lightning_modules.metrics import binary_metrics

TABLE_COLUMNS = ("class", "support", "accuracy", "precision", "recall", "specificity", "f1", "auroc", "ap")


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x))


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (K, K): row = true class, column = predicted class."""
    return tmf.multiclass_confusion_matrix(_t(preds).long(), _t(labels).long(), num_classes).numpy()


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=float), where=den > 0)


def _weighted_over_defined(values: np.ndarray, support: np.ndarray) -> float:
    """Support-weighted mean of the finite values (NaN when none is, or their support is 0)."""
    finite = np.isfinite(values)
    weight = support[finite].sum()
    return float((values[finite] * support[finite]).sum() / weight) if weight > 0 else float("nan")


def _rows(names: list[str], support: np.ndarray, cols: dict[str, np.ndarray]) -> list[dict]:
    """One row per class / label, then ``macro avg`` (unweighted) and ``weighted avg`` (by
    support), both over the classes where the value is defined (not NaN)."""
    rows = [{"class": name, "support": int(support[i]), **{c: float(v[i]) for c, v in cols.items()}}
            for i, name in enumerate(names)]
    total = int(support.sum())
    rows.append({"class": "macro avg", "support": total, **{c: mean_over_defined(v) for c, v in cols.items()}})
    rows.append({"class": "weighted avg", "support": total,
                 **{c: _weighted_over_defined(np.asarray(v, float), support) for c, v in cols.items()}})
    return rows


def per_class_table(probs: np.ndarray, labels: np.ndarray, class_names: list[str], split: str = "test") -> list[dict]:
    """Single-label tasks: one row per class (support, accuracy = recall, precision, recall,
    specificity, F1 of the argmax decision; one-vs-rest AUROC and average precision), then
    ``macro avg`` and ``weighted avg``. A class that is never predicted has precision 0 (and
    F1 0); a class absent from ``labels`` (or the only one present) has AUROC and AP NaN, named
    in a warning about ``split``."""
    k = len(class_names)
    p, y = _t(probs).double(), _t(labels).long()  # fp64: tiny probabilities keep their order
    kw = {"num_classes": k, "average": None, "zero_division": 0}
    recall = tmf.multiclass_recall(p, y, **kw).numpy()
    cols = {
        "accuracy": recall,
        "precision": tmf.multiclass_precision(p, y, **kw).numpy(),
        "recall": recall,
        "specificity": tmf.multiclass_specificity(p, y, num_classes=k, average=None).numpy(),
        "f1": tmf.multiclass_f1_score(p, y, **kw).numpy(),
        **_ranking(p, torch.nn.functional.one_hot(y, k), class_names, split),
    }
    return _rows(class_names, np.bincount(np.asarray(labels).reshape(-1), minlength=k), cols)


def per_label_table(probs: np.ndarray, labels: np.ndarray, label_names: list[str], split: str = "test") -> list[dict]:
    """Multi-label tasks: one row per label (support = positives; accuracy, precision, recall,
    specificity and F1 of ``probs > 0.5``; AUROC and average precision, NaN for a label with no
    positive or no negative, named in a warning about ``split``), then the averages."""
    k = len(label_names)
    p, y = _t(probs).double(), _t(labels).long()  # fp64: tiny probabilities keep their order
    kw = {"num_labels": k, "average": None, "zero_division": 0}
    cols = {
        "accuracy": tmf.multilabel_accuracy(p, y, num_labels=k, average=None).numpy(),
        "precision": tmf.multilabel_precision(p, y, **kw).numpy(),
        "recall": tmf.multilabel_recall(p, y, **kw).numpy(),
        "specificity": tmf.multilabel_specificity(p, y, num_labels=k, average=None).numpy(),
        "f1": tmf.multilabel_f1_score(p, y, **kw).numpy(),
        **_ranking(p, y, label_names, split),
    }
    return _rows(label_names, np.asarray(labels).sum(axis=0).astype(int), cols)


def _ranking(p: torch.Tensor, onehot: torch.Tensor, names: list[str], split: str) -> dict[str, np.ndarray]:
    """One-vs-rest AUROC and average precision per class / label of ``p`` (N, K) against
    ``onehot`` (N, K) 0/1; NaN where a class has no positive or no negative sample (undefined),
    with a warning naming those classes."""
    positives = onehot.sum(0).numpy()
    k = len(positives)
    auroc, ap = np.full(k, np.nan), np.full(k, np.nan)
    for c in np.flatnonzero(defined_classes(positives, len(onehot))):
        auroc[c] = float(tmf.binary_auroc(p[:, c], onehot[:, c]))
        ap[c] = float(tmf.binary_average_precision(p[:, c], onehot[:, c]))
    warn_undefined(split, names, positives, len(onehot))
    return {"auroc": auroc, "ap": ap}


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Confidence (max probability) in ``n_bins`` equal-width bins: per bin count, mean
    confidence and accuracy (0 where empty)."""
    conf, correct = probs.max(1), (probs.argmax(1) == labels).astype(float)
    idx = np.clip((conf * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(float)
    return {
        "edges": np.linspace(0, 1, n_bins + 1),
        "count": count,
        "confidence": _ratio(np.bincount(idx, conf, n_bins), count),
        "accuracy": _ratio(np.bincount(idx, correct, n_bins), count),
    }


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE of the top-class confidence: sum over ``n_bins`` equal-width bins of
    (count / N) * |accuracy - confidence| (torchmetrics' ``multiclass_calibration_error``, l1)."""
    return float(tmf.multiclass_calibration_error(_t(probs).float(), _t(labels).long(), probs.shape[1],
                                                   n_bins=n_bins, norm="l1"))


def average_precision(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as scikit-learn's ``average_precision_score``
    (torchmetrics' exact, tie-aware ``binary_average_precision``); ``positive`` (N,) bools,
    ``scores`` (N,). NaN when there is no positive or no negative (undefined, see
    ``core.undefined_classes``; scikit-learn would give 0 without a positive)."""
    if not defined_classes([int(np.sum(positive))], len(positive))[0]:
        return float("nan")
    return float(tmf.binary_average_precision(_t(scores).float(), _t(positive).long()))


def positive_class_summary(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """The positive-class metrics of a binary task (``lightning_modules.metrics.binary_metrics``,
    the one definition the training loop logs too) on saved predictions: precision, recall
    (sensitivity), specificity and F1 of ``probs[:, 1] > threshold``, and AUPRC (average precision
    of ``probs[:, 1]``; NaN without a positive or a negative).

    ``probs`` (N, 2), ``labels`` (N,). At 0.5 the decision is medmnist's (its binary ACC
    thresholds ``probs[:, -1] > 0.5``) and argmax's, up to float rounding at exactly 0.5.
    """
    summary = {}
    for key, metric in binary_metrics(threshold=threshold).items():
        metric.update(_t(probs).float(), _t(labels).long())
        summary[key] = float(metric.compute())
    return summary


def summary_auc(probs: np.ndarray, labels: np.ndarray, task: str, table: list[dict]) -> tuple[float, int]:
    """(AUC, number of defined classes): medmnist.Evaluator's AUC (``getAUC``) when every class
    (label) of the split is defined, else the mean of ``table``'s per-class AUROCs over the
    defined ones (the same definition restricted to them; NaN when none is)."""
    auroc = np.array([row["auroc"] for row in table[:-2]], dtype=float)
    n_defined = int(np.isfinite(auroc).sum())
    if n_defined == len(auroc):
        return float(getAUC(labels, probs, task)), n_defined
    return mean_over_defined(auroc), n_defined


def summary_metrics(probs: np.ndarray, labels: np.ndarray, task: str, class_names: list[str] | None = None,
                    split: str = "test") -> dict[str, float]:
    """ACC and AUC as medmnist.Evaluator defines them (AUC over the defined classes, their count
    in ``auc_defined_labels``), balanced accuracy, macro F1, ECE; for binary tasks also the
    positive-class ``positive_class_summary`` (ACC and AUC then already are the positive-class accuracy
    and AUROC). Multi-label: ACC, AUC, macro F1 over labels. ``class_names`` name undefined
    classes in the warning (default: their indices)."""
    names = list(class_names) if class_names is not None else [str(i) for i in range(probs.shape[1])]
    if task == MULTI_LABEL:
        table = per_label_table(probs, labels, names, split)
        auc, n_defined = summary_auc(probs, labels, task, table)
        return {"acc": float(getACC(labels, probs, task)), "auc": auc, "auc_defined_labels": n_defined,
                "f1_macro": table[-2]["f1"], "n": int(len(labels))}
    table = per_class_table(probs, labels, names, split)
    present = [row["recall"] for row in table[:-2] if row["support"] > 0]
    auc, n_defined = summary_auc(probs, labels, task, table)
    summary = {
        "acc": float(getACC(labels, probs, task)),
        "auc": auc,
        "auc_defined_labels": n_defined,
        "balanced_acc": float(np.mean(present)),  # mean recall over classes present (as sklearn)
        "f1_macro": table[-2]["f1"],
        "ece": expected_calibration_error(probs, labels),
        "n": int(len(labels)),
    }
    if task == BINARY:
        summary.update(positive_class_summary(probs, labels))
    return summary
