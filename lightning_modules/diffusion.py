"""Class-conditioned DDPM (DerMAE's first step): a diffusers UNet2DModel with class
embeddings, the DDPM noise schedule, an EMA of the weights, classifier-free guidance by label
dropout, MSE loss plus an optional perceptual term, and an optional latent mode.

Trains on any labelled datamodule with ``normalization: half`` (images in [-1, 1]); the
checkpoint records the data it was trained on (``medmae_data``) so that synthesis can refuse
a mismatched dataset.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from core.checkpoints import load_classifier, run_config
from lightning_modules.components.diffusion import build_unet as _build_unet
from lightning_modules.components.diffusion import (
    ddim_sample,
    ddpm_scheduler,
    diffusion_loss,
    drop_labels,
    load_autoencoder,
    predicted_x0,
)
from lightning_modules.components.networks import penultimate_features
from lightning_modules.components.optim import (
    OptimizerFactory,
    SchedulerFactory,
    check_optimizer,
    make_optimizer,
)
from lightning_modules.components.speed import compile_networks, compile_options
from lightning_modules.diffusion_options import DiffusionOptions
from lightning_modules.metrics import MULTI_LABEL

DATA_KEY = "medmae_data"  # checkpoint entry: what the model was trained on


def ema_decay_at(step: int, decay: float) -> float:
    """EMA decay with warmup, min(decay, (1 + n) / (10 + n)) after n updates: the random initial
    weights fade within the first hundred steps instead of weighing decay ** n."""
    return min(decay, (1 + step) / (10 + step))


def warmup_ema(decay: float):
    """``multi_avg_fn`` for ``AveragedModel``: avg <- avg + (1 - decay_n) (current - avg)."""

    def update(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        weight = 1.0 - ema_decay_at(int(num_averaged), decay)
        torch._foreach_lerp_(averaged, current, weight)

    return update


class FrozenFeatures(nn.Module):
    """A classifier network's penultimate features (B, D), frozen, always in eval mode."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net.requires_grad_(False)
        self.extract = penultimate_features(self.net)
        self.eval()

    def train(self, mode: bool = True) -> FrozenFeatures:
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.extract(x)


def perceptual_network(source: str, in_chans: int) -> nn.Module:
    """Frozen features for the perceptual term: ``lpips`` (torchmetrics LPIPS, needs its
    torchvision weights) or the path of a classifier checkpoint of this project trained with
    ``normalization: half`` (its penultimate features)."""
    if source == "lpips":
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        try:
            return LearnedPerceptualImagePatchSimilarity(net_type="squeeze", reduction="mean").eval()
        except Exception as err:  # torchvision fetches the backbone weights from the internet
            raise RuntimeError(f"model.perceptual_net=lpips needs the SqueezeNet weights ({err}); place them in "
                               "torch's hub cache or use a classifier checkpoint of this project instead") from None
    cfg = run_config(Path(source))
    if cfg.data.get("normalization") != "half" or cfg.data.get("in_chans") != in_chans:
        raise ValueError(f"model.perceptual_net={source}: its classifier was trained with normalization="
                         f"{cfg.data.get('normalization')} / {cfg.data.get('in_chans')} channels; the diffusion "
                         f"model needs normalization=half and {in_chans} channels")
    return FrozenFeatures(load_classifier(Path(source), cfg.model.num_classes).net)


