"""Classify image files with a trained model: a checkpoint, or an exported ONNX / TorchScript
file read on its own (its preprocessing record says how files become inputs).

    python predict.py deployed/model.onnx scans/ extra.png --out predictions.csv
    python predict.py RUN/checkpoints/epoch_009.ckpt scans/

Folders are searched recursively for PNG / JPEG / TIFF / BMP / DICOM files (sorted paths).
Writes a CSV: ``path``, ``prob_<class>`` for every class and ``predicted`` (the arg-max
class; multi-label models: the labels at probability >= 0.5, joined by ``|``). Batches of
``--batch-size``, CPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from core.artifacts import resolve_checkpoint
from core.config import CheckpointError
from core.io import atomic_path
from datamodules.image_records import IMAGE_SUFFIXES
from datamodules.medmnist_files import DatasetError
from deploy.preprocessing import METADATA_KEY, check_record, load_inputs, to_probabilities

Logits = Callable[[torch.Tensor], np.ndarray]


def image_files(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders expanded to their image files (recursive, sorted)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f"{item} holds no PNG / JPEG / TIFF / BMP / DICOM files")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return files


def load_model(path: Path) -> tuple[Logits, dict]:
    """(a function inputs (B, C, H, W) -> logits (B, K), the preprocessing record) of a model file."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        import onnx
        import onnxruntime as ort

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        record = check_record(json.loads(props.get(METADATA_KEY, "null")), str(path))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: session.run(["logits"], {"images": x.numpy()})[0], record
    if suffix == ".pt":
        extra = {f"{METADATA_KEY}.json": ""}
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra).eval()
        record = check_record(json.loads(extra[f"{METADATA_KEY}.json"] or "null"), str(path))
        return lambda x: module(x).numpy(), record
    if suffix == ".ckpt":
        from deploy.export import load_network

        net, _, record = load_network(path, 1)  # the run's data gives the record (normalisation statistics)
        return lambda x: net(x).numpy(), record
    raise ValueError(f"{path}: expected a .ckpt checkpoint, an .onnx or a TorchScript .pt file")


@torch.inference_mode()
def predict(model: str | Path, inputs: Sequence[str | Path], batch_size: int = 256) -> tuple[list[Path], np.ndarray, dict]:
    """(files, probabilities (N, K), record) of every image file under ``inputs``."""
    logits_of, record = load_model(resolve_checkpoint(model))
    files = image_files(inputs)
    probs = [to_probabilities(logits_of(load_inputs(record, files[i:i + batch_size])), record)
             for i in range(0, len(files), batch_size)]
    k = len(record["output"]["class_names"])
    return files, (np.concatenate(probs) if probs else np.empty((0, k), np.float32)), record


def write_csv(path: Path, files: list[Path], probs: np.ndarray, record: dict) -> None:
    names = record["output"]["class_names"]
    multi = record["output"]["activation"] == "sigmoid"
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *[f"prob_{n}" for n in names], "predicted"])
        for file, p in zip(files, probs):
            predicted = "|".join(n for n, v in zip(names, p) if v >= 0.5) if multi else names[int(p.argmax())]
            writer.writerow([str(file), *[f"{v:.6f}" for v in p], predicted])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a .ckpt checkpoint (or wandb:ENTITY/PROJECT/NAME:VERSION), .onnx or .pt file")
    parser.add_argument("inputs", nargs="+", help="image files and folders")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"))
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    try:
        files, probs, record = predict(args.model, args.inputs, args.batch_size)
    except (CheckpointError, DatasetError, FileNotFoundError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    write_csv(args.out, files, probs, record)
    print(f"wrote {args.out}: {len(files)} images, classes {record['output']['class_names']}")
    return 0
