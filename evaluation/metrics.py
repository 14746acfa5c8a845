"""Per-class evaluation of saved predictions, computed with torchmetrics.

Inputs everywhere: ``probs`` (N, K) probabilities (softmax; per-label sigmoid for
multi-label tasks), ``labels`` (N,) ints or (N, K) 0/1 for multi-label. Outputs are numpy
/ Python numbers. ACC and AUC follow ``medmnist.Evaluator`` exactly (its own functions are
called). Binary tasks (class 1 positive) also get positive-class metrics, see
``binary_metrics``. A ratio with a zero denominator is 0, as in scikit-learn.
"""

from __future__ import annotations

import numpy as np
import torch
from medmnist.evaluator import getACC, getAUC
from torchmetrics.functional import classification as tmf

from core.tasks import BINARY, MULTI_LABEL

TABLE_COLUMNS = ("class", "support", "accuracy", "precision", "recall", "specificity", "f1", "auroc", "ap")


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x))


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (K, K): row = true class, column = predicted class."""
    return tmf.multiclass_confusion_matrix(_t(preds).long(), _t(labels).long(), num_classes).numpy()


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=float), where=den > 0)


def _rows(names: list[str], support: np.ndarray, cols: dict[str, np.ndarray]) -> list[dict]:
    """One row per class / label, then ``macro avg`` (unweighted) and ``weighted avg`` (by support)."""
    rows = [{"class": name, "support": int(support[i]), **{c: float(v[i]) for c, v in cols.items()}}
            for i, name in enumerate(names)]
    weights = support / max(support.sum(), 1)
    total = int(support.sum())
    rows.append({"class": "macro avg", "support": total, **{c: float(v.mean()) for c, v in cols.items()}})
    rows.append({"class": "weighted avg", "support": total, **{c: float((v * weights).sum()) for c, v in cols.items()}})
    return rows


def per_class_table(probs: np.ndarray, labels: np.ndarray, class_names: list[str]) -> list[dict]:
    """Single-label tasks: one row per class (support, accuracy = recall, precision, recall,
    specificity, F1 of the argmax decision; one-vs-rest AUROC and average precision), then
    ``macro avg`` and ``weighted avg``. A class that is never predicted has precision 0 (and
    F1 0); a class absent from ``labels`` has AUROC and AP 0."""
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
        **_ranking(p, y, k, multi_label=False),
    }
    return _rows(class_names, np.bincount(np.asarray(labels).reshape(-1), minlength=k), cols)


def per_label_table(probs: np.ndarray, labels: np.ndarray, label_names: list[str]) -> list[dict]:
    """Multi-label tasks: one row per label (support = positives; accuracy, precision, recall,
    specificity and F1 of ``probs > 0.5``; AUROC and average precision), then the averages."""
    k = len(label_names)
    p, y = _t(probs).double(), _t(labels).long()  # fp64: tiny probabilities keep their order
    kw = {"num_labels": k, "average": None, "zero_division": 0}
    cols = {
        "accuracy": tmf.multilabel_accuracy(p, y, num_labels=k, average=None).numpy(),
        "precision": tmf.multilabel_precision(p, y, **kw).numpy(),
        "recall": tmf.multilabel_recall(p, y, **kw).numpy(),
        "specificity": tmf.multilabel_specificity(p, y, num_labels=k, average=None).numpy(),
        "f1": tmf.multilabel_f1_score(p, y, **kw).numpy(),
        **_ranking(p, y, k, multi_label=True),
    }
    return _rows(label_names, np.asarray(labels).sum(axis=0).astype(int), cols)


def _ranking(p: torch.Tensor, y: torch.Tensor, k: int, multi_label: bool) -> dict[str, np.ndarray]:
    """One-vs-rest AUROC and average precision per class / label; 0 where a class has no
    positive (or no negative) sample, where both are undefined."""
    onehot = y if multi_label else torch.nn.functional.one_hot(y, k)
    auroc, ap = np.zeros(k), np.zeros(k)
    for c in range(k):
        pos = int(onehot[:, c].sum())
        if 0 < pos < len(onehot):
            auroc[c] = float(tmf.binary_auroc(p[:, c], onehot[:, c]))
            ap[c] = float(tmf.binary_average_precision(p[:, c], onehot[:, c]))
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
    ``scores`` (N,). 0.0 when there is no positive (as scikit-learn)."""
    if not np.any(positive):
        return 0.0
    return float(tmf.binary_average_precision(_t(scores).float(), _t(positive).long()))


def binary_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Positive-class (class 1) precision, recall (sensitivity), specificity and F1 of
    ``probs[:, 1] > threshold``, and AUPRC (average precision of ``probs[:, 1]``).

    ``probs`` (N, 2), ``labels`` (N,). At 0.5 the decision is medmnist's (its binary ACC
    thresholds ``probs[:, -1] > 0.5``) and argmax's, up to float rounding at exactly 0.5.
    """
    decision, y = _t(probs[:, 1] > threshold).long(), _t(labels).long()  # strict ">" as medmnist
    kw = {"threshold": 0.5, "zero_division": 0}
    return {
        "precision": float(tmf.binary_precision(decision, y, **kw)),
        "recall": float(tmf.binary_recall(decision, y, **kw)),
        "specificity": float(tmf.binary_specificity(decision, y, threshold=0.5)),
        "f1": float(tmf.binary_f1_score(decision, y, **kw)),
        "auprc": average_precision(labels == 1, probs[:, 1]),
    }


def summary_metrics(probs: np.ndarray, labels: np.ndarray, task: str) -> dict[str, float]:
    """ACC and AUC as medmnist.Evaluator defines them, balanced accuracy, macro F1, ECE; for
    binary tasks also the positive-class ``binary_metrics`` (ACC and AUC then already are the
    positive-class accuracy and AUROC). Multi-label: ACC, AUC, macro F1 over labels."""
    if task == MULTI_LABEL:
        table = per_label_table(probs, labels, [str(i) for i in range(probs.shape[1])])
        return {"acc": float(getACC(labels, probs, task)), "auc": float(getAUC(labels, probs, task)),
                "f1_macro": table[-2]["f1"], "n": int(len(labels))}
    table = per_class_table(probs, labels, [str(i) for i in range(probs.shape[1])])
    present = [row["recall"] for row in table[:-2] if row["support"] > 0]
    summary = {
        "acc": float(getACC(labels, probs, task)),
        "auc": float(getAUC(labels, probs, task)),
        "balanced_acc": float(np.mean(present)),  # mean recall over classes present (as sklearn)
        "f1_macro": table[-2]["f1"],
        "ece": expected_calibration_error(probs, labels),
        "n": int(len(labels)),
    }
    if task == BINARY:
        summary.update(binary_metrics(probs, labels))
    return summary
