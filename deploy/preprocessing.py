"""Apply a preprocessing record (``datamodules.input_record``: written into checkpoints, exported
files and ``export.json``) to image files, so that a deployed model is fed without the
framework's config; read by ``predict.py`` and ``export.py``.

Float inputs (the default export and checkpoints): decode at ``decode.size`` (8-bit intensity
mapping, square by ``decode.resize``), scale to [0, 1], repeat grayscale to 3 channels when the
network takes 3, resize to ``input.size`` (bilinear, antialiased) when it differs, normalise with
``mean`` / ``std`` -> (N, C, H, W) float32. Raw inputs (an export with the preprocessing in its
graph, ``input.dtype`` uint8): decode at ``input.size`` -> (N, H, W, C) uint8; the graph scales,
repeats and normalises.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

from datamodules.image_cache import decode_image
from datamodules.input_record import FORMAT, check_record, preprocessing_of
from datamodules.intensity import IntensityConfig

__all__ = ["FORMAT", "METADATA_KEY", "UnreadableImage", "check_record", "dumps", "load_inputs", "network_input",
           "preprocessing_of", "read_pixels", "to_probabilities", "uint8_input"]

METADATA_KEY = "medmae.preprocessing"  # ONNX metadata_props key; TorchScript extra file "<key>.json"


class UnreadableImage(ValueError):
    """An image file that cannot be decoded (missing, truncated, not an image); names the file."""


def raw_input(record: dict) -> bool:
    """Whether the record's model takes raw uint8 pixels (preprocessing in its graph)."""
    return record["input"].get("dtype") == "uint8"


def to_probabilities(logits: np.ndarray, record: dict) -> np.ndarray:
    """(N, K) probabilities of (N, K) logits, by the record's activation."""
    x = torch.as_tensor(logits, dtype=torch.float32)
    return (x.sigmoid() if record["output"]["activation"] == "sigmoid" else x.softmax(-1)).numpy()


def read_pixels(record: dict, path: str | Path) -> np.ndarray:
    """One file as uint8 (S, S) or (S, S, 3), S = ``decode.size`` (``input.size`` for raw-input
    models), or an UnreadableImage naming the file and the fix."""
    decode = record["decode"]
    size = record["input"]["size"] if raw_input(record) else decode["size"]
    try:
        pixels, _ = decode_image(Path(path), size, decode["channels"], IntensityConfig(**decode["intensity"]),
                                 decode.get("fallback_bits"), decode["resize"])
    except (OSError, ValueError, SyntaxError, EOFError) as err:  # missing, truncated, not an image, bad DICOM
        reason = "no such file" if isinstance(err, FileNotFoundError) else f"{type(err).__name__}: {err}"
        raise UnreadableImage(f"{path} cannot be decoded as an image ({reason}); replace or remove the file") from err
    return np.array(pixels, dtype=np.uint8)  # a writable copy


def network_input(record: dict, pixels: Sequence[np.ndarray]) -> torch.Tensor:
    """The float inputs (N, C, H, W) of decoded images (``read_pixels``), as the record says."""
    decode, spec = record["decode"], record["input"]
    steps: list = []
    if spec["size"] != decode["size"]:
        steps.append(v2.Resize((spec["size"], spec["size"]), antialias=True))
    if spec["mean"] is not None:
        steps.append(v2.Normalize(mean=spec["mean"], std=spec["std"]))
    transform = v2.Compose(steps)
    out = []
    for p in pixels:
        x = torch.from_numpy(p).float().div_(255.0)
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
        if spec["channels"] == 3 and x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        out.append(transform(x.contiguous()))
    return torch.stack(out) if out else torch.empty(0, spec["channels"], spec["size"], spec["size"])


def uint8_input(record: dict, pixels: Sequence[np.ndarray]) -> torch.Tensor:
    """The raw inputs (N, H, W, C) uint8 of decoded images, for a model with its preprocessing in the graph."""
    spec = record["input"]
    if not pixels:
        return torch.empty(0, spec["size"], spec["size"], spec["channels"], dtype=torch.uint8)
    return torch.from_numpy(np.stack([p[..., None] if p.ndim == 2 else p for p in pixels]))


def load_inputs(record: dict, files: Sequence[str | Path]) -> torch.Tensor:
    """The model inputs of image files: (N, C, H, W) float32, or (N, H, W, C) uint8 for a raw-input
    model; an UnreadableImage names the first file that cannot be decoded."""
    pixels = [read_pixels(record, f) for f in files]
    return uint8_input(record, pixels) if raw_input(record) else network_input(record, pixels)


def dumps(record: dict) -> str:
    return json.dumps(record, sort_keys=True)
