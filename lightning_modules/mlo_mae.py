"""MLO-MAE (Guo et al., TMLR 2024): masks from a learned masking network, trained by
multi-level optimisation.

One training step is one cycle (the datamodule's ``mlo`` option provides one batch per
level, ``cadence`` times the batch size):
  level I   (n1 chunks): encoder + decoder on the weighted reconstruction loss;
  level II  (n2 chunks): classification head on encoder features of unmasked images;
  level III (n3 chunks): masking network by the finite-difference hypergradient of the
            level-III classification loss (see ``components/hypergradient.py``).
Manual optimisation; DDP-safe: the encoder update goes through ``manual_backward``
(the only path on which Lightning arms DDP's gradient sync), every ``autograd.grad``
result is all-reduced by hand, and a non-finite loss on any rank stops every rank.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MaxMetric

from lightning_modules.components.hypergradient import (
    LevelBatches,
    forward_is_exact,
    mlo_hypergradient,
)
from lightning_modules.components.mae import MaskedAutoencoder
from lightning_modules.components.mask_diagnostics import DiagnosedMasker, masking_diagnostics
from lightning_modules.components.masking import (
    build_masking_net,
    mask_statistics,
    mask_warnings,
    patch_weights,
)
from lightning_modules.components.optim import (
    OptimizerFactory,
    SchedulerFactory,
    adamw_for_mae,
    check_optimizer,
    make_optimizer,
    param_groups,
)
from lightning_modules.components.patches import masking_from_scores, random_masking
from lightning_modules.components.speed import compile_networks, compile_options
from lightning_modules.components.strategies import MaskDraw
from lightning_modules.components.vit import ClassificationHead, pool
from lightning_modules.mae import fixed_masking, reconstruct_with
from lightning_modules.metrics import (
    MULTI_LABEL,
    classification_metrics,
    fill_missing_metric_states,
    log_epoch_metrics,
)
from lightning_modules.mlo_options import (
    HypergradientOptions,
    LevelOptions,
    MaskingOptions,
    options,
)

log = logging.getLogger(__name__)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def allreduce_mean(tensors: list[Tensor]) -> list[Tensor]:
    """In-place mean over DDP ranks (no-op in a single process)."""
    if _distributed():
        world = dist.get_world_size()
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t.div_(world)
    return tensors


def raise_if_not_finite(loss: Tensor, name: str, fix: str) -> None:
    """Raise on every DDP rank when ``loss`` is NaN or inf on any rank, so that no rank is left
    waiting in a collective for one that has stopped."""
    bad = (~torch.isfinite(loss.detach())).float().reshape(1)
    if _distributed():
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    if bad.item() > 0:
        where = f" (rank {dist.get_rank()}: {loss.item()})" if _distributed() else f" ({loss.item()})"
        raise FloatingPointError(f"{name} is not finite on at least one rank{where}; {fix}")


PRECISIONS = ("32-true", "32", "bf16-mixed")


def check_precision(precision) -> None:
    """Allow fp32 and bf16 mixed precision only. fp16's loss scaler would divide at
    ``optimizer.step()`` the level-II and level-III gradients that MLO-MAE sets by hand (they
    were never scaled), so the head and the masking network would silently stop learning;
    ``*-true`` half or double precision would run the finite differences off fp32."""
    if str(precision) not in PRECISIONS:
        raise ValueError(f"trainer.precision={precision} is not supported by MLO-MAE (its finite-difference "
                         "hypergradient and hand-set head / masking-net gradients need fp32 weights, and fp16's "
                         f"loss scaling would divide them); allowed: {list(PRECISIONS)}")


class MLOMAE(L.LightningModule):
    """MLO-MAE pretraining with three optimisers.

    Args:
        mae: the ``MaskedAutoencoder`` (its ``mask_ratio`` must lie in (0, 1)).
        num_classes, task: label space of the level-II/III head (single-label tasks).
        masking: the masking network and the use of its probabilities (``MaskingOptions``:
            net, hidden, temperature, input_norm, input_grad, patch_weighting, mode).
        levels: the cycle and the levels above the autoencoder (``LevelOptions``: cadence,
            lr_head, lr_mask, pooling, head_dropout).
        hypergradient: level III's finite-difference hypergradient (``HypergradientOptions``:
            schedule, scaling, alpha, reduce).
        lr, weight_decay: level I's rate (levels II / III: ``levels.lr_head`` / ``levels.lr_mask``)
            and every level's weight decay.
        optimizer: partial taking ``params``, one optimiser per level (default: AdamW with betas
            (0.9, 0.95)); scheduler: partial taking ``optimizer``, one per level, stepped once per
            epoch (the config: cosine); None = constant rates.
        grad_clip: max gradient norm of the level-I optimiser (None = off).
        compile: ``torch.compile`` the encoder, decoder, head and masking net (true or a dict
            of its options); the finite-difference passes still run eagerly in exact fp32.
        mask_diagnostics: log ``mask_diagnostics`` (``val/mask_*``) on the first validation
            batch of every epoch (a few MAE passes on up to 128 images).

    The three groups take a mapping (the config) or an instance; each is checked when built.
    """

    check_precision = staticmethod(check_precision)  # train.py calls it before building the Trainer

    def __init__(
        self,
        mae: MaskedAutoencoder,
        num_classes: int,
        task: str,
        masking: MaskingOptions | dict | None = None,
        levels: LevelOptions | dict | None = None,
        hypergradient: HypergradientOptions | dict | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-3,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        grad_clip: float | None = None,
        compile: bool | dict = False,
        mask_diagnostics: bool = True,
    ) -> None:
        super().__init__()
        self.compile_options = compile_options(compile)
        if not 0 < mae.mask_ratio < 1:
            raise ValueError(f"mask_ratio={mae.mask_ratio} is invalid; MLO-MAE needs (0, 1)")
        self.masking = options(MaskingOptions, "masking", masking)
        self.levels = options(LevelOptions, "levels", levels)
        self.hypergradient = options(HypergradientOptions, "hypergradient", hypergradient)
        if task == MULTI_LABEL:
            raise ValueError("MLO-MAE supports single-label tasks (its level-II/III loss is cross-entropy)")
        self.optimizer_factory = optimizer or adamw_for_mae()
        check_optimizer(self.optimizer_factory)
        self.scheduler_factory = scheduler
        self.save_hyperparameters(logger=False, ignore=["mae", "optimizer", "scheduler"])
        self.automatic_optimization = False
        self.mae, self.task = mae, task
        enc = mae.encoder
        self.head = ClassificationHead(enc.embed_dim, num_classes, self.levels.head_dropout)
        m = self.masking
        self.masknet = build_masking_net(m.net, enc.num_patches, enc.embed_dim, m.hidden, m.temperature, m.input_norm)
        self.val_metrics = classification_metrics(num_classes, task, "val/")
        self.val_auc_best = MaxMetric()
        self.val_auc_best.persistent(True)  # kept across a resume
        self._reference_masks: Tensor | None = None
        self._val_mask_stats: dict[str, float] = {}

    # ----- masks -------------------------------------------------------------------------
    def masks(self, images: Tensor) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor | None, Tensor]:
        """(masking, probabilities (B, L) or None, masking-net input tokens (B, L, D)).

        The tokens (patch + position embeddings, held constant) and the probabilities are
        computed in fp32 even under autocast, so that the top-k cut has no bf16 ties.
        """
        with torch.autocast(images.device.type, enabled=False):
            tokens = self.mae.encoder.embed(images.float()).detach()
            if self.masking.mode == "random":
                n = self.mae.encoder.num_patches
                return random_masking(len(images), n, self.mae.mask_ratio, images.device), None, tokens
            with torch.no_grad():
                probs = self.masknet(tokens)
        return masking_from_scores(probs, self.mae.mask_ratio), probs, tokens

    def weights(self, probs: Tensor | None, mask: Tensor) -> Tensor | None:
        """Patch weights of the level-I loss (None for random masks: plain MAE)."""
        return None if probs is None else patch_weights(probs, mask, self.masking.patch_weighting)

    @torch.no_grad()
    def reconstruct(self, images: Tensor, seed: int = 0) -> dict[str, Tensor]:
        """Reconstruction panels (see ``MAEPretrain.reconstruct``) with this module's masks."""
        if self.masking.mode == "random":
            masking = fixed_masking(self.mae, len(images), seed, images.device)
        else:
            masking = self.masks(images)[0]
        return reconstruct_with(self.mae, images, masking)

    @torch.no_grad()
    def mask_maps(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Masking probabilities (B, L) and the binary mask (B, L), 1 = masked."""
        (_, mask, _), probs, _ = self.masks(images)
        if probs is None:
            probs = torch.full_like(mask, self.mae.mask_ratio)
        return probs, mask

    DIAGNOSTIC_IMAGES = 128  # images of the first validation batch the diagnostics use
    RANDOM_MASKS = 4  # random maskings averaged for each patch's reconstruction error

    def mask_draw(self, images: Tensor) -> MaskDraw:
        """This module's masks as a ``MaskDraw`` (scores: the masking probabilities; for random
        masks the probability of every patch, the mask ratio)."""
        masking, probs, _ = self.masks(images)
        return MaskDraw(masking, torch.full_like(masking[1], self.mae.mask_ratio) if probs is None else probs)

    def masker(self) -> DiagnosedMasker:
        """This module's masking for the diagnostics: the masking net is the learned part; with
        ``model.masking.input_norm=batch`` an image's mask depends on its batch."""
        learned = self.masking.mode == "learned"
        return DiagnosedMasker(self.mae, self.mask_draw, self.masknet if learned else None,
                               self.weights if learned else None, learned and self.masking.input_norm == "batch")

    def mask_diagnostics(self, x: Tensor, reference=None) -> dict[str, float]:
        """``mask_diagnostics.masking_diagnostics`` of the learned masks on up to
        ``DIAGNOSTIC_IMAGES`` images x (B, C, H, W), B >= 2: correlations with patch content on
        the scores and the drawn masks, raw, on shuffled images and within patch positions;
        reconstruction difficulty by ``reference`` (an MAE) or this module's own MAE
        (``rho_recon_own*``); ess: the level-I weights' effective sample size / masked patches;
        context_iou for a batch-dependent masking net."""
        x = x[: self.DIAGNOSTIC_IMAGES].clone()
        return masking_diagnostics(self.masker(), x, reference, random_masks=self.RANDOM_MASKS)

    # ----- one cycle ---------------------------------------------------------------------
    def _reduce(self, tensors: list[Tensor]) -> list[Tensor]:
        return allreduce_mean(tensors) if self.hypergradient.reduce else tensors

    def level1(self, x: Tensor, opt) -> tuple[Tensor, tuple]:
        """One encoder + decoder step; returns the loss and (x, tokens, masking, probs, weights)."""
        if self.masking.input_grad and self.masking.mode == "learned":
            # the official input: the weights carry gradient into the encoder's patch embedding
            # (not into phi, whose parameters are read detached); one masking-net forward
            frozen = {n: p.detach() for n, p in self.masknet.named_parameters()}
            with torch.autocast(x.device.type, enabled=False):
                tokens_g = self.mae.encoder.embed(x.float())
                probs_g = torch.func.functional_call(self.masknet, frozen, (tokens_g,))
            tokens, probs = tokens_g.detach(), probs_g.detach()
            masking = masking_from_scores(probs, self.mae.mask_ratio)
            weights = self.weights(probs_g, masking[1])
        else:
            masking, probs, tokens = self.masks(x)
            weights = self.weights(probs, masking[1])
        out = self.mae(x, masking, patch_weights=weights)
        raise_if_not_finite(out.loss, "the level-I loss", "lower model.lr or set model.grad_clip")
        opt.zero_grad(set_to_none=True)
        self.manual_backward(out.loss)
        if self.hparams.grad_clip:
            self.clip_gradients(opt, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")
        opt.step()
        return out.loss.detach(), (x, tokens, masking, probs, None if weights is None else weights.detach())

    def level2(self, x: Tensor, y: Tensor, opt, keep_graph: bool) -> tuple[Tensor, Tensor | None]:
        """One head step. Returns the loss and, when ``keep_graph`` and the encoder forward was
        exact fp32 (see ``forward_is_exact``), the pooled features with their graph, for the
        ``ours`` head edge; otherwise None (the head edge then re-runs the encoder in fp32)."""
        keep = keep_graph and forward_is_exact(self.mae.encoder, x.device.type)
        feats = pool(self.mae.encoder(x), self.levels.pooling)
        loss = F.cross_entropy(self.head(feats).float(), y)
        raise_if_not_finite(loss, "the level-II loss", "lower model.levels.lr_head")
        params = list(self.head.parameters())
        grads = self._reduce(list(torch.autograd.grad(loss, params, retain_graph=keep)))
        opt.zero_grad(set_to_none=True)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        return loss.detach(), feats if keep else None

    def level3(self, level1_data: tuple, x3: Tensor, y3: Tensor, x2: Tensor, y2: Tensor, feats2, opt, opts) -> dict:
        """One masking-net step by the hypergradient; returns its ``info`` (loss, path norms)."""
        x1, tokens1, masking1, _, _ = level1_data
        hyper, masking = self.hypergradient, self.masking
        info: dict = {}
        grads = mlo_hypergradient(
            self.mae, self.head, self.masknet, LevelBatches(x1, tokens1, masking1, x2, y2, x3, y3),
            scaling=hyper.scaling, xi=opts[0].param_groups[0]["lr"], eta=opts[1].param_groups[0]["lr"],
            alpha=hyper.alpha, pooling=self.levels.pooling, schedule=hyper.schedule, weighting=masking.patch_weighting,
            input_grad=masking.input_grad, reduce=self._reduce, feats2=feats2, info=info,
        )
        raise_if_not_finite(info["level3_loss"], "the level-III loss",
                            "lower model.levels.lr_mask or model.levels.lr_head")
        opt.zero_grad(set_to_none=True)
        for p, g in zip((p for p in self.masknet.parameters() if p.requires_grad), grads):
            p.grad = g
        opt.step()
        return info

    def training_step(self, batch: dict, batch_idx: int) -> None:
        opts = self.optimizers()
        n1, n2, n3 = self.levels.cadence
        learned = self.masking.mode == "learned"
        for x in batch["level1"][0].chunk(n1):
            loss1, level1_data = self.level1(x, opts[0])
        x2s, y2s = batch["level2"][0].chunk(n2), batch["level2"][1].chunk(n2)
        for i, (x2, y2) in enumerate(zip(x2s, y2s)):
            keep = learned and i == n2 - 1 and self.hypergradient.schedule == "ours"
            loss2, feats2 = self.level2(x2, y2, opts[1], keep_graph=keep)
        log = {"on_step": False, "on_epoch": True}
        if learned:
            for x3, y3 in zip(batch["level3"][0].chunk(n3), batch["level3"][1].chunk(n3)):
                info = self.level3(level1_data, x3, y3, x2, y2, feats2, opts[2], opts)
                self.log("train/level3_loss", info["level3_loss"], batch_size=len(x3), **log)
                self.log_dict({f"train/hypergrad_{k}": info[k].float() for k in ("total", "direct", "head")},
                              batch_size=1, **log)
            x1, _, (_, mask1, _), probs1, weights1 = level1_data
            stats = mask_statistics(probs1, mask1, weights1)
            self.log_dict({f"train/mask_{k}": v for k, v in stats.items()}, batch_size=len(x1), **log)
        self.log("train/level1_loss", loss1, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(x))
        self.log("train/level2_loss", loss2, batch_size=len(x2), **log)

    # ----- fit hooks ---------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        check_precision(self.trainer.precision)

    def configure_model(self) -> None:
        compile_networks([self.mae.encoder, self.mae.decoder, self.head, self.masknet], self.compile_options)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        fill_missing_metric_states(self, checkpoint)  # checkpoints from before the trackers were saved

    def on_train_epoch_end(self) -> None:
        for sched in self.lr_schedulers() or []:
            sched.step()

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        masking, probs, _ = self.masks(x)
        out = self.mae(x, masking, patch_weights=self.weights(probs, masking[1]))
        self.log("val/loss", out.loss, sync_dist=True, batch_size=len(x))
        logits = self.head(pool(self.mae.encoder(x), self.levels.pooling))
        self.val_metrics.update(logits.float().softmax(-1), y)
        if batch_idx == 0 and probs is not None:  # the first validation batch: the same images every epoch
            mask = masking[1]
            if self._reference_masks is not None and self._reference_masks.shape == mask.shape:
                self.log("val/mask_change", (mask != self._reference_masks).float().mean(), sync_dist=True,
                         batch_size=1)
            self._reference_masks = mask.detach()
            stats = mask_statistics(probs, mask, self.weights(probs, mask))
            self._val_mask_stats = {k: v.item() for k, v in stats.items()}
            self.log_dict({f"val/mask_{k}": v for k, v in stats.items()}, sync_dist=True, batch_size=1)
            if self.hparams.mask_diagnostics and len(x) >= 2:
                diagnostics = self.mask_diagnostics(x)
                self._val_mask_stats.update(diagnostics)
                self.log_dict({f"val/mask_{k}": float(v) for k, v in diagnostics.items()}, sync_dist=True,
                              batch_size=1)

    def on_validation_epoch_end(self) -> None:
        log_epoch_metrics(self, self.val_metrics, {"val/auc": self.val_auc_best})
        if not self.trainer.sanity_checking and self.trainer.is_global_zero:
            for warning in mask_warnings(self._val_mask_stats):
                log.warning("MLO-MAE epoch %d: %s", self.current_epoch, warning)

    def configure_optimizers(self):
        rates = ((self.mae, self.hparams.lr), (self.head, self.levels.lr_head), (self.masknet, self.levels.lr_mask))
        opts = [make_optimizer(self.optimizer_factory, param_groups(net, lr, self.hparams.weight_decay))
                for net, lr in rates]
        if self.scheduler_factory is None:
            return opts
        return opts, [self.scheduler_factory(optimizer=o) for o in opts]
