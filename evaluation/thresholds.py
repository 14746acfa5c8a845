"""Decision-threshold tuning for rare-class sensitivity, fitted on validation only.

- binary: a threshold on the positive-class probability maximising F1, Youden's J, or
  reaching a target sensitivity;
- multi-class: per-class offsets added to the log-probabilities (coordinate ascent over
  a grid) maximising macro F1 or balanced accuracy.
The fitting functions take ``SplitPredictions`` and refuse any split but ``val``, so
test data cannot leak into the tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evaluation.metrics import confusion_matrix

BINARY_OBJECTIVES = ("f1", "youden", "sensitivity")
MULTICLASS_OBJECTIVES = ("macro_f1", "balanced_acc")


@dataclass(frozen=True)
class SplitPredictions:
    """Probabilities (N, K), labels (N,) and the split they come from."""

    probs: np.ndarray
    labels: np.ndarray
    split: str


def _require_val(preds: SplitPredictions) -> None:
    if preds.split != "val":
        raise ValueError(f"thresholds are fitted on validation predictions only, got split={preds.split!r}")


def binary_predict(probs: np.ndarray, threshold: float) -> np.ndarray:
    return (probs[:, 1] >= threshold).astype(int)


def _binary_scores(labels: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    tp = int(((pred == 1) & (labels == 1)).sum())
    fn = int(((pred == 0) & (labels == 1)).sum())
    fp = int(((pred == 1) & (labels == 0)).sum())
    tn = int(((pred == 0) & (labels == 0)).sum())
    sens = tp / max(tp + fn, 1)
    spec = tn / max(tn + fp, 1)
    return {"f1": 2 * tp / max(2 * tp + fp + fn, 1), "youden": sens + spec - 1, "sensitivity": sens,
            "specificity": spec}


def fit_binary_threshold(val: SplitPredictions, objective: str = "f1", target_sensitivity: float = 0.9) -> float:
    """Threshold on P(positive) from the candidates {validation probabilities, 0.5}.

    ``sensitivity``: the highest threshold whose validation sensitivity >= the target.
    """
    _require_val(val)
    if objective not in BINARY_OBJECTIVES:
        raise ValueError(f"objective={objective!r} is invalid; allowed: {list(BINARY_OBJECTIVES)}")
    candidates = np.unique(np.concatenate([val.probs[:, 1], [0.5]]))
    scores = [_binary_scores(val.labels, binary_predict(val.probs, t)) for t in candidates]
    if objective == "sensitivity":
        ok = [t for t, s in zip(candidates, scores) if s["sensitivity"] >= target_sensitivity]
        return float(max(ok)) if ok else float(candidates.min())
    return float(candidates[int(np.argmax([s[objective] for s in scores]))])


def offset_predict(probs: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    return (np.log(np.clip(probs, 1e-12, 1)) + offsets).argmax(1)


def _multiclass_score(labels: np.ndarray, pred: np.ndarray, k: int, objective: str) -> float:
    """Balanced accuracy (mean recall over the classes present) or macro F1 (F1 = 2 TP / (support +
    predicted), 0 where both are 0, as ``per_class_table``) of the decision ``pred`` (N,)."""
    cm = confusion_matrix(labels, pred, k)
    tp, support, predicted = np.diag(cm).astype(float), cm.sum(1), cm.sum(0)
    if objective == "balanced_acc":
        return float(np.mean(tp[support > 0] / support[support > 0]))
    return float(np.mean(np.divide(2 * tp, support + predicted, out=np.zeros(k), where=support + predicted > 0)))


def fit_class_offsets(
    val: SplitPredictions, objective: str = "macro_f1", grid: np.ndarray | None = None, rounds: int = 3
) -> np.ndarray:
    """Per-class log-probability offsets (K,) by coordinate ascent; starts at 0 (argmax)."""
    _require_val(val)
    if objective not in MULTICLASS_OBJECTIVES:
        raise ValueError(f"objective={objective!r} is invalid; allowed: {list(MULTICLASS_OBJECTIVES)}")
    k = val.probs.shape[1]
    grid = np.linspace(-3, 3, 25) if grid is None else grid
    offsets = np.zeros(k)
    best = _multiclass_score(val.labels, offset_predict(val.probs, offsets), k, objective)
    for _ in range(rounds):
        improved = False
        for c in range(k):
            for value in grid:
                trial = offsets.copy()
                trial[c] = value
                score = _multiclass_score(val.labels, offset_predict(val.probs, trial), k, objective)
                if score > best + 1e-12:
                    best, offsets, improved = score, trial, True
        if not improved:
            break
    return offsets


def tuned_comparison(val: SplitPredictions, test: SplitPredictions, objective: str | None = None) -> dict:
    """Fit on ``val``, apply to ``test``; returns the rule and untuned vs tuned test scores."""
    k = val.probs.shape[1]
    untuned = test.probs.argmax(1)
    if k == 2:
        objective = objective or "f1"
        threshold = fit_binary_threshold(val, objective)
        tuned = binary_predict(test.probs, threshold)
        return {"kind": "binary threshold", "objective": objective, "threshold": threshold,
                "untuned": _binary_scores(test.labels, untuned), "tuned": _binary_scores(test.labels, tuned)}
    objective = objective or "macro_f1"
    offsets = fit_class_offsets(val, objective)
    tuned = offset_predict(test.probs, offsets)

    def scores(pred):
        return {name: _multiclass_score(test.labels, pred, k, name) for name in MULTICLASS_OBJECTIVES} | {
            "acc": float((pred == test.labels).mean())}

    return {"kind": "class offsets", "objective": objective, "offsets": offsets.tolist(),
            "untuned": scores(untuned), "tuned": scores(tuned)}
