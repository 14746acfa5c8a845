"""An export a consumer runs without our code: preprocessing in the graph (uint8 pixels in), plain
metadata keys in the ONNX file and the TorchScript extra files, a MONAI-bundle-style
metadata.json, predict.py on the CPU, and W&B lineage (model artifacts logged and fetched
through a run). No network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.checkpoints import run_config
from deploy import export as ex
from deploy import predict
from pipeline.cli import train
from tests.helpers import compose_cfg, tiny_overrides, write_multilabel_chestmnist

FAST = {"parity_images": 16, "latency_runs": 2}
OUR_PACKAGES = ("core", "datamodules", "lightning_modules", "evaluation", "callbacks", "pipeline", "deploy", "synthesis")

# Run with `python -I` (no current folder or PYTHONPATH on sys.path): ONNX Runtime, numpy and PIL only.
CONSUMER = r"""
import json, sys
import numpy as np, onnxruntime as ort
from PIL import Image
model, ours, files = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
meta = session.get_modelmeta()
props = meta.custom_metadata_map
size, channels = int(props["input_size"]), int(props["input_channels"])
assert props["input_layout"] == "NHWC" and props["input_dtype"] == "uint8"
pixels = []
for f in files:
    im = np.asarray(Image.open(f).convert("L" if channels == 1 else "RGB"))
    assert im.shape[:2] == (size, size)
    pixels.append(im[..., None] if im.ndim == 2 else im)
logits, probs = session.run(["logits", "probabilities"], {props["input_name"]: np.stack(pixels)})
ours = sorted({m.split(".")[0] for m in sys.modules} & set(ours))
print(json.dumps({"probs": probs.tolist(), "props": props, "version": meta.version,
                  "description": meta.description, "ours": ours}))
