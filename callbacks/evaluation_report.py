"""Writes the test-time evaluation of a classifier into ``<run dir>/eval/``."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import lightning as L
import matplotlib.pyplot as plt
import numpy as np
import torch
from torch.utils.data import DataLoader

from callbacks import evaluation_figures as figs
from callbacks.evaluation import BINARY, confusion_matrix, per_class_table, summary_metrics
from callbacks.images import wandb_loggers
from callbacks.thresholds import SplitPredictions, tuned_comparison
from lightning_modules.metrics import MULTI_LABEL

log = logging.getLogger(__name__)
TABLE_COLUMNS = ("class", "support", "accuracy", "precision", "recall", "specificity", "f1")


def write_evaluation(
    probs: np.ndarray, labels: np.ndarray, class_names: list[str], task: str, out_dir: Path, split: str = "test"
) -> dict:
    """Per-class table (CSV), summary (JSON), confusion matrix (CSV) and five PNG figures
    (six for binary tasks: also ``{split}_pr_curve.png``).

    Returns ``{"summary": ..., "table": ..., "figures": {name: path}}``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    table = per_class_table(probs, labels, class_names)
    summary = summary_metrics(probs, labels, task)
    with open(out_dir / f"{split}_per_class.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows(table)
    (out_dir / f"{split}_summary.json").write_text(json.dumps(summary, indent=2))
    cm = confusion_matrix(labels, probs.argmax(1), len(class_names))
    np.savetxt(out_dir / f"{split}_confusion_matrix.csv", cm, fmt="%d", delimiter=",",
               header=",".join(class_names), comments="")
    figures = {
        "confusion_matrix": figs.confusion_figure(labels, probs, class_names),
        "per_class_accuracy": figs.per_class_accuracy_figure(table),
        "roc_curves": figs.roc_figure(labels, probs, class_names),
        "confidence": figs.confidence_figure(labels, probs, class_names),
        "reliability": figs.reliability_figure(labels, probs, summary["ece"]),
    }
    if task == BINARY:
        figures["pr_curve"] = figs.pr_curve_figure(labels, probs, class_names, summary)
    paths = {}
    for name, fig in figures.items():
        paths[name] = out_dir / f"{split}_{name}.png"
        fig.savefig(paths[name], dpi=120, bbox_inches="tight")
        plt.close(fig)
    return {"summary": summary, "table": table, "figures": paths}


@torch.no_grad()
def predict_probs(model: torch.nn.Module, dataset, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (N, K) and labels (N,) of a whole dataset, in order, on the
    model's device and in eval mode (its mode is restored afterwards)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    probs, labels = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        probs.append(model(x.to(device)).float().softmax(-1).cpu())
        labels.append(y)
    model.train(was_training)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


class EvaluationCallback(L.Callback):
    """After testing a classifier, evaluates its saved test predictions (see
    ``Classifier.on_test_epoch_end``) and writes ``<run dir>/eval/``; logs the figures and
    the per-class table to W&B when a WandbLogger is attached.

    Args:
        tune_thresholds: also fit a decision rule on the validation predictions of the
            tested checkpoint (binary threshold / per-class offsets, see ``thresholds``)
            and report its test scores next to the untuned ones
            (``eval/test_threshold_tuning.json``).
        objective: ``f1`` / ``youden`` / ``sensitivity`` (binary) or ``macro_f1`` /
            ``balanced_acc`` (multi-class); None = ``f1`` / ``macro_f1``.
    """

    def __init__(self, tune_thresholds: bool = True, objective: str | None = None) -> None:
        self.tune_thresholds, self.objective = tune_thresholds, objective

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        root = Path(trainer.default_root_dir)
        preds = root / "predictions" / "test_predictions.npz"
        dm = trainer.datamodule
        if not preds.is_file() or dm is None or not hasattr(dm, "class_names"):
            return
        if dm.task == MULTI_LABEL:
            log.warning("Per-class evaluation of multi-label tasks is not implemented; eval/ skipped.")
            return
        data = np.load(preds)
        result = write_evaluation(data["probs"], data["labels"], dm.class_names, dm.task, root / "eval")
        if self.tune_thresholds:
            val = SplitPredictions(*predict_probs(pl_module, dm.val_set, dm.eval_batch_size), "val")
            test = SplitPredictions(data["probs"], data["labels"], "test")
            tuning = tuned_comparison(val, test, self.objective)
            (root / "eval" / "test_threshold_tuning.json").write_text(json.dumps(tuning, indent=2))
        for logger in wandb_loggers(trainer):
            logger.log_table(key="eval/test_per_class", columns=list(TABLE_COLUMNS),
                             data=[[row[c] for c in TABLE_COLUMNS] for row in result["table"]])
            for name, path in result["figures"].items():
                logger.log_image(key=f"eval/{name}", images=[str(path)])
