"""Evaluation figures of saved predictions: confusion matrices, per-class accuracy, ROC
curves, confidence box plots, the reliability diagram and (binary tasks) the precision-recall
curve. Each returns a matplotlib figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from evaluation.metrics import confusion_matrix, reliability_bins  # noqa: E402


def _short(names: list[str], width: int = 18) -> list[str]:
    return [n if len(n) <= width else n[: width - 1] + "…" for n in names]


def _ranked_classes(onehot: np.ndarray, names: list[str]):
    """(index, short name, positives (N,) bool) of each class / label of ``onehot`` (N, K) that
    has both positives and negatives: the ones a one-vs-rest curve exists for."""
    for i, name in zip(range(onehot.shape[1]), _short(names)):
        positive = onehot[:, i].astype(bool)
        if positive.any() and not positive.all():
            yield i, name, positive


def confusion_figure(labels: np.ndarray, probs: np.ndarray, class_names: list[str]):
    """Counts and row-normalised confusion matrices side by side."""
    k = len(class_names)
    cm = confusion_matrix(labels, probs.argmax(1), k)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    names = _short(class_names)
    fig, axes = plt.subplots(1, 2, figsize=(2 * (2 + 0.6 * k), 1.5 + 0.6 * k))
    for ax, mat, title, fmt in ((axes[0], cm, "counts", "d"), (axes[1], norm, "row-normalised (recall)", ".2f")):
        ax.imshow(mat, cmap="Blues", vmin=0)
        for i in range(k):
            for j in range(k):
                ax.text(j, i, format(mat[i, j], fmt), ha="center", va="center", fontsize=7,
                        color="white" if mat[i, j] > mat.max() / 2 else "black")
        ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(k), names, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def per_class_accuracy_figure(table: list[dict]):
    rows = table[:-2]
    fig, ax = plt.subplots(figsize=(1.5 + 0.6 * len(rows), 3.2))
    ax.bar(range(len(rows)), [r["accuracy"] for r in rows], color="tab:blue")
    for i, r in enumerate(rows):
        ax.text(i, r["accuracy"] + 0.02, f"{r['accuracy']:.2f}\nn={r['support']}", ha="center", fontsize=6)
    ax.set_xticks(range(len(rows)), _short([r["class"] for r in rows]), rotation=45, ha="right", fontsize=7)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("accuracy (recall)")
    fig.tight_layout()
    return fig


def roc_figure(labels: np.ndarray, probs: np.ndarray, class_names: list[str]):
    """One-vs-rest ROC curve of every class (classes absent from the labels are skipped)."""
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for i, name, positive in _ranked_classes(np.eye(len(class_names))[labels], class_names):
        fpr, tpr, _ = roc_curve(positive, probs[:, i])
        ax.plot(fpr, tpr, lw=1, label=f"{name} ({roc_auc_score(positive, probs[:, i]):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.6)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return fig


def confidence_figure(labels: np.ndarray, probs: np.ndarray, class_names: list[str]):
    """Probability of the predicted class, correct vs wrong, per true class (box plots)."""
    pred, conf = probs.argmax(1), probs.max(1)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.5 + 0.8 * k, 3.2))
    for offset, correct, color in ((-0.2, True, "tab:green"), (0.2, False, "tab:red")):
        data = [conf[(labels == i) & ((pred == labels) == correct)] for i in range(k)]
        keep = [i for i in range(k) if len(data[i])]
        if keep:
            box = ax.boxplot([data[i] for i in keep], positions=[i + offset for i in keep], widths=0.35,
                             patch_artist=True, showfliers=False)
            for patch in box["boxes"]:
                patch.set_facecolor(color)
                patch.set_alpha(0.5)
    ax.set_xticks(range(k), _short(class_names), rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("probability of predicted class")
    ax.set_ylim(0, 1.02)
    ax.plot([], [], color="tab:green", lw=6, alpha=0.5, label="correct")
    ax.plot([], [], color="tab:red", lw=6, alpha=0.5, label="wrong")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def reliability_figure(labels: np.ndarray, probs: np.ndarray, ece: float, n_bins: int = 15):
    b = reliability_bins(probs, labels, n_bins)
    centers = (b["edges"][:-1] + b["edges"][1:]) / 2
    fig, ax = plt.subplots(figsize=(4, 4))
    filled = b["count"] > 0
    ax.bar(centers[filled], b["accuracy"][filled], width=1 / n_bins, edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE = {ece:.3f})", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def pr_curve_figure(labels: np.ndarray, probs: np.ndarray, class_names: list[str], summary: dict):
    """Precision-recall curve of the positive class (class 1) of a binary task from
    ``probs[:, 1]`` (N,), with its AUPRC, the prevalence (a constant predictor's precision)
    and the operating point at 0.5; ``summary`` holds ``auprc``, ``precision``, ``recall``."""
    positive = labels == 1
    fig, ax = plt.subplots(figsize=(4.2, 4))
    if positive.any():
        precision, recall, _ = precision_recall_curve(positive, probs[:, 1])
        ax.step(recall, precision, where="post", lw=1,
                label=f"{_short([class_names[1]])[0]} (AUPRC = {summary['auprc']:.3f})")
    prevalence = positive.mean()
    ax.axhline(prevalence, color="k", ls="--", lw=0.6, label=f"prevalence baseline ({prevalence:.3f})")
    ax.plot(summary["recall"], summary["precision"], "o", color="tab:red", ms=4, label="threshold 0.5")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision")
    ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    return fig


def pr_curves_figure(onehot: np.ndarray, probs: np.ndarray, names: list[str]):
    """One-vs-rest precision-recall curve of every class / label with its average precision;
    ``onehot`` (N, K) 0/1 targets (one-hot classes or multi-label), ``probs`` (N, K)."""
    fig, ax = plt.subplots(figsize=(4.2, 4))
    for i, name, positive in _ranked_classes(onehot, names):
        precision, recall, _ = precision_recall_curve(positive, probs[:, i])
        ap = average_precision_score(positive, probs[:, i])
        ax.step(recall, precision, where="post", lw=1,
                label=f"{name} (AP {ap:.3f}, prevalence {positive.mean():.2f})")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    return fig


def per_label_figure(table: list[dict]):
    """Per-label AUROC, average precision and F1 (multi-label tasks), one bar group per label."""
    rows = table[:-2]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(1.5 + 0.5 * len(rows), 3.2))
    for j, key in enumerate(("auroc", "ap", "f1")):
        ax.bar(x + (j - 1) * 0.27, [r[key] for r in rows], width=0.27, label=key)
    ax.set_xticks(x, _short([r["class"] for r in rows]), rotation=45, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def learning_curves_figure(rows: list[dict], monitor: str):
    """Loss (train and validation) and the monitored metric per epoch, from a run's
    ``csv/metrics.csv`` rows (epoch-level values only; step-level rows are skipped)."""
    def series(key: str) -> tuple[list[int], list[float]]:
        points = {int(float(r["epoch"])): float(r[key]) for r in rows if r.get(key) not in (None, "")}
        return sorted(points), [points[e] for e in sorted(points)]

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    panels = ((axes[0], ("train/loss_epoch", "train/loss", "val/loss"), "loss"),
              (axes[1], (monitor.replace("val/", "train/", 1), monitor), monitor))
    for ax, keys, title in panels:
        for key in dict.fromkeys(keys):
            x, y = series(key)
            if x:
                ax.plot(x, y, marker="o", ms=3, label=key)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        if ax.lines:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return fig
