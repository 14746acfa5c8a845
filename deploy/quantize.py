"""int8 ONNX models: ONNX Runtime's static quantisation (QDQ, int8 weights per channel and
int8 activations, ranges calibrated on training images), and what it costs in test accuracy.

The calibration set is ``CALIBRATION_IMAGES`` training images (a seeded subset) through the
test-time transform; accuracy is measured on the whole test split, fp32 and int8 side by side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

from core.io import atomic_path
from core.tasks import MULTI_LABEL

CALIBRATION_IMAGES = 256
BATCH = 64


def calibration_inputs(datamodule, n: int = CALIBRATION_IMAGES, seed: int = 0) -> torch.Tensor:
    """``n`` training images (N, C, H, W) as the network sees them at test time (read one by
    one; full-size lazily decoded images are centre-cropped and resized to the input size)."""
    train, size = datamodule.train_set, int(datamodule.img_size)
    pick = np.sort(np.random.default_rng(seed).permutation(len(train))[:n])
    square = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])
    out = []
    for i in pick:
        x = train.uint8(int(i)).float().div(255.0)
        if x.shape[-2:] != (datamodule.source_size, datamodule.source_size):
            x = square(x)
        out.append(datamodule.val_set.transform(x))
    return torch.stack(out)


def quantize_int8(fp32: Path, out: Path, calibration: torch.Tensor) -> None:
    """Write the int8 (QDQ) version of the ONNX model ``fp32`` to ``out`` (atomically)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration.split(BATCH))

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch.numpy()}

    with atomic_path(out) as tmp:
        quantize_static(str(fp32), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)


def accuracy(logits: np.ndarray, labels: np.ndarray, task: str) -> float:
    """Top-1 accuracy (multi-label: per-label accuracy at logit 0, i.e. probability 0.5)."""
    if task == MULTI_LABEL:
        return float(((logits > 0) == (labels > 0.5)).mean())
    return float((logits.argmax(1) == labels.reshape(-1)).mean())


def test_inputs(datamodule) -> tuple[torch.Tensor, np.ndarray]:
    """Every test image (N, C, H, W) as the network sees it, and the labels."""
    test = datamodule.test_set
    images = torch.stack([torch.as_tensor(test[i][0]) for i in range(len(test))]).float()
    return images, test.labels.numpy()
