"""Lightning callback that evaluates a classifier's test predictions (``evaluation`` package)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import lightning as L

from callbacks.images import wandb_loggers
from core.checkpoints import store_in_checkpoint
from core.io import atomic_write_text
from evaluation.metrics import TABLE_COLUMNS
from evaluation.predict import predict_probs
from evaluation.thresholds import SplitPredictions, decision_rule, tuned_comparison
from evaluation.writer import write_evaluation

log = logging.getLogger(__name__)


def eval_batch_limit(trainer: L.Trainer, n: int, batch_size: int) -> int | None:
    """How many validation batches a callback may predict: one under fast_dev_run, else what
    ``limit_val_batches`` allows (an int or a fraction of the whole set); None = all."""
    if trainer.fast_dev_run:
        return int(trainer.fast_dev_run)
    limit = trainer.limit_val_batches
    if isinstance(limit, int):
        return limit
    return None if limit >= 1.0 else max(1, int(math.ceil(n / batch_size) * limit))


def store_decision(ckpt: str | None, rule: dict) -> None:
    """Store the decision rule tuned on validation in the tested checkpoint (``checkpoint["medmae"]
    ["decision"]``), so that predict.py and export.py apply it from the checkpoint alone; nothing
    when the test ran on weights that were never saved."""
    if ckpt and Path(ckpt).is_file():
        store_in_checkpoint(ckpt, "decision", rule)
        log.info("decision rule tuned on validation (%s) stored in %s", rule["kind"], ckpt)


class EvaluationCallback(L.Callback):
    """After testing a classifier, evaluates its test predictions (held in memory by
    ``Classifier.on_test_epoch_end``; ``callbacks.predictions`` writes them) and writes ``<run dir>/eval/``; logs the figures and
    the per-class table to W&B when a WandbLogger is attached.

    Args:
        tune_thresholds: also fit a decision rule on the validation predictions of the
            tested checkpoint (binary threshold / per-class offsets / per-label thresholds, see
            ``thresholds``), report its test scores next to the untuned ones
            (``eval/test_threshold_tuning.json``) and store the rule in the tested checkpoint.
        objective: ``f1`` / ``youden`` / ``sensitivity`` (binary and multi-label) or ``macro_f1`` /
            ``balanced_acc`` (multi-class); None = ``f1`` / ``macro_f1``.
    """

    def __init__(self, tune_thresholds: bool = True, objective: str | None = None) -> None:
        self.tune_thresholds, self.objective = tune_thresholds, objective

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        root = Path(trainer.default_root_dir)
        data = getattr(pl_module, "test_predictions", None)  # in memory (the classifier's on_test_epoch_end)
        dm = trainer.datamodule
        if data is None or dm is None or not hasattr(dm, "class_names"):
            return
        result = write_evaluation(data["probs"], data["labels"], dm.class_names, dm.task, root / "eval")
        batches = eval_batch_limit(trainer, len(dm.val_set), dm.eval_batch_size)
        if batches == 0 or len(dm.val_set) == 0:
            log.info("no validation predictions (no validation set or limit_val_batches=0): no threshold tuning")
        elif self.tune_thresholds:
            val = SplitPredictions(*predict_probs(pl_module, dm.val_set, dm.eval_batch_size, batches), "val")
            test = SplitPredictions(data["probs"], data["labels"], "test")
            tuning = tuned_comparison(val, test, self.objective)
            atomic_write_text(root / "eval" / "test_threshold_tuning.json", json.dumps(tuning, indent=2))
            store_decision(trainer.ckpt_path, decision_rule(tuning))
        loggers = wandb_loggers(trainer)
        if loggers:
            import pandas as pd

            probs, labels = data["probs"], data["labels"]
            # the layout of predictions/test_predictions.csv: index[, path], label(s), prob_<k>
            per_image = pd.DataFrame({"index": range(len(probs))})
            if data["ids"] is not None:
                per_image["path"] = list(data["ids"])
            if labels.ndim == 1:
                per_image["label"] = labels
            else:
                per_image = per_image.assign(**{f"label_{k}": labels[:, k] for k in range(labels.shape[1])})
            per_image = per_image.assign(**{f"prob_{k}": probs[:, k] for k in range(probs.shape[1])})
        for logger in loggers:
            logger.log_table(key="eval/test_per_class", columns=list(TABLE_COLUMNS),
                             data=[[row[c] for c in TABLE_COLUMNS] for row in result["table"]])
            logger.log_table(key="eval/test_predictions", dataframe=per_image)
            for name, path in result["figures"].items():
                logger.log_image(key=f"eval/{name}", images=[str(path)])
