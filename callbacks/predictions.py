"""Prediction files of a classifier run, written from what the module holds in memory:
``predictions/test_predictions.{npz,csv}`` after the test, and the validation confusion
matrix of every epoch in ``eval/val_confusion_matrices.json`` (``core.predictions``)."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from core.predictions import record_confusion, save_predictions


class PredictionFiles(L.Callback):
    """Writes the module's ``val_confusion_matrix`` after each validation epoch (not the sanity
    check) and its ``test_predictions`` after the test; rank 0 only."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        matrix = getattr(pl_module, "val_confusion_matrix", None)
        if matrix is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        record_confusion(Path(trainer.default_root_dir) / "eval" / "val_confusion_matrices.json",
                         trainer.current_epoch, matrix)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        predictions = getattr(pl_module, "test_predictions", None)
        if predictions is None or not trainer.is_global_zero:
            return
        save_predictions(Path(trainer.default_root_dir) / "predictions", "test", predictions["probs"],
                         predictions["labels"], predictions["ids"])
