"""Per-class evaluation against scikit-learn / medmnist, and the written eval/ folder."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from medmnist.evaluator import getACC, getAUC
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    precision_score,
    recall_score,
    roc_auc_score,
)

from evaluation.metrics import (
    BINARY,
    average_precision,
    expected_calibration_error,
    per_class_table,
    positive_class_summary,
    summary_metrics,
)
from evaluation.report import write_run_report
from evaluation.writer import write_evaluation
from pipeline.cli import train
from tests.helpers import REAL_PNEUMONIA, compose_cfg, tiny_overrides, write_multilabel_chestmnist


def _predictions(n=400, k=5, seed=0, never_predicted=3):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * 2
    logits[:, never_predicted] -= 100
    labels = rng.integers(0, k, n)
    logits[np.arange(n), labels] += rng.random(n) * 2  # some signal
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs, labels


def test_per_class_table_matches_sklearn_including_never_predicted_class():
    probs, labels = _predictions()
    names = [f"c{i}" for i in range(5)]
    table = per_class_table(probs, labels, names)
    pred = probs.argmax(1)
    p, r, f, s = precision_recall_fscore_support(labels, pred, labels=range(5), zero_division=0)
    for i in range(5):
        row = table[i]
        assert row["support"] == s[i]
        assert row["precision"] == pytest.approx(p[i]) and row["recall"] == pytest.approx(r[i])
        assert row["f1"] == pytest.approx(f[i]) and row["accuracy"] == row["recall"]
        negatives = labels != i
        assert row["specificity"] == pytest.approx((pred[negatives] != i).mean())
    assert table[3]["precision"] == 0 and table[3]["recall"] == 0  # never predicted
    for avg, row in (("macro", table[5]), ("weighted", table[6])):
        p, r, f, _ = precision_recall_fscore_support(labels, pred, average=avg, zero_division=0)
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p, r, f))


@pytest.mark.parametrize("k, task", [(5, "multi-class"), (2, "binary-class")])
def test_summary_matches_medmnist_evaluator_and_sklearn(k, task):
    probs, labels = _predictions(k=k, never_predicted=1)
    s = summary_metrics(probs, labels, task)
    assert s["acc"] == pytest.approx(getACC(labels, probs, task))
    assert s["auc"] == pytest.approx(getAUC(labels, probs, task))
    assert s["balanced_acc"] == pytest.approx(balanced_accuracy_score(labels, probs.argmax(1)))


def _binary_predictions(n=600, seed=0):
    """~20 % positives, a weakly informative model, some tied scores. Probs (N, 2), labels (N,)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.2).astype(int)
    p1 = 1 / (1 + np.exp(-(1.3 * labels + rng.normal(size=n) - 0.5)))
    p1[:40] = p1[:40].round(1)
    return np.stack([1 - p1, p1], 1), labels


@pytest.mark.parametrize("seed", [0, 1])
def test_binary_summary_is_positive_class_and_matches_sklearn(seed):
    probs, labels = _binary_predictions(seed=seed)
    s = summary_metrics(probs, labels, BINARY)
    pred = (probs[:, 1] > 0.5).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, pred, labels=[0, 1]).ravel()
    assert s["precision"] == pytest.approx(precision_score(labels, pred))
    assert s["recall"] == pytest.approx(recall_score(labels, pred))
    assert s["specificity"] == pytest.approx(tn / (tn + fp))
    assert s["f1"] == pytest.approx(f1_score(labels, pred))
    assert s["auprc"] == pytest.approx(average_precision_score(labels, probs[:, 1]))
    assert s["auc"] == pytest.approx(roc_auc_score(labels, probs[:, 1]))
    assert s["acc"] == pytest.approx((pred == labels).mean())
    # the positive class, not the macro average or class 0
    assert abs(s["f1"] - s["f1_macro"]) > 0.05 and abs(s["recall"] - s["specificity"]) > 0.05
    assert abs(s["auprc"] - average_precision_score(1 - labels, probs[:, 0])) > 0.05
    row = per_class_table(probs, labels, ["neg", "pos"])[1]  # argmax decision, same here
    for key in ("precision", "recall", "specificity", "f1"):
        assert row[key] == pytest.approx(s[key]), key
    assert not {"precision", "recall", "specificity", "f1", "auprc"} & set(
        summary_metrics(*_predictions(k=3, never_predicted=1), "multi-class"))


