"""MLO-MAE's level data (``data.mlo``): which training images each level reads, and the one
loader that yields a whole cycle per step.

Level I (the autoencoder) reads every training image (generated ones included); levels II
(the head) and III (the masking network) read a stratified, seeded split of the real training
images, optionally restricted to the labelled subset a downstream run at ``label_fraction``
uses. The datamodules call these when ``data.mlo`` is set; nothing else about them changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset, Subset

from datamodules.samplers import CyclingShuffleSampler
from datamodules.splits import label_fraction_subset, stratified_split

LEVELS = ("level1", "level2", "level3")


@dataclass(frozen=True)
class MLOLevelOptions:
    """``data.mlo``: level3_fraction, the share of the level-II/III images that level III
    holds out, in (0, 1); cadence, level I : II : III steps per cycle (batch sizes are
    ``batch_size`` times these); label_fraction, in (0, 1]: levels II / III read only that
    stratified share of the training labels (the subset ``data.label_fraction`` of the same
    value and ``split_seed`` keeps), level I still every training image."""

    level3_fraction: float = 0.2
    cadence: tuple[int, int, int] = (2, 1, 1)
    label_fraction: float = 1.0

    def __post_init__(self) -> None:
        def check(ok: bool, key: str, value, allowed: str) -> None:
            if not ok:
                raise ValueError(f"data.mlo.{key}={value!r} is invalid; allowed: {allowed}")

        check(0 < self.level3_fraction < 1, "level3_fraction", self.level3_fraction, "(0, 1)")
        cadence = list(self.cadence)
        check(len(cadence) == 3 and all(int(c) == c and c >= 1 for c in cadence), "cadence", cadence,
              "three integers >= 1 (level I : II : III)")
        check(0 < self.label_fraction <= 1, "label_fraction", self.label_fraction, "(0, 1]")
        object.__setattr__(self, "cadence", tuple(int(c) for c in cadence))


def level_indices(options: MLOLevelOptions, train_labels: np.ndarray, generated: np.ndarray | None,
                  split_seed: int) -> dict[str, np.ndarray]:
    """``{"level2": idx, "level3": idx}``: indices into the training split (``train_labels``
    (N,) or (N, 1)) of levels II and III, real images only (``generated``: (N,) bool, or None)."""
    real = np.flatnonzero(~generated) if generated is not None else np.arange(len(train_labels))
    if options.label_fraction < 1:  # the labelled subset a downstream run at that fraction uses
        real = real[label_fraction_subset(train_labels[real], options.label_fraction, split_seed + 1)]
    level2, level3 = stratified_split(train_labels[real], options.level3_fraction, split_seed + 2,
                                      "data.mlo.level3_fraction")
    return {"level2": real[level2], "level3": real[level3]}


def level_loaders(options: MLOLevelOptions, train_set: Dataset, indices: dict[str, np.ndarray], batch_size: int,
                  shuffle_seed: int, loader: Callable[..., DataLoader]) -> CombinedLoader:
    """One MLO-MAE cycle per step: ``{"level1": batch, "level2": batch, "level3": batch}`` of
    ``batch_size`` times the cadence. The shorter level loaders restart within an epoch; each
    pass gets a new order from (seed, epoch, pass), sharded per rank under DDP. ``loader``
    builds a DataLoader from (dataset, batch size, sampler=, drop_last=)."""
    sets = {"level1": train_set, "level2": Subset(train_set, indices["level2"]),
            "level3": Subset(train_set, indices["level3"])}
    loaders = {}
    for i, (name, n) in enumerate(zip(LEVELS, options.cadence)):
        ds = sets[name]
        loaders[name] = loader(ds, batch_size * n, sampler=CyclingShuffleSampler(ds, seed=shuffle_seed + i),
                               drop_last=len(ds) > batch_size * n)
    return CombinedLoader(loaders, mode="max_size_cycle")
