"""The one prediction function: probabilities of a classifier on a dataset, in order.

Every prediction of the project goes through ``predict_probs`` (``evaluate.py``, the test-time
threshold tuning of the evaluation callback, the synthesis quality report, the benchmarks),
and the probabilities come from the model's own ``predict_step`` (softmax, or per-label sigmoid
for multi-label tasks), so there is one definition of a prediction. It is a plain inference
loop rather than ``Trainer.predict`` because the evaluation callback predicts from inside a
running ``Trainer.test``, where a second Trainer would take over the module.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from torch.utils.data import DataLoader

AUTOCAST = {"bf16-mixed": torch.bfloat16, "bf16": torch.bfloat16, "16-mixed": torch.float16, "16": torch.float16}
FULL = ("32-true", "32", "64-true", "64", None)


def resolve_device(accelerator: str | None) -> torch.device:
    """``cpu``, ``gpu`` / ``cuda`` or ``auto`` (a GPU when there is one) as a torch device."""
    if accelerator in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if accelerator in ("gpu", "cuda"):
        return torch.device("cuda")
    if accelerator == "cpu":
        return torch.device("cpu")
    raise ValueError(f"accelerator={accelerator!r} is invalid; allowed: auto, cpu, gpu")


@torch.no_grad()
def predict_probs(model: torch.nn.Module, dataset, batch_size: int, max_batches: int | None = None,
                  device: torch.device | str | None = None, precision: str | None = None,
                  num_workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (N, K) float32 and labels of ``dataset`` (its first ``max_batches`` batches
    when given), in order, from ``model.predict_step``, in eval mode (the model's mode and device
    are restored afterwards). ``device`` defaults to the model's; ``precision`` ``bf16-mixed`` /
    ``16-mixed`` autocasts, ``32-true`` (or None) does not."""
    precision = None if precision is None else str(precision)
    if precision not in FULL and precision not in AUTOCAST:
        raise ValueError(f"precision={precision!r} is invalid; allowed: 32-true, bf16-mixed, 16-mixed")
    home = next(model.parameters()).device
    device = torch.device(device) if device is not None else home
    was_training = model.training
    model.eval().to(device)
    cast = torch.autocast(device.type, dtype=AUTOCAST[precision]) if precision in AUTOCAST else nullcontext()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    probs, labels = [], []
    try:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            with cast:
                probs.append(model.predict_step((batch[0].to(device),), i).float().cpu())
            labels.append(batch[1])
    finally:
        model.train(was_training).to(home)
    if not probs:
        return np.empty((0, 0), np.float32), np.empty((0,), np.int64)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()