def test_binary_metrics_edge_cases_follow_sklearn():
    scores = np.array([0.9, 0.8, 0.8, 0.3, 0.3, 0.1])
    positive = np.array([1, 0, 1, 1, 0, 0], bool)
    assert average_precision(positive, scores) == pytest.approx(average_precision_score(positive, scores))
    assert average_precision(positive, scores) == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3 + 1 / 3 * 3 / 5)
    assert np.isnan(average_precision(np.zeros(6, bool), scores))  # no positive: undefined (sklearn says 0)
    assert np.isnan(average_precision(np.ones(6, bool), scores))  # no negative: undefined as well
    nothing_predicted = positive_class_summary(np.stack([1 - scores / 2, scores / 2], 1), positive.astype(int))
    assert nothing_predicted["precision"] == 0 and nothing_predicted["recall"] == 0 and nothing_predicted["f1"] == 0
    assert nothing_predicted["specificity"] == 1


def test_binary_summary_equals_the_logged_torchmetrics_values():
    import torch

    from lightning_modules.metrics import classification_metrics

    probs, labels = _binary_predictions(seed=2)
    probs = probs.astype(np.float32)  # as saved in predictions/
    m = classification_metrics(2, BINARY, "test/")
    for chunk in np.array_split(np.arange(len(labels)), 3):
        m.update(torch.from_numpy(probs[chunk]), torch.from_numpy(labels[chunk]))
    logged = m.compute()
    summary = summary_metrics(probs, labels, BINARY)
    for key in ("acc", "auc", "precision", "recall", "specificity", "f1", "auprc", "f1_macro"):
        assert logged[f"test/{key}"].item() == pytest.approx(summary[key], abs=1e-5), key


def test_ece_hand_worked():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    # bins (15): 0.9 -> bin 13 (2 samples, acc 0.5, conf 0.9); 0.6 -> bin 9 (2 samples, acc 1, conf 0.6)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)


def test_write_evaluation_files_hold_the_computed_numbers(tmp_path):
    probs, labels = _predictions()
    names = [f"class {i}" for i in range(5)]
    result = write_evaluation(probs, labels, names, "multi-class", tmp_path)
    summary = json.loads((tmp_path / "test_summary.json").read_text())
    assert summary["acc"] == pytest.approx((probs.argmax(1) == labels).mean())
    rows = (tmp_path / "test_per_class.csv").read_text().splitlines()
    assert rows[0] == "class,support,accuracy,precision,recall,specificity,f1,auroc,ap" and len(rows) == 1 + 5 + 2
    assert float(rows[1].split(",")[4]) == pytest.approx(result["table"][0]["recall"])
    cm = np.loadtxt(tmp_path / "test_confusion_matrix.csv", delimiter=",", skiprows=1)
    assert cm.sum() == len(labels) and cm[:, 3].sum() == 0
    for path in result["figures"].values():
        assert path.stat().st_size > 5000 and path.read_bytes()[:4] == b"\x89PNG"
    assert "pr_curve" not in result["figures"] and "f1" not in summary
    assert "pr_curves" in result["figures"]  # one-vs-rest, one curve per class


def test_per_class_ranking_metrics_and_per_label_table_match_sklearn():
    from evaluation.metrics import per_label_table, summary_metrics

    probs, labels = _predictions()
    table = per_class_table(probs, labels, [str(i) for i in range(5)])
    for i, row in enumerate(table[:5]):
        positive = labels == i
        if positive.any():
            assert row["auroc"] == pytest.approx(roc_auc_score(positive, probs[:, i]), abs=1e-6)
            assert row["ap"] == pytest.approx(average_precision_score(positive, probs[:, i]), abs=1e-6)
        else:  # undefined: NaN, never 0
            assert np.isnan(row["auroc"]) and np.isnan(row["ap"])
    rng = np.random.default_rng(5)
    y = (rng.random((80, 4)) < [0.1, 0.3, 0.5, 0.7]).astype(int)
    p = np.clip(0.6 * y + 0.4 * rng.random((80, 4)), 0, 1)
    rows = per_label_table(p, y, list("abcd"))
    pred = (p > 0.5).astype(int)
    for j, row in enumerate(rows[:4]):
        tn, fp, fn, tp = confusion_matrix(y[:, j], pred[:, j], labels=[0, 1]).ravel()
        assert row["support"] == y[:, j].sum()
        assert row["precision"] == pytest.approx(precision_score(y[:, j], pred[:, j], zero_division=0))
        assert row["recall"] == pytest.approx(recall_score(y[:, j], pred[:, j]))
        assert row["specificity"] == pytest.approx(tn / (tn + fp))
        assert row["f1"] == pytest.approx(f1_score(y[:, j], pred[:, j]))
        assert row["auroc"] == pytest.approx(roc_auc_score(y[:, j], p[:, j]), abs=1e-6)
        assert row["ap"] == pytest.approx(average_precision_score(y[:, j], p[:, j]), abs=1e-6)
    summary = summary_metrics(p, y, "multi-label, binary-class")
    assert summary["auc"] == pytest.approx(np.mean([roc_auc_score(y[:, j], p[:, j]) for j in range(4)]))
    assert summary["f1_macro"] == pytest.approx(np.mean([f1_score(y[:, j], pred[:, j]) for j in range(4)]))


