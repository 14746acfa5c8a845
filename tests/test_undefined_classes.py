"""Classes with no positive (or no negative) in an evaluated split: their AUROC / AP are NaN,
left out of every macro mean with a warning naming them, counted in the summary; the same
numbers in the Lightning metrics (synced under DDP), the eval/ files, the report and the
aggregate tables. References: scikit-learn per class, mean over the defined classes."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import average_precision_score, roc_auc_score

from core import undefined_classes
from core.tasks import MULTI_CLASS, MULTI_LABEL
from core.undefined_classes import UndefinedClassWarning
from evaluation import aggregate
from evaluation.metrics import per_class_table, per_label_table, summary_metrics
from lightning_modules.metrics import DefinedRanking, classification_metrics, classwise_metrics
from pipeline.cli import train
from tests.helpers import compose_cfg, tiny_overrides, write_multilabel_chestmnist


@pytest.fixture(autouse=True)
def fresh_warnings():
    """Each distinct warning is issued once per process: forget the earlier tests' ones."""
    undefined_classes.ISSUED.clear()


def _multi_label(n=60, seed=0):
    """4 labels; 'nodule' (index 2) has no positive."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 4)) < [0.3, 0.5, 0.0, 0.2]).astype(int)
    p = np.clip(0.35 * y + 0.65 * rng.random((n, 4)), 0, 1)
    return p.astype(np.float32), y


def _multi_class(n=90, seed=1):
    """5 classes; class 3 ('dermatofibroma') absent from the labels."""
    rng = np.random.default_rng(seed)
    labels = rng.choice([0, 1, 2, 4], size=n)
    logits = rng.normal(size=(n, 5))
    logits[np.arange(n), labels] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs.astype(np.float32), labels


LABELS = ["effusion", "mass", "nodule", "edema"]
CLASSES = ["akiec", "bcc", "bkl", "dermatofibroma", "mel"]


def _sklearn_per_class(probs, onehot):
    """(AUROC, AP) per class from scikit-learn, NaN where the class is undefined."""
    auroc, ap = [], []
    for c in range(onehot.shape[1]):
        if 0 < onehot[:, c].sum() < len(onehot):
            auroc.append(roc_auc_score(onehot[:, c], probs[:, c]))
            ap.append(average_precision_score(onehot[:, c], probs[:, c]))
        else:
            auroc.append(np.nan)
            ap.append(np.nan)
    return np.array(auroc), np.array(ap)


@pytest.mark.parametrize("kind", ["multi-label", "multi-class"])
def test_lightning_metrics_average_only_the_defined_classes_as_sklearn(kind):
    if kind == "multi-label":
        probs, y = _multi_label()
        task, names, onehot, missing = MULTI_LABEL, LABELS, y, "nodule"
    else:
        probs, y = _multi_class()
        task, names, onehot, missing = MULTI_CLASS, CLASSES, np.eye(5, dtype=int)[y], "dermatofibroma"
    auroc, ap = _sklearn_per_class(probs, onehot)
    metrics = classification_metrics(len(names), task, "test/", names)
    classwise = classwise_metrics(len(names), task, "test/", names)
    for chunk in np.array_split(np.arange(len(y)), 3):
        metrics.update(torch.from_numpy(probs[chunk]), torch.from_numpy(y[chunk]))
        classwise.update(torch.from_numpy(probs[chunk]), torch.from_numpy(y[chunk]))
    with pytest.warns(UndefinedClassWarning, match=rf"test: AUROC and average precision are undefined for '{missing}'"):
        values = {**metrics.compute(), **classwise.compute()}
    assert values["test/auc"].item() == pytest.approx(np.nanmean(auroc), abs=1e-6)  # not sum / K
    assert values["test/auc"].item() > np.nansum(auroc) / len(names) + 0.1  # what counting it as 0 gave
    assert values["test/auc_defined_labels"].item() == len(names) - 1
    assert values["test/ap_macro"].item() == pytest.approx(np.nanmean(ap), abs=1e-6)
    for c, name in enumerate(names):
        if name == missing:
            assert math.isnan(values[f"test/auroc/{name}"]) and math.isnan(values[f"test/ap/{name}"])
        else:
            assert values[f"test/auroc/{name}"].item() == pytest.approx(auroc[c], abs=1e-6)
            assert values[f"test/ap/{name}"].item() == pytest.approx(ap[c], abs=1e-6)


def test_no_defined_class_gives_nan_not_zero():
    metric = DefinedRanking("auroc", 3, multi_label=True, split="val", names=["a", "b", "c"])
    metric.update(torch.rand(8, 3), torch.ones(8, 3, dtype=torch.long))  # every label positive everywhere
    with pytest.warns(UndefinedClassWarning, match=r"'a' \(8 of 8 positive\), 'b' .*'c' .*\(0 of 3 classes defined\)"):
        assert math.isnan(metric.compute().item())


def test_macro_auc_is_computed_from_the_synced_epoch_under_ddp():
    """Two processes' shards, gathered by torchmetrics' sync (a stand-in all_gather): label 'nodule'
    has its only positives on rank 1, so rank 0 alone would call it undefined."""
    probs, y = _multi_label(n=80, seed=3)
    y[:, 2] = 0
    y[[50, 60, 70], 2] = 1  # rank 1 holds rows 40.., rank 0 none of the positives
    shards = [(probs[:40], y[:40]), (probs[40:], y[40:])]
    ranks = [DefinedRanking("auroc", 4, True, "macro", "val", LABELS) for _ in range(2)]
    for metric, (p, t) in zip(ranks, shards):
        metric.update(torch.from_numpy(p), torch.from_numpy(t))
    other = iter([torch.cat(ranks[1].preds), torch.cat(ranks[1].target)])  # in state order: preds, target

    def all_gather(tensor, group=None):
        return [tensor, next(other)]

    ranks[0].dist_sync_fn = all_gather
    ranks[0].distributed_available_fn = lambda: True
    auroc, _ = _sklearn_per_class(probs, y)
    assert ranks[0].compute().item() == pytest.approx(np.mean(auroc), abs=1e-6)  # all 4 labels, over 80 rows
    unsynced = DefinedRanking("auroc", 4, True, "macro", "val", LABELS)
    unsynced.update(torch.from_numpy(shards[0][0]), torch.from_numpy(shards[0][1]))
    with pytest.warns(UndefinedClassWarning, match="'nodule'"):
        assert unsynced.compute().item() != pytest.approx(np.mean(auroc), abs=1e-4)


def test_tables_and_summary_show_nan_and_average_the_defined_classes():
    probs, y = _multi_label()
    auroc, ap = _sklearn_per_class(probs, y)
    with pytest.warns(UndefinedClassWarning, match="'nodule'") as caught:
        table = per_label_table(probs, y, LABELS)
        summary = summary_metrics(probs, y, MULTI_LABEL, LABELS)
    assert "test: AUROC and average precision are undefined for 'nodule' (0 of 60 positive)" in str(caught[0].message)
    assert math.isnan(table[2]["auroc"]) and math.isnan(table[2]["ap"])
    assert table[0]["auroc"] == pytest.approx(auroc[0], abs=1e-6)
    assert table[-2]["auroc"] == pytest.approx(np.nanmean(auroc)) and table[-2]["ap"] == pytest.approx(np.nanmean(ap))
    support = y.sum(0)
    keep = ~np.isnan(auroc)
    assert table[-1]["auroc"] == pytest.approx((auroc[keep] * support[keep]).sum() / support[keep].sum())
    assert summary["auc"] == pytest.approx(np.nanmean(auroc)) and summary["auc_defined_labels"] == 3

    probs, labels = _multi_class()
    onehot = np.eye(5, dtype=int)[labels]
    auroc, _ = _sklearn_per_class(probs, onehot)
    with pytest.warns(UndefinedClassWarning, match="'dermatofibroma'"):
        table = per_class_table(probs, labels, CLASSES)
        summary = summary_metrics(probs, labels, MULTI_CLASS, CLASSES)
    assert math.isnan(table[3]["auroc"]) and table[3]["support"] == 0
    assert summary["auc"] == pytest.approx(np.nanmean(auroc)) and summary["auc_defined_labels"] == 4


def _write_chest(root: Path) -> None:
    """ChestMNIST-format file whose label 13 ('hernia') has no positive in the test split."""
    write_multilabel_chestmnist(root, sizes=(64, 32, 40), absent_in_test=13)


def test_a_multi_label_run_reports_one_auc_everywhere(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    _write_chest(root)
    with pytest.warns(UndefinedClassWarning, match="test: .*'hernia' \\(0 of 40 positive\\)"):
        train(compose_cfg(["experiment=quickstart", "data=chestmnist", *tiny_overrides(root), "debug=fdr",
                           "data.batch_size=32", "data.eval_batch_size=64"], tmp_path / "run"))  # all 40 test images
    run = tmp_path / "run"
    preds = np.load(run / "predictions" / "test_predictions.npz")
    auroc, _ = _sklearn_per_class(preds["probs"], preds["labels"])
    assert np.isnan(auroc[13]) and np.isfinite(auroc[:13]).all()
    logged = json.loads((run / "metrics.json").read_text())
    summary = json.loads((run / "eval" / "test_summary.json").read_text())
    assert logged["test/auc"] == pytest.approx(np.nanmean(auroc), abs=1e-5)
    assert summary["auc"] == pytest.approx(logged["test/auc"], abs=1e-5)
    assert logged["test/auc_defined_labels"] == summary["auc_defined_labels"] == 13
    assert math.isnan(logged["test/auroc/hernia"])
    report = (run / "report.md").read_text()
    assert f"| {logged['test/acc']:.4f} | {logged['test/auc']:.4f} |" in report
    (hernia,) = [line for line in report.splitlines() if line.startswith("| hernia |")]
    assert hernia.split(" | ")[-2:] == ["NaN", "NaN |"]  # auroc, ap
    assert "AUROC and AP are undefined (NaN) for 'hernia'" in report and "other 13 of 14 classes" in report
    with open(run / "eval" / "test_per_class.csv") as f:
        assert next(r for r in csv.DictReader(f) if r["class"] == "hernia")["auroc"] == "nan"


def test_aggregate_counts_undefined_runs_instead_of_dropping_or_zeroing_them(tmp_path, capsys):
    root = tmp_path / "multirun"
    for i, auc in enumerate([0.8, float("nan"), 0.9]):
        job = root / str(i)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["experiment=quickstart", f"seed={i}"]))
        (job / "metrics.json").write_text(json.dumps({"test/auc": auc, "test/acc": 0.5}))
    assert aggregate.main([str(root), "--metrics", "test/auc", "test/acc"]) == 0
    out, err = capsys.readouterr()
    assert "1: ['test/auc'] undefined (NaN)" in err
    assert "| quickstart | 3 | 0.8500 +- 0.0707 (defined in 2 of 3 runs) | 0.5000 +- 0.0000 |" in out
    header, row = [line.split(",") for line in (root / "aggregate.csv").read_text().splitlines()]
    assert header == ["experiment", "n", "test/auc_mean", "test/auc_std", "test/auc_defined_runs", "test/acc_mean",
                      "test/acc_std", "test/acc_defined_runs"]
    assert row[1] == "3" and float(row[2]) == pytest.approx(0.85) and row[4] == "2" and row[7] == "3"


def test_a_nan_validation_monitor_stops_the_run_with_the_reason():
    from types import SimpleNamespace

    from callbacks.monitor_check import MonitorDefined

    check = MonitorDefined("val/auc")
    trainer = SimpleNamespace(sanity_checking=False, fast_dev_run=False, current_epoch=3,
                              callback_metrics={"val/auc": torch.tensor(float("nan"))})
    with pytest.raises(ValueError, match=r"monitor.metric=val/auc is NaN after validation epoch 3: no class .* both a "
                                         r"positive and a negative.*monitor.metric=val/loss"):
        check.on_validation_end(trainer, None)
    trainer.callback_metrics["val/auc"] = torch.tensor(0.7)
    check.on_validation_end(trainer, None)  # a number: nothing to say
    trainer.callback_metrics["val/auc"], trainer.sanity_checking = torch.tensor(float("nan")), True
    check.on_validation_end(trainer, None)  # the sanity check's two batches select nothing
