"""Unlabelled union of several MedMNIST sets, for cross-dataset MAE pretraining."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from datamodules.medmnist_datamodule import MedMNISTDataModule


class Unlabelled(Dataset):
    """Drops labels (different sets have different label spaces): yields ``(image, -1)``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self.dataset[i][0], torch.tensor(-1)


class MedMNISTUnionDataModule(L.LightningDataModule):
    """Train/val splits of several MedMNIST flags pooled together, labels ignored.

    Channels are harmonised: ``in_chans=3`` repeats grayscale sets to RGB; ``in_chans=1``
    is allowed only when every set is grayscale. Each member is read, validated, split and
    normalised by its own ``MedMNISTDataModule`` (same ``size``, ``img_size``, ``split_seed``).

    Args:
        flags: MedMNIST flags to pool, e.g. ``[pathmnist, bloodmnist]``.
        in_chans: 1 or 3.
        size: the members' source size in px.
        root, download: where the members' ``.npz`` files are (None: ``$MEDMNIST_ROOT`` or
            ``~/.medmnist``) and whether a missing one is downloaded, as ``data.root`` /
            ``data.download`` of a single dataset.
        member: extra ``MedMNISTDataModule`` keys shared by all members (``normalization``,
            ``label_fraction``...).
        num_classes, task: fixed to 0 / None (no labels); present for config interpolation.
        **options: shared keys of every member that the union reads too (``options.DataOptions``):
            ``img_size``, ``split_seed`` and the loader's ``batch_size``, ``eval_batch_size``,
            ``num_workers``.
    """

    def __init__(
        self,
        flags: list[str],
        in_chans: int = 3,
        size: int = 28,
        root: str | None = None,
        download: bool = True,
        member: dict | None = None,
        num_classes: int = 0,
        task: str | None = None,
        **options,
    ) -> None:
        super().__init__()
        if not flags:
            raise ValueError("data.flags must name at least one MedMNIST flag")
        if in_chans not in (1, 3):
            raise ValueError(f"data.in_chans={in_chans} is invalid; allowed: 1, 3")
        if num_classes != 0:
            raise ValueError("data.num_classes must be 0 for an unlabelled union")
        self.members = [MedMNISTDataModule(flag=f, size=size, as_rgb=in_chans == 3, root=root, download=download,
                                           **options, **(member or {})) for f in flags]
        rgb_members = [m.flag for m in self.members if int(m.info["n_channels"]) == 3]
        if in_chans == 1 and rgb_members:
            raise ValueError(f"data.in_chans=1 but {rgb_members} are RGB; use data.in_chans=3")
        self.in_chans, self.num_classes, self.task = in_chans, 0, None
        self.img_size = self.members[0].img_size
        self.loader = self.members[0].options.loader
        self.train_set = self.val_set = None

    def prepare_data(self) -> None:
        for m in self.members:
            m.prepare_data()

    def source_identity(self) -> dict:
        """The members' identities (``core.data_identity``); synthetic when any member is."""
        members = [m.source_identity() for m in self.members]
        return {"kind": "union", "synthetic": any(m["synthetic"] for m in members), "members": members,
                "fingerprint": "+".join(m["fingerprint"] for m in members)}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        for m in self.members:
            m.setup(stage)
        self.train_set = ConcatDataset([Unlabelled(m.train_set) for m in self.members])
        self.val_set = ConcatDataset([Unlabelled(m.val_set) for m in self.members])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.loader.batch_size, shuffle=True, drop_last=True,
                          num_workers=self.loader.num_workers)  # workers start afresh each epoch (resume, see base)

    def val_dataloader(self) -> DataLoader:
        loader = self.loader
        return DataLoader(self.val_set, batch_size=loader.eval_batch_size, shuffle=False,
                          num_workers=loader.num_workers, persistent_workers=loader.num_workers > 0)