def test_multi_label_evaluation_writes_per_label_files(tmp_path):
    rng = np.random.default_rng(6)
    y = (rng.random((60, 3)) < 0.4).astype(int)
    p = np.clip(0.5 * y + 0.5 * rng.random((60, 3)), 0, 1)
    result = write_evaluation(p, y, ["cardiomegaly", "edema", "mass"], "multi-label, binary-class", tmp_path)
    rows = (tmp_path / "test_per_class.csv").read_text().splitlines()
    assert rows[1].startswith("cardiomegaly,") and len(rows) == 1 + 3 + 2
    assert set(result["figures"]) == {"per_label", "pr_curves"}
    assert not (tmp_path / "test_confusion_matrix.csv").exists()


def test_binary_evaluation_writes_pr_curve_and_report_shows_positive_class_metrics(tmp_path):
    probs, labels = _binary_predictions()
    result = write_evaluation(probs, labels, ["normal", "pneumonia"], BINARY, tmp_path / "eval", "test")
    summary = json.loads((tmp_path / "eval" / "test_summary.json").read_text())
    assert summary["auprc"] == pytest.approx(average_precision_score(labels, probs[:, 1]))
    pr = tmp_path / "eval" / "test_pr_curve.png"
    assert result["figures"]["pr_curve"] == pr and pr.stat().st_size > 5000
    cfg = compose_cfg(["experiment=quickstart"], tmp_path)
    metrics = {"test/acc": summary["acc"], "test/auc": summary["auc"], "test/f1": 0.123456}  # logged F1 wins
    report = (write_run_report(tmp_path, cfg, metrics)).read_text()
    header = "| ACC | AUC | precision | recall | specificity | F1 | AUPRC | ECE |"
    values = (f"| {summary['acc']:.4f} | {summary['auc']:.4f} | {summary['precision']:.4f} | {summary['recall']:.4f} "
              f"| {summary['specificity']:.4f} | 0.1235 | {summary['auprc']:.4f} | {summary['ece']:.4f} |")
    assert header in report and values in report and "positive class = class 1" in report
    assert "![test_pr_curve](eval/test_pr_curve.png)" in report


