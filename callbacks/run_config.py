"""Store the run's resolved config, its data identity and (for classifiers) the preprocessing
record inside every checkpoint, so that a checkpoint copied on its own (or logged as a W&B
artifact) can be evaluated, exported, sampled from, fine-tuned or used to predict image files
without its run folder or its training data (read back by ``core.checkpoints``)."""

from __future__ import annotations

from typing import Any

import lightning as L

from core.checkpoints import CHECKPOINT_KEY
from datamodules.input_record import preprocessing_of


def source_identity(datamodule: Any) -> dict | None:
    """The datamodule's ``source_identity()`` (``core.data_identity``: the file and its sha256,
    the table / folder and its fingerprint, or the synthetic generator), None without one."""
    source = getattr(datamodule, "source_identity", None)
    return source() if callable(source) else None


def data_identity(datamodule: Any) -> dict:
    """What a model's inputs and outputs mean: classes, task, channels, size, normalisation
    (the attributes the datamodule has; an empty dict without one), and under ``source`` the data
    it was trained on (``source_identity``)."""
    identity = {}
    if (source := source_identity(datamodule)) is not None:
        identity["source"] = source
    for key in ("class_names", "task", "num_classes", "in_chans", "img_size", "normalization"):
        try:
            value = getattr(datamodule, key)
        except Exception:  # e.g. class names of a datamodule that was never set up
            continue
        if isinstance(value, (str, int, float, bool)) or value is None:
            identity[key] = value
        elif isinstance(value, (list, tuple)):
            identity[key] = [str(v) for v in value]
    return identity


def stored_preprocessing(datamodule: Any) -> dict | None:
    """The preprocessing record of a set-up labelled datamodule (``datamodules.input_record``:
    class names, normalisation statistics, intensity mapping, input size and channels); None for
    datamodules without one (unlabelled, or not set up)."""
    try:
        return preprocessing_of(datamodule)
    except (AttributeError, TypeError):  # no input_stats / source_size: not set up, or not labelled
        return None


class StoreRunConfig(L.Callback):
    """Adds ``checkpoint["medmae"] = {"config": <resolved config>, "data": <identity>,
    "preprocessing": <record>}`` (the record where the datamodule has one). The decision rule
    tuned on validation is added to the tested checkpoint after the test
    (``callbacks.evaluation``, key ``decision``).

    Args:
        config: the run's config as a plain container (``OmegaConf.to_container(cfg, resolve=True)``).
    """

    def __init__(self, config: dict) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        stored = {"config": self.config, "data": data_identity(trainer.datamodule)}
        if (record := stored_preprocessing(trainer.datamodule)) is not None:
            stored["preprocessing"] = record
        checkpoint[CHECKPOINT_KEY] = stored
