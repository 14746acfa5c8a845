import numpy as np
import pytest

from datamodules.splits import label_fraction_subset, strata, stratified_split


def _labels(seed=0):
    rng = np.random.default_rng(seed)
    counts = [228, 359, 769, 80, 779, 4693, 99]  # DermaMNIST train
    return rng.permutation(np.repeat(np.arange(7), counts)).reshape(-1, 1)


def test_stratified_split_is_deterministic_disjoint_and_complete():
    y = _labels()
    rest1, part1 = stratified_split(y, 0.2, seed=3)
    rest2, part2 = stratified_split(y, 0.2, seed=3)
    np.testing.assert_array_equal(part1, part2)
    np.testing.assert_array_equal(rest1, rest2)
    assert len(np.intersect1d(rest1, part1)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([rest1, part1])), np.arange(len(y)))
    _, part3 = stratified_split(y, 0.2, seed=4)
    assert not np.array_equal(part1, part3)


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.5])
def test_stratified_split_per_class_counts_within_one_of_target(fraction):
    y = _labels().reshape(-1)
    _, part = stratified_split(y, fraction, seed=0)
    for c in range(7):
        target = fraction * (y == c).sum()
        assert abs((y[part] == c).sum() - target) <= 1


def test_label_fraction_keeps_at_least_one_per_class_and_is_stratified():
    y = _labels().reshape(-1)
    keep = label_fraction_subset(y, 0.001, seed=0)
    assert set(np.unique(y[keep])) == set(range(7))
    keep10 = label_fraction_subset(y, 0.1, seed=0)
    for c in range(7):
        assert abs((y[keep10] == c).sum() - 0.1 * (y == c).sum()) <= 1
    np.testing.assert_array_equal(keep10, label_fraction_subset(y, 0.1, seed=0))
    np.testing.assert_array_equal(label_fraction_subset(y, 1.0, seed=0), np.arange(len(y)))


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.0, 1.5])
def test_split_fraction_out_of_range(bad):
    with pytest.raises(ValueError, match=r"data.val_fraction=.*\(0, 1\)"):
        stratified_split(np.zeros(10, int), bad, seed=0, name="data.val_fraction")


@pytest.mark.parametrize("bad", [0.0, 1.01])
def test_label_fraction_out_of_range(bad):
    with pytest.raises(ValueError, match=r"data.label_fraction=.*\(0, 1\]"):
        label_fraction_subset(np.zeros(10, int), bad, seed=0)


def test_multilabel_strata_use_first_positive_or_none():
    y = np.array([[0, 1, 1], [0, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(strata(y), [1, 3, 0])