def test_classifier_run_writes_eval_folder_consistent_with_metrics(data_root, tmp_path):
    metrics = train(compose_cfg(["experiment=quickstart", *tiny_overrides(data_root), "trainer.max_epochs=1"], tmp_path))
    summary = json.loads((tmp_path / "eval" / "test_summary.json").read_text())
    assert summary["acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert summary["auc"] == pytest.approx(metrics["test/auc"], abs=1e-4)
    assert summary["balanced_acc"] == pytest.approx(metrics["test/bal_acc"], abs=1e-6)
    assert (tmp_path / "eval" / "test_confusion_matrix.png").is_file()


def test_report_md_holds_the_numbers_figures_and_protocol(data_root, tmp_path):
    metrics = train(compose_cfg(["experiment=quickstart", *tiny_overrides(data_root), "trainer.max_epochs=1",
                                 "data.label_fraction=0.5", "data.sampler=sqrt"], tmp_path))
    report = (tmp_path / "report.md").read_text()
    assert f"{metrics['test/auc']:.4f}" in report and f"{metrics['test/acc']:.4f}" in report
    assert "| synthetic class 5 (like 'melanocytic nevi') |" in report  # per-class rows carry the (marked) names
    for line in report.splitlines():
        if line.startswith("!["):
            assert (tmp_path / line.split("](")[1].rstrip(")")).is_file()
    assert "| label fraction | 0.5 |" in report and "| sampler | sqrt" in report
    assert "val/auc (max) on validation" in report and "| seed | 0 (split seed 0) |" in report
    tuning = json.loads((tmp_path / "eval" / "test_threshold_tuning.json").read_text())
    assert tuning["kind"] == "class offsets" and len(tuning["offsets"]) == 7
    assert f"| untuned | {tuning['untuned']['macro_f1']:.4f}" in report


def test_threshold_tuning_improves_validation_objective_and_refuses_test_data():
    from evaluation.thresholds import (
        SplitPredictions,
        _binary_scores,
        _multiclass_score,
        binary_predict,
        fit_binary_threshold,
        fit_class_offsets,
        offset_predict,
    )

    rng = np.random.default_rng(0)
    labels = (rng.random(300) < 0.2).astype(int)  # rare positives, under-confident model
    p1 = np.clip(0.15 + 0.3 * labels + rng.normal(0, 0.12, 300), 0.01, 0.99)
    val = SplitPredictions(np.stack([1 - p1, p1], 1), labels, "val")
    t = fit_binary_threshold(val, "f1")
    assert _binary_scores(labels, binary_predict(val.probs, t))["f1"] > _binary_scores(labels, val.probs.argmax(1))["f1"]
    assert _binary_scores(labels, binary_predict(val.probs, fit_binary_threshold(val, "sensitivity", 0.95)))[
        "sensitivity"] >= 0.95
    probs, labels = _predictions(k=4, never_predicted=2)
    val = SplitPredictions(probs, labels, "val")
    offsets = fit_class_offsets(val, "balanced_acc")
    assert _multiclass_score(labels, offset_predict(probs, offsets), 4, "balanced_acc") > \
        _multiclass_score(labels, probs.argmax(1), 4, "balanced_acc")
    with pytest.raises(ValueError, match="validation predictions only, got split='test'"):
        fit_class_offsets(SplitPredictions(probs, labels, "test"))
    with pytest.raises(ValueError, match="split='test'"):
        fit_binary_threshold(SplitPredictions(probs[:, :2], labels, "test"))


@pytest.mark.slow
def test_evaluate_command_single_ensemble_and_class_mismatch(data_root, tmp_path, capsys):
    from evaluation import evaluate

    metrics = train(compose_cfg(["experiment=quickstart", *tiny_overrides(data_root), "trainer.max_epochs=1"],
                                tmp_path / "run"))
    ckpt = Path(metrics["test_checkpoint"])
    single = evaluate.evaluate([ckpt], out=tmp_path / "single")
    assert single["summary"]["acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert single["summary"]["auc"] == pytest.approx(metrics["test/auc"], abs=1e-4)
    assert (tmp_path / "single" / "report.md").is_file()
    ensemble = evaluate.evaluate([ckpt, ckpt], out=tmp_path / "ensemble")
    np.testing.assert_allclose(ensemble["probs"], single["probs"], rtol=1e-6)
    with pytest.raises(evaluate.CheckpointError, match="predicts 7 classes but the dataset has 2"):
        evaluate.load_classifier(ckpt, num_classes=2)
    assert evaluate.main([str(tmp_path / "nowhere.ckpt")]) == 1
    assert "nowhere.ckpt: no such checkpoint file" in capsys.readouterr().err

    # The per-class metrics logged by the test loop (torchmetrics, every logger) equal sklearn on
    # the saved predictions; each validation epoch left its confusion matrix.
    from sklearn.metrics import average_precision_score, roc_auc_score

    preds = np.load(tmp_path / "run" / "predictions" / "test_predictions.npz")
    probs, labels = preds["probs"], preds["labels"]
    melanoma = "synthetic_class_4_like_melanoma"  # the fixture's data are synthetic: marked class names
    assert metrics[f"test/auroc/{melanoma}"] == pytest.approx(roc_auc_score(labels == 4, probs[:, 4]), abs=1e-5)
    assert metrics[f"test/ap/{melanoma}"] == pytest.approx(average_precision_score(labels == 4, probs[:, 4]), abs=1e-5)
    confidence, correct = probs.max(1), probs.argmax(1) == labels  # ECE by hand: 15 equal-width bins
    bins = np.clip(np.ceil(confidence * 15).astype(int) - 1, 0, 14)
    ece = sum(abs(correct[bins == b].mean() - confidence[bins == b].mean()) * (bins == b).mean()
              for b in np.unique(bins))
    assert metrics["test/ece"] == pytest.approx(ece, abs=1e-4)
    assert "val/recall/synthetic_class_1_like_basal_cel" in metrics
    history = json.loads((tmp_path / "run" / "eval" / "val_confusion_matrices.json").read_text())
    assert list(history) == ["0"] and np.asarray(history["0"]).sum() == 70  # every validation image

    # A run saved before checkpoints stored their config (read from config.yaml) and before
    # model.lr existed (model.optimizer.lr) still evaluates.
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    del state["medmae"]
    old_ckpt = ckpt.with_name("old.ckpt")
    torch.save(state, old_ckpt)
    config = tmp_path / "run" / "config.yaml"
    old = config.read_text().replace("  lr: 0.003\n", "", 1).replace(
        "    _target_: torch.optim.Adam\n", "    _target_: torch.optim.Adam\n    lr: 0.003\n", 1)
    assert old != config.read_text()
    config.write_text(old)
    np.testing.assert_allclose(evaluate.evaluate([old_ckpt], out=tmp_path / "old")["probs"], single["probs"],
                               atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(not REAL_PNEUMONIA.is_file(), reason="real PneumoniaMNIST not available")
def test_cnn_derma_on_real_pneumoniamnist_report_matches_saved_predictions(tmp_path):
    from sklearn.metrics import accuracy_score, roc_auc_score

    metrics = train(compose_cfg(["experiment=cnn_derma", "data=pneumoniamnist", f"data.root={REAL_PNEUMONIA.parent}",
                                 "data.download=false", "trainer=cpu", "trainer.max_epochs=2",
                                 "~callbacks.rich_progress_bar"], tmp_path))
    preds = np.load(tmp_path / "predictions" / "test_predictions.npz")
    assert len(preds["labels"]) == 624
    acc = accuracy_score(preds["labels"], preds["probs"][:, 1] > 0.5)
    auc = roc_auc_score(preds["labels"], preds["probs"][:, 1])
    report = (tmp_path / "report.md").read_text()
    assert f"| {acc:.4f} | {auc:.4f} |" in report
    assert metrics["test/auc"] == pytest.approx(auc, abs=1e-4)
    for line in report.splitlines():
        if line.startswith("!["):
            assert (tmp_path / line.split("](")[1].rstrip(")")).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_evaluate_multi_label_uses_sigmoid_and_writes_per_label_tables(tmp_path):
    from evaluation import evaluate

    root = tmp_path / "data"
    root.mkdir()
    write_multilabel_chestmnist(root)
    metrics = train(compose_cfg(["experiment=quickstart", "data=chestmnist", *tiny_overrides(root),
                                 "trainer.max_epochs=2", "data.batch_size=32"], tmp_path / "run"))
    result = evaluate.evaluate([Path(metrics["test_checkpoint"])], out=tmp_path / "eval", accelerator="cpu",
                               batch_size=7, num_workers=0)
    probs, labels = result["probs"], np.load(tmp_path / "eval" / "predictions" / "test_predictions.npz")["labels"]
    assert probs.shape == labels.shape == (32, 14)
    assert not np.allclose(probs.sum(1), 1.0)  # per-label sigmoid, not a softmax over labels
    assert result["summary"]["acc"] == pytest.approx(getACC(labels, probs, "multi-label, binary-class"))
    assert result["summary"]["auc"] == pytest.approx(getAUC(labels, probs, "multi-label, binary-class"))
    assert result["summary"]["auc"] == pytest.approx(metrics["test/auc"], abs=1e-4)  # same as the test loop
    with open(tmp_path / "eval" / "eval" / "test_per_class.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 14 + 2 and int(rows[0]["support"]) == int(labels[:, 0].sum())
    assert float(rows[3]["auroc"]) == pytest.approx(roc_auc_score(labels[:, 3], probs[:, 3]), abs=1e-6)


@pytest.mark.parametrize(("fast_dev_run", "limit", "expected"),
                         [(True, 1.0, 1), (0, 1.0, None), (0, 3, 3), (0, 0.25, 2), (0, 0.01, 1)])  # as Lightning: int(10 x 0.25)
def test_callback_evaluation_respects_fast_dev_run_and_limit_val_batches(fast_dev_run, limit, expected):
    from types import SimpleNamespace

    from callbacks.evaluation import eval_batch_limit

    trainer = SimpleNamespace(fast_dev_run=fast_dev_run, limit_val_batches=limit)
    assert eval_batch_limit(trainer, n=100, batch_size=10) == expected  # 10 batches in all
