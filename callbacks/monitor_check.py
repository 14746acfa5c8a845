"""Stop a run whose monitored validation metric is undefined, instead of selecting at random.

A NaN monitor (e.g. ``val/auc`` when no class of the validation split has both a positive and a
negative image, see ``core.undefined_classes``) would leave ModelCheckpoint and EarlyStopping to
compare NaNs: the "best" checkpoint would be an arbitrary one, and the test numbers would look
like a result.
"""

from __future__ import annotations

import math

import lightning as L


class MonitorDefined(L.Callback):
    """After each validation epoch (not the sanity check, not under ``fast_dev_run``, where
    nothing is selected), raise a ValueError when ``metric`` was logged as NaN.

    Runs before the checkpoint callbacks (Lightning calls ModelCheckpoint last), so the NaN epoch
    saves nothing.
    """

    def __init__(self, metric: str) -> None:
        self.metric = metric

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None or not math.isnan(float(value)):
            return
        cause = ("no class (label) of the validation split has both a positive and a negative image, so AUROC / "
                 "average precision are undefined for every one of them (see the UndefinedClassWarning above)"
                 if any(k in self.metric for k in ("auc", "ap", "auprc")) else "it could not be computed")
        raise ValueError(
            f"monitor.metric={self.metric} is NaN after validation epoch {trainer.current_epoch}: {cause}. Model "
            "selection on it would pick an arbitrary checkpoint. Fix: a validation split with positives and "
            "negatives of the classes (a larger data.val_fraction with data.split=stratified, or more validation "
            "rows), or select on a defined metric (e.g. monitor.metric=val/loss monitor.mode=min)"
        )
