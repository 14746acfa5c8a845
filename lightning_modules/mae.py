"""MAE pretraining with an online linear probe (``val/probe_acc``, ``val/probe_auc``)."""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.utilities.seed import isolate_rng
from torch import nn
from torchmetrics import MaxMetric

from lightning_modules.components.losses import ClassificationLoss
from lightning_modules.components.mae import MaskedAutoencoder, uniformity_loss
from lightning_modules.components.mask_diagnostics import DiagnosedMasker, masking_diagnostics
from lightning_modules.components.masking import mask_diversity
from lightning_modules.components.optim import (
    OptimizerFactory,
    SchedulerFactory,
    adamw_for_mae,
    check_optimizer,
    make_optimizer,
    param_groups,
)
from lightning_modules.components.patches import masking_from_scores, unpatchify
from lightning_modules.components.speed import compile_networks, compile_options
from lightning_modules.components.strategies import (
    MaskDraw,
    StrategyOptions,
    TrainingClock,
    build_strategy,
    masking_options,
)
from lightning_modules.components.vit import pool
from lightning_modules.metrics import (
    MULTI_LABEL,
    classification_metrics,
    fill_missing_metric_states,
    log_epoch_metrics,
    probabilities,
)

PROBE_INPUTS = ("full", "visible")


def fixed_masking(mae: MaskedAutoencoder, batch: int, seed: int, device) -> tuple[torch.Tensor, ...]:
    """Random masking of ``mae`` that is the same at every call with the same seed."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(batch, mae.encoder.num_patches, generator=g).to(device)
    return masking_from_scores(scores, mae.mask_ratio)


@torch.no_grad()
def reconstruct_with(mae: MaskedAutoencoder, images: torch.Tensor, masking) -> dict[str, torch.Tensor]:
    """The four reconstruction panels (see ``reconstruction_panels``) for a given masking."""
    out = mae(images, masking)
    return reconstruction_panels(images, mae.pixels(images, out), out.mask, mae.encoder.patch_size)


class MAEPretrain(L.LightningModule):
    """Masked-autoencoder pretraining (manual optimisation: MAE, masking-strategy, critic and
    probe optimisers).

    One backward of ``reconstruction (+ uniformity) + masking strategy's loss + probe loss`` per
    step; the probe sees detached features, so its gradient never reaches the encoder. The
    optimisers own disjoint parameters: the strategy's trainable parts (HPM's loss predictor,
    AutoMAE's and the adversary's generators) have their own, of the MAE's kind, rates and
    schedule; a strategy's critic (AutoMAE's discriminator) is stepped before the MAE step by
    its own loss and optimiser (the MAE's kind and schedule, no weight decay).

    Args:
        mae: the ``MaskedAutoencoder``.
        num_classes, task: label space of the probe; ``num_classes=0`` disables the probe
            (e.g. pretraining on a union of datasets with different labels).
        lr, weight_decay: rates of the encoder + decoder (+ strategy) parameter groups (no decay
            on biases, norms, tokens, position embeddings).
        optimizer: partial taking ``params`` (default: AdamW with betas (0.9, 0.95)).
        scheduler: partial taking ``optimizer``, stepped once per epoch (the configs: linear
            warmup then cosine, ``cosine_with_warmup``); None = constant lr.
        probe_lr: lr of the online probe's own AdamW (no weight decay; a monitor, not the method).
        probe_input: ``full`` (an extra no-grad encoder pass on unmasked images, matching
            validation) or ``visible`` (the visible-token features of the MAE pass; free).
        uniformity_weight, uniformity_tau: U-MAE regulariser on mean-pooled latents (0 = off).
        grad_clip: max gradient norm of the MAE optimiser (None = off).
        compile: ``torch.compile`` the encoder and decoder (true or a dict of its options).
        masking: where to mask, the group ``model.masking`` (``components/strategies``): a name
            (``random`` (MAE), ``block`` (BEiT), ``hpm`` (hard-patch mining), ``attmask``
            (AttMask), ``automae`` (AutoMAE), ``adversarial`` (ADIOS-style)) with its published
            defaults, or a mapping with ``name`` and options (``masking_options``).
        mask_diagnostics: log ``val/mask_*`` (``masking_diagnostics``: content correlations of the
            scores and drawn masks with their nulls) on the first validation batch of every epoch.
    """

    def __init__(
        self,
        mae: MaskedAutoencoder,
        num_classes: int,
        task: str,
        lr: float = 1.5e-4,
        weight_decay: float = 0.05,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        probe_lr: float = 1e-3,
        probe_input: str = "full",
        uniformity_weight: float = 0.0,
        uniformity_tau: float = 0.1,
        grad_clip: float | None = None,
        compile: bool | dict = False,
        masking: str | dict | StrategyOptions = "random",
        mask_diagnostics: bool = True,
    ) -> None:
        super().__init__()
        self.compile_options = compile_options(compile)
        self.masking_options = masking_options(masking)
        self.masking = build_strategy(self.masking_options, mae)
        if probe_input not in PROBE_INPUTS:
            raise ValueError(f"model.probe_input={probe_input!r} is invalid; allowed: {list(PROBE_INPUTS)}")
        self.optimizer_factory = optimizer or adamw_for_mae()
        check_optimizer(self.optimizer_factory)
        self.scheduler_factory = scheduler
        self.save_hyperparameters(logger=False, ignore=["mae", "optimizer", "scheduler", "masking"])
        self.hparams["masking"] = self.masking_options.as_config()  # plain values: checkpoints load weights_only
        self.automatic_optimization = False
        self.mae = mae
        self.task = task
        dim = mae.encoder.embed_dim
        self.probe = None
        if num_classes > 0:
            self.probe = nn.Sequential(nn.BatchNorm1d(dim, affine=False), nn.Linear(dim, num_classes))
            self.probe_criterion = ClassificationLoss(multi_label=task == MULTI_LABEL)
            self.val_probe = classification_metrics(num_classes, task, "val/probe_")
            self.probe_auc_best = MaxMetric()
            self.probe_auc_best.persistent(True)  # kept across a resume

    # ----- reused by callbacks -----------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
        """Images (B, C, H, W) -> masked input, reconstruction and reconstruction with the
        visible patches pasted back, each (B, C, H, W); random masking: the same masks for the
        same seed; other strategies: their own masks."""
        if self.masking_options.name == "random":
            return reconstruct_with(self.mae, images, fixed_masking(self.mae, len(images), seed, images.device))
        return reconstruct_with(self.mae, images, self.mask_draw(images).masking)

    def progress(self) -> float:
        """Share of training done, in (0, 1] (the strategies' schedules): after this epoch of
        ``trainer.max_epochs``, else after this step of ``trainer.max_steps``; 1 without a trainer."""
        trainer = self._trainer
        if trainer is None:
            return 1.0
        if (trainer.max_epochs or 0) > 0:
            return min(1.0, (self.current_epoch + 1) / trainer.max_epochs)
        if (trainer.max_steps or 0) > 0:
            return min(1.0, (self.global_step + 1) / trainer.max_steps)
        return 1.0

    def clock(self) -> TrainingClock:
        """The current batch's place in training (the strategies' schedules): epoch, batch index over
        all epochs and batches in the run (``trainer.max_epochs`` x batches per epoch, else
        ``trainer.max_steps`` over the optimisers stepped per batch, each counting as one step)."""
        trainer = self._trainer
        if trainer is None:
            return TrainingClock()
        total = None
        if (trainer.max_epochs or 0) > 0 and math.isfinite(trainer.num_training_batches):
            total = trainer.max_epochs * int(trainer.num_training_batches)
        elif (trainer.max_steps or 0) > 0:
            total = math.ceil(trainer.max_steps / max(1, len(trainer.optimizers)))
        step = max(0, trainer.fit_loop.epoch_loop.total_batch_idx)
        return TrainingClock(self.current_epoch, step, total, self.progress())

    def mask_draw(self, images: torch.Tensor) -> MaskDraw:
        """The strategy's masks for ``images`` (B, C, H, W)."""
        return self.masking.draw(images, self.mae, self.progress())

    @property
    def mask_score_label(self) -> str:
        return self.masking.score_label

    @torch.no_grad()
    def mask_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The strategy's scores (B, L) in [0, 1] and its mask (B, L), 1 = masked (``MaskMapCallback``)."""
        draw = self.mask_draw(images)
        return draw.scores, draw.mask

    DIAGNOSTIC_IMAGES = 128

    def masker(self) -> DiagnosedMasker:
        """This strategy for the diagnostics (its modules are the learned part; every strategy
        masks each image on its own)."""
        return DiagnosedMasker(self.mae, self.mask_draw, self.masking)

    def mask_diagnostics(self, x: torch.Tensor, reference=None) -> dict[str, float]:
        """``masking_diagnostics`` of this strategy on up to 128 images x (B, C, H, W), B >= 2
        (difficulty by ``reference`` or this module's own MAE: ``rho_recon_own*``), plus
        ``diversity`` (``masking.mask_diversity``). The global random state is left as it was
        (the draws must not move training's random streams)."""
        x = x[: self.DIAGNOSTIC_IMAGES].clone()
        with isolate_rng():
            out = masking_diagnostics(self.masker(), x, reference)
            out["diversity"] = mask_diversity(self.mask_draw(x).mask).item()
        return out

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Mean-pooled encoder features of unmasked images, (B, D)."""
        return pool(self.mae.encoder(images), "mean")

    # ----- training ----------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> None:
        x, y = batch[0], batch[1]  # (a third element flags synthetic images)
        opts = self.optimizers()
        opts = dict(zip(self._optimizer_roles, opts if isinstance(opts, list) else [opts]))
        clock = self.clock()
        draw = self.masking.draw(x, self.mae, clock.progress)
        logs = self.critic_step(x, draw, opts.pop("critic", None))
        out = self.mae(x, draw.masking, token_scale=draw.token_scale)
        loss = out.loss
        logs["train/recon_loss"] = out.loss.detach()
        extra, extra_logs = self.masking.auxiliary_loss(x, self.mae, draw, out)
        if self.hparams.uniformity_weight > 0:
            unif = uniformity_loss(pool(out.latent, "mean"), self.hparams.uniformity_tau)
            loss = loss + self.hparams.uniformity_weight * unif
            logs["train/uniformity"] = unif.detach()
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"MAE loss is {loss.item()} at epoch {self.current_epoch}; lower model.lr or set model.grad_clip"
            )
        total = loss
        if extra is not None:
            if not torch.isfinite(extra):
                raise FloatingPointError(f"the {self.masking_options.name} masking loss is {extra.item()} at epoch "
                                         f"{self.current_epoch}; lower model.lr or the strategy's loss weight")
            total = total + extra
            logs |= extra_logs
        if self.probe is not None:
            if self.hparams.probe_input == "full":
                with torch.no_grad():
                    feats = self.features(x)
            else:
                feats = pool(out.latent, "mean").detach()
            probe_loss = self.probe_criterion(self.probe(feats), y)
            total = total + probe_loss
            logs["train/probe_loss"] = probe_loss.detach()
        for opt in opts.values():
            opt.zero_grad(set_to_none=True)
        self.manual_backward(total)
        if self.hparams.grad_clip:  # the MAE's own norm: a strategy's gradients (own optimiser) never shrink it
            self.clip_gradients(opts["mae"], gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")
        for opt in opts.values():
            opt.step()
        self.masking.after_step(self.mae, clock)
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=len(x))
        self.log_dict(logs, on_step=False, on_epoch=True, batch_size=len(x))

    def critic_step(self, x: torch.Tensor, draw: MaskDraw, opt) -> dict[str, torch.Tensor]:
        """One step of the strategy's critic (AutoMAE's discriminator) on its own loss and
        optimiser ``opt``, before the MAE step; its logs (none without a critic)."""
        loss, logs = self.masking.critic_loss(x, self.mae, draw)
        if loss is None:
            return {}
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the {self.masking_options.name} critic loss is {loss.item()} at epoch "
                                     f"{self.current_epoch}; lower model.lr")
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()
        return dict(logs)

    def on_train_epoch_end(self) -> None:
        scheds = self.lr_schedulers()
        for sched in scheds if isinstance(scheds, list) else [scheds] if scheds is not None else []:
            sched.step()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        fill_missing_metric_states(self, checkpoint)  # checkpoints from before the trackers were saved

    def on_train_start(self) -> None:
        trainer = self.trainer
        if self.masking.scheduled and not ((trainer.max_epochs or 0) > 0 or (trainer.max_steps or 0) > 0):
            raise ValueError(f"model.masking={self.masking_options.name} follows a schedule over training: set "
                             "trainer.max_epochs or trainer.max_steps")
        if self.global_step == 0:  # a resumed run keeps its teachers
            self.masking.start(self.mae)

    def configure_model(self) -> None:
        compile_networks([self.mae.encoder, self.mae.decoder], self.compile_options)

    # ----- validation --------------------------------------------------------------------
    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        # The same masks every epoch, so val/loss is comparable across epochs.
        out = self.mae(x, fixed_masking(self.mae, len(x), batch_idx, x.device))
        self.log("val/loss", out.loss, prog_bar=True, sync_dist=True, batch_size=len(x))
        if batch_idx == 0 and self.hparams.mask_diagnostics and len(x) >= 2:
            diagnostics = self.mask_diagnostics(x)
            self.log_dict({f"val/mask_{k}": float(v) for k, v in diagnostics.items()}, sync_dist=True, batch_size=1)
        if self.probe is not None:
            probs = probabilities(self.probe(self.features(x)).float(), self.task)
            self.val_probe.update(probs, y.long() if self.task == MULTI_LABEL else y)

    def on_validation_epoch_end(self) -> None:
        if self.probe is not None:
            log_epoch_metrics(self, self.val_probe, {"val/probe_auc": self.probe_auc_best})

    def configure_optimizers(self):
        """The MAE's optimiser, the strategy's (same kind, rates and schedule; only when it has
        trainable parts), its critic's (same kind and schedule, no weight decay; only with a
        critic), the probe's; ``_optimizer_roles`` names them in that order."""
        hp = self.hparams
        optimizers = {"mae": make_optimizer(self.optimizer_factory, param_groups(self.mae, hp.lr, hp.weight_decay))}
        critics = set(self.masking.critics)
        own = nn.ModuleDict({n: m for n, m in self.masking.named_children() if n not in critics})
        if any(p.requires_grad for p in own.parameters()):
            optimizers["masking"] = make_optimizer(self.optimizer_factory, param_groups(own, hp.lr, hp.weight_decay))
        if critics:
            params = [p for n in sorted(critics) for p in getattr(self.masking, n).parameters()]
            optimizers["critic"] = make_optimizer(self.optimizer_factory,
                                                  [{"params": params, "lr": hp.lr, "weight_decay": 0.0}])
        scheduled = list(optimizers.values())
        if self.probe is not None:
            probe = [{"params": list(self.probe.parameters()), "lr": hp.probe_lr, "weight_decay": 0.0}]
            optimizers["probe"] = make_optimizer(torch.optim.AdamW, probe)
        self._optimizer_roles = list(optimizers)
        schedulers = [] if self.scheduler_factory is None else [self.scheduler_factory(optimizer=o) for o in scheduled]
        return list(optimizers.values()), schedulers


def reconstruction_panels(
    images: torch.Tensor, pred_patches: torch.Tensor, mask: torch.Tensor, patch_size: int
) -> dict[str, torch.Tensor]:
    """images (B, C, H, W), predicted pixels (B, L, P), mask (B, L) 1 = masked ->
    ``original``, ``masked`` (hidden patches zeroed), ``reconstruction``, ``pasted``."""
    c = images.shape[1]
    pixel_mask = unpatchify(mask.unsqueeze(-1).expand(-1, -1, patch_size**2 * c), patch_size, c)
    recon = unpatchify(pred_patches, patch_size, c)
    return {
        "original": images,
        "masked": images * (1 - pixel_mask),
        "reconstruction": recon,
        "pasted": images * (1 - pixel_mask) + recon * pixel_mask,
    }
