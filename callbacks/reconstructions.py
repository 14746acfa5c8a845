"""Every N epochs: original | masked | reconstruction | reconstruction + visible patches."""

from __future__ import annotations

import lightning as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from callbacks.images import EpochFigureCallback, save_figure, to_display  # noqa: E402

COLUMNS = ("original", "masked", "reconstruction", "pasted")
# The loss covers the hidden patches only: the decoder's output on visible patches is untrained.
TITLES = {"original": "original", "masked": "input (hidden\npatches blank)", "reconstruction": "output (hidden\npatches trained)",
          "pasted": "output on hidden\n+ visible input"}


class ReconstructionCallback(EpochFigureCallback):
    """Draws reconstructions of fixed validation images with fixed masks.

    Works with any module that has ``reconstruct(images) -> dict`` of the four panels
    (``MAEPretrain``, ``MLOMAE``). PNGs go to ``<run dir>/reconstructions/epoch_<NNN>.png``.
    """

    needs = "reconstruct"

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, images, epoch: int) -> None:
        panels = pl_module.reconstruct(images)
        n = len(images)
        fig, axes = plt.subplots(n, 4, figsize=(4 * 1.6, n * 1.6), squeeze=False)
        for i in range(n):
            for j, col in enumerate(COLUMNS):
                ax = axes[i, j]
                ax.imshow(to_display(panels[col][i], images[i]), cmap="gray" if images.shape[1] == 1 else None)
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(TITLES[col], fontsize=7)
        fig.suptitle(f"epoch {epoch}", fontsize=9)
        save_figure(fig, trainer, "reconstructions", f"epoch_{epoch:03d}", "reconstructions")
