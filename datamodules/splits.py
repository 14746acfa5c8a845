"""Deterministic, stratified index splits.

Every split we make ourselves (re-split of train+val, label fractions, the MLO-MAE
level-II/III split) goes through these functions so that it is stratified and fully
determined by the seed.
"""

from __future__ import annotations

import numpy as np


def strata(labels: np.ndarray) -> np.ndarray:
    """One stratum id per sample, shape (N,).

    Single-label (N,) or (N, 1): the class. Multi-label (N, K): the index of the first
    positive label, or K for samples with no positive label (a coarse but stable proxy).
    """
    labels = np.asarray(labels)
    if labels.ndim == 1 or labels.shape[1] == 1:
        return labels.reshape(-1)
    has_pos = labels.any(axis=1)
    return np.where(has_pos, labels.argmax(axis=1), labels.shape[1])


def _check_fraction(name: str, value: float, allow_one: bool) -> None:
    upper_ok = value <= 1 if allow_one else value < 1
    if not (value > 0 and upper_ok):
        allowed = "(0, 1]" if allow_one else "(0, 1)"
        raise ValueError(f"{name}={value} is invalid; allowed range is {allowed}")


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int, name: str = "fraction"
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, part) with ``part`` holding ``round(fraction * n_c)`` of each class.

    Every class keeps at least one sample on both sides when it has two or more.
    Both index arrays are sorted. Deterministic given ``seed``.
    """
    _check_fraction(name, fraction, allow_one=False)
    rng = np.random.default_rng(seed)
    s = strata(labels)
    rest, part = [], []
    for c in np.unique(s):
        idx = rng.permutation(np.flatnonzero(s == c))
        k = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        part.append(idx[:k])
        rest.append(idx[k:])
    return np.sort(np.concatenate(rest)), np.sort(np.concatenate(part))


def label_fraction_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a stratified subset: ``max(1, round(fraction * n_c))`` per class."""
    _check_fraction("data.label_fraction", fraction, allow_one=True)
    if fraction == 1:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    s = strata(labels)
    keep = []
    for c in np.unique(s):
        idx = rng.permutation(np.flatnonzero(s == c))
        keep.append(idx[: max(1, int(round(fraction * len(idx))))])
    return np.sort(np.concatenate(keep))
