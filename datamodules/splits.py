"""Deterministic, stratified index splits.

Every split we make ourselves (re-split of train+val, label fractions, the MLO-MAE
level-II/III split) goes through these functions so that it is stratified and fully
determined by the seed.
"""

from __future__ import annotations

import hashlib

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
    """Sorted indices of a stratified subset: ``max(1, round(fraction * n_c))`` per class
    (multi-label (N, K) labels: ``iterative_split``'s share of every label)."""
    _check_fraction("data.label_fraction", fraction, allow_one=True)
    if fraction == 1:
        return np.arange(len(labels))
    if np.ndim(labels) == 2 and np.shape(labels)[1] > 1:
        return multilabel_subset(np.asarray(labels), fraction, seed)
    rng = np.random.default_rng(seed)
    s = strata(labels)
    keep = []
    for c in np.unique(s):
        idx = rng.permutation(np.flatnonzero(s == c))
        keep.append(idx[: max(1, int(round(fraction * len(idx))))])
    return np.sort(np.concatenate(keep))


def multilabel_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of ``iterative_split``'s ``fraction`` of a multi-label set (N, K), plus one
    positive row (seeded) of every label that the share would leave without one, as the
    single-label subset keeps at least one image per class."""
    rest, part = iterative_split(labels, fraction, seed)
    rng = np.random.default_rng(derived_seed(seed, "multilabel minimum"))
    chosen = set(part.tolist())
    for k in range(labels.shape[1]):
        if labels[:, k].any() and not labels[sorted(chosen), k].any():
            chosen.add(int(rng.choice(np.flatnonzero(labels[:, k]))))
    return np.array(sorted(chosen), dtype=np.int64)


def derived_seed(seed: int, purpose: str) -> int:
    """A 32-bit seed of its own for each purpose, so that no two splits share a random stream."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{purpose}".encode()).digest()[:4], "little")


def combined_strata(*columns: np.ndarray) -> np.ndarray:
    """One integer stratum per row for the combination of several label-like columns, (N,)."""
    keys = np.array(["\x1f".join(map(str, row)) for row in zip(*columns)])
    return np.unique(keys, return_inverse=True)[1].reshape(-1)


