"""Every N epochs: original | masked | reconstruction | reconstruction + visible patches."""

from __future__ import annotations

import lightning as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from callbacks.images import fixed_val_images, save_figure, to_display  # noqa: E402

COLUMNS = ("original", "masked", "reconstruction", "pasted")


class ReconstructionCallback(L.Callback):
    """Draws reconstructions of fixed validation images with fixed masks.

    Works with any module that has ``reconstruct(images) -> dict`` of the four panels
    (``MAEPretrain``, MLO-MAE). PNGs go to ``<run dir>/reconstructions/epoch_XXX.png``.
    """

    def __init__(self, every_n_epochs: int = 5, num_images: int = 8) -> None:
        if every_n_epochs < 1 or num_images < 1:
            raise ValueError("every_n_epochs and num_images must be >= 1")
        self.every_n_epochs, self.num_images = every_n_epochs, num_images

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not hasattr(pl_module, "reconstruct"):
            return
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs and epoch + 1 != trainer.max_epochs:
            return
        images = fixed_val_images(trainer, self.num_images).to(pl_module.device)
        was_training = pl_module.training
        pl_module.eval()
        panels = pl_module.reconstruct(images)
        pl_module.train(was_training)
        n = len(images)
        fig, axes = plt.subplots(n, 4, figsize=(4 * 1.6, n * 1.6), squeeze=False)
        for i in range(n):
            for j, col in enumerate(COLUMNS):
                ax = axes[i, j]
                ax.imshow(to_display(panels[col][i], images[i]), cmap="gray" if images.shape[1] == 1 else None)
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(col, fontsize=8)
        fig.suptitle(f"epoch {epoch}", fontsize=9)
        save_figure(fig, trainer, "reconstructions", f"epoch_{epoch:03d}", "reconstructions")
