"""Class-rebalancing samplers for the training loader, correct under DDP.

The sampler subclasses ``DistributedSampler`` so that Lightning does not wrap it
again: every rank draws the same global index list from a generator seeded by
``(seed, epoch)`` and keeps its own stride of it, so ranks never overlap and
together cover the whole epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

SAMPLER_MODES = ("none", "oversample", "sqrt", "random_oversample")
EPOCH_LENGTHS = ("original", "balanced")


def class_sample_weights(labels: np.ndarray, mode: str) -> np.ndarray:
    """Per-sample weights (N,) summing to 1: inverse class frequency (``oversample``) or its sqrt."""
    if mode not in ("oversample", "sqrt", "random_oversample"):
        raise ValueError(f"data.sampler={mode!r} is invalid; allowed: {list(SAMPLER_MODES)}")
    labels = np.asarray(labels).reshape(-1)
    counts = np.bincount(labels)
    power = 0.5 if mode == "sqrt" else 1.0
    per_class = np.zeros(len(counts))
    per_class[counts > 0] = counts[counts > 0] ** -power
    weights = per_class[labels]
    return weights / weights.sum()


def epoch_num_samples(labels: np.ndarray, epoch_length: str) -> int:
    """``original``: N; ``balanced``: number of classes present x majority-class count."""
    labels = np.asarray(labels).reshape(-1)
    if epoch_length == "original":
        return len(labels)
    if epoch_length == "balanced":
        counts = np.bincount(labels)
        return int((counts > 0).sum() * counts.max())
    raise ValueError(f"data.epoch_length={epoch_length!r} is invalid; allowed: {list(EPOCH_LENGTHS)}")


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class ClassBalancedSampler(DistributedSampler):
    """Draws indices with replacement, probability ``class_sample_weights(labels, mode)``; or,
    with ``random_oversample``, every index once plus uniform draws (with replacement) from each
    smaller class until every class has the majority count (imbalanced-learn's
    ``RandomOverSampler``, as in an MHIST (Wei et al., AIME 2021) replication report), shuffled.

    Args:
        labels: (N,) integer class labels of the training set.
        mode: ``oversample`` (inverse frequency), ``sqrt`` (inverse square root) or
            ``random_oversample`` (needs ``epoch_length="balanced"``).
        epoch_length: ``original`` (N draws) or ``balanced`` (classes x majority count).
        seed: base seed; the draw of epoch e uses ``seed + e`` (call ``set_epoch``).
        num_replicas, rank: default to the initialised process group, else 1 and 0.
    """

    def __init__(
        self,
        labels: np.ndarray,
        mode: str,
        epoch_length: str = "original",
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        world, this_rank = _world()
        num_replicas = world if num_replicas is None else num_replicas
        rank = this_rank if rank is None else rank
        labels = np.asarray(labels).reshape(-1)
        if mode == "random_oversample" and epoch_length != "balanced":
            raise ValueError("data.sampler=random_oversample tops every class up to the majority count: "
                             f"it needs data.epoch_length=balanced, got {epoch_length!r}")
        super().__init__(labels, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.mode, self.labels = mode, labels
        self.weights = torch.as_tensor(class_sample_weights(labels, mode), dtype=torch.double)
        self.epoch_total = epoch_num_samples(labels, epoch_length)
        # Every rank yields the same number of indices so DDP steps stay in lock-step.
        self.num_samples = math.ceil(self.epoch_total / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def global_indices(self) -> torch.Tensor:
        """The whole epoch's draw (total_size,), identical on every rank."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.mode != "random_oversample":
            return torch.multinomial(self.weights, self.total_size, replacement=True, generator=g)
        counts = np.bincount(self.labels)
        parts = [torch.arange(len(self.labels))]
        for c in np.flatnonzero(counts):
            members = torch.as_tensor(np.flatnonzero(self.labels == c))
            parts.append(members[torch.randint(len(members), (int(counts.max() - counts[c]),), generator=g)])
        epoch = torch.cat(parts)
        epoch = epoch[torch.randperm(len(epoch), generator=g)]
        return torch.cat([epoch, epoch[: self.total_size - len(epoch)]])  # pad with its head for the ranks

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_indices()[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


class UnpaddedDistributedSampler(DistributedSampler):
    """Evaluation sampler: rank r gets indices r, r + W, r + 2W, ... without padding.

    ``DistributedSampler`` pads with repeated samples so that ranks are even, which
    counts some test images twice. Evaluation needs no lock-step, so we do not pad.
    """

    def __init__(self, dataset, num_replicas: int | None = None, rank: int | None = None) -> None:
        world, this_rank = _world()
        super().__init__(
            dataset,
            num_replicas=world if num_replicas is None else num_replicas,
            rank=this_rank if rank is None else rank,
            shuffle=False,
        )
        self.num_samples = len(range(self.rank, len(dataset), self.num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


class CyclingShuffleSampler(DistributedSampler):
    """Shuffling sampler, sharded across ranks, for loaders that restart within an epoch
    (MLO-MAE's level loaders under ``CombinedLoader(mode="max_size_cycle")``).

    Pass r of epoch e uses the permutation seeded by (seed, e, r): every restart gets a new
    order, on every rank alike (a plain ``DistributedSampler`` repeats its order until the
    next ``set_epoch``), and the order depends on nothing but those three numbers. Ranks
    keep strides of the permutation, padded with its head so all ranks yield equally many.
    """

    def __init__(self, dataset, seed: int = 0, num_replicas: int | None = None, rank: int | None = None) -> None:
        world, this_rank = _world()
        super().__init__(dataset, num_replicas=world if num_replicas is None else num_replicas,
                         rank=this_rank if rank is None else rank, shuffle=True, seed=seed)
        self.passes = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.passes = 0

    def __iter__(self) -> Iterator[int]:
        state = np.random.SeedSequence([self.seed, self.epoch, self.passes]).generate_state(1)[0]
        self.passes += 1
        n = len(self.dataset)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(int(state))).tolist()
        order += order[: self.total_size - n]
        return iter(order[self.rank : self.total_size : self.num_replicas])
