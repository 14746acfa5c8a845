"""MLO-MAE: masks from a learned masking network, trained by multi-level optimisation.

One training step is one cycle (the datamodule's ``mlo`` option provides one batch per
level, ``cadence`` times the batch size):
  level I   (n1 chunks): encoder + decoder on the probability-weighted reconstruction loss;
  level II  (n2 chunks): classification head on encoder features of unmasked images;
  level III (n3 chunks): masking network by the finite-difference hypergradient of the
            level-III classification loss (see ``components/hypergradient.py``).
Manual optimisation; DDP-safe: the encoder update goes through ``manual_backward``
(the only path on which Lightning arms DDP's gradient sync), every ``autograd.grad``
result is all-reduced by hand.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MaxMetric

from lightning_modules.components.hypergradient import SCHEDULES, LevelBatches, mlo_hypergradient
from lightning_modules.components.mae import MaskedAutoencoder
from lightning_modules.components.masking import build_masking_net, mask_statistics
from lightning_modules.components.optim import cosine_with_warmup, param_groups
from lightning_modules.components.patches import masking_from_scores, random_masking
from lightning_modules.components.vit import ClassificationHead, pool
from lightning_modules.mae import fixed_masking, reconstruct_with
from lightning_modules.metrics import MULTI_LABEL, classification_metrics, log_epoch_metrics

MASK_MODES = ("learned", "random")


def allreduce_mean(tensors: list[Tensor]) -> list[Tensor]:
    """In-place mean over DDP ranks (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        world = dist.get_world_size()
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t.div_(world)
    return tensors


def check_cadence(cadence) -> tuple[int, int, int]:
    c = list(cadence)
    if len(c) != 3 or any(int(v) != v or v < 1 for v in c):
        raise ValueError(f"model.cadence={c} is invalid; allowed: three integers >= 1 (level I : II : III)")
    return int(c[0]), int(c[1]), int(c[2])


class MLOMAE(L.LightningModule):
    """MLO-MAE pretraining with three optimisers.

    Args:
        mae: the ``MaskedAutoencoder`` (its ``mask_ratio`` must lie in (0, 1)).
        num_classes, task: label space of the level-II/III head (single-label tasks).
        masking_net: ``mlp`` (the paper's) or ``patch_scorer`` (light); ``masking_hidden``.
        mask_mode: ``learned``, or ``random`` (plain MAE inside the same module; no level III).
        cadence: level I : II : III steps per cycle, e.g. (2, 1, 1).
        lr, lr_head, lr_mask, weight_decay, betas: AdamW of each level (cosine, per epoch,
            after ``warmup_epochs`` of linear warmup).
        pooling, head_dropout: the head's input and dropout.
        alpha: finite-difference scale (eps = alpha / ||v||).
        hypergradient: ``ours`` or ``original`` schedule.
        grad_clip: max gradient norm of the level-I optimiser (None = off).
        reduce_hypergradients: all-reduce every ``autograd.grad`` result under DDP (only a
            test switches it off, to show that ranks then drift apart).
    """

    def __init__(
        self,
        mae: MaskedAutoencoder,
        num_classes: int,
        task: str,
        masking_net: str = "mlp",
        masking_hidden: int | None = None,
        mask_mode: str = "learned",
        cadence: tuple[int, int, int] = (2, 1, 1),
        lr: float = 1e-3,
        lr_head: float = 1e-3,
        lr_mask: float = 1e-3,
        weight_decay: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_epochs: int = 0,
        pooling: str = "cls",
        head_dropout: float = 0.1,
        alpha: float = 0.01,
        hypergradient: str = "ours",
        grad_clip: float | None = None,
        reduce_hypergradients: bool = True,
    ) -> None:
        super().__init__()
        if not 0 < mae.mask_ratio < 1:
            raise ValueError(f"mask_ratio={mae.mask_ratio} is invalid; MLO-MAE needs (0, 1)")
        if mask_mode not in MASK_MODES:
            raise ValueError(f"model.mask_mode={mask_mode!r} is invalid; allowed: {list(MASK_MODES)}")
        if hypergradient not in SCHEDULES:
            raise ValueError(f"model.hypergradient={hypergradient!r} is invalid; allowed: {list(SCHEDULES)}")
        if task == MULTI_LABEL:
            raise ValueError("MLO-MAE supports single-label tasks (its level-II/III loss is cross-entropy)")
        if alpha <= 0:
            raise ValueError(f"model.alpha={alpha} is invalid; allowed: > 0")
        self.cadence = check_cadence(cadence)
        self.save_hyperparameters(logger=False, ignore=["mae"])
        self.automatic_optimization = False
        self.mae, self.task = mae, task
        enc = mae.encoder
        self.head = ClassificationHead(enc.embed_dim, num_classes, head_dropout)
        self.masknet = build_masking_net(masking_net, enc.num_patches, enc.embed_dim, masking_hidden)
        self.val_metrics = classification_metrics(num_classes, task, "val/")
        self.val_auc_best = MaxMetric()
        self._reference_masks: Tensor | None = None

    # ----- masks -------------------------------------------------------------------------
    def masking_tokens(self, images: Tensor) -> Tensor:
        """The masking network's input: patch + position embeddings (B, L, D), held constant."""
        return self.mae.encoder.embed(images).detach()

    def masks(self, images: Tensor) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor | None, Tensor]:
        """(masking, patch weights or None, masking-net input tokens) for a batch."""
        tokens = self.masking_tokens(images)
        if self.hparams.mask_mode == "random":
            return random_masking(len(images), self.mae.encoder.num_patches, self.mae.mask_ratio, images.device), None, tokens
        with torch.no_grad():
            probs = self.masknet(tokens)
        return masking_from_scores(probs, self.mae.mask_ratio), probs, tokens

    @torch.no_grad()
    def reconstruct(self, images: Tensor, seed: int = 0) -> dict[str, Tensor]:
        """Reconstruction panels (see ``MAEPretrain.reconstruct``) with this module's masks."""
        if self.hparams.mask_mode == "random":
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

    # ----- one cycle ---------------------------------------------------------------------
    def _reduce(self, tensors: list[Tensor]) -> list[Tensor]:
        return allreduce_mean(tensors) if self.hparams.reduce_hypergradients else tensors

    def level1(self, x: Tensor, opt) -> tuple[Tensor, LevelBatches | None]:
        masking, probs, tokens = self.masks(x)
        out = self.mae(x, masking, patch_weights=probs)
        if not torch.isfinite(out.loss):
            raise FloatingPointError(f"level-I loss is {out.loss.item()}; lower model.lr or set model.grad_clip")
        opt.zero_grad(set_to_none=True)
        self.manual_backward(out.loss)
        if self.hparams.grad_clip:
            self.clip_gradients(opt, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm")
        opt.step()
        return out.loss.detach(), (x, tokens, masking, probs)

    def level2(self, x: Tensor, y: Tensor, opt, keep_graph: bool) -> tuple[Tensor, Tensor]:
        feats = pool(self.mae.encoder(x), self.hparams.pooling)
        loss = F.cross_entropy(self.head(feats), y)
        params = list(self.head.parameters())
        grads = self._reduce(list(torch.autograd.grad(loss, params, retain_graph=keep_graph)))
        opt.zero_grad(set_to_none=True)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        return loss.detach(), feats

    def level3(self, level1_data, x3: Tensor, y3: Tensor, x2: Tensor, y2: Tensor, feats2, opt, opts) -> None:
        x1, tokens1, masking1, _ = level1_data
        batches = LevelBatches(x1, tokens1, masking1, x2, y2, x3, y3)
        xi, eta = opts[0].param_groups[0]["lr"], opts[1].param_groups[0]["lr"]
        info: dict = {}
        grads = mlo_hypergradient(
            self.mae, self.head, self.masknet, batches, xi=xi, eta=eta, alpha=self.hparams.alpha,
            pooling=self.hparams.pooling, schedule=self.hparams.hypergradient, reduce=self._reduce,
            feats2=feats2 if self.hparams.hypergradient == "ours" else None, info=info,
        )
        opt.zero_grad(set_to_none=True)
        for p, g in zip((p for p in self.masknet.parameters() if p.requires_grad), grads):
            p.grad = g
        opt.step()
        self.log("train/level3_loss", info["level3_loss"], on_step=False, on_epoch=True, batch_size=len(x3))

    def training_step(self, batch: dict, batch_idx: int) -> None:
        opts = self.optimizers()
        n1, n2, n3 = self.cadence
        learned = self.hparams.mask_mode == "learned"
        for x in batch["level1"][0].chunk(n1):
            loss1, level1_data = self.level1(x, opts[0])
        x2s, y2s = batch["level2"][0].chunk(n2), batch["level2"][1].chunk(n2)
        for i, (x2, y2) in enumerate(zip(x2s, y2s)):
            keep = learned and i == n2 - 1 and self.hparams.hypergradient == "ours"
            loss2, feats2 = self.level2(x2, y2, opts[1], keep_graph=keep)
        if learned:
            for x3, y3 in zip(batch["level3"][0].chunk(n3), batch["level3"][1].chunk(n3)):
                self.level3(level1_data, x3, y3, x2, y2, feats2, opts[2], opts)
            stats = mask_statistics(level1_data[3])
            self.log_dict({f"train/mask_{k}": v for k, v in stats.items()}, on_step=False, on_epoch=True,
                          batch_size=len(level1_data[0]))
        self.log("train/level1_loss", loss1, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(x))
        self.log("train/level2_loss", loss2, on_step=False, on_epoch=True, batch_size=len(x2))

    # ----- fit hooks ---------------------------------------------------------------------
    def on_train_start(self) -> None:
        self.val_auc_best.reset()

    def on_train_epoch_end(self) -> None:
        for sched in self.lr_schedulers():
            sched.step()

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        masking, probs, _ = self.masks(x)
        out = self.mae(x, masking, patch_weights=probs)
        self.log("val/loss", out.loss, sync_dist=True, batch_size=len(x))
        logits = self.head(pool(self.mae.encoder(x), self.hparams.pooling))
        self.val_metrics.update(logits.float().softmax(-1), y)
        if batch_idx == 0:  # how much the masks of the same images change between epochs
            mask = masking[1]
            if self._reference_masks is not None and self._reference_masks.shape == mask.shape:
                self.log("val/mask_change", (mask != self._reference_masks).float().mean(), sync_dist=True,
                         batch_size=len(x))
            self._reference_masks = mask.detach()
            if probs is not None:
                self.log_dict({f"val/mask_{k}": v for k, v in mask_statistics(probs).items()}, sync_dist=True,
                              batch_size=len(x))

    def on_validation_epoch_end(self) -> None:
        log_epoch_metrics(self, self.val_metrics, {"val/auc": self.val_auc_best})

    def configure_optimizers(self):
        hp = self.hparams
        betas = tuple(hp.betas)
        opts = [
            torch.optim.AdamW(param_groups(self.mae, hp.lr, hp.weight_decay), lr=hp.lr, betas=betas),
            torch.optim.AdamW(param_groups(self.head, hp.lr_head, hp.weight_decay), lr=hp.lr_head, betas=betas),
            torch.optim.AdamW(param_groups(self.masknet, hp.lr_mask, hp.weight_decay), lr=hp.lr_mask, betas=betas),
        ]
        total = max(1, self.trainer.max_epochs or 1)
        warmup = min(hp.warmup_epochs, total - 1)
        return opts, [cosine_with_warmup(o, warmup, total) for o in opts]
