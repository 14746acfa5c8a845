"""Decision-threshold tuning for rare-class sensitivity, fitted on validation only.

- binary: a threshold on the positive-class probability maximising F1, Youden's J, or
  reaching a target sensitivity;
- multi-class: per-class offsets added to the log-probabilities (coordinate ascent over
  a grid) maximising macro F1 or balanced accuracy;
- multi-label: one threshold per label on its probability, each fitted as a binary threshold
  (F1, Youden's J or a target sensitivity); a label with no positive or no negative in
  validation keeps 0.5.
The fitting functions take ``SplitPredictions`` and refuse any split but ``val``, so
test data cannot leak into the tuning. ``decision_rule`` turns a tuning into the rule stored
in checkpoints and exports; ``apply_decision`` applies it (or the default argmax / 0.5).
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


def fit_label_thresholds(val: SplitPredictions, objective: str = "f1", target_sensitivity: float = 0.9
                         ) -> tuple[np.ndarray, list[int]]:
    """Per-label thresholds (K,) of multi-label probabilities (N, K) with 0 / 1 labels (N, K), each
    ``fit_binary_threshold`` of its label; and the labels left at 0.5 because validation has no
    positive or no negative for them (nothing to fit)."""
    _require_val(val)
    labels = np.asarray(val.labels).reshape(len(val.probs), -1)
    thresholds, undefined = np.full(val.probs.shape[1], 0.5), []
    for k in range(val.probs.shape[1]):
        y = labels[:, k].astype(int)
        if y.min() == y.max():
            undefined.append(k)
            continue
        two = np.stack([1 - val.probs[:, k], val.probs[:, k]], axis=1)
        thresholds[k] = fit_binary_threshold(SplitPredictions(two, y, "val"), objective, target_sensitivity)
    return thresholds, undefined


def _label_scores(labels: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Macro F1 / sensitivity / specificity over labels and the exact-match ratio of (N, K) 0 / 1 decisions."""
    per = [_binary_scores(labels[:, k].astype(int), pred[:, k].astype(int)) for k in range(labels.shape[1])]
    return {"macro_f1": float(np.mean([s["f1"] for s in per])),
            "macro_sensitivity": float(np.mean([s["sensitivity"] for s in per])),
            "macro_specificity": float(np.mean([s["specificity"] for s in per])),
            "exact_match": float((pred == labels).all(1).mean())}


def tuned_comparison(val: SplitPredictions, test: SplitPredictions, objective: str | None = None) -> dict:
    """Fit on ``val``, apply to ``test``; returns the rule and untuned vs tuned test scores.
    Multi-label predictions (labels (N, K)) get per-label thresholds (``fit_label_thresholds``)."""
    k = val.probs.shape[1]
    if np.asarray(val.labels).ndim == 2:
        objective = objective or "f1"
        thresholds, undefined = fit_label_thresholds(val, objective)
        labels = np.asarray(test.labels).astype(int)
        return {"kind": "label thresholds", "objective": objective, "thresholds": thresholds.tolist(),
                "undefined_in_val": undefined,
                "untuned": _label_scores(labels, (test.probs >= 0.5).astype(int)),
                "tuned": _label_scores(labels, (test.probs >= thresholds).astype(int))}
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


def decision_rule(tuning: dict) -> dict:
    """The rule of a ``tuned_comparison`` as stored in checkpoints and exports:
    ``{"kind": "binary_threshold", "threshold": t}`` (predict class 1 when P(class 1) >= t),
    ``{"kind": "class_offsets", "offsets": [K]}`` (argmax of log p + offset) or
    ``{"kind": "label_thresholds", "thresholds": [K]}`` (label k when p_k >= t_k); with the
    ``objective`` and ``fitted_on: "validation"``."""
    kinds = {"binary threshold": ("binary_threshold", "threshold"), "class offsets": ("class_offsets", "offsets"),
             "label thresholds": ("label_thresholds", "thresholds")}
    kind, key = kinds[tuning["kind"]]
    return {"kind": kind, key: tuning[key], "objective": tuning["objective"], "fitted_on": "validation"}


def apply_decision(probs: np.ndarray, rule: dict | None, multi_label: bool) -> np.ndarray:
    """Decisions of probabilities (N, K) by a ``decision_rule`` (None: the default, argmax or
    p >= 0.5 per label): class indices (N,), or (N, K) bool for multi-label."""
    kind = (rule or {}).get("kind")
    if multi_label:
        return probs >= (np.asarray(rule["thresholds"]) if kind == "label_thresholds" else 0.5)
    if kind == "binary_threshold":
        return binary_predict(probs, float(rule["threshold"]))
    if kind == "class_offsets":
        return offset_predict(probs, np.asarray(rule["offsets"]))
    return probs.argmax(1)
