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


def test_random_oversample_keeps_every_image_and_equalises_classes_exactly():
    sampler = ClassBalancedSampler(LABELS, "random_oversample", "balanced", seed=3, num_replicas=1, rank=0)
    drawn = np.array(list(sampler))
    assert len(drawn) == 4 * 500
    np.testing.assert_array_equal(np.bincount(LABELS[drawn], minlength=4), [500, 500, 500, 500])
    assert set(drawn.tolist()) == set(range(len(LABELS)))  # every image at least once
    seen = np.bincount(drawn, minlength=len(LABELS))
    assert (seen[LABELS == 0] == 1).all()  # the majority class is not resampled
    sampler.set_epoch(1)
    assert list(sampler) != drawn.tolist()  # a new draw each epoch
    two = [ClassBalancedSampler(LABELS, "random_oversample", "balanced", seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    np.testing.assert_array_equal(np.sort(np.concatenate([list(t) for t in two])), np.sort(drawn))  # shards
    with pytest.raises(ValueError, match="needs data.epoch_length=balanced"):
        ClassBalancedSampler(LABELS, "random_oversample", "original")


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


def test_cycling_sampler_reshuffles_each_restart_on_every_rank_and_is_reproducible():
    from datamodules.samplers import CyclingShuffleSampler

    data = list(range(11))
    ranks = [CyclingShuffleSampler(data, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    passes = [[list(s) for s in ranks] for _ in range(3)]  # three restarts within epoch 0
    for shards in passes:
        assert len(shards[0]) == len(shards[1]) == 6  # padded: ranks stay in lock-step
        assert set(shards[0]) | set(shards[1]) == set(data)
    assert passes[0][0] != passes[1][0] != passes[2][0]  # a new order at every restart
    for s in ranks:
        s.set_epoch(0)
    assert [list(s) for s in ranks] == passes[0]  # a function of (seed, epoch, pass) only
    for s in ranks:
        s.set_epoch(1)
    assert [list(s) for s in ranks] != passes[0]


def test_mlo_level_loaders_use_the_cycling_sampler(data_root):
    from datamodules import MedMNISTDataModule
    from datamodules.samplers import CyclingShuffleSampler

    dm = MedMNISTDataModule(flag="dermamnist", root=data_root, download=False, batch_size=8,
                            mlo={"level3_fraction": 0.2, "cadence": [2, 1, 1]})
    dm.setup("fit")
    loaders = dm.train_dataloader().iterables
    assert all(isinstance(dl.sampler, CyclingShuffleSampler) for dl in loaders.values())
    sampler = loaders["level3"].sampler
    assert list(sampler) != list(sampler)  # a restart of the level-III loader reshuffles
    assert len({dl.sampler.seed for dl in loaders.values()}) == 3  # independent orders per level
