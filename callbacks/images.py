"""Shared helpers for callbacks that draw image grids: fixed validation images, saving, W&B."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.seed import isolate_rng


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
    for logger in wandb_loggers(trainer):
        logger.log_image(key=wandb_key, images=[str(path)], step=trainer.global_step)
    return path


def wandb_loggers(trainer: L.Trainer) -> list:
    """The trainer's W&B loggers (none unless ``logger=wandb`` or ``many``)."""
    return [lg for lg in trainer.loggers if type(lg).__name__ == "WandbLogger"]


class EpochFigureCallback(L.Callback, ABC):
    """Base for callbacks that draw fixed validation images every ``every_n_epochs`` epochs
    (and after the last epoch), on rank zero, for modules that have the method ``needs``."""

    needs: str = ""

    def __init__(self, every_n_epochs: int = 10, num_images: int = 8) -> None:
        if every_n_epochs < 1 or num_images < 1:
            raise ValueError("every_n_epochs and num_images must be >= 1")
        self.every_n_epochs, self.num_images = every_n_epochs, num_images

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not hasattr(pl_module, self.needs):
            return
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs and epoch + 1 != trainer.max_epochs:
            return
        images = fixed_val_images(trainer, self.num_images).to(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        try:
            with isolate_rng():  # masks drawn for a figure must not move the training's random streams
                self.draw(trainer, pl_module, images, epoch)
        finally:
            pl_module.train(was_training)

    @abstractmethod
    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, images: torch.Tensor, epoch: int) -> None:
        """Draw and save the figure of ``images`` (N, C, H, W) at ``epoch``."""
