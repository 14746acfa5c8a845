"""deploy/export.py: ONNX / TorchScript export of trained classifiers, parity, benchmark, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from deploy import export as ex
from evaluation.evaluate import CheckpointError
from pipeline.cli import train
from tests.helpers import compose_cfg, tiny_overrides

FAST = {"parity_images": 32, "latency_runs": 5}
TINY_VIT = ["model=vit", "encoder.depth=1", "encoder.embed_dim=32", "encoder.num_heads=2", "encoder.patch_size=4"]


def _train(data_root: Path, out: Path, extra: list[str]) -> Path:
    """One fast_dev_run of the quickstart experiment; its checkpoint."""
    cfg = compose_cfg(["experiment=quickstart", *tiny_overrides(data_root), "debug=fdr", *extra], out)
    return Path(train(cfg)["best_checkpoint"])


@pytest.fixture(scope="module")
def cnn_ckpt(data_root, tmp_path_factory) -> Path:
    return _train(data_root, tmp_path_factory.mktemp("cnn_run"), [])


@pytest.fixture(scope="module")
def vit_ckpt(data_root, tmp_path_factory) -> Path:
    return _train(data_root, tmp_path_factory.mktemp("vit_run"), TINY_VIT)


def _model_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.slow
def test_onnx_export_matches_pytorch_and_writes_figures(cnn_ckpt):
    result = ex.export_classifier(cnn_ckpt, "onnx", **FAST)
    folder = cnn_ckpt.parent.parent / "export"  # default: next to the run's checkpoints/
    assert _model_files(folder) == ["export.json", "export.md", "metadata.json", "model.onnx"]  # no temp files left
    saved = json.loads((folder / "export.json").read_text())
    figures = saved["export"]
    assert figures["parity_max_abs"] <= 1e-4 and figures["parity_images"] == 32
    assert figures["size_mb"] > 0 and figures["params"] > 0 and figures["latency_ms"] > 0
    assert figures["latency_ms_eager"] > 0 and figures["input_shape"] == [1, 3, 28, 28]
    assert saved["compare"] is None and result["export"] == figures
    table = (folder / "export.md").read_text()
    assert "| export: DermaCNN (fast_dev_run.ckpt) | onnx |" in table and "Protocol: CPU, fp32, batch 1" in table


def test_torchscript_export_matches_pytorch(cnn_ckpt, tmp_path):
    result = ex.export_classifier(cnn_ckpt, "torchscript", out=tmp_path, **FAST)
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "export.json").is_file()
    assert result["export"]["parity_max_abs"] <= 1e-4 and result["export"]["format"] == "torchscript"


def test_unknown_format_is_a_value_error(cnn_ckpt, tmp_path):
    with pytest.raises(ValueError, match=r"--format 'tflite'.*onnx, torchscript"):
        ex.export_classifier(cnn_ckpt, "tflite", out=tmp_path)
    assert _model_files(tmp_path) == []


@pytest.mark.slow
def test_cli_compare_reports_both_models(cnn_ckpt, vit_ckpt, tmp_path, capsys):
    """The ViT student/teacher case: our ViT exports with a dynamic batch axis too."""
    argv = [str(vit_ckpt), "--compare", str(cnn_ckpt), "--out", str(tmp_path), "--parity-images", "32",
            "--latency-runs", "5"]
    assert ex.main(argv) == 0
    table = capsys.readouterr().out
    assert "export: ViTClassifier" in table and "compare: DermaCNN" in table
    saved = json.loads((tmp_path / "export.json").read_text())
    for role in ("export", "compare"):
        assert saved[role]["parity_max_abs"] <= 1e-4 and saved[role]["latency_ms"] > 0
    assert saved["compare"]["path"] is None  # measured in a temporary folder
    assert _model_files(tmp_path) == ["export.json", "export.md", "metadata.json", "model.onnx"]


def test_cli_rejects_a_non_classifier_checkpoint(tmp_path, capsys):
    run = tmp_path / "mae_run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"_target_": "lightning_modules.mae.MAE"}}))
    ckpt = run / "checkpoints" / "last.ckpt"
    import torch

    torch.save({"state_dict": {}}, ckpt)  # a run saved before checkpoints carried their config
    assert ex.main([str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a classifier checkpoint" in err and "Traceback" not in err
    with pytest.raises(CheckpointError):
        ex.export_classifier(ckpt, "onnx")
    assert not (run / "export").exists()


def test_parity_failure_raises_and_leaves_no_model_file(cnn_ckpt, tmp_path, monkeypatch):
    real = ex.run_exported
    monkeypatch.setattr(ex, "run_exported", lambda runtime, images: real(runtime, images) + 1e-3)
    out = tmp_path / "deployed"
    with pytest.raises(ex.ParityError, match=r"max abs 0\.001.*tolerance 0\.0001"):
        ex.export_classifier(cnn_ckpt, "onnx", out=out, **FAST)
    assert not out.exists()  # neither the model, a temp file nor the folder it created


def test_export_stage_returns_flat_figures(cnn_ckpt, tmp_path):
    cfg = OmegaConf.create({"export": {"ckpt": str(cnn_ckpt), "format": "torchscript", "compare": None, **FAST},
                            "paths": {"output_dir": str(tmp_path)}})
    figures = ex.run_export_stage(cfg)
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "export.json").is_file()
    assert figures["export/size_mb"] > 0 and figures["export/params"] > 0
    assert figures["export/latency_ms"] > 0 and figures["export/parity_max_abs"] <= 1e-4
    assert not any(k.startswith("compare/") for k in figures)


@pytest.mark.slow
def test_a_classifier_checkpoint_copied_alone_evaluates_and_exports(cnn_ckpt, tmp_path):
    import numpy as np
    import torch

    from evaluation.evaluate import evaluate

    alone = tmp_path / "alone" / "model.ckpt"  # no run folder, no config.yaml beside it
    alone.parent.mkdir()
    shutil.copy(cnn_ckpt, alone)
    identity = torch.load(alone, map_location="cpu", weights_only=True)["medmae"]["data"]
    assert identity["in_chans"] == 3 and identity["task"] == "multi-class" and len(identity["class_names"]) == 7
    reference = evaluate([cnn_ckpt], out=tmp_path / "reference")
    np.testing.assert_allclose(evaluate([alone], out=tmp_path / "alone_eval")["probs"], reference["probs"])
    result = ex.export_classifier(alone, "onnx", out=tmp_path / "export", **FAST)
    assert result["export"]["parity_max_abs"] <= 1e-4 and (tmp_path / "export" / "model.onnx").is_file()

    checkpoint = torch.load(alone, map_location="cpu", weights_only=True)
    del checkpoint["medmae"]  # a checkpoint of a run saved before configs were stored, away from its run
    torch.save(checkpoint, alone)
    with pytest.raises(CheckpointError, match="stores no config .* keep the checkpoint in its run folder"):
        evaluate([alone], out=tmp_path / "old")


@pytest.mark.slow
def test_a_wandb_model_artifact_is_downloaded_then_evaluated(cnn_ckpt, tmp_path, monkeypatch):
    """``wandb:ENTITY/PROJECT/NAME:VERSION`` names a model artifact (W&B's own API is replaced
    by a stand-in that 'downloads' the checkpoint, as log_model=true uploads it)."""
    import types

    import wandb

    from core.checkpoints import resolve_checkpoint
    from evaluation import evaluate

    asked = []

    class Artifact:
        def download(self, root: str) -> str:
            Path(root).mkdir(parents=True)
            shutil.copy(cnn_ckpt, Path(root) / "model.ckpt")
            return root

    def artifact(name, type=None):
        asked.append((name, type))
        return Artifact()

    monkeypatch.setenv("MEDMAE_ARTIFACTS", str(tmp_path / "cache"))
    monkeypatch.setattr(wandb, "Api", lambda: types.SimpleNamespace(artifact=artifact))
    assert evaluate.main(["wandb:me/medmae/model-abc:v0", "--out", str(tmp_path / "eval")]) == 0
    assert asked == [("me/medmae/model-abc:v0", "model")]
    assert (tmp_path / "cache" / "me_medmae_model-abc_v0" / "model.ckpt").is_file()
    assert (tmp_path / "eval" / "report.md").is_file()
    with pytest.raises(CheckpointError, match="expected wandb:ENTITY/PROJECT/NAME:VERSION"):
        resolve_checkpoint("wandb:model-abc:v0")

    def unreachable(name, type=None):
        raise ConnectionError("no route to api.wandb.ai")

    monkeypatch.setattr(wandb, "Api", lambda: types.SimpleNamespace(artifact=unreachable))
    with pytest.raises(CheckpointError, match="could not be downloaded .*no route.* or pass the .ckpt file"):
        resolve_checkpoint("wandb:me/medmae/model-abc:v1")


@pytest.mark.parametrize("fmt", ["onnx", pytest.param("torchscript", marks=pytest.mark.slow)])
def test_an_exported_model_alone_predicts_image_files_as_evaluate_does(cnn_ckpt, data_root, tmp_path, fmt):
    """The exported file carries its preprocessing: predict.py, given only the model file and
    PNGs of the test images, gives evaluate.py's probabilities."""
    import csv

    import numpy as np
    import onnx

    from datamodules.export import export_npz
    from deploy import predict
    from evaluation.evaluate import evaluate

    result = ex.export_classifier(cnn_ckpt, fmt, out=tmp_path / "deployed", **FAST)
    record = result["export"]["preprocessing"]
    assert record["input"]["size"] == 28 and record["input"]["channels"] == 3 and len(record["output"]["class_names"]) == 7
    assert record["input"]["mean"] == record["input"]["std"] == [0.5] * 3  # normalization=half
    model = tmp_path / "deployed" / ex.FORMATS[fmt]
    if fmt == "onnx":
        stored = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
        assert json.loads(stored["medmae.preprocessing"]) == record
    table = export_npz(data_root / "dermamnist.npz", tmp_path / "png")
    with open(table, newline="") as f:
        test_files = [tmp_path / "png" / r["path"] for r in csv.DictReader(f) if r["split"] == "test"]
    result = predict.predict(model, test_files, device="cpu")
    files, probs = result.files, result.probs
    assert files == test_files and result.device == "cpu"
    reference = evaluate([cnn_ckpt], out=tmp_path / "eval")["probs"]
    np.testing.assert_allclose(probs, reference, atol=1e-4)
    assert predict.main([str(model), str(tmp_path / "png" / "images" / "test"), "--out", str(tmp_path / "p.csv")]) == 0
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(test_files) and rows[0]["predicted"] in record["output"]["class_names"]
    assert predict.main([str(model), str(tmp_path / "nowhere"), "--out", str(tmp_path / "none.csv")]) == 1
    with open(tmp_path / "none.unreadable.csv", newline="") as f:
        assert [r["path"] for r in csv.DictReader(f)] == [str(tmp_path / "nowhere")]


