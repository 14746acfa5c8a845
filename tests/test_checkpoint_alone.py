"""A checkpoint travels alone: copied into an empty folder, with its training data gone, it
predicts image files as its run did (classes, normalisation statistics, intensity mapping,
input size and channels, and the decision rule tuned on validation are stored in it)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.checkpoints import CheckpointError
from datamodules.export import export_npz
from datamodules.synthetic import write_synthetic_medmnist
from deploy import predict
from pipeline.cli import train
from tests.helpers import compose_cfg

CLASSES = ["normal", "pneumonia"]


@pytest.fixture(scope="module")
def table_run(tmp_path_factory) -> dict:
    """A fast_dev_run of the CNN on a PNG table with ``normalization=dataset`` (statistics that
    only the training images give); its folder, checkpoint and table."""
    root = tmp_path_factory.mktemp("alone")
    npz = write_synthetic_medmnist(root / "s.npz", num_classes=2, channels=1, proportions=[0.3, 0.7],
                                   n_train=60, n_val=30, n_test=30, seed=3)
    table = export_npz(npz, root / "png", class_names=CLASSES)
    run = root / "run"
    cfg = compose_cfg(["experiment=cnn_derma", "data=image_table", f"data.table={table}", "data.split_column=split",
                       "data.channels=1", "data.img_size=28", "data.normalization=dataset", "debug=fdr",
                       "trainer=cpu", "logger=csv", "~callbacks.rich_progress_bar", f"data.cache_dir={root}/cache",
                       "data.eval_batch_size=1024"], run)
    metrics = train(cfg)
    return {"root": root, "run": run, "ckpt": Path(metrics["test_checkpoint"]), "table": table}


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_lone_checkpoint_predicts_its_runs_classes_with_the_training_data_gone(table_run, tmp_path):
    run, table = table_run["run"], table_run["table"]
    alone = tmp_path / "empty" / "model.ckpt"
    alone.parent.mkdir()
    shutil.copy(table_run["ckpt"], alone)
    test_rows = [r for r in _rows(table) if r["split"] == "test"]
    images = tmp_path / "incoming"
    images.mkdir()
    files = []
    for i, r in enumerate(test_rows):  # the test images, renamed so that sorted order is table order
        files.append(images / f"{i:03d}.png")
        shutil.copy(table.parent / r["path"], files[-1])
    train_pixels = np.stack([np.asarray(Image.open(table.parent / r["path"]), np.float64) / 255
                             for r in _rows(table) if r["split"] == "train"])
    gone = table.parent.with_name("moved_away")
    shutil.move(table.parent, gone)  # the training data and the cache are gone
    shutil.rmtree(table_run["root"] / "cache", ignore_errors=True)
    try:
        stored = torch.load(alone, map_location="cpu", weights_only=True)["medmae"]
        record = stored["preprocessing"]
        assert record["output"]["class_names"] == CLASSES and record["input"]["size"] == 28
        assert record["input"]["channels"] == 1 and record["decode"]["intensity"] == {"mode": "auto"}
        np.testing.assert_allclose(record["input"]["mean"], [train_pixels.mean()], rtol=1e-9)  # the training split's
        np.testing.assert_allclose(record["input"]["std"], [train_pixels.std()], rtol=1e-9)
        tuning = json.loads((run / "eval" / "test_threshold_tuning.json").read_text())
        assert stored["decision"] == {"kind": "binary_threshold", "threshold": tuning["threshold"],
                                      "objective": "f1", "fitted_on": "validation"}

        result = predict.predict(alone, [images], device="cpu")
        assert result.files == files and result.unreadable == {} and result.device == "cpu"
        with np.load(run / "predictions" / "test_predictions.npz") as saved:
            np.testing.assert_allclose(result.probs, saved["probs"], atol=1e-5)
            run_probs = saved["probs"]
        out = tmp_path / "predictions.csv"
        assert predict.main([str(alone), str(images), "--out", str(out), "--device", "cpu"]) == 0
        tuned = [CLASSES[int(p[1] >= tuning["threshold"])] for p in run_probs]
        assert [r["predicted"] for r in _rows(out)] == tuned
        assert predict.main([str(alone), str(images), "--out", str(out), "--decision", "default"]) == 0
        assert [r["predicted"] for r in _rows(out)] == [CLASSES[i] for i in run_probs.argmax(1)]
    finally:
        shutil.move(gone, table.parent)


def test_a_lone_checkpoint_exports_with_a_parity_check_on_random_images(table_run, tmp_path):
    from deploy import export as ex

    alone = tmp_path / "model.ckpt"
    shutil.copy(table_run["ckpt"], alone)
    config = torch.load(alone, map_location="cpu", weights_only=True)
    config["medmae"]["config"]["data"]["table"] = str(tmp_path / "gone.csv")  # its data is nowhere
    torch.save(config, alone)
    result = ex.export_classifier(alone, "torchscript", out=tmp_path / "deployed", parity_images=8, latency_runs=2)
    figures = result["export"]
    assert figures["parity_source"].startswith("8 seeded random uint8 images") and figures["parity_max_abs"] <= 1e-4
    assert "random uint8 images" in (tmp_path / "deployed" / "export.md").read_text()
    assert json.loads(figures["metadata"]["thresholds"]) == {"pneumonia": config["medmae"]["decision"]["threshold"]}


def test_evaluate_on_new_images_uses_the_stored_normalisation(table_run, tmp_path):
    """New images whose training split has other statistics are normalised with the checkpoint's
    (as predict.py does), not with statistics of the new data."""
    from evaluation.evaluate import evaluate

    table = table_run["table"]
    new = tmp_path / "new"
    shutil.copytree(table.parent, new)
    for r in _rows(table):  # brighter training images: normalization=dataset would see another mean
        if r["split"] == "train":
            path = new / r["path"]
            Image.fromarray(np.minimum(np.asarray(Image.open(path)).astype(int) + 60, 255).astype(np.uint8)).save(path)
    test_files = [new / r["path"] for r in _rows(table) if r["split"] == "test"]
    probs = evaluate([table_run["ckpt"]], out=tmp_path / "eval", root=str(new))["probs"]
    np.testing.assert_allclose(probs, predict.predict(table_run["ckpt"], test_files, device="cpu").probs, atol=1e-5)

    config = torch.load(table_run["ckpt"], map_location="cpu", weights_only=True)
    config["medmae"]["preprocessing"]["output"]["class_names"] = ["benign", "malignant"]
    other = tmp_path / "other.ckpt"
    torch.save(config, other)
    with pytest.raises(CheckpointError, match=r"trained on the classes \['benign', 'malignant'\].*same classes"):
        evaluate([other], out=tmp_path / "eval_other", root=str(new))


def test_an_old_checkpoint_without_its_data_names_the_checkpoint_and_the_fix(table_run, tmp_path, capsys):
    """A checkpoint saved before records were stored needs its run's data; without it, one message."""
    old = tmp_path / "old.ckpt"
    config = torch.load(table_run["ckpt"], map_location="cpu", weights_only=True)
    del config["medmae"]["preprocessing"]
    config["medmae"]["config"]["data"]["table"] = str(tmp_path / "gone.csv")
    torch.save(config, old)
    assert predict.main([str(old), str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{old}: the data of its run cannot be read" in err and "gone.csv" in err and "--root" in err
    assert "Traceback" not in err
