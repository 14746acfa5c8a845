"""Paired comparisons over seeds: bootstrap confidence intervals and the verdict they allow.

Two arms run with the same seeds (same splits, label subsets and initialisation seeds) give
one difference per seed. The mean difference gets a percentile bootstrap interval over
seeds (resampling whole seeds with replacement); a claim is "supported" only when that
interval excludes zero. With few seeds the interval is coarse: with 3 seeds a
percentile interval spans roughly the smallest to the largest difference, so it excludes
zero only when every seed agrees on the sign.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SUPPORTED = "supported"
NOT_SEPARABLE = "not separable at this budget"


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``a - b`` over seeds, its percentile bootstrap interval and the verdict."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def verdict(self) -> str:
        return SUPPORTED if self.low > 0 or self.high < 0 else NOT_SEPARABLE

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


def paired_difference(a, b, n_boot: int = 10_000, level: float = 0.95, seed: int = 0) -> PairedDifference:
    """``a - b`` paired by position (one value per seed in the same seed order)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need one value per seed in both arms, got {a.shape} and {b.shape}")
    diff = a - b
    low, high = bootstrap_mean_ci(diff, n_boot, level, seed)
    return PairedDifference(float(diff.mean()), low, high, len(diff))