def grouped_stratified_split(
    strata_ids: np.ndarray, groups: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(rest, part) with about ``fraction`` of the rows in ``part``, whole groups only,
    stratified as well as the groups allow (scikit-learn's ``StratifiedGroupKFold``).

    ``fraction`` is taken as p/q with q <= min(20, number of groups): the rows of p of q
    folds form ``part``.
    """
    from fractions import Fraction

    from sklearn.model_selection import StratifiedGroupKFold

    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ValueError(f"a grouped split needs at least 2 groups, found {n_groups}")
    ratio = Fraction(fraction).limit_denominator(min(20, n_groups))
    if ratio.numerator == 0 or ratio == 1:
        raise ValueError(f"{n_groups} groups cannot be split {fraction:.3f} / {1 - fraction:.3f}; "
                         "use more groups or other data.fractions")
    folds = StratifiedGroupKFold(n_splits=ratio.denominator, shuffle=True, random_state=seed)
    chosen = [test for _, (_, test) in zip(range(ratio.numerator), folds.split(strata_ids, strata_ids, groups))]
    part = np.sort(np.concatenate(chosen))
    return np.setdiff1d(np.arange(len(strata_ids)), part), part


def iterative_split(
    labels: np.ndarray, fraction: float, seed: int, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(rest, part) of a multi-label set (labels (N, K) 0 / 1) by iterative stratification
    (Sechidis, Tsoumakas and Vlahavas, ECML PKDD 2011): ``part`` gets about ``fraction`` of the
    rows and of every label's positives, the rarest labels placed first.

    The units placed are rows, or whole groups (``groups``, (N,)), whose label counts are
    their rows' sums. Each step takes the label with the fewest positives left among the
    unplaced units, and gives each unit holding it (in a seeded random order) to the side that
    still wants the most of that label (ties: the side that wants the most rows, then the seed).
    Units with no positive label fill the side that wants the most rows. Sorted indices.
    """
    _check_fraction("fraction", fraction, allow_one=False)
    y = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    if groups is None:
        unit_of = np.arange(len(y))
    else:
        unit_of = np.unique(np.asarray(groups).astype(str), return_inverse=True)[1].reshape(-1)
    n_units = int(unit_of.max()) + 1 if len(y) else 0
    counts = np.zeros((n_units, y.shape[1]), dtype=np.int64)  # positives per unit and label
    np.add.at(counts, unit_of, y)
    sizes = np.bincount(unit_of, minlength=n_units)  # rows per unit
    ratios = np.array([1 - fraction, fraction])
    want_rows = ratios * len(y)  # rows each side still wants
    want_labels = ratios[:, None] * y.sum(0)[None, :].astype(float)  # (2, K) positives still wanted
    side = np.full(n_units, -1)
    left = counts.copy()  # label counts of the unplaced units (placed rows zeroed)

    def place(unit: int, order: list[int]) -> None:
        j = order[0]
        side[unit] = j
        want_rows[j] -= sizes[unit]
        want_labels[j] -= counts[unit]
        left[unit] = 0

    while (left.sum(0) > 0).any():
        remaining = left.sum(0)
        rarest = np.flatnonzero(remaining == remaining[remaining > 0].min())
        label = int(rng.choice(rarest))
        for unit in rng.permutation(np.flatnonzero(left[:, label] > 0)):
            tie = rng.random(2)
            order = sorted((0, 1), key=lambda j: (-want_labels[j, label], -want_rows[j], tie[j]))
            place(int(unit), order)
    for unit in rng.permutation(np.flatnonzero(side < 0)):  # units with no positive label
        tie = rng.random(2)
        place(int(unit), sorted((0, 1), key=lambda j: (-want_rows[j], tie[j])))
    rows_side = side[unit_of]
    return np.flatnonzero(rows_side == 0), np.flatnonzero(rows_side == 1)


def assign_splits(
    strata_ids: np.ndarray,
    fractions: dict[str, float],
    seed: int,
    groups: np.ndarray | None = None,
    predefined: np.ndarray | None = None,
) -> np.ndarray:
    """The split name ("train" / "val" / "test") of each row, (N,), deterministic from ``seed``.

    Splits that ``predefined`` lacks (all but train when it is None) are carved out of the
    train rows in turn (test, then val), keeping the ratios of ``fractions`` among train and
    the carved splits; e.g. 70/10/20 from nothing, or val = 10 / (70 + 10) of a predefined
    train. Stratified on ``strata_ids`` (N,), or, for multi-label data, on the columns of a
    0 / 1 matrix (N, K) by iterative stratification; with ``groups``, no group is ever divided.
    """
    n = len(strata_ids)
    out = np.array(["train"] * n, dtype=object) if predefined is None else np.asarray(predefined, dtype=object).copy()
    missing = [s for s in ("test", "val") if s not in set(out) and fractions.get(s, 0) > 0]
    remaining = fractions["train"] + sum(fractions[s] for s in missing)
    for name in missing:
        pool = np.flatnonzero(out == "train")
        share = fractions[name] / remaining
        remaining -= fractions[name]
        carve_seed = derived_seed(seed, f"carve {name}")
        if np.ndim(strata_ids) == 2:
            _, part = iterative_split(strata_ids[pool], share, carve_seed, None if groups is None else groups[pool])
        elif groups is None:
            _, part = stratified_split(strata_ids[pool], share, carve_seed, f"data.fractions.{name}")
        else:
            _, part = grouped_stratified_split(strata_ids[pool], groups[pool], share, carve_seed)
        out[pool[part]] = name
    return out.astype(str)
