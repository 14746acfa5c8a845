"""Knowledge distillation (DerMAE's last step): a small student learns from a frozen,
fine-tuned classifier (the teacher) and from the labels.

    loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, y)

The teacher sees the same augmented batch as the student. Everything else (metrics, the
``eval/`` folder, predictions, checkpoint selection) is the ``Classifier``'s.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from core.checkpoints import load_classifier, run_config
from lightning_modules.classifier import Classifier
from lightning_modules.components.losses import distillation_kl
from lightning_modules.metrics import MULTI_LABEL, probabilities

# What the teacher's inputs must share with the student's: one batch serves both.
SHARED_PREPROCESSING = ("normalization", "img_size", "in_chans")


class Distillation(Classifier):
    """A ``Classifier`` whose training loss distils ``teacher_ckpt``.

    Args:
        net: the student (any timm model, our ViT or the CNN).
        teacher_ckpt: a classifier checkpoint of this project (its run folder's config.yaml
            builds the network); frozen, eval mode, never saved in the student's checkpoint.
        alpha: weight of the soft-target term, in [0, 1] (1 = teacher only, 0 = labels only).
        temperature: softening temperature T > 0.
        Others: as ``Classifier`` (mixup is not supported).
    """

    def __init__(self, net: nn.Module, teacher_ckpt: str, alpha: float = 0.5, temperature: float = 4.0,
                 **classifier_kwargs) -> None:
        if not 0 <= alpha <= 1 or temperature <= 0:
            raise ValueError(f"model.alpha={alpha} / model.temperature={temperature} are invalid; "
                             "allowed: alpha in [0, 1], temperature > 0")
        if classifier_kwargs.get("mixup"):
            raise ValueError("model.mixup is not supported with distillation (the teacher's targets are per image)")
        super().__init__(net, **classifier_kwargs)
        if self.task == MULTI_LABEL:
            raise ValueError("distillation needs a single-label task (softmax teacher targets)")
        path = Path(teacher_ckpt)
        teacher_cfg = run_config(path)
        k = self.hparams.num_classes
        if teacher_cfg.model.get("num_classes") != k:
            raise ValueError(f"model.teacher_ckpt={teacher_ckpt} predicts {teacher_cfg.model.get('num_classes')} classes "
                             f"but the data has {k}; distil on the dataset the teacher was trained for")
        self.teacher_data = teacher_cfg.data
        teacher = load_classifier(path, k)
        self._teacher = [teacher.net.eval().requires_grad_(False)]  # a list: not a submodule, not saved

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.trainer.datamodule
        if dm is None:
            return
        differ = {k: (self.teacher_data.get(k), getattr(dm, k)) for k in SHARED_PREPROCESSING
                  if self.teacher_data.get(k) is not None and self.teacher_data.get(k) != getattr(dm, k)}
        if differ:
            detail = ", ".join(f"data.{k}: teacher {t!r} vs student {s!r}" for k, (t, s) in differ.items())
            raise ValueError(f"the teacher was trained on other inputs ({detail}); the teacher and the student share "
                             "each batch, so set the student's data config to the teacher's")

    def on_fit_start(self) -> None:
        self.teacher.to(self.device).eval()

    def training_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch[0], batch[1]
        logits = self(x)
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        soft = distillation_kl(logits, teacher_logits, self.hparams.temperature)
        hard = self.criterion(logits, y)
        alpha = self.hparams.alpha
        loss = alpha * soft + (1 - alpha) * hard
        if not torch.isfinite(loss):
            raise FloatingPointError(f"distillation loss is {loss.item()} at step {self.global_step}; lower model.lr")
        probs = probabilities(logits.detach().float(), self.task)
        self.train_metrics.update(probs, y)
        # train/loss: the labels' cross-entropy, the same quantity as val/loss (the learning curves
        # put them on one axis); train/kd_loss: what is optimised, train/kd_soft: its KL term.
        self.log_dict({"train/loss": hard, "train/kd_loss": loss, "train/kd_soft": soft}, on_step=False,
                      on_epoch=True, batch_size=len(y))
        return {"loss": loss, "probs": probs}
