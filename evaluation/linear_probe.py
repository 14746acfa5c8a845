"""Linear probing of frozen features, and the per-image test outputs a comparison keeps.

``fit_probe``: standardised features, scikit-learn's logistic regression for each C of a grid,
the C with the best validation AUC (macro one-vs-rest for several classes); test is not looked
at. ``downstream_outputs``: from validation and test probabilities, the metrics a comparison
tabulates and the per-image test outputs its statistics resample (``test_set_noise``).
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from evaluation.test_set_noise import metric_value
from evaluation.thresholds import SplitPredictions, binary_predict, fit_binary_threshold


def auc_of(probs: np.ndarray, labels: np.ndarray) -> float:
    """Binary: AUROC of the positive-class column; several classes: macro one-vs-rest AUROC
    (medmnist's definition) over the classes that have positives and negatives here."""
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return metric_value("auc", probs, labels)


def fit_probe(features: dict[str, np.ndarray], labels: dict[str, np.ndarray], c_grid, num_classes: int,
              max_iter: int = 3000) -> tuple[float, dict[str, np.ndarray]]:
    """(chosen C, {"val": probs, "test": probs}) of a logistic regression on ``features["train"]``
    (N, F) with ``labels["train"]`` (N,); C maximises the validation AUC. Probabilities are
    (N, ``num_classes``), one column per class index (0 for a class the training labels lack)."""
    scaler = StandardScaler().fit(features["train"])
    x = {split: scaler.transform(f) for split, f in features.items()}
    fits = {c: LogisticRegression(C=c, max_iter=max_iter).fit(x["train"], labels["train"]) for c in c_grid}

    def probs(c: float, split: str) -> np.ndarray:
        out = np.zeros((len(x[split]), num_classes))
        out[:, fits[c].classes_] = fits[c].predict_proba(x[split])
        return out

    best = max(c_grid, key=lambda c: auc_of(probs(c, "val"), labels["val"]))
    return float(best), {split: probs(best, split) for split in ("val", "test")}


def downstream_outputs(val_probs: np.ndarray, val_labels: np.ndarray, test_probs: np.ndarray,
                       test_labels: np.ndarray) -> dict:
    """Metrics and per-image test outputs of one downstream unit.

    - ``scores``: positive-class probabilities (N,) for two classes, else (N, K), 6 decimals;
    - ``decisions``: binary: ``p1 >= t`` with t maximising Youden's J on validation; several
      classes: argmax. ``test_acc`` is medmnist's ACC (``p1 > 0.5`` / argmax), ``test_bal_acc``
      the balanced accuracy of ``decisions``.
    """
    binary = test_probs.shape[1] == 2
    scores = np.round(test_probs[:, 1] if binary else test_probs, 6)
    if binary:
        threshold = float(fit_binary_threshold(SplitPredictions(val_probs, val_labels, "val"), objective="youden"))
        decisions = binary_predict(test_probs, threshold)
        plain = (test_probs[:, 1] > 0.5).astype(int)
    else:
        threshold, decisions = None, test_probs.argmax(1)
        plain = decisions
    metrics = {"val_auc": auc_of(val_probs, val_labels), "test_auc": metric_value("auc", scores, test_labels),
               "test_acc": metric_value("acc", plain, test_labels),
               "test_bal_acc": metric_value("bal_acc", decisions, test_labels)}
    return {"metrics": metrics, "threshold": threshold,
            "test": {"scores": scores.tolist(), "decisions": decisions.astype(int).tolist()}}
