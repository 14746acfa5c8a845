"""Runs name their data: the synthetic generator's images are marked as such everywhere (report,
console, metrics.json, class names, checkpoint, export record), a real file is named with its
sha256, and runs made on different data are never pooled silently."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core import file_hash
from core.data_identity import check_same_data
from datamodules import MedMNISTDataModule
from datamodules.synthetic import write_synthetic_medmnist
from evaluation import aggregate
from pipeline.cli import run_summary, train
from tests.helpers import REAL_PNEUMONIA, compose_cfg

FAST = ["trainer=cpu", "logger=csv", "~callbacks.rich_progress_bar", "data.num_workers=0", "debug=fdr"]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """``experiment=quickstart`` (its synthetic file written on first use), one batch of each split."""
    tmp = tmp_path_factory.mktemp("quickstart")
    cfg = compose_cfg(["experiment=quickstart", f"data.root={tmp / 'synthetic'}", *FAST], tmp / "run")
    return cfg, train(cfg), tmp / "run"


@pytest.fixture(scope="module")
def pneumonia(tmp_path_factory):
    """A run on the real PneumoniaMNIST file, one batch of each split."""
    if not REAL_PNEUMONIA.is_file():
        pytest.skip("real PneumoniaMNIST not available")
    run = tmp_path_factory.mktemp("pneumonia") / "run"
    cfg = compose_cfg(["experiment=cnn_derma", "data=pneumoniamnist", f"data.root={REAL_PNEUMONIA.parent}",
                       "data.download=false", *FAST], run)
    return cfg, train(cfg), run


def test_quickstart_says_synthetic_in_its_report_summary_metrics_and_checkpoint(quickstart):
    cfg, metrics, run = quickstart
    report = (run / "report.md").read_text()
    first = report.splitlines()[2]
    assert first.startswith("> **Synthetic data, not real data.**") and "generator seed 0" in first
    assert report.index("Synthetic data") < report.index("## Test results")  # before any number
    assert "| dataset | dermamnist" not in report
    assert "| dataset | SYNTHETIC (not real data; images shaped like dermamnist), 28 px -> 28 px |" in report
    assert "| synthetic class 4 (like 'melanoma') |" in report and "| melanoma |" not in report
    stored = json.loads((run / "metrics.json").read_text())["data_identity"]
    assert stored["kind"] == "synthetic" and stored["synthetic"] is True and stored["note"] == "not real data"
    npz = run.parent / "synthetic" / "dermamnist.npz"
    assert stored["sha256"] == hashlib.sha256(npz.read_bytes()).hexdigest()
    assert stored["generator"]["seed"] == 0 and stored["generator"]["n_train"] == 700
    console = run_summary(cfg, metrics).splitlines()
    assert console[0].startswith("SYNTHETIC DATA (not real data)") and "SYNTHETIC images" in console[1]
    ckpt = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)["medmae"]["data"]
    assert ckpt["source"] == stored and ckpt["class_names"][0].startswith("synthetic class 0 (like ")
    from deploy.export import trained_on

    assert trained_on(Path(metrics["best_checkpoint"]))["kind"] == "synthetic"  # the export record's source


def test_a_synthetic_file_stays_marked_when_read_as_a_real_flag(tmp_path):
    write_synthetic_medmnist(tmp_path / "dermamnist.npz", n_train=70, n_val=14, n_test=14, seed=5)
    dm = MedMNISTDataModule(flag="dermamnist", root=str(tmp_path), download=False)  # data=dermamnist data.root=...
    identity = dm.source_identity()
    assert identity["synthetic"] is True and identity["generator"]["seed"] == 5
    assert dm.class_names[5] == "synthetic class 5 (like 'melanocytic nevi')"
    dm.setup("fit")  # the marker entry does not disturb the reader
    assert len(dm.train_set) == 70
    arrays = dict(np.load(tmp_path / "dermamnist.npz"))
    del arrays["synthetic_generator"]  # the same images without the marker: read as a real file
    (tmp_path / "real").mkdir()
    np.savez(tmp_path / "real" / "dermamnist.npz", **arrays)
    real = MedMNISTDataModule(flag="dermamnist", root=str(tmp_path / "real"), download=False)
    assert real.source_identity()["kind"] == "medmnist" and real.class_names[5] == "melanocytic nevi"


def test_a_real_pneumoniamnist_report_names_the_file_and_its_sha256(pneumonia):
    cfg, metrics, run = pneumonia
    sha = hashlib.sha256(REAL_PNEUMONIA.read_bytes()).hexdigest()
    report = (run / "report.md").read_text()
    assert "Synthetic" not in report and "| dataset | pneumoniamnist, 28 px -> 28 px |" in report
    assert (f"| data source | MedMNIST pneumoniamnist at 28 px, file {REAL_PNEUMONIA.resolve()} "
            f"(sha256 {sha[:16]}) |") in report
    identity = json.loads((run / "metrics.json").read_text())["data_identity"]
    assert identity["sha256"] == sha and identity["kind"] == "medmnist" and identity["synthetic"] is False
    assert run_summary(cfg, metrics).splitlines()[0].startswith("data: MedMNIST pneumoniamnist")


def test_pooling_a_synthetic_and_a_real_run_is_refused_naming_them(quickstart, pneumonia, tmp_path, capsys):
    synthetic, real = quickstart[2], pneumonia[2]
    with pytest.raises(SystemExit, match=rf"(?s)different data.*SYNTHETIC.*{synthetic}.*pneumoniamnist.*{real}"
                                         r".*--allow-mixed-data"):
        aggregate.main([str(synthetic), str(real), "--metrics", "test/acc", "--out", str(tmp_path)])
    assert aggregate.main([str(synthetic), str(real), "--metrics", "test/acc", "--out", str(tmp_path),
                           "--allow-mixed-data"]) == 0
    assert "| MIXED: SYNTHETIC, like dermamnist 28 px" in capsys.readouterr().out


def test_check_same_data_refuses_two_files_under_one_flag():
    def real(sha):
        return {"kind": "medmnist", "synthetic": False, "flag": "dermamnist", "size": 28, "path": "/d/dermamnist.npz",
                "sha256": sha, "fingerprint": sha}

    check_same_data({"a": real("1" * 64), "b": real("1" * 64), "old": None})  # same file; an old run is not compared
    with pytest.raises(ValueError, match=r"(?s)different data.*sha256 1111111111111111\): a.*sha256 2222222222222222\): b"):
        check_same_data({"a": real("1" * 64), "b": real("2" * 64)})


def test_file_hash_is_read_once_per_file_version(tmp_path, monkeypatch):
    path = tmp_path / "x.npz"
    path.write_bytes(b"abc")
    reads = []
    monkeypatch.setattr(file_hash, "sha256_of", lambda p: reads.append(p) or hashlib.sha256(p.read_bytes()).hexdigest())
    assert file_hash.file_sha256(path) == hashlib.sha256(b"abc").hexdigest()
    assert file_hash.file_sha256(path) == hashlib.sha256(b"abc").hexdigest() and len(reads) == 1
    path.write_bytes(b"abcd")  # another size: another version
    assert file_hash.file_sha256(path) == hashlib.sha256(b"abcd").hexdigest() and len(reads) == 2


def test_a_pipeline_report_says_synthetic_first_when_a_stage_was(quickstart, tmp_path):
    from evaluation.report import write_pipeline_report

    for stage, report in (("real", "# real\n\n## Test results\n"), ("synthetic", (quickstart[2] / "report.md").read_text())):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "report.md").write_text(report)
    lines = write_pipeline_report(tmp_path, ["real", "synthetic"], "demo").read_text().splitlines()
    assert lines[2].startswith("> **Synthetic data, not real data.**") and "in stage(s) synthetic (" in lines[2]


def test_a_table_is_named_by_path_row_count_and_a_listing_fingerprint(tmp_path):
    from core.data_identity import describe
    from datamodules.data_source import records_identity
    from datamodules.image_records import ImageRecords

    for name, content in (("a.png", b"1" * 10), ("b.dcm", b"2" * 20)):
        (tmp_path / name).write_bytes(content)

    def records(labels=(0, 1)):
        return ImageRecords(source="t.csv", root=tmp_path, paths=["a.png", "b.dcm#frame=1"], labels=np.array(labels),
                            classes=["benign", "malignant"], rows=["line 2", "line 3"])

    first = records_identity("table", tmp_path / "t.csv", records())
    listing = "".join(json.dumps(row) + "\n" for row in (["a.png", "benign", "", "", 10], ["b.dcm#frame=1", "malignant", "", "", 20]))
    assert first["fingerprint"] == hashlib.sha256(listing.encode()).hexdigest()  # the frame's file is sized
    assert first["rows"] == 2 and first["kind"] == "table" and first["synthetic"] is False
    assert describe(first) == f"table {tmp_path / 't.csv'}, 2 rows (fingerprint {first['fingerprint'][:16]})"
    assert records_identity("table", tmp_path / "t.csv", records((1, 0)))["fingerprint"] != first["fingerprint"]
    (tmp_path / "a.png").write_bytes(b"1" * 11)  # another file content size: another fingerprint
    assert records_identity("table", tmp_path / "t.csv", records())["fingerprint"] != first["fingerprint"]
