"""Shared helpers for callbacks that draw image grids: fixed validation images, saving, W&B."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch


def fixed_val_images(trainer: L.Trainer, n: int) -> torch.Tensor:
    """The first ``n`` validation images (the same ones every time), (n, C, H, W)."""
    dataset = trainer.datamodule.val_set
    return torch.stack([dataset[i][0] for i in range(min(n, len(dataset)))])


def to_display(image: torch.Tensor, reference: torch.Tensor) -> np.ndarray:
    """(C, H, W) -> (H, W[, 3]) in [0, 1], scaled by the min/max of ``reference`` (the original)."""
    lo, hi = reference.min(), reference.max()
    x = ((image - lo) / (hi - lo + 1e-8)).clamp(0, 1).cpu().float()
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def save_figure(fig, trainer: L.Trainer, folder: str, name: str, wandb_key: str) -> Path:
    """Save a matplotlib figure as PNG under the run directory and log it to W&B when on."""
    import matplotlib.pyplot as plt

    out = Path(trainer.default_root_dir) / folder
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger":
            logger.log_image(key=wandb_key, images=[str(path)], step=trainer.global_step)
    return path
