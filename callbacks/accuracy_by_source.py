"""DerMAE's accounting: on a training split with generated images joined to the real ones
(``data.synthetic_train``), the epoch's training accuracy on each kind, ``train/acc_real`` and
``train/acc_synthetic``. A training item then carries a third element, its generated flag; the
classifier's training step returns its probabilities beside the loss (``{"loss", "probs"}``)."""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L
import torch

KINDS = ("real", "synthetic")  # index 0: real images, 1: generated ones


class AccuracyBySource(L.Callback):
    """Counts correct argmax predictions per kind of training image, summed over ranks and
    logged at the epoch's end (nothing is logged when the split has no generated images, or for
    multi-label tasks, whose probabilities are not one distribution per image)."""

    def __init__(self) -> None:
        self.counts: torch.Tensor | None = None  # (2 kinds, [correct, seen])

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.counts = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if not isinstance(outputs, Mapping) or "probs" not in outputs:
            return
        if not isinstance(batch, (list, tuple)) or len(batch) != 3 or batch[1].ndim != 1:
            return
        generated = batch[2].bool()
        correct = (outputs["probs"].argmax(-1) == batch[1]).float()
        kinds = torch.stack([~generated, generated]).float()  # (2, B)
        counts = torch.stack([kinds @ correct, kinds.sum(1)], dim=1)  # (2, 2) on the batch's device
        self.counts = counts if self.counts is None else self.counts + counts

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.counts is None:
            return
        counts = trainer.strategy.reduce(self.counts, reduce_op="sum")
        for kind, (correct, seen) in zip(KINDS, counts):
            pl_module.log(f"train/acc_{kind}", correct / seen.clamp(min=1), on_epoch=True)