"""


@pytest.fixture(scope="module")
def chest_run(tmp_path_factory) -> dict:
    """A fast_dev_run of the quickstart CNN on a 14-label ChestMNIST-format file (grayscale)."""
    root = tmp_path_factory.mktemp("chest")
    (root / "data").mkdir()
    write_multilabel_chestmnist(root / "data")
    metrics = train(compose_cfg(["experiment=quickstart", "data=chestmnist", *tiny_overrides(root / "data"),
                                 "debug=fdr"], root / "run"))
    files = []
    with np.load(root / "data" / "chestmnist.npz") as data:
        for i, image in enumerate(data["test_images"][:12]):
            files.append(root / "images" / f"{i:02d}.png")
            files[-1].parent.mkdir(exist_ok=True)
            Image.fromarray(image).save(files[-1])
    return {"ckpt": Path(metrics["test_checkpoint"]), "files": files, "root": root}


def test_an_onnx_model_with_preprocessing_in_its_graph_matches_the_checkpoint_with_onnxruntime_alone(chest_run, tmp_path):
    ckpt, files = chest_run["ckpt"], chest_run["files"]
    result = ex.export_classifier(ckpt, "onnx", out=tmp_path / "deployed", raw_input=True, **FAST,
                                  about=ex.About(model_version=3, description="chest x-ray findings, research only"))
    figures = result["export"]
    assert figures["input_shape"] == [1, 28, 28, 1] and figures["input_dtype"] == "uint8"
    assert figures["outputs"] == ["logits", "probabilities"] and figures["parity_max_abs"] <= 1e-4
    model = tmp_path / "deployed" / "model.onnx"
    proc = subprocess.run([sys.executable, "-I", "-c", CONSUMER, str(model), ",".join(OUR_PACKAGES), *map(str, files)], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    consumer = json.loads(proc.stdout)
    assert consumer["ours"] == []  # nothing of ours was imported
    reference = predict.predict(ckpt, files, device="cpu").probs  # the checkpoint on the same uint8 files
    np.testing.assert_allclose(np.array(consumer["probs"]), reference, atol=1e-4)

    props = consumer["props"]
    decision = torch.load(ckpt, map_location="cpu", weights_only=True)["medmae"]["decision"]
    names = json.loads(props["class_names"])
    assert len(names) == 14 and props["output_activation"] == "sigmoid" and props["task"] == "multi-label, binary-class"
    assert decision["kind"] == "label_thresholds"
    assert json.loads(props["thresholds"]) == dict(zip(names, decision["thresholds"]))  # per label, from validation
    assert consumer["version"] == 3 and props["model_version"] == "3"
    assert consumer["description"] == props["description"] == "chest x-ray findings, research only"
    assert "(N, 28, 28, 1) NHWC" in props["preprocessing"] and "divides by 255" in props["preprocessing"]

    bundle = json.loads((tmp_path / "deployed" / "metadata.json").read_text())
    image = bundle["network_data_format"]["inputs"]["image"]
    assert (image["dtype"], image["num_channels"], image["spatial_shape"], image["value_range"]) == \
        ("uint8", 1, [28, 28], [0, 255])
    assert bundle["network_data_format"]["outputs"]["probabilities"]["channel_def"]["13"] == names[13]
    assert bundle["version"] == "3" and bundle["medmae"]["preprocessing"]["input"]["in_graph"] is True

    via_predict = predict.predict(model, files, device="cpu")  # predict.py feeds such a model uint8 pixels
    assert via_predict.device == "cpu"
    np.testing.assert_allclose(via_predict.probs, reference, atol=1e-4)


def test_float_exports_carry_the_plain_keys_too_and_the_default_input_stays_float(chest_run, tmp_path):
    ckpt = chest_run["ckpt"]
    result = ex.export_classifier(ckpt, "torchscript", out=tmp_path / "ts", **FAST)
    assert result["export"]["input_shape"] == [1, 1, 28, 28] and result["export"]["input_dtype"] == "float32"
    with zipfile.ZipFile(tmp_path / "ts" / "model.pt") as z:  # TorchScript extra files: <archive>/extra/<name>
        extra = {Path(n).name: z.read(n).decode() for n in z.namelist() if "/extra/" in n}
    assert extra["input_layout"] == "NCHW" and extra["input_dtype"] == "float32" and extra["output_names"] == "logits"
    assert json.loads(extra["class_names"]) == result["export"]["preprocessing"]["output"]["class_names"]
    assert len(json.loads(extra["thresholds"])) == 14 and extra["model_version"] == "1"
    assert "medmae.preprocessing.json" in extra
    bundle = json.loads((tmp_path / "ts" / "metadata.json").read_text())
    assert bundle["network_data_format"]["inputs"]["image"]["dtype"] == "float32"
    assert list(bundle["network_data_format"]["outputs"]) == ["logits"]


def test_the_cpu_path_is_chosen_without_a_gpu_and_cuda_without_one_is_one_message(chest_run, monkeypatch, capsys):
    """The GPU path itself needs a GPU (not tested here); without one, auto runs on the CPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = predict.predict(chest_run["ckpt"], chest_run["files"][:2], device="auto")
    assert result.device == "cpu" and result.probs.shape == (2, 14)
    assert predict.main([str(chest_run["ckpt"]), str(chest_run["files"][0]), "--device", "tpu"]) == 1
    err = capsys.readouterr().err
    assert "accelerator='tpu' is invalid; allowed: auto, cpu, gpu" in err and "Traceback" not in err
    assert predict.main([str(chest_run["ckpt"]), str(chest_run["files"][0]), "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert "error: --device cuda: torch sees no GPU here; use --device auto or cpu" in err and "Traceback" not in err


def test_a_wandb_model_is_fetched_through_a_run_so_lineage_shows(chest_run, tmp_path, monkeypatch):
    """W&B's init is replaced by a stand-in run that records what it is asked (no server)."""
    import shutil

    import wandb

    calls = []

    class Artifact:
        def download(self, root: str) -> str:
            Path(root).mkdir(parents=True, exist_ok=True)
            shutil.copy(chest_run["ckpt"], Path(root) / "model.ckpt")
            return root

    run = types.SimpleNamespace(offline=False, disabled=False,
                                use_artifact=lambda name, type=None: calls.append(("use", name, type)) or Artifact(),
                                finish=lambda: calls.append(("finish",)))
    monkeypatch.setattr(wandb, "init", lambda **kw: calls.append(("init", kw["job_type"], kw["entity"], kw["project"]))
                        or run)
    monkeypatch.setattr(wandb, "Api", lambda: pytest.fail("fetched outside a run"))
    monkeypatch.setenv("MEDMAE_ARTIFACTS", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "online")
    out = tmp_path / "p.csv"
    assert predict.main(["wandb:me/chest/model-abc:v2", str(chest_run["files"][0]), "--out", str(out)]) == 0
    assert calls == [("init", "predict", "me", "chest"), ("use", "me/chest/model-abc:v2", "model"), ("finish",)]
    assert out.is_file()


def _logged(folder: Path, needle: bytes, timeout_s: float = 60.0) -> bytes:
    """The bytes of the offline runs' ``.wandb`` files under ``folder`` once they hold ``needle``
    (W&B's service writes them in its own process; on a busy machine after ``finish`` returns)."""
    deadline = time.monotonic() + timeout_s
    while True:
        logged = b"".join(p.read_bytes() for p in folder.glob("offline-run-*/*.wandb"))
        if needle in logged or time.monotonic() > deadline:
            assert needle in logged, needle
            return logged
        time.sleep(0.5)


@pytest.mark.slow  # a real offline W&B run (~10 s)
def test_an_export_is_logged_as_a_wandb_model_artifact_offline(chest_run, tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    (tmp_path / "wb").mkdir()
    out = tmp_path / "deployed"
    assert ex.main([str(chest_run["ckpt"]), "--out", str(out), "--preprocess-in-graph", "--wandb",
                    "--parity-images", "8", "--latency-runs", "2"]) == 0
    assert len(list((tmp_path / "wb" / "wandb").glob("offline-run-*"))) == 1
    name = f"{run_config(chest_run['ckpt']).task_name}-onnx".encode()  # <task_name>-<format>
    logged = _logged(tmp_path / "wb" / "wandb", b'"\x05model*' + bytes([len(name)]) + name)  # type model, its name
    assert b"model.onnx" in logged and b"metadata.json" in logged and b"export.md" in logged

    # a pipeline's export stage logs its model when the pipeline logs to W&B (files under the stage folder)
    from omegaconf import OmegaConf

    stage = tmp_path / "stage"
    monkeypatch.delenv("WANDB_DIR")
    cfg = OmegaConf.create({"export": {"ckpt": str(chest_run["ckpt"]), "format": "torchscript", "parity_images": 8,
                                       "latency_runs": 2}, "paths": {"output_dir": str(stage)},
                            "logger": {"wandb": {"project": "medmae", "entity": None}}})
    figures = ex.run_export_stage(cfg)
    assert figures["export/parity_max_abs"] <= 1e-4
    name = f"{run_config(chest_run['ckpt']).task_name}-torchscript".encode()
    assert b"model.pt" in _logged(stage / "wandb", b'"\x05model*' + bytes([len(name)]) + name)
