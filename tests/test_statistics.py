"""evaluation/statistics.py against scipy's bootstrap and t-test, and the verdict's rules."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from evaluation.statistics import (
    NOT_SEPARABLE,
    SUPPORTED,
    bootstrap_mean_ci,
    paired_difference,
    t_interval,
)


def test_bootstrap_interval_matches_scipys_percentile_bootstrap():
    values = np.random.default_rng(0).normal(0.3, 1.0, size=40)
    ours = bootstrap_mean_ci(values, n_boot=20_000)
    ref = stats.bootstrap((values,), np.mean, n_resamples=20_000, method="percentile", random_state=1,
                          confidence_level=0.95).confidence_interval
    assert ours == pytest.approx((ref.low, ref.high), abs=0.02)


def test_with_three_seeds_the_percentile_bootstrap_is_the_range():
    """Why the verdict also needs the t-interval: 1/27 of resamples are all-minimum (> 2.5 %)."""
    low, high = bootstrap_mean_ci([0.01, 0.02, 0.03])
    assert low == pytest.approx(0.01) and high == pytest.approx(0.03)


def test_t_interval_matches_scipy():
    values = [0.05, 0.02, 0.04, 0.01]
    ref = stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
    assert t_interval(values) == pytest.approx((ref.low, ref.high), rel=1e-12)
    assert all(np.isnan(t_interval([0.1])))


def test_verdict_needs_both_intervals_to_exclude_zero():
    small = paired_difference([0.51, 0.52, 0.53], [0.5, 0.5, 0.5])  # same sign on every seed, but noisy
    assert small.low > 0 and small.t_low < 0 and small.verdict == NOT_SEPARABLE
    large = paired_difference([0.60, 0.61, 0.62], [0.5, 0.5, 0.5])
    assert large.low > 0 and large.t_low > 0 and large.verdict == SUPPORTED
    worse = paired_difference([0.40, 0.41, 0.40], [0.5, 0.5, 0.5])
    assert worse.verdict == SUPPORTED and worse.mean < 0  # a significant loss is a finding too
    assert paired_difference([0.6], [0.5]).verdict == NOT_SEPARABLE  # one seed: no interval
    with pytest.raises(ValueError, match="one value per seed"):
        paired_difference([0.1, 0.2], [0.1])
