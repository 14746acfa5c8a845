"""Writes the evaluation of saved predictions into ``<run dir>/eval/`` (tables, JSON, PNGs)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from evaluation import figures as figs
from evaluation.metrics import (
    BINARY,
    MULTI_LABEL,
    TABLE_COLUMNS,
    confusion_matrix,
    per_class_table,
    per_label_table,
    summary_metrics,
)


def write_evaluation(
    probs: np.ndarray, labels: np.ndarray, class_names: list[str], task: str, out_dir: Path, split: str = "test"
) -> dict:
    """``{split}_per_class.csv``, ``{split}_summary.json`` and PNG figures in ``out_dir``.

    Single-label: confusion matrix (CSV and PNG), per-class accuracy, ROC and precision-recall
    curves (one-vs-rest; binary tasks: the positive class with its operating point),
    confidence box plots and the reliability diagram. Multi-label: per-label table and
    bars, precision-recall curves per label. AUROC / AP of a class undefined in the split (no
    positive or no negative) are NaN in the table and left out of the means
    (``evaluation.metrics``). Returns ``{"summary", "table", "figures"}``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summary_metrics(probs, labels, task, class_names, split)
    if task == MULTI_LABEL:
        table = per_label_table(probs, labels, class_names, split)
        figures = {"per_label": figs.per_label_figure(table), "pr_curves": figs.pr_curves_figure(labels, probs, class_names)}
    else:
        table = per_class_table(probs, labels, class_names, split)
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
        else:
            figures["pr_curves"] = figs.pr_curves_figure(np.eye(len(class_names))[labels], probs, class_names)
    with open(out_dir / f"{split}_per_class.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows(table)
    (out_dir / f"{split}_summary.json").write_text(json.dumps(summary, indent=2))
    paths = {}
    for name, fig in figures.items():
        paths[name] = out_dir / f"{split}_{name}.png"
        fig.savefig(paths[name], dpi=120, bbox_inches="tight")
        plt.close(fig)
    return {"summary": summary, "table": table, "figures": paths}
