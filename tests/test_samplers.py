import numpy as np
import pytest
import torch

from datamodules.samplers import (
    ClassBalancedSampler,
    UnpaddedDistributedSampler,
    class_sample_weights,
    epoch_num_samples,
)

LABELS = np.repeat(np.arange(4), [500, 100, 30, 10])


def test_oversample_balances_classes_over_an_epoch():
    sampler = ClassBalancedSampler(LABELS, "oversample", "balanced", seed=0, num_replicas=1, rank=0)
    assert len(sampler) == 4 * 500
    counts = np.bincount(LABELS[list(sampler)], minlength=4)
    np.testing.assert_allclose(counts / counts.sum(), 0.25, atol=0.03)


def test_sqrt_sampling_follows_square_root_of_counts():
    w = class_sample_weights(LABELS, "sqrt")
    per_class = np.array([w[LABELS == c].sum() for c in range(4)])
    expected = np.sqrt([500, 100, 30, 10]) / np.sqrt([500, 100, 30, 10]).sum()
    np.testing.assert_allclose(per_class, expected, rtol=1e-12)
    assert epoch_num_samples(LABELS, "original") == len(LABELS)


def test_sampler_changes_with_epoch_and_is_reproducible():
    s = ClassBalancedSampler(LABELS, "oversample", seed=5, num_replicas=1, rank=0)
    first = list(s)
    assert first == list(s)
    s.set_epoch(1)
    assert first != list(s)


@pytest.mark.parametrize("world", [2, 3])
def test_distributed_oversampling_covers_global_draw_without_overlap(world):
    ranks = [
        ClassBalancedSampler(LABELS, "oversample", "original", seed=1, num_replicas=world, rank=r)
        for r in range(world)
    ]
    for s in ranks:
        s.set_epoch(2)
    lengths = {len(list(s)) for s in ranks}
    assert lengths == {len(ranks[0])}  # lock-step: same number of samples on every rank
    global_draw = ranks[0].global_indices()
    shards = [torch.tensor(list(s)) for s in ranks]
    rebuilt = torch.stack(shards, dim=1).reshape(-1)  # interleave r0, r1, ...
    assert torch.equal(rebuilt, global_draw)  # each position of the global draw used exactly once


def test_unpadded_eval_sampler_covers_each_index_once():
    data = list(range(11))
    shards = [list(UnpaddedDistributedSampler(data, num_replicas=3, rank=r)) for r in range(3)]
    assert sorted(sum(shards, [])) == data
    assert [len(s) for s in shards] == [4, 4, 3]


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="data.sampler='weird'"):
        class_sample_weights(LABELS, "weird")
