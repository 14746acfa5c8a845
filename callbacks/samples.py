"""Every N epochs: a grid of generated images, one row per class (diffusion models)."""

from __future__ import annotations

import lightning as L
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from callbacks.images import EpochFigureCallback, save_figure, to_display  # noqa: E402


class SampleGridCallback(EpochFigureCallback):
    """Draws ``num_images`` EMA samples per class with fixed noise (the same seed every time, so
    grids of successive epochs are comparable). Works with any module that has
    ``sample_grid(per_class) -> (K * per_class, C, H, W)`` in [-1, 1]. PNGs go to
    ``<run dir>/samples/epoch_<NNN>.png`` and to W&B under ``samples``."""

    needs = "sample_grid"

    def draw(self, trainer: L.Trainer, pl_module: L.LightningModule, images, epoch: int) -> None:
        n = self.num_images
        samples = pl_module.sample_grid(n)
        names = list(getattr(trainer.datamodule, "class_names", None) or range(pl_module.hparams.num_classes))
        k = len(samples) // n
        fig, axes = plt.subplots(k, n, figsize=(n * 1.1, k * 1.2), squeeze=False)
        ref = samples.new_tensor([-1.0, 1.0])  # display [-1, 1] as black .. white
        for i in range(k):
            for j in range(n):
                ax = axes[i, j]
                ax.imshow(to_display(samples[i * n + j], ref), cmap="gray" if samples.shape[1] == 1 else None,
                          vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
            axes[i, 0].set_ylabel(str(names[i])[:18], fontsize=7)
        steps, guidance = pl_module.options.sampling.sample_steps, pl_module.options.sampling.guidance_scale
        fig.suptitle(f"epoch {epoch}: EMA samples, DDIM {steps} steps, guidance {guidance}", fontsize=8)
        save_figure(fig, trainer, "samples", f"epoch_{epoch:03d}", "samples")
