"""Supervised classifier: any network, CE / weighted CE / focal loss, medical metrics."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from timm.data import Mixup
from torch import nn
from torchmetrics import CatMetric, MaxMetric
from torchmetrics.classification import MulticlassConfusionMatrix

from lightning_modules.components.losses import ClassificationLoss
from lightning_modules.components.optim import (
    OptimizerFactory,
    SchedulerFactory,
    check_optimizer,
    make_optimizer,
    param_groups,
)
from lightning_modules.components.speed import (
    compile_networks,
    compile_options,
    to_channels_last,
)
from lightning_modules.metrics import (
    MULTI_LABEL,
    classification_metrics,
    classwise_metrics,
    fill_missing_metric_states,
    log_epoch_metrics,
    name_classes,
    probabilities,
)


def gathered_order(n: int, world_size: int) -> np.ndarray:
    """Dataset index of each row gathered from ``UnpaddedDistributedSampler`` shards.

    Rank r evaluates indices r, r+W, ...; gathering concatenates rank 0's rows, then rank 1's.
    """
    return np.concatenate([np.arange(r, n, world_size) for r in range(world_size)])


class Classifier(L.LightningModule):
    """Trains ``net`` on labelled images.

    Args:
        net: module mapping images (B, C, H, W) to logits (B, num_classes).
        num_classes: number of classes (labels for multi-label tasks).
        task: ``medmnist.INFO[flag]["task"]``; binary tasks use two logits and softmax.
        optimizer: partial taking ``params`` (and ``lr`` / ``weight_decay`` per group), e.g.
            ``torch.optim.AdamW`` with its betas; the rates themselves are ``lr`` and ``weight_decay``.
        lr, weight_decay: learning rate and weight decay (none on biases, norms, tokens), the
            same keys as MAE and MLO-MAE pretraining (``model.lr``, ``model.weight_decay``).
        scheduler: optional partial taking ``optimizer``.
        scheduler_interval: ``epoch`` or ``step``.
        loss: kwargs of ``ClassificationLoss`` (``name``, ``class_weighted``, ...).
        layer_decay: layer-wise lr decay for ViT nets (``net.encoder.blocks``); None = off.
        freeze_encoder: linear probing: the encoder is frozen (eval mode), only the head trains.
        mixup: kwargs of ``timm.data.Mixup`` (``mixup_alpha``, ``cutmix_alpha``, ``prob``...);
            the training loss becomes soft-target cross-entropy.
        compile: ``torch.compile`` the network (true or a dict of its options).
        channels_last: NHWC weights and inputs (CNNs on GPUs); the optimiser is fused on CUDA.
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        task: str,
        optimizer: OptimizerFactory,
        lr: float,
        weight_decay: float = 0.0,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        loss: dict | None = None,
        layer_decay: float | None = None,
        freeze_encoder: bool = False,
        mixup: dict | None = None,
        compile: bool | dict = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.compile_options = compile_options(compile)
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"model.scheduler_interval={scheduler_interval!r}; allowed: epoch, step")
        encoder = getattr(net, "encoder", None)
        if (layer_decay is not None or freeze_encoder) and not hasattr(encoder, "blocks"):
            raise ValueError("model.layer_decay / model.freeze_encoder need a ViT net with an encoder")
        check_optimizer(optimizer)
        if not lr > 0 or weight_decay < 0:
            raise ValueError(f"model.lr={lr} / model.weight_decay={weight_decay} are invalid; allowed: lr > 0, "
                             "weight_decay >= 0")
        if layer_decay is not None and not 0 < layer_decay <= 1:
            raise ValueError(f"model.layer_decay={layer_decay} is invalid; allowed: (0, 1]")
        if freeze_encoder:
            encoder.requires_grad_(False)
        self.save_hyperparameters(logger=False, ignore=["net", "optimizer", "scheduler"])
        self.net = to_channels_last(net) if channels_last else net
        self.task = task
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.criterion = ClassificationLoss(**(loss or {}), multi_label=task == MULTI_LABEL)
        self.mixup = None
        # the last validation epoch's confusion matrix (K, K) and the test predictions, in memory:
        # files are written by callbacks (callbacks.predictions), never by the module
        self.val_confusion_matrix: np.ndarray | None = None
        self.test_predictions: dict | None = None
        if mixup:
            if task == MULTI_LABEL or self.criterion.class_weighted or self.criterion.name != "ce":
                raise ValueError("model.mixup needs a single-label task and the unweighted ce loss")
            self.mixup = Mixup(**mixup, label_smoothing=self.criterion.label_smoothing, num_classes=num_classes)
        self.train_metrics = classification_metrics(num_classes, task, "train/")
        self.val_metrics = classification_metrics(num_classes, task, "val/")
        self.test_metrics = classification_metrics(num_classes, task, "test/")
        self.val_acc_best, self.val_auc_best = MaxMetric(), MaxMetric()
        for best in (self.val_acc_best, self.val_auc_best):
            best.persistent(True)  # saved in checkpoints: a resumed run keeps its best so far
        self.test_probs, self.test_labels = CatMetric(), CatMetric()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def configure_model(self) -> None:
        compile_networks([self.net], self.compile_options)

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule  # None when a Trainer runs plain dataloaders
        if self.criterion.class_weighted and dm is not None:
            self.criterion.set_class_weights(dm.class_weights)
        if not hasattr(self, "val_classwise"):  # before the model moves to its device
            k, task = self.hparams.num_classes, self.task
            names = list(getattr(dm, "class_names", None) or [str(i) for i in range(k)])
            self.val_classwise = classwise_metrics(k, task, "val/", names)
            self.test_classwise = classwise_metrics(k, task, "test/", names)
            for metrics in (self.train_metrics, self.val_metrics, self.test_metrics):
                name_classes(metrics, names)  # undefined classes are named in warnings
            self.val_confusion = None if task == MULTI_LABEL else MulticlassConfusionMatrix(k)

    def _shared_step(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = self.criterion(logits, y)
        probs = probabilities(logits.detach().float(), self.task)
        return loss, probs, y.long() if self.task == MULTI_LABEL else y

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        fill_missing_metric_states(self, checkpoint)  # checkpoints from before the trackers were saved

    def on_train_epoch_start(self) -> None:
        if self.hparams.freeze_encoder:
            self.net.encoder.eval()  # frozen features: no dropout / drop path

    def _mixup_step(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch[0], batch[1]
        if len(x) % 2:
            raise ValueError(f"mixup needs an even batch size, got {len(x)}")
        mixed, soft = self.mixup(x, y)
        logits = self(mixed)
        loss = torch.sum(-soft * logits.log_softmax(dim=-1), dim=-1).mean()
        return loss, probabilities(logits.detach().float(), self.task), y

    def training_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """The loss, and the batch's probabilities (detached) for callbacks that count by kind
        of image (``callbacks.accuracy_by_source``)."""
        loss, probs, y = self._mixup_step(batch) if self.mixup else self._shared_step(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"Training loss is {loss.item()} at epoch {self.current_epoch}, step {self.global_step}. "
                "Lower the learning rate, check the input normalisation, or clip gradients "
                "(trainer.gradient_clip_val)."
            )
        self.train_metrics.update(probs, y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        return {"loss": loss, "probs": probs}

    def on_train_epoch_end(self) -> None:
        self.log_dict(self.train_metrics.compute())
        self.train_metrics.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        loss, probs, y = self._shared_step(batch)
        self.val_metrics.update(probs, y)
        self.val_classwise.update(probs, y)
        if self.val_confusion is not None:
            self.val_confusion.update(probs, y)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(y))

    def on_validation_epoch_end(self) -> None:
        log_epoch_metrics(self, self.val_metrics, {"val/acc": self.val_acc_best, "val/auc": self.val_auc_best})
        self.log_dict(self.val_classwise.compute())
        self.val_classwise.reset()
        if self.val_confusion is not None:
            self.val_confusion_matrix = self.val_confusion.compute().cpu().numpy()  # collective: every rank calls it
            self.val_confusion.reset()

    def test_step(self, batch, batch_idx: int) -> None:
        loss, probs, y = self._shared_step(batch)
        self.test_metrics.update(probs, y)
        self.test_classwise.update(probs, y)
        self.test_probs.update(probs)
        self.test_labels.update(y.float())
        self.log("test/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(y))

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Probabilities (B, K): softmax, or per-label sigmoid for multi-label tasks."""
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return probabilities(self(x).float(), self.task)

    def on_test_epoch_end(self) -> None:
        self.log_dict({**self.test_metrics.compute(), **self.test_classwise.compute()})
        self.test_metrics.reset()
        self.test_classwise.reset()
        probs = self.test_probs.compute().cpu().numpy()  # collective: every rank calls it
        labels = self.test_labels.compute().cpu().numpy().astype(np.int64)
        self.test_probs.reset()
        self.test_labels.reset()
        order = gathered_order(len(probs), self.trainer.world_size)
        sorted_probs, sorted_labels = np.empty_like(probs), np.empty_like(labels)
        sorted_probs[order], sorted_labels[order] = probs, labels
        dm = self.trainer.datamodule
        ids = dm.sample_ids("test") if hasattr(dm, "sample_ids") else None
        limited = self.trainer.fast_dev_run or self.trainer.limit_test_batches != 1.0
        if ids is not None and limited:  # the first batches of each rank: the dataset's first n images
            ids = ids[: len(sorted_labels)]
        if ids is not None and len(ids) != len(sorted_labels):
            raise RuntimeError(f"{len(ids)} test sample ids for {len(sorted_labels)} test predictions")
        # in memory for the callbacks that write and evaluate them (callbacks.predictions, .evaluation)
        self.test_predictions = {"probs": sorted_probs, "labels": sorted_labels, "ids": ids}

    def configure_optimizers(self):
        layer_decay = self.hparams.layer_decay
        num_layers = len(self.net.encoder.blocks) if layer_decay is not None else None
        groups = param_groups(self.net, self.hparams.lr, self.hparams.weight_decay, layer_decay, num_layers)
        optimizer = make_optimizer(self.optimizer_factory, groups)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval},
        }
