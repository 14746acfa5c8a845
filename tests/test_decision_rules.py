"""Decision rules tuned on validation (evaluation/thresholds.py): per-label thresholds of
multi-label models against sklearn's F1, and the stored rule applied as it was fitted."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from evaluation.thresholds import (
    SplitPredictions,
    apply_decision,
    decision_rule,
    fit_label_thresholds,
    tuned_comparison,
)


def _multi_label(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(probs (n, 3), labels (n, 3)); label 2 has no positive."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 3)) < [0.2, 0.5, 0.0]).astype(int)
    probs = np.clip(0.35 * labels + rng.random((n, 3)) * 0.6, 0, 1)
    return probs, labels


def test_label_thresholds_maximise_sklearn_f1_per_label_and_skip_undefined_labels():
    probs, labels = _multi_label()
    thresholds, undefined = fit_label_thresholds(SplitPredictions(probs, labels, "val"), "f1")
    assert undefined == [2] and thresholds[2] == 0.5  # no positive in validation: nothing to fit
    for k in (0, 1):
        candidates = np.unique(np.r_[probs[:, k], 0.5])
        best = max(f1_score(labels[:, k], probs[:, k] >= t) for t in candidates)
        assert f1_score(labels[:, k], probs[:, k] >= thresholds[k]) == pytest.approx(best)
        assert f1_score(labels[:, k], probs[:, k] >= thresholds[k]) > f1_score(labels[:, k], probs[:, k] >= 0.5)
    with pytest.raises(ValueError, match="validation predictions only"):
        fit_label_thresholds(SplitPredictions(probs, labels, "test"))


def test_multi_label_tuning_reports_sklearn_macro_f1_and_its_stored_rule_decides_the_same():
    probs, labels = _multi_label(seed=1)
    test_probs, test_labels = _multi_label(seed=2)
    tuning = tuned_comparison(SplitPredictions(probs, labels, "val"), SplitPredictions(test_probs, test_labels, "test"))
    t = np.asarray(tuning["thresholds"])
    assert tuning["kind"] == "label thresholds" and tuning["undefined_in_val"] == [2]
    assert tuning["tuned"]["macro_f1"] == pytest.approx(
        f1_score(test_labels, test_probs >= t, average="macro", zero_division=0))
    assert tuning["untuned"]["macro_f1"] == pytest.approx(
        f1_score(test_labels, test_probs >= 0.5, average="macro", zero_division=0))
    rule = decision_rule(tuning)
    assert rule == {"kind": "label_thresholds", "thresholds": tuning["thresholds"], "objective": "f1",
                    "fitted_on": "validation"}
    np.testing.assert_array_equal(apply_decision(test_probs, rule, multi_label=True), test_probs >= t)
    np.testing.assert_array_equal(apply_decision(probs, rule, multi_label=True), probs >= t)  # ties: at t is positive
    np.testing.assert_array_equal(apply_decision(test_probs, None, multi_label=True), test_probs >= 0.5)


def test_single_label_rules_decide_as_fitted():
    probs = np.array([[0.7, 0.3], [0.45, 0.55], [0.2, 0.8]])
    binary = {"kind": "binary_threshold", "threshold": 0.6}
    np.testing.assert_array_equal(apply_decision(probs, binary, multi_label=False), [0, 0, 1])
    np.testing.assert_array_equal(apply_decision(probs, None, multi_label=False), [0, 1, 1])
    three = np.array([[0.5, 0.3, 0.2], [0.4, 0.35, 0.25]])
    offsets = {"kind": "class_offsets", "offsets": [0.0, np.log(2), 0.0]}  # class 1's probability counts twice
    np.testing.assert_array_equal(apply_decision(three, offsets, multi_label=False), [1, 1])
