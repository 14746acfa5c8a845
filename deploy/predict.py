"""Classify image files with a trained model: a checkpoint, or an exported ONNX / TorchScript
file, each read on its own (its preprocessing record says how files become inputs; no training
data is needed).

    python predict.py deployed/model.onnx scans/ extra.png --out predictions.csv
    python predict.py RUN/checkpoints/epoch_009.ckpt scans/ --device cpu

Folders are searched recursively for PNG / JPEG / TIFF / BMP / DICOM files (sorted paths).
Writes a CSV: ``path``, ``prob_<class>`` for every class and ``predicted``: by the decision rule
tuned on validation when the model carries one (binary threshold, per-class offsets, per-label
thresholds), else the arg-max class (multi-label: the labels at probability >= 0.5, joined by
``|``); ``--decision default`` ignores the tuned rule. Files that cannot be read (missing,
truncated, not an image) are listed on the console and in ``<out stem>.unreadable.csv``; the
others are classified. Exit status 0, or 1 when nothing could be classified or, with
``--strict``, when any file could not. ``--device auto`` (default) runs on a GPU when there is
one (torch for checkpoints and TorchScript, ONNX Runtime's CUDA provider for ONNX files when
onnxruntime-gpu is installed), else on the CPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.checkpoints import CheckpointError, resolve_checkpoint
from core.io import atomic_path
from core.tracking import artifact_job
from datamodules.image_records import IMAGE_SUFFIXES
from datamodules.medmnist_files import DatasetError
from deploy.preprocessing import (
    METADATA_KEY,
    UnreadableImage,
    check_record,
    network_input,
    raw_input,
    read_pixels,
    to_probabilities,
    uint8_input,
)
from evaluation.predict import resolve_device
from evaluation.thresholds import apply_decision

Logits = Callable[[torch.Tensor], np.ndarray]
MAX_LISTED = 10
DECISIONS = ("tuned", "default")


@dataclass
class Predictions:
    """What ``predict`` returns: the classified files, their probabilities (N, K), the model's
    record, the files that could not be read ({path: reason}) and where the model ran."""

    files: list[Path]
    probs: np.ndarray
    record: dict
    unreadable: dict[str, str] = field(default_factory=dict)
    device: str = "cpu"


def image_files(inputs: Sequence[str | Path]) -> tuple[list[Path], dict[str, str]]:
    """(files as given, folders expanded to their image files (recursive, sorted); the inputs
    that name nothing to read, with the reason)."""
    files: list[Path] = []
    missing: dict[str, str] = {}
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                missing[str(item)] = "the folder holds no PNG / JPEG / TIFF / BMP / DICOM files"
            files += found
        elif item.is_file():
            files.append(item)
        else:
            missing[str(item)] = "no such file or folder"
    return files, missing


def onnx_session(path: Path, device: torch.device):
    """An ONNX Runtime session on ``device``: the CUDA provider for a GPU (onnxruntime-gpu), else the CPU."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError("--device cuda with an ONNX model needs onnxruntime-gpu (this onnxruntime has no "
                             "CUDAExecutionProvider): pip install onnxruntime-gpu, or use --device cpu")
        providers = ["CUDAExecutionProvider", *providers]
    return ort.InferenceSession(str(path), providers=providers)


def onnx_device(requested: str) -> torch.device:
    """``auto``: the GPU only when ONNX Runtime has its CUDA provider and torch sees a GPU."""
    if requested != "auto":
        return resolve_device(requested)
    import onnxruntime as ort

    usable = "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()
    return torch.device("cuda" if usable else "cpu")


def load_model(path: Path, device: str = "cpu") -> tuple[Logits, dict, str]:
    """(a function inputs -> logits (B, K) numpy, the preprocessing record, the device it runs on)
    of a model file; inputs are (B, C, H, W) float32, or (B, H, W, C) uint8 for a raw-input model."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        record = check_record(json.loads(props.get(METADATA_KEY, "null")), str(path))
        where = onnx_device(device)
        session = onnx_session(path, where)
        name = session.get_inputs()[0].name
        return lambda x: session.run(["logits"], {name: x.numpy()})[0], record, where.type
    where = resolve_device(device)
    if where.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no GPU here; use --device auto or cpu")
    if suffix == ".pt":
        extra = {f"{METADATA_KEY}.json": ""}
        module = torch.jit.load(str(path), map_location=where, _extra_files=extra).eval()
        record = check_record(json.loads(extra[f"{METADATA_KEY}.json"] or "null"), str(path))
    elif suffix == ".ckpt":
        from deploy.export import checkpoint_network

        module, record = checkpoint_network(path)  # the record stored in the checkpoint: no data needed
        module = module.to(where)
    else:
        raise ValueError(f"{path}: expected a .ckpt checkpoint, an .onnx or a TorchScript .pt file")
    return lambda x: module(x.to(where)).float().cpu().numpy(), record, where.type


def read_batch(record: dict, files: Sequence[Path], unreadable: dict[str, str]) -> tuple[list[Path], torch.Tensor]:
    """(the files of ``files`` that decode, their model inputs); the others go to ``unreadable``."""
    good, pixels = [], []
    for f in files:
        try:
            pixels.append(read_pixels(record, f))
            good.append(f)
        except UnreadableImage as err:
            unreadable[str(f)] = str(err)
    return good, (uint8_input(record, pixels) if raw_input(record) else network_input(record, pixels))


@torch.inference_mode()
def predict(model: str | Path, inputs: Sequence[str | Path], batch_size: int = 256, device: str = "auto",
            run=None) -> Predictions:
    """Probabilities of every readable image file under ``inputs`` (see the module docstring);
    a ``wandb:`` model is fetched through ``run`` when given (``core.checkpoints.resolve_checkpoint``)."""
    logits_of, record, where = load_model(resolve_checkpoint(model, run), device)
    files, unreadable = image_files(inputs)
    done, probs = [], []
    for i in range(0, len(files), batch_size):
        good, x = read_batch(record, files[i:i + batch_size], unreadable)
        if good:
            done += good
            probs.append(to_probabilities(logits_of(x), record))
    k = len(record["output"]["class_names"])
    return Predictions(done, np.concatenate(probs) if probs else np.empty((0, k), np.float32), record,
                       unreadable, where)


def decision_of(record: dict, decision: str) -> dict | None:
    """The decision rule ``predicted`` follows: the record's tuned one (``tuned``, when it has one) or None."""
    if decision not in DECISIONS:
        raise ValueError(f"--decision {decision!r} is invalid; allowed: {', '.join(DECISIONS)}")
    return record["output"].get("decision") if decision == "tuned" else None


