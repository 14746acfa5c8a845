"""The test set's own sampling noise in a paired, multi-seed comparison.

Arms A and B are tested on the same N images with S seeds each. For a metric M, the paired
difference of seed s is ``d_s = M(A_s) - M(B_s)``. ``image_variance`` returns the variance over
test sets (images drawn from the same population) of

- ``of_mean``: the seed-averaged difference ``mean_s d_s``;
- ``per_seed``: one seed's ``d_s``, averaged over seeds;

which ``statistics.seeds_images_test`` combines with the seed-to-seed spread. Binary AUC uses
DeLong's structural components (``delong.py``, exact for the U-statistic); every other metric
(multi-class macro AUC over the classes present in the test split, accuracy, balanced
accuracy) a paired bootstrap of the images,
stratified by class (the same resample for every seed and arm, so the shared image noise is
kept and the arms stay paired).

Outputs per seed and arm: ``scores`` (N,) positive-class probabilities (binary) or (N, K)
class probabilities for ``auc``; ``predictions`` (N,) class decisions for ``acc`` / ``bal_acc``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.undefined_classes import warn_undefined
from evaluation.delong import placements

RANKING_METRICS = ("auc",)
DECISION_METRICS = ("acc", "bal_acc")
METRICS = RANKING_METRICS + DECISION_METRICS


@dataclass(frozen=True)
class ImageVariance:
    of_mean: float
    per_seed: float
    method: str


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} has no test-set variance here; allowed: {list(METRICS)}")


def weighted_binary_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC (B,) of ``scores`` (N,) for the bools ``positive`` (N,) with image weights (B, N)
    (bootstrap counts); ties count one half. NaN where a replicate has no positive or negative."""
    order = np.argsort(scores, kind="stable")
    s, pos, w = scores[order], positive[order], weights[:, order].astype(float)
    neg_w = np.where(pos, 0.0, w)
    cum = np.concatenate([np.zeros((len(w), 1)), np.cumsum(neg_w, axis=1)], axis=1)  # (B, N + 1)
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]  # first index of each run of tied scores
    run = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(s)]))
    start, end = starts[run], np.r_[starts[1:], len(s)][run]
    below = cum[:, start]
    tied = cum[:, end] - below
    pos_w = np.where(pos, w, 0.0)
    num = (pos_w * (below + 0.5 * tied)).sum(axis=1)
    den = pos_w.sum(axis=1) * neg_w.sum(axis=1)
    return np.divide(num, den, out=np.full(len(w), np.nan), where=den > 0)


def weighted_metric(metric: str, output: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``metric`` (B,) of one seed-arm's ``output`` under image weights (B, N)."""
    if metric == "acc":
        return weights @ (output == labels) / weights.sum(axis=1)
    classes = np.unique(labels)
    if metric == "bal_acc":
        recalls = [weights[:, labels == c] @ (output[labels == c] == c) / weights[:, labels == c].sum(axis=1)
                   for c in classes]
        return np.mean(recalls, axis=0)
    if output.ndim == 1:  # binary: positive-class scores
        return weighted_binary_auc(output, labels == 1, weights)
    k = output.shape[1]
    warn_undefined("test", [f"class {c}" for c in range(k)], np.bincount(labels, minlength=k), len(labels))
    per_class = np.stack([weighted_binary_auc(output[:, c], labels == c, weights) for c in range(k)])
    defined = np.isfinite(per_class).any(axis=1)  # a class absent from the split: out of the macro mean
    return per_class[defined].mean(axis=0) if defined.any() else np.full(len(weights), np.nan)


def metric_value(metric: str, output: np.ndarray, labels: np.ndarray) -> float:
    """``metric`` of one seed-arm's output on all images (the unweighted case)."""
    _check_metric(metric)
    return float(weighted_metric(metric, np.asarray(output), np.asarray(labels).reshape(-1),
                                 np.ones((1, len(labels))))[0])


def stratified_counts(labels: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap counts (n_boot, N): each class's images resampled with replacement within it."""
    counts = np.zeros((n_boot, len(labels)))
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        counts[:, idx] = rng.multinomial(len(idx), np.full(len(idx), 1 / len(idx)), size=n_boot)
    return counts


def image_variance(metric: str, outputs_a, outputs_b, labels, n_boot: int = 2000, seed: int = 0) -> ImageVariance:
    """Test-image variance of the paired difference (module docstring); ``outputs_a`` /
    ``outputs_b``: one output per seed, in the same seed order."""
    _check_metric(metric)
    a, b = np.asarray(outputs_a), np.asarray(outputs_b)
    y = np.asarray(labels).reshape(-1)
    if a.shape != b.shape or a.shape[1] != len(y):
        raise ValueError(f"outputs need shape (seeds, {len(y)}[, K]) in both arms, got {a.shape} and {b.shape}")
    n = len(a)
    if metric == "auc" and a.ndim == 2:  # binary scores: DeLong
        comps = placements(np.concatenate([a, b]), y)
        mean_w = np.r_[np.full(n, 1 / n), np.full(n, -1 / n)]
        per_seed = [comps.combined_variance(np.eye(2 * n)[s] - np.eye(2 * n)[n + s]) for s in range(n)]
        return ImageVariance(comps.combined_variance(mean_w), float(np.mean(per_seed)), "DeLong")
    w = stratified_counts(y, n_boot, np.random.default_rng(seed))
    diffs = np.stack([weighted_metric(metric, a[s], y, w) - weighted_metric(metric, b[s], y, w) for s in range(n)])
    return ImageVariance(float(np.nanvar(diffs.mean(axis=0), ddof=1)),
                         float(np.mean(np.nanvar(diffs, axis=1, ddof=1))), f"image bootstrap ({n_boot}, stratified)")