class ClassConditionedDiffusion(L.LightningModule):
    """DDPM with class conditioning.

    Args:
        num_classes, img_size, in_chans, task: the data (from the data config).
        unet: kwargs of ``components.diffusion.build_unet`` (block_channels, layers_per_block,
            attention_levels, norm_groups, dropout).
        optimizer: partial taking ``params`` (default: AdamW); scheduler: partial taking
            ``optimizer``, stepped per epoch (the config: linear warmup then cosine); None = constant lr.
        **options: the flat ``model.*`` keys, in typed groups (``diffusion_options``): ``lr``,
            ``weight_decay``, ``ema_decay`` (optim); ``num_train_timesteps``, ``beta_schedule``,
            ``cond_dropout`` (noise); ``perceptual_weight``, ``perceptual_net`` (perceptual
            term on the predicted x0; ``perceptual_network``); ``sample_steps``,
            ``guidance_scale`` (sample grids); ``latent_autoencoder``; ``compile``.
    """

    def __init__(
        self,
        num_classes: int,
        img_size: int,
        in_chans: int,
        task: str = "multi-class",
        unet: dict | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        **options,
    ) -> None:
        super().__init__()
        if task == MULTI_LABEL:
            raise ValueError("the class-conditioned diffusion model needs a single-label task")
        self.options = DiffusionOptions.from_keys(options, ("num_classes", "img_size", "in_chans", "task", "unet",
                                                            "optimizer", "scheduler"))
        self.optimizer_factory = optimizer or torch.optim.AdamW
        check_optimizer(self.optimizer_factory)
        self.scheduler_factory = scheduler
        self.save_hyperparameters(logger=False, ignore=["optimizer", "scheduler"])
        self.compile_options = compile_options(self.options.compile)
        latent = self.options.latent_autoencoder
        self._vae = [load_autoencoder(latent)] if latent else []  # frozen, not saved
        channels, size = self.latent_shape()[:2]
        self.unet = _build_unet(size, channels, num_classes, **(unet or {}))
        self.ema = AveragedModel(self.unet, multi_avg_fn=warmup_ema(self.options.optim.ema_decay), use_buffers=True)
        self.ema.requires_grad_(False)
        noise = self.options.noise
        self.scheduler = ddpm_scheduler(noise.num_train_timesteps, noise.beta_schedule)
        perceptual = self.options.perceptual
        self._perceptual = [perceptual_network(perceptual.perceptual_net, in_chans)] if perceptual.on else []

    # ----- spaces ------------------------------------------------------------------------
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of what the UNet denoises: the images, or the autoencoder's latents."""
        hp = self.hparams
        if not self._vae:
            return hp.in_chans, hp.img_size, hp.img_size
        cfg = self._vae[0].config
        if cfg.in_channels != hp.in_chans:
            raise ValueError(f"model.latent_autoencoder takes {cfg.in_channels} channels; the data has {hp.in_chans}")
        factor = 2 ** (len(cfg.block_out_channels) - 1)
        if hp.img_size % factor:
            raise ValueError(f"data.img_size={hp.img_size} is not divisible by the autoencoder's factor {factor}")
        return cfg.latent_channels, hp.img_size // factor, hp.img_size // factor

    def encode(self, x: Tensor, sample: bool = True) -> Tensor:
        """Images -> what the UNet denoises (a latent draw, or its mode with ``sample=False``)."""
        if not self._vae:
            return x
        vae = self._vae[0]
        dist = vae.encode(x).latent_dist
        return (dist.sample() if sample else dist.mode()) * vae.config.scaling_factor

    def decode(self, z: Tensor) -> Tensor:
        if not self._vae:
            return z
        vae = self._vae[0]
        return vae.decode(z / vae.config.scaling_factor).sample

    # ----- training ----------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        normalization = getattr(dm, "normalization", None)
        if normalization is not None and normalization != "half":
            raise ValueError(f"data.normalization={normalization!r}: the diffusion model needs images in [-1, 1]; "
                             "set data.normalization=half")

    def on_fit_start(self) -> None:
        for frozen in (*self._vae, *self._perceptual):
            frozen.to(self.device)

    def configure_model(self) -> None:
        compile_networks([self.unet], self.compile_options)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        with torch.no_grad():
            z = self.encode(x)
        labels = drop_labels(y, self.hparams.num_classes, self.options.noise.cond_dropout)
        mse, noisy, eps, t = diffusion_loss(self.unet, self.scheduler, z, labels)
        loss = mse
        if self._perceptual:
            loss = loss + self.options.perceptual.perceptual_weight * self.perceptual_term(x, noisy, eps, t)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"diffusion loss is {loss.item()} at step {self.global_step}; lower model.lr")
        self.log("train/mse", mse, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(x))
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(x))
        return loss

    def perceptual_term(self, x: Tensor, noisy: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """alpha_bar_t-weighted distance of the predicted x0 to x in the perceptual features
        (late timesteps, where the x0 estimate is mostly noise, count little)."""
        x0_hat = self.decode(predicted_x0(self.scheduler, noisy, eps, t)).clamp(-1, 1)
        a = self.scheduler.alphas_cumprod.to(x.device)[t]
        net = self._perceptual[0]
        if self.options.perceptual.perceptual_net == "lpips":  # its inner network: per-image distances, no metric state
            rgb = (lambda im: im.expand(-1, 3, -1, -1)) if x.shape[1] == 1 else (lambda im: im)  # noqa: E731
            return (a * net.net(rgb(x0_hat), rgb(x), normalize=False).flatten()).mean()
        return (a * (net(x0_hat) - net(x).detach()).pow(2).mean(1)).mean()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.ema.update_parameters(self.unet)

    def validation_step(self, batch, batch_idx: int) -> None:
        """Noise-prediction MSE of the EMA weights with noise and timesteps fixed per batch, so
        that ``val/loss`` is comparable across epochs."""
        x, y = batch[0], batch[1]
        g = torch.Generator(device=x.device).manual_seed(batch_idx)
        z = self.encode(x, sample=False)
        noise = torch.randn(z.shape, generator=g, device=x.device)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(x),), generator=g, device=x.device)
        eps = self.ema.module(self.scheduler.add_noise(z, noise, t), t, class_labels=y).sample
        self.log("val/loss", F.mse_loss(eps.float(), noise), prog_bar=True, sync_dist=True, batch_size=len(x))

    def configure_optimizers(self):
        rates = self.options.optim
        opt = make_optimizer(self.optimizer_factory, [{"params": list(self.unet.parameters()), "lr": rates.lr,
                                                       "weight_decay": rates.weight_decay}])
        if self.scheduler_factory is None:
            return opt
        return [opt], [self.scheduler_factory(optimizer=opt)]

    # ----- sampling ----------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, labels: Tensor, steps: int | None = None, guidance: float | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """EMA samples of ``labels`` (B,): (B, in_chans, img_size, img_size) in [-1, 1]."""
        sampling = self.options.sampling
        for frozen in self._vae:
            frozen.to(labels.device)
        return ddim_sample(self.ema.module, self.scheduler, labels, self.latent_shape(), self.hparams.num_classes,
                           steps or sampling.sample_steps, sampling.guidance_scale if guidance is None else guidance,
                           generator, self.decode if self._vae else None)

    def sample_grid(self, per_class: int, seed: int = 0) -> Tensor:
        """``per_class`` samples of every class, class-major: (K * per_class, C, H, W)."""
        labels = torch.arange(self.hparams.num_classes, device=self.device).repeat_interleave(per_class)
        g = torch.Generator(device=self.device).manual_seed(seed)
        return self.sample(labels, generator=g)

    # ----- checkpoints -------------------------------------------------------------------
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A checkpoint of a model for other classes or another image size is refused by name."""
        saved = checkpoint.get("hyper_parameters") or {}
        keys = ("num_classes", "img_size", "in_chans")
        made = {k: saved.get(k) for k in keys}
        ours = {k: self.hparams[k] for k in keys}
        if all(v is not None for v in made.values()) and made != ours:
            source = (checkpoint.get(DATA_KEY) or {}).get("data_source", "other data")
            raise ValueError(f"the diffusion checkpoint was trained on {source} {made}; this run's data has {ours}: "
                             "use a checkpoint of this dataset at this image size")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        identity = getattr(dm, "real_train_identity", None)
        if identity is None:
            return
        if getattr(dm, "synthetic_train", None):
            raise ValueError("the diffusion model must train on real images only: unset data.synthetic_train")
        counts = np.bincount(np.asarray(dm.train_labels).reshape(-1), minlength=self.hparams.num_classes)
        checkpoint[DATA_KEY] = {**identity, "class_names": list(dm.class_names), "train_counts": counts.tolist()}
