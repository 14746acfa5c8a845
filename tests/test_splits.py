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


def test_iterative_split_hand_worked_example():
    """Six rows, two labels, half each side. Label 1 (2 positives) is placed first, one row per
    side; label 0's two unplaced rows then go one to each side (the side without a label-0 row
    wants it more, then the side wanting more rows); the two unlabelled rows fill the sides."""
    from datamodules.splits import iterative_split

    y = np.array([[1, 0], [1, 0], [1, 1], [0, 1], [0, 0], [0, 0]])
    for seed in range(5):
        rest, part = iterative_split(y, 0.5, seed)
        assert len(rest) == len(part) == 3 and sorted([*rest, *part]) == list(range(6))
        assert y[part, 1].sum() == 1 and sorted([y[part, 0].sum(), y[rest, 0].sum()]) == [1, 2]
        side_of_2 = part if 2 in part else rest
        assert y[side_of_2, 0].sum() == 2  # row 2 (both labels) and one of rows 0 / 1


def test_iterative_split_keeps_every_labels_share_and_whole_groups():
    from datamodules.splits import iterative_split

    rng = np.random.default_rng(0)
    y = (rng.random((1000, 5)) < np.array([0.5, 0.2, 0.05, 0.01, 0.3])).astype(int)
    rest, part = iterative_split(y, 0.2, seed=0)
    assert len(part) == 200 and np.all(np.abs(y[part].sum(0) - 0.2 * y.sum(0)) <= 1)  # within one per label
    assert np.array_equal(part, iterative_split(y, 0.2, seed=0)[1])  # deterministic
    assert not np.array_equal(part, iterative_split(y, 0.2, seed=1)[1])
    naive = rng.permutation(1000)[:200]  # a random 20 % for scale: iterative is far closer per label
    assert np.abs(y[part].sum(0) - 0.2 * y.sum(0)).sum() < np.abs(y[naive].sum(0) - 0.2 * y.sum(0)).sum()
    groups = np.repeat(np.arange(250), 4)
    rest, part = iterative_split(y, 0.2, seed=1, groups=groups)
    assert not set(groups[part]) & set(groups[rest]) and 180 <= len(part) <= 220
    assert np.all(np.abs(y[part].sum(0) - 0.2 * y.sum(0)) <= 4)  # a group moves up to 4 positives at once


def test_a_multilabel_label_fraction_keeps_a_positive_of_every_label():
    rng = np.random.default_rng(0)
    y = np.zeros((200, 4), int)
    y[:, 0] = rng.random(200) < 0.5
    y[rng.choice(200, 4, replace=False), 3] = 1  # a rare label: 4 positives
    y[rng.choice(200, 10, replace=False), 1] = 1
    y[rng.choice(200, 30, replace=False), 2] = 1
    keep = label_fraction_subset(y, 0.1, seed=0)
    assert y[keep].sum(0).min() >= 1 and 20 <= len(keep) <= 23  # about 10 %, and every label present
    tiny = np.repeat(np.eye(3, dtype=int), 10, axis=0)  # 30 rows, 3 labels x 10
    assert sorted(y.argmax() for y in tiny[label_fraction_subset(tiny, 0.04, seed=0)]) == [0, 1, 2]
