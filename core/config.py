"""The run config of a checkpoint: stored inside it by ``callbacks.run_config`` (so a
checkpoint copied anywhere, or downloaded as an artifact, carries what built it), else the
``config.yaml`` two folders above it (``<run>/checkpoints/x.ckpt``: runs saved before configs
were stored)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from core.io import atomic_path

CHECKPOINT_KEY = "medmae"  # checkpoint[CHECKPOINT_KEY] = {"config": resolved run config, "data": identity}


class CheckpointError(ValueError):
    """A checkpoint cannot be used as asked (missing, unreadable, another model or dataset)."""


def read_checkpoint(ckpt: str | Path) -> dict:
    """The checkpoint's dict (tensors on the CPU), or a CheckpointError naming the file."""
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise CheckpointError(f"{ckpt}: no such checkpoint file")
    try:
        return torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a checkpoint, or pickled objects weights_only refuses
        raise CheckpointError(f"{ckpt} cannot be read as a checkpoint ({type(err).__name__}: {err})") from err


def stored_identity(ckpt: str | Path) -> dict | None:
    """``{"config": ..., "data": ..., "preprocessing": ..., "decision": ...}`` stored in the
    checkpoint, or None (an older run)."""
    return read_checkpoint(ckpt).get(CHECKPOINT_KEY)


def store_in_checkpoint(ckpt: str | Path, key: str, value) -> None:
    """Set ``checkpoint["medmae"][key] = value`` in the file, atomically (a crash leaves the old
    file); e.g. the decision rule tuned on validation after the test."""
    checkpoint = read_checkpoint(ckpt)
    checkpoint.setdefault(CHECKPOINT_KEY, {})[key] = value
    with atomic_path(ckpt) as tmp:
        torch.save(checkpoint, tmp)


def run_config(ckpt: str | Path) -> DictConfig:
    """The resolved config of the run that wrote ``ckpt`` (see the module docstring)."""
    stored = stored_identity(ckpt)
    if stored is not None:
        return OmegaConf.create(stored["config"])
    path = Path(ckpt).resolve().parent.parent / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{ckpt} stores no config (saved before medmae stored configs in checkpoints) and "
                              f"there is no config.yaml in {path.parent}; keep the checkpoint in its run folder")
    return OmegaConf.load(path)
