"""Paired comparisons over seeds: bootstrap confidence intervals and the verdict they allow.

Two arms run with the same seeds (same splits, label subsets and initialisation seeds) give
one difference per seed. The mean difference gets a percentile bootstrap interval over
seeds (resampling whole seeds with replacement) and a paired t-interval. A claim is
"supported" only when both exclude zero. The bootstrap alone is too lenient with few seeds:
with 3 seeds its 95 % percentile interval is [min, max] of the differences (a resampled mean
equals the minimum with probability 1/27 > 2.5 %), so it would call any three differences
of one sign "supported", which happens 25 % of the time when the arms are equal. The
t-interval (t = 4.30 at 2 degrees of freedom) needs the mean to stand out of the seed-to-seed
spread. Neither counts the test set's own sampling noise, and a table of many comparisons
needs a multiplicity correction before any single "supported" is read as a finding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SUPPORTED = "supported"
NOT_SEPARABLE = "not separable at this budget"


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``a - b`` over seeds, its percentile bootstrap interval (``low``, ``high``), its
    paired t-interval (``t_low``, ``t_high``) and the verdict (both must exclude 0)."""

    mean: float
    low: float
    high: float
    n: int
    t_low: float = float("nan")
    t_high: float = float("nan")

    @property
    def verdict(self) -> str:
        excludes = [(lo > 0 or hi < 0) for lo, hi in ((self.low, self.high), (self.t_low, self.t_high))]
        return SUPPORTED if all(excludes) else NOT_SEPARABLE

    def __str__(self) -> str:
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def bootstrap_mean_ci(values, n_boot: int = 10_000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (1-D), resampling with replacement."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"need a non-empty 1-D array of values, got shape {values.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be in (0, 1)")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def t_interval(values, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (1-D, at least 2); NaN bounds for fewer."""
    from scipy.stats import t

    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float("nan"), float("nan")
    half = t.ppf((1 + level) / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def paired_difference(a, b, n_boot: int = 10_000, level: float = 0.95, seed: int = 0) -> PairedDifference:
    """``a - b`` paired by position (one value per seed in the same seed order)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need one value per seed in both arms, got {a.shape} and {b.shape}")
    diff = a - b
    low, high = bootstrap_mean_ci(diff, n_boot, level, seed)
    return PairedDifference(float(diff.mean()), low, high, len(diff), *t_interval(diff, level))