@pytest.mark.slow
def test_int8_quantization_reports_its_accuracy_change_against_fp32(cnn_ckpt, tmp_path):

    from evaluation.evaluate import evaluate

    with pytest.raises(ValueError, match="--quantize int8 is invalid; allowed: int8, with --format onnx"):
        ex.export_classifier(cnn_ckpt, "torchscript", out=tmp_path / "ts", quantize="int8", **FAST)
    result = ex.export_classifier(cnn_ckpt, "onnx", out=tmp_path / "q", quantize="int8", **FAST)
    q = result["int8"]
    assert (tmp_path / "q" / "model.int8.onnx").is_file() and q["calibration_images"] == 256
    reference = evaluate([cnn_ckpt], out=tmp_path / "eval")
    labels = reference["labels"]
    assert q["test_images"] == len(labels) == 70
    assert q["test_acc_fp32"] == pytest.approx((reference["probs"].argmax(1) == labels).mean())  # independent of ONNX
    assert q["acc_change"] == pytest.approx(q["test_acc_int8"] - q["test_acc_fp32"])
    assert 0.5 <= q["agreement"] <= 1 and q["max_abs_logit_diff"] > 0  # int8 is close, not identical
    table = (tmp_path / "q" / "export.md").read_text()
    assert "| model.int8.onnx |" in table and f"{q['acc_change']:+.4f}" in table