def describe_decision(rule: dict | None, record: dict) -> str:
    names = record["output"]["class_names"]
    if rule is None:
        return "argmax" if record["output"]["activation"] == "softmax" else "each label at p >= 0.5"
    if rule["kind"] == "binary_threshold":
        return f"tuned on validation ({rule['objective']}): {names[1]} when P({names[1]}) >= {rule['threshold']:.4f}"
    if rule["kind"] == "label_thresholds":
        return f"tuned on validation ({rule['objective']}): per-label thresholds " + ", ".join(
            f"{n} {t:.3f}" for n, t in zip(names, rule["thresholds"]))
    return f"tuned on validation ({rule['objective']}): argmax of log p + per-class offsets " + ", ".join(
        f"{n} {v:+.2f}" for n, v in zip(names, rule["offsets"]))


def write_csv(path: Path, result: Predictions, rule: dict | None) -> None:
    names = result.record["output"]["class_names"]
    multi = result.record["output"]["activation"] == "sigmoid"
    decided = apply_decision(result.probs, rule, multi)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *[f"prob_{n}" for n in names], "predicted"])
        for file, p, d in zip(result.files, result.probs, decided):
            predicted = "|".join(n for n, on in zip(names, d) if on) if multi else names[int(d)]
            writer.writerow([str(file), *[f"{v:.6f}" for v in p], predicted])


def write_unreadable(path: Path, unreadable: dict[str, str]) -> None:
    """``<out stem>.unreadable.csv`` (path, reason) when files could not be read; removed otherwise
    (no stale list from an earlier run)."""
    if not unreadable:
        path.unlink(missing_ok=True)
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows(unreadable.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a .ckpt checkpoint (or wandb:ENTITY/PROJECT/NAME:VERSION), .onnx or .pt file")
    parser.add_argument("inputs", nargs="+", help="image files and folders")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"))
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one) | cpu | cuda")
    parser.add_argument("--decision", default="tuned", metavar="{tuned,default}",
                        help="predicted by the rule tuned on validation (default, when the model has one) or "
                             "by argmax / p >= 0.5")
    parser.add_argument("--strict", action="store_true", help="exit 1 when any file cannot be read")
    args = parser.parse_args(argv)
    try:
        decision_of({"output": {}}, args.decision)  # a bad --decision fails before the model is read
        with artifact_job([args.model], "predict") as run:  # a W&B run only for a wandb: model (lineage)
            result = predict(args.model, args.inputs, args.batch_size, args.device, run)
        rule = decision_of(result.record, args.decision)
    except (CheckpointError, DatasetError, FileNotFoundError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    unreadable_csv = args.out.with_name(f"{args.out.stem}.unreadable.csv")
    write_unreadable(unreadable_csv, result.unreadable)
    if result.unreadable:
        listed = [f"  {reason if reason.startswith(p) else f'{p}: {reason}'}"
                  for p, reason in list(result.unreadable.items())[:MAX_LISTED]]
        more = len(result.unreadable) - MAX_LISTED
        print(f"{len(result.unreadable)} input(s) could not be read (listed in {unreadable_csv}):\n" + "\n".join(listed)
              + (f"\n  ... and {more} more" if more > 0 else ""), file=sys.stderr)
    if not result.files:
        print("error: no image could be read; nothing was classified", file=sys.stderr)
        return 1
    write_csv(args.out, result, rule)
    print(f"wrote {args.out}: {len(result.files)} images on {result.device}, classes "
          f"{result.record['output']['class_names']}; predicted: {describe_decision(rule, result.record)}")
    return 1 if args.strict and result.unreadable else 0
