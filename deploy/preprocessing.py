"""The input pipeline of a trained classifier as data, so that a deployed model can be fed
without the framework's config: written into exported files and ``export.json``, read by
``predict.py``.

``preprocessing_of(datamodule)`` records (from a set-up datamodule) how an image file becomes
the network's input and what its outputs mean; ``load_inputs(record, files)`` applies it:
decode at ``decode.size`` (8-bit intensity mapping, square by ``decode.resize``), scale to
[0, 1], repeat grayscale to 3 channels when the network takes 3, resize to ``input.size``
(bilinear, antialiased) when it differs, normalise with ``mean`` / ``std``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

from core.tasks import MULTI_LABEL
from datamodules.image_cache import decode_image
from datamodules.intensity import IntensityConfig

FORMAT = "medmae.preprocessing/1"
METADATA_KEY = "medmae.preprocessing"  # ONNX metadata_props key; TorchScript extra file "<key>.json"


def preprocessing_of(datamodule) -> dict:
    """The record of a set-up datamodule (its test-time transform)."""
    stats = datamodule.input_stats
    intensity = getattr(datamodule, "intensity", None)
    return {
        "format": FORMAT,
        "decode": {"size": int(datamodule.source_size), "channels": int(datamodule.source_channels),
                   "resize": getattr(datamodule, "resize", "shorter_side_crop"),
                   "intensity": intensity.key() if intensity is not None else {"mode": "auto"},
                   # the bit depth auto gave the dataset's deep files that declare none (None: 8-bit data)
                   "fallback_bits": getattr(datamodule, "fallback_bits", None)},
        "input": {"layout": "NCHW", "dtype": "float32", "size": int(datamodule.img_size),
                  "channels": int(datamodule.in_chans), "scale": 1 / 255,
                  "mean": None if stats is None else [float(v) for v in stats[0]],
                  "std": None if stats is None else [float(v) for v in stats[1]]},
        "output": {"kind": "logits", "activation": "sigmoid" if datamodule.task == MULTI_LABEL else "softmax",
                   "task": datamodule.task, "class_names": [str(c) for c in datamodule.class_names]},
    }


def check_record(record: dict, source: str) -> dict:
    """The record, or a ValueError naming ``source`` when it is not one this code can apply."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{source} carries no {FORMAT} preprocessing record (exported before medmae recorded it?); "
                         "export the checkpoint again with export.py")
    return record


def to_probabilities(logits: np.ndarray, record: dict) -> np.ndarray:
    """(N, K) probabilities of (N, K) logits, by the record's activation."""
    x = torch.as_tensor(logits, dtype=torch.float32)
    return (x.sigmoid() if record["output"]["activation"] == "sigmoid" else x.softmax(-1)).numpy()


def load_inputs(record: dict, files: Sequence[str | Path]) -> torch.Tensor:
    """The network inputs (N, C, H, W) float32 of image files, as the record says."""
    decode, spec = record["decode"], record["input"]
    intensity = IntensityConfig(**decode["intensity"])
    steps: list = []
    if spec["size"] != decode["size"]:
        steps.append(v2.Resize((spec["size"], spec["size"]), antialias=True))
    if spec["mean"] is not None:
        steps.append(v2.Normalize(mean=spec["mean"], std=spec["std"]))
    transform = v2.Compose(steps)
    out = []
    for path in files:
        try:
            pixels, _ = decode_image(Path(path), decode["size"], decode["channels"], intensity,
                                     decode.get("fallback_bits"), decode["resize"])
        except (OSError, ValueError, SyntaxError) as err:
            raise ValueError(f"{path} cannot be decoded as an image ({type(err).__name__}: {err})") from err
        x = torch.from_numpy(np.ascontiguousarray(pixels)).float().div_(255.0)
        x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)
        if spec["channels"] == 3 and x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        out.append(transform(x.contiguous()))
    return torch.stack(out) if out else torch.empty(0, spec["channels"], spec["size"], spec["size"])


def dumps(record: dict) -> str:
    return json.dumps(record, sort_keys=True)
