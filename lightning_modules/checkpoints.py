"""One loader of trained classifiers: the model a checkpoint's run built, with its weights,
from the checkpoint alone (its stored config; ``core.config.run_config``)."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from torchmetrics import Metric

from core.config import CheckpointError, read_checkpoint, run_config


def load_classifier(ckpt: str | Path, num_classes: int):
    """The Classifier of ``ckpt`` in eval mode; its class count must equal ``num_classes``.

    A distilled student loads as a plain Classifier (its teacher is not needed to predict).
    """
    cfg = run_config(ckpt)
    target = str(cfg.model.get("_target_", ""))
    if target.endswith("Distillation"):
        cfg.model._target_ = "lightning_modules.classifier.Classifier"
        for key in ("teacher_ckpt", "alpha", "temperature"):
            cfg.model.pop(key, None)
    elif not target.endswith("Classifier"):
        raise CheckpointError(f"{ckpt} is not a classifier checkpoint ({cfg.model.get('_target_')})")
    if cfg.model.num_classes != num_classes:
        raise CheckpointError(
            f"{ckpt} predicts {cfg.model.num_classes} classes but the dataset has {num_classes}; "
            "evaluate it on the dataset it was trained for"
        )
    optimizer = cfg.model.get("optimizer") or {}
    for key in ("lr", "weight_decay"):  # runs saved before model.lr / model.weight_decay existed
        if key in optimizer:
            cfg.model[key] = cfg.model.get(key, optimizer.pop(key))
    net = cfg.model.get("net", {})
    # the full weights come from the checkpoint below: never re-fetch or re-read initial weights
    for key, off in (("pretrained_ckpt", None), ("pretrained", False), ("pretrained_file", None)):
        if key in net:
            net[key] = off
    model = instantiate(cfg.model, _convert_="all")
    missing, unexpected = model.load_state_dict(read_checkpoint(ckpt)["state_dict"], strict=False)
    metric_states = tuple(f"{name}." for name, m in model.named_modules() if isinstance(m, Metric))
    missing = [k for k in missing if not k.startswith(metric_states)]  # e.g. best-so-far trackers
    if missing or unexpected:
        raise CheckpointError(f"{ckpt} does not fit its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()
