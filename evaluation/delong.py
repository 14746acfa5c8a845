"""DeLong's variance of AUCs measured on one test set (DeLong, DeLong & Clarke-Pearson, 1988).

An AUC is a two-sample U-statistic: the mean over (positive, negative) pairs of
psi(x, y) = 1 if x > y, 1/2 if x == y, 0 otherwise. Its structural components are the
placement values V10(x_i) = mean_j psi(x_i, y_j) (one per positive) and V01(y_j) =
mean_i psi(x_i, y_j) (one per negative); the variance of the AUC over test sets is estimated
by S10 / m + S01 / n (sample variances of the components; m positives, n negatives).

Any linear combination of AUCs of several score vectors on the *same* images (two arms, the
mean over seeds of a paired difference) is again such a U-statistic whose components are the
same combination of the components, so its variance comes out the same way: this is how the
comparison engine counts the test set's own sampling noise. The components are computed from
midranks (Sun & Xu, 2014), O(N log N) per score vector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata


@dataclass(frozen=True)
class Placements:
    """Structural components of K score vectors: ``v10`` (K, m) over the positives, ``v01``
    (K, n) over the negatives; ``auc`` (K,) is the mean of either."""

    v10: np.ndarray
    v01: np.ndarray

    @property
    def auc(self) -> np.ndarray:
        return self.v10.mean(axis=1)

    def combined_variance(self, weights: np.ndarray) -> float:
        """DeLong variance of ``weights @ auc`` (weights (K,)): S10 / m + S01 / n of the
        combined components."""
        w = np.asarray(weights, dtype=float)
        if w.shape != (len(self.v10),):
            raise ValueError(f"need one weight per score vector ({len(self.v10)}), got shape {w.shape}")
        v10, v01 = w @ self.v10, w @ self.v01
        return float(v10.var(ddof=1) / v10.size + v01.var(ddof=1) / v01.size)


def placements(scores: np.ndarray, labels: np.ndarray) -> Placements:
    """Placement values of ``scores`` (N,) or (K, N) (higher = more likely positive) for the
    binary ``labels`` (N,) in {0, 1}; ties count one half."""
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    labels = np.asarray(labels).reshape(-1)
    if scores.shape[1] != len(labels):
        raise ValueError(f"scores have {scores.shape[1]} images, labels {len(labels)}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 / 1 (1 = positive)")
    pos, neg = labels == 1, labels == 0
    m, n = int(pos.sum()), int(neg.sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong's variance needs at least 2 positives and 2 negatives, got {m} and {n}")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    overall = rankdata(scores, axis=1)  # midranks over all N images
    within_pos = rankdata(scores[:, pos], axis=1)
    within_neg = rankdata(scores[:, neg], axis=1)
    v10 = (overall[:, pos] - within_pos) / n  # negatives below each positive (ties 1/2), / n
    v01 = 1.0 - (overall[:, neg] - within_neg) / m  # positives above each negative, / m
    return Placements(v10, v01)


def auc_variance(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(AUC, DeLong variance) of one score vector (N,)."""
    p = placements(scores, labels)
    return float(p.auc[0]), p.combined_variance(np.ones(1))


def paired_auc_test(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """DeLong's test of AUC(a) - AUC(b) on the same images: ``diff``, ``se``, ``z`` and the
    two-sided ``p`` (normal approximation)."""
    p = placements(np.stack([scores_a, scores_b]), labels)
    diff = float(p.auc[0] - p.auc[1])
    se = float(np.sqrt(p.combined_variance(np.array([1.0, -1.0]))))
    z = diff / se if se > 0 else math.copysign(math.inf, diff) if diff else 0.0  # no noise: any difference is certain
    return {"diff": diff, "se": se, "z": z, "p": float(2 * norm.sf(abs(z)))}
