"""Per-class evaluation of saved predictions (pure numpy; no Lightning).

Inputs everywhere: ``probs`` (N, K) class probabilities (softmax), ``labels`` (N,) ints.
ACC and AUC follow ``medmnist.Evaluator`` exactly (its own functions are called).
"""

from __future__ import annotations

import numpy as np
from medmnist.evaluator import getACC, getAUC


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (K, K): row = true class, column = predicted class."""
    return np.bincount(labels * num_classes + preds, minlength=num_classes**2).reshape(num_classes, num_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=float), where=den > 0)


def per_class_table(probs: np.ndarray, labels: np.ndarray, class_names: list[str]) -> list[dict]:
    """One row per class (support, accuracy = recall, precision, recall, specificity, F1),
    then ``macro avg`` (unweighted mean) and ``weighted avg`` (weighted by support).

    A class that is never predicted has precision 0 (and F1 0), as in scikit-learn.
    """
    k = len(class_names)
    cm = confusion_matrix(labels, probs.argmax(1), k).astype(float)
    tp = np.diag(cm)
    support, predicted, total = cm.sum(1), cm.sum(0), cm.sum()
    fp, fn = predicted - tp, support - tp
    tn = total - tp - fp - fn
    recall, precision = _ratio(tp, support), _ratio(tp, predicted)
    specificity = _ratio(tn, tn + fp)
    f1 = _ratio(2 * precision * recall, precision + recall)
    cols = {"accuracy": recall, "precision": precision, "recall": recall, "specificity": specificity, "f1": f1}
    rows = [{"class": name, "support": int(support[i]), **{c: float(v[i]) for c, v in cols.items()}}
            for i, name in enumerate(class_names)]
    weights = support / max(total, 1)
    rows.append({"class": "macro avg", "support": int(total), **{c: float(v.mean()) for c, v in cols.items()}})
    rows.append({"class": "weighted avg", "support": int(total),
                 **{c: float((v * weights).sum()) for c, v in cols.items()}})
    return rows


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
    """ECE: sum over bins of (count / N) * |accuracy - confidence|."""
    b = reliability_bins(probs, labels, n_bins)
    return float((b["count"] / b["count"].sum() * np.abs(b["accuracy"] - b["confidence"])).sum())


def summary_metrics(probs: np.ndarray, labels: np.ndarray, task: str) -> dict[str, float]:
    """ACC and AUC as medmnist.Evaluator defines them, balanced accuracy, macro F1, ECE."""
    table = per_class_table(probs, labels, [str(i) for i in range(probs.shape[1])])
    present = [row["recall"] for row in table[:-2] if row["support"] > 0]
    return {
        "acc": float(getACC(labels, probs, task)),
        "auc": float(getAUC(labels, probs, task)),
        "balanced_acc": float(np.mean(present)),  # mean recall over classes present (as sklearn)
        "f1_macro": table[-2]["f1"],
        "ece": expected_calibration_error(probs, labels),
        "n": int(len(labels)),
    }
