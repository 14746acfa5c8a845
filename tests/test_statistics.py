"""evaluation/statistics.py, delong.py, test_set_noise.py and sample_size.py against scipy,
statsmodels, scikit-learn, hand-worked examples and simulations of null experiments."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import ttost_paired

from evaluation.delong import auc_variance, paired_auc_test, placements
from evaluation.sample_size import power, seeds_needed
from evaluation.statistics import (
    NOT_SEPARABLE,
    SUPPORTED,
    adjust,
    mean_interval,
    paired_t,
    seeds_images_test,
    shared_image_variance,
    tost,
    tost_from,
    verdict,
)
from evaluation.test_set_noise import image_variance, metric_value, weighted_binary_auc


# ----- DeLong -----------------------------------------------------------------------------
def test_delong_variance_of_a_hand_worked_example():
    # positives 0.8, 0.6; negatives 0.7, 0.2: V10 = (1, 1/2), V01 = (1/2, 1), AUC 3/4,
    # S10 = S01 = 1/8, variance = 1/8 / 2 + 1/8 / 2 = 1/8.
    auc, var = auc_variance(np.array([0.8, 0.6, 0.7, 0.2]), np.array([1, 1, 0, 0]))
    assert auc == 0.75 and var == pytest.approx(0.125, abs=1e-15)


def brute_force_components(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """psi over every (positive, negative) pair: the definition, O(m n)."""
    x, y = scores[labels == 1], scores[labels == 0]
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    return psi.mean(axis=1), psi.mean(axis=0)


def test_delong_components_match_the_pairwise_definition_with_ties_and_sklearns_auc():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    a = np.round(labels + rng.normal(0, 1, 300), 1)  # rounded: many ties
    b = np.round(0.6 * labels + rng.normal(0, 1, 300), 1)
    comps = placements(np.stack([a, b]), labels)
    for k, s in enumerate((a, b)):
        v10, v01 = brute_force_components(s, labels)
        np.testing.assert_allclose(comps.v10[k], v10, atol=1e-12)
        np.testing.assert_allclose(comps.v01[k], v01, atol=1e-12)
        assert comps.auc[k] == pytest.approx(roc_auc_score(labels, s), abs=1e-12)
    # paired test: the variance of the difference from the pairwise components
    v10a, v01a = brute_force_components(a, labels)
    v10b, v01b = brute_force_components(b, labels)
    var = np.var(v10a - v10b, ddof=1) / len(v10a) + np.var(v01a - v01b, ddof=1) / len(v01a)
    test = paired_auc_test(a, b, labels)
    assert test["se"] == pytest.approx(np.sqrt(var), rel=1e-10)
    assert test["p"] == pytest.approx(2 * stats.norm.sf(abs(test["diff"]) / np.sqrt(var)), rel=1e-10)


def test_delong_without_noise_calls_a_real_difference_certain():
    labels = np.array([1, 1, 0, 0])
    test = paired_auc_test(np.array([0.9, 0.8, 0.1, 0.2]), np.full(4, 0.5), labels)
    assert test["diff"] == 0.5 and test["se"] == 0 and test["z"] == np.inf and test["p"] == 0.0
    same = paired_auc_test(np.array([0.9, 0.8, 0.1, 0.2]), np.array([0.9, 0.8, 0.1, 0.2]), labels)
    assert same["z"] == 0.0 and same["p"] == 1.0


def test_delong_refuses_what_it_cannot_estimate():
    with pytest.raises(ValueError, match="at least 2 positives"):
        placements(np.array([0.1, 0.2, 0.3]), np.array([1, 0, 0]))
    with pytest.raises(ValueError, match="0 / 1"):
        placements(np.array([0.1, 0.2, 0.3, 0.4]), np.array([1, 2, 0, 0]))


def test_weighted_auc_equals_sklearns_weighted_auc():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 80)
    scores = np.round(rng.normal(labels, 1.0), 1)
    weights = rng.integers(0, 4, (5, 80)).astype(float)
    ours = weighted_binary_auc(scores, labels == 1, weights)
    ref = [roc_auc_score(labels, scores, sample_weight=w) for w in weights]
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_image_bootstrap_variance_agrees_with_delong_for_auc():
    rng = np.random.default_rng(2)
    labels = np.r_[np.ones(150, int), np.zeros(150, int)]
    common = rng.normal(0, 0.6, 300)
    a = np.stack([labels + common + rng.normal(0, 0.7, 300) for _ in range(4)])
    b = np.stack([0.8 * labels + common + rng.normal(0, 0.7, 300) for _ in range(4)])
    delong = image_variance("auc", a, b, labels)
    probs = lambda s: np.stack([1 - s, s], axis=-1)  # noqa: E731 (the same scores as two-class probabilities)
    boot = image_variance("auc", probs(a), probs(b), labels, n_boot=3000, seed=0)
    assert delong.method == "DeLong" and boot.method.startswith("image bootstrap")
    assert boot.of_mean == pytest.approx(delong.of_mean, rel=0.15)
    assert boot.per_seed == pytest.approx(delong.per_seed, rel=0.15)
    assert metric_value("auc", a[0], labels) == pytest.approx(roc_auc_score(labels, a[0]))


# ----- paired tests, TOST, multiplicity ----------------------------------------------------
def test_paired_t_and_seeds_images_test_without_image_noise_are_scipys_paired_t():
    a, b = np.array([0.91, 0.93, 0.90, 0.95, 0.94]), np.array([0.90, 0.90, 0.91, 0.92, 0.90])
    ref = stats.ttest_rel(a, b, alternative="greater")
    ours = paired_t(a, b, alternative="greater")
    assert ours.p == pytest.approx(ref.pvalue, rel=1e-12) and ours.df == 4
    assert ours.interval.low == pytest.approx(ref.confidence_interval(0.95).low) and ours.interval.high == np.inf
    both = seeds_images_test(a, b, 0.0, 0.0, alternative="greater")
    assert both.p == pytest.approx(ref.pvalue, rel=1e-9) and both.df == pytest.approx(4)
    # test-image noise widens the interval and raises p
    noisy = seeds_images_test(a, b, 1e-4, 1.2e-4, alternative="two-sided")
    assert noisy.p > paired_t(a, b).p and noisy.interval.low < paired_t(a, b).interval.low
    assert "95% t over 5 seeds + test-image variance" in str(noisy.interval)



def test_seeds_images_test_by_hand_and_its_clamps():
    a, b = np.array([0.91, 0.93, 0.90, 0.95, 0.94]), np.array([0.90, 0.90, 0.91, 0.92, 0.90])
    d, n = a - b, 5
    # v_avg = 1e-4, v_s = 1.2e-4: shared = 1e-4 - 0.2e-4 / 4 = 0.95e-4
    assert shared_image_variance(1e-4, 1.2e-4, n) == pytest.approx(0.95e-4)
    seed_part = d.var(ddof=1) / n
    se2 = seed_part + 0.95e-4
    df = se2**2 / (seed_part**2 / (n - 1))
    got = seeds_images_test(a, b, 1e-4, 1.2e-4, alternative="two-sided")
    assert got.se == pytest.approx(np.sqrt(se2)) and got.df == pytest.approx(df)
    assert got.p == pytest.approx(2 * stats.t.sf(d.mean() / np.sqrt(se2), df))
    assert shared_image_variance(1e-4, 1e-3, n) == 0.0  # per-seed noise far above the mean's: clamped at 0
    assert shared_image_variance(1e-4, 0.5e-4, n) == pytest.approx(1e-4)  # v_s < v_avg: no negative correction

def test_holm_and_benjamini_hochberg_on_a_hand_worked_example():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005*4, 0.01*3, 0.03*2, 0.04*1 -> 0.02, 0.03, 0.06, max(0.04, 0.06) = 0.06
    np.testing.assert_allclose(adjust(p, "holm"), [0.03, 0.06, 0.06, 0.02])
    # BH: 0.005*4/1, 0.01*4/2, 0.03*4/3, 0.04*4/4 -> 0.02, 0.02, 0.04, 0.04 (step-up minimum)
    np.testing.assert_allclose(adjust(p, "bh"), [0.02, 0.04, 0.04, 0.02])
    adjusted = adjust([0.01, np.nan, 0.02], "holm")  # an undefined comparison is no test
    assert np.isnan(adjusted[1]) and adjusted[0] == pytest.approx(0.02)
    with pytest.raises(ValueError, match="allowed"):
        adjust(p, "bonferroni-ish")


def test_tost_is_two_one_sided_t_tests():
    a = np.array([0.900, 0.905, 0.898, 0.902, 0.903, 0.899])
    b = np.array([0.901, 0.903, 0.899, 0.900, 0.904, 0.900])
    d = a - b
    by_hand = max(stats.ttest_1samp(d, -0.01, alternative="greater").pvalue,
                  stats.ttest_1samp(d, 0.01, alternative="less").pvalue)
    p, equivalent = tost(a, b, margin=0.01)
    assert p == pytest.approx(by_hand, rel=1e-10) and equivalent
    assert p == pytest.approx(ttost_paired(a, b, -0.01, 0.01)[0], rel=1e-10)
    assert tost_from(paired_t(a, b), 0.01)[0] == pytest.approx(p, rel=1e-10)
    assert not tost(a, b, margin=0.0005)[1]


def test_verdict_rules():
    a, b = [0.60, 0.61, 0.62, 0.60, 0.63], [0.5, 0.5, 0.5, 0.5, 0.5]
    strong = paired_t(a, b, "greater")
    assert verdict(strong, seeds_images_test(a, b, 1e-5, 1e-5, "greater"), 0.05) == SUPPORTED
    # the seeds agree, but the test set is too small to tell: not supported
    assert verdict(strong, seeds_images_test(a, b, 0.01, 0.01, "greater"), 0.05) == NOT_SEPARABLE
    tiny = [0.5, 0.501, 0.499, 0.5, 0.5005]
    eq = tost(tiny, b, 0.01)
    assert verdict(paired_t(tiny, b, "greater"), None, 0.05, eq, 0.01) == "equivalent within ±0.01"
    assert verdict(paired_t(b, a), None, 0.05) == "supported (lower)"  # two-sided: the direction found
    with pytest.raises(ValueError, match="NaN"):
        paired_t([0.5, np.nan], [0.5, 0.5])


def test_mean_interval_is_scipys_t_interval():
    values = [0.1, 0.2, 0.35]
    low, high = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
    interval = mean_interval(values)
    assert (interval.low, interval.high) == pytest.approx((low, high)) and "t over 3 seeds" in str(interval)


# ----- coverage of null experiments --------------------------------------------------------
def null_experiment(rng, seeds: int, arm_image_sd: float, n_per_class: int = 100):
    """Two exchangeable arms (true difference 0) scored on a fresh test set: scores (2, S, N)."""
    labels = np.r_[np.ones(n_per_class, int), np.zeros(n_per_class, int)]
    n = len(labels)
    difficulty = rng.normal(0, 1, n)  # shared by arms and seeds
    arm_image = rng.normal(0, arm_image_sd, (2, 1, n))  # each arm's own easy / hard images
    separation = 1.0 + 0.15 * rng.normal(size=(2, seeds, 1))  # training noise per seed
    scores = labels * separation + difficulty + arm_image + rng.normal(0, 0.5, (2, seeds, n))
    return scores, labels


def coverage(seeds: int, arm_image_sd: float, metric: str, trials: int, rng, images: bool = True) -> tuple[float, float]:
    """(coverage of the 95 % paired t-interval, of the seeds x images interval (NaN without
    ``images``)) of the true 0."""
    hits_t = hits_si = 0
    for _ in range(trials):
        scores, labels = null_experiment(rng, seeds, arm_image_sd)
        outputs = scores if metric == "auc" else (scores > 0.5).astype(int)  # decisions for accuracy
        a = [metric_value(metric, o, labels) for o in outputs[0]]
        b = [metric_value(metric, o, labels) for o in outputs[1]]
        hits_t += not paired_t(a, b).interval.excludes(0)
        if images:
            var = image_variance(metric, outputs[0], outputs[1], labels, n_boot=300,
                                 seed=int(rng.integers(1 << 30)))
            hits_si += not seeds_images_test(a, b, var.of_mean, var.per_seed).interval.excludes(0)
    return hits_t / trials, hits_si / trials if images else float("nan")


@pytest.mark.parametrize("seeds", [5, pytest.param(10, marks=pytest.mark.slow)])
def test_intervals_cover_near_nominal_in_null_experiments(seeds):
    """Within 2.5 points of 95 %: the paired t for its own target (no arm-specific image effect,
    so the expected difference on this test set is 0), the seeds x images interval for the
    population difference with arm-specific image effects (DeLong for AUC, the image bootstrap
    for accuracy). 600 trials each: Monte-Carlo standard error 0.9 points."""
    rng = np.random.default_rng(seeds)
    t_cov, _ = coverage(seeds, 0.0, "auc", 600, rng, images=False)
    assert abs(t_cov - 0.95) <= 0.025
    t_cov, si_cov = coverage(seeds, 0.8, "auc", 600, rng)
    assert abs(si_cov - 0.95) <= 0.025
    assert t_cov < 0.88  # the paired t misses the shared test-set noise: why the engine adds it
    _, si_cov = coverage(seeds, 0.8, "acc", 600, rng)
    assert abs(si_cov - 0.95) <= 0.025


# ----- the sample-size planner -------------------------------------------------------------
def test_planner_matches_statsmodels_without_image_noise():
    for effect, sd in ((0.02, 0.017), (0.02, 0.048), (0.05, 0.072)):
        ref = TTestPower().solve_power(effect / sd, None, 0.05, 0.8, alternative="larger")
        assert seeds_needed(effect, sd) == int(np.ceil(ref))
        assert power(10, effect, sd) == pytest.approx(TTestPower().power(effect / sd, 10, 0.05, alternative="larger"))



def test_two_sided_planner_matches_statsmodels_where_scipys_lower_tail_is_nan():
    for effect, sd in ((0.02, 0.048), (0.05, 0.072), (0.02, 0.017)):
        ref = TTestPower().solve_power(effect / sd, None, 0.05, 0.8, alternative="two-sided")
        assert seeds_needed(effect, sd, alternative="two-sided") == int(np.ceil(ref))
    assert power(500, 0.02, 0.048, alternative="two-sided") == pytest.approx(1.0)


def test_planner_with_shared_image_variance_by_hand():
    n, effect, sd, v = 8, 0.02, 0.02, 0.004**2
    seed_part = sd**2 / n
    se = np.sqrt(seed_part + v)
    df = (seed_part + v) ** 2 / (seed_part**2 / (n - 1))
    assert power(n, effect, sd, image_var=v) == pytest.approx(stats.nct.sf(stats.t.ppf(0.95, df), df, effect / se))

def test_planner_says_when_the_test_set_forbids_any_number_of_seeds():
    # SE can never fall below sqrt(image_var) = 0.012: 0.02 AUC is out of reach at power 0.8
    assert seeds_needed(0.02, 0.017, image_var=0.012**2) is None
    more = seeds_needed(0.02, 0.017, image_var=0.005**2)
    assert more is not None and more > seeds_needed(0.02, 0.017)
