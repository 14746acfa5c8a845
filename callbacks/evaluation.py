"""Per-class evaluation of saved predictions (pure numpy; no Lightning).

Inputs everywhere: ``probs`` (N, K) class probabilities (softmax), ``labels`` (N,) ints.
ACC and AUC follow ``medmnist.Evaluator`` exactly (its own functions are called).
Binary tasks (class 1 positive) also get positive-class metrics, see ``binary_metrics``.
"""

from __future__ import annotations

import numpy as np
from medmnist.evaluator import getACC, getAUC

from datamodules.medmnist_files import BINARY


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


def average_precision(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as scikit-learn's ``average_precision_score``:
    sum over the distinct score thresholds t (high to low) of (R_t - R_previous) * P_t.

    ``positive`` (N,) bools, ``scores`` (N,). 0.0 when there is no positive (as scikit-learn).
    """
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, hits = scores[order], positive[order].astype(float)
    last = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]  # last index of each distinct score
    tp = np.cumsum(hits)[last]
    if len(tp) == 0 or tp[-1] == 0:
        return 0.0
    precision, recall = tp / (last + 1), tp / tp[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def binary_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Positive-class (class 1) precision, recall (sensitivity), specificity and F1 of
    ``probs[:, 1] > threshold``, and AUPRC (average precision of ``probs[:, 1]``).

    ``probs`` (N, 2), ``labels`` (N,). A ratio with a zero denominator is 0, as in scikit-learn.
    At 0.5 the decision is medmnist's (its binary ACC thresholds ``probs[:, -1] > 0.5``) and
    argmax's, up to float rounding of a probability at 0.5.
    """
    positive, predicted = labels == 1, probs[:, 1] > threshold
    tp, fp = np.sum(predicted & positive), np.sum(predicted & ~positive)
    fn, tn = np.sum(~predicted & positive), np.sum(~predicted & ~positive)
    num = np.array([tp, tp, tn, 2 * tp], dtype=float)
    ratios = _ratio(num, np.array([tp + fp, tp + fn, tn + fp, 2 * tp + fp + fn]))
    return {
        **{name: float(v) for name, v in zip(("precision", "recall", "specificity", "f1"), ratios)},
        "auprc": average_precision(positive, probs[:, 1]),
    }


def summary_metrics(probs: np.ndarray, labels: np.ndarray, task: str) -> dict[str, float]:
    """ACC and AUC as medmnist.Evaluator defines them, balanced accuracy, macro F1, ECE; for
    binary tasks also the positive-class ``binary_metrics`` (ACC and AUC then already are the
    positive-class accuracy and AUROC)."""
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
