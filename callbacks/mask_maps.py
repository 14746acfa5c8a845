"""Every N epochs: image | masking-score heatmap | kept (bright) vs masked patches."""

from __future__ import annotations

import lightning as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from callbacks.images import EpochFigureCallback, save_figure, to_display  # noqa: E402


class MaskMapCallback(EpochFigureCallback):
    """Draws the masks of fixed validation images for modules with ``mask_maps(images)``
    returning (scores (B, L) in [0, 1], mask (B, L) with 1 = masked), the scores titled by the
    module's ``mask_score_label`` (default "masking probability"). PNGs go to
    ``<run dir>/mask_maps/epoch_<NNN>.png`` and to W&B when on."""

    needs = "mask_maps"

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, images, epoch: int) -> None:
        probs, mask = pl_module.mask_maps(images)
        label = getattr(pl_module, "mask_score_label", "masking probability")
        side = int(round(probs.shape[1] ** 0.5))
        n = len(images)
        fig, axes = plt.subplots(n, 3, figsize=(3 * 1.8 + 0.8, n * 1.6 + 0.4), squeeze=False, layout="constrained")
        for i in range(n):
            axes[i, 0].imshow(to_display(images[i], images[i]), cmap="gray" if images.shape[1] == 1 else None)
            heat = axes[i, 1].imshow(probs[i].reshape(side, side).cpu().float(), cmap="magma", vmin=0, vmax=1)
            axes[i, 2].imshow(1 - mask[i].reshape(side, side).cpu().float(), cmap="gray", vmin=0, vmax=1)
            for ax in axes[i]:
                ax.set_xticks([])
                ax.set_yticks([])
        for ax, title in zip(axes[0], ("image", label, "kept (white) / masked")):
            ax.set_title(title, fontsize=8)
        fig.colorbar(heat, ax=axes[:, 1:].ravel().tolist(), shrink=0.5, label=label)
        fig.suptitle(f"epoch {epoch}", fontsize=9)
        save_figure(fig, trainer, "mask_maps", f"epoch_{epoch:03d}", "mask_maps")
