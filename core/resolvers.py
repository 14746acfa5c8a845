"""Config resolvers of the machine and the session a run starts in, and ``register`` for every
module of resolvers (``datamodules.resolvers`` adds the data's, and its ``register_resolvers``
registers both: what the entry points call).

``${on_gpu:${trainer.accelerator}}`` and ``${loader_workers:${trainer.accelerator},${trainer.devices}}``
give the data defaults of GPU runs (on-device data, pinned memory, worker processes for the CPU
path); ``${matmul_precision:${trainer.accelerator}}`` TF32 on GPUs only; ``${wandb_mode:}`` the W&B
mode (``core.tracking``); ``${cwd:}`` the folder the run was launched from.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from omegaconf import OmegaConf

from core.tracking import wandb_mode

GPU_ACCELERATORS = ("gpu", "cuda")


def on_gpu(accelerator) -> bool:
    """True for ``trainer.accelerator`` gpu / cuda (``auto`` stays on the CPU defaults)."""
    return str(accelerator).lower() in GPU_ACCELERATORS


def loader_workers(accelerator, devices) -> int:
    """DataLoader workers per process: 0 on CPU (the model needs the cores); on GPUs the
    machine's cores shared by the processes, one left for each main process, at most 8."""
    if not on_gpu(accelerator):
        return 0
    if isinstance(devices, int) and devices > 0:
        processes = devices
    elif isinstance(devices, (list, tuple)) or hasattr(devices, "__len__") and not isinstance(devices, str):
        processes = max(1, len(devices))
    else:  # "auto" / -1: every visible GPU
        import torch

        processes = max(1, torch.cuda.device_count())
    return max(1, min(8, (os.cpu_count() or 2) // processes - 1))


def matmul_precision(accelerator) -> str:
    """``torch.set_float32_matmul_precision``: ``high`` (TF32) on GPUs, ``highest`` elsewhere."""
    return "high" if on_gpu(accelerator) else "highest"


RESOLVERS: dict[str, Callable] = {"on_gpu": on_gpu, "loader_workers": loader_workers,
                                  "matmul_precision": matmul_precision, "wandb_mode": wandb_mode, "cwd": os.getcwd}


def register(resolvers: Mapping[str, Callable]) -> None:
    """Register each resolver not registered yet (idempotent)."""
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
