"""Parameter groups (no weight decay on biases/norms/tokens, layer-wise lr decay) and schedules."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from lightning_modules.components.speed import fused_kwargs

OptimizerFactory = Callable[..., torch.optim.Optimizer]  # partial taking ``params`` (groups with lr / weight_decay)
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]  # partial taking ``optimizer``

NO_DECAY_NAMES = ("cls_token", "mask_token", "pos_embed")


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, norm weights (1-D tensors) and learned tokens/position embeddings."""
    return param.ndim <= 1 or any(token in name for token in NO_DECAY_NAMES)


def param_groups(
    model: nn.Module, lr: float, weight_decay: float, layer_decay: float | None = None,
    num_layers: int | None = None,
) -> list[dict]:
    """Optimizer groups with their own ``lr`` and ``weight_decay``.

    With ``layer_decay`` (a ViT with ``encoder.blocks``): the lr of layer i is
    ``lr * layer_decay ** (num_layers + 1 - i)``, where layer 0 is the patch embedding,
    CLS token and position embedding, layer j + 1 is block j, and the final norm and head
    are layer num_layers + 1 (full lr). Each group's ``lr`` is set explicitly, so
    schedulers scale it (schedulers ignore custom keys such as ``lr_scale``).
    """
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = 0 if layer_decay is None else vit_layer_id(name, num_layers)
        decay = not no_weight_decay(name, p)
        key = (layer, decay)
        if key not in groups:
            scale = 1.0 if layer_decay is None else layer_decay ** (num_layers + 1 - layer)
            groups[key] = {"params": [], "lr": lr * scale, "weight_decay": weight_decay if decay else 0.0,
                           "layer": layer}
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def vit_layer_id(name: str, num_layers: int) -> int:
    """Layer index of a ViT parameter for layer-wise lr decay (see ``param_groups``)."""
    if any(k in name for k in ("patch_embed", "cls_token", "pos_embed")):
        return 0
    if ".blocks." in f".{name}":
        return int(name.split("blocks.")[1].split(".")[0]) + 1
    return num_layers + 1


def cosine_with_warmup(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 over ``warmup_steps``, then cosine decay to ``min_lr_ratio`` x each
    group's initial lr at ``total_steps``. Step it once per optimizer step (or per epoch, with
    both counts in epochs). A warmup longer than the run ends one step before its end, so the
    peak lr is always reached."""
    if total_steps is None or total_steps < 1 or warmup_steps < 0:
        raise ValueError(f"invalid schedule: warmup_steps={warmup_steps}, total_steps={total_steps} (a cosine "
                         "schedule needs a finite trainer.max_epochs)")
    warmup_steps = min(warmup_steps, total_steps - 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def check_optimizer(optimizer: OptimizerFactory, key: str = "model.optimizer") -> None:
    """The rates live beside the optimiser (``model.lr``, ``model.weight_decay``: every parameter
    group needs them); a partial that sets them itself would be silently overridden."""
    misplaced = sorted({"lr", "weight_decay"} & set(getattr(optimizer, "keywords", {})))
    if misplaced:
        raise ValueError(f"{key}.{misplaced[0]} is not read: the rates are model.lr and model.weight_decay (one "
                         "convention for every model); move the value there")


def make_optimizer(optimizer: OptimizerFactory, groups: list[dict]) -> torch.optim.Optimizer:
    """``optimizer`` over parameter groups (each with its ``lr`` and ``weight_decay``), fused on CUDA."""
    return optimizer(params=groups, **fused_kwargs(optimizer, groups))


def adamw_for_mae() -> OptimizerFactory:
    """MAE's optimiser (He et al.): AdamW with betas (0.9, 0.95)."""
    return partial(torch.optim.AdamW, betas=(0.9, 0.95))
