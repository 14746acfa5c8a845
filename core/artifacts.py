"""Checkpoints named by reference: a file path, or a W&B model artifact
(``wandb:ENTITY/PROJECT/NAME:VERSION``, as ``logger.wandb.log_model=true`` uploads them)."""

from __future__ import annotations

import os
from pathlib import Path

from core.config import CheckpointError

WANDB_PREFIX = "wandb:"


def artifact_cache() -> Path:
    """Where downloaded artifacts are kept: ``$MEDMAE_ARTIFACTS`` or ``~/.cache/medmae/artifacts``."""
    return Path(os.environ.get("MEDMAE_ARTIFACTS", "~/.cache/medmae/artifacts")).expanduser()


def resolve_checkpoint(ref: str | os.PathLike) -> Path:
    """The local checkpoint file of ``ref``; a W&B artifact is downloaded first (once).

    The artifact must hold exactly one ``.ckpt`` file. Checkpoints of this project carry their
    config, so nothing else is needed to evaluate or export them.
    """
    text = str(ref)
    if not text.startswith(WANDB_PREFIX):
        return Path(text)
    name = text[len(WANDB_PREFIX):]
    if name.count("/") != 2 or ":" not in name.rsplit("/", 1)[1]:
        raise CheckpointError(f"{text}: expected wandb:ENTITY/PROJECT/NAME:VERSION (e.g. wandb:me/medmae/model-abc123:v0)")
    try:
        import wandb

        artifact = wandb.Api().artifact(name, type="model")
        folder = Path(artifact.download(root=str(artifact_cache() / name.replace("/", "_").replace(":", "_"))))
    except Exception as err:  # network, credentials, unknown artifact: one message naming the fix
        raise CheckpointError(f"{text}: the W&B artifact could not be downloaded ({type(err).__name__}: {err}); "
                              "check the name, `wandb login` and the network, or pass the .ckpt file") from err
    ckpts = sorted(folder.rglob("*.ckpt"))
    if len(ckpts) != 1:
        raise CheckpointError(f"{text}: the artifact holds {len(ckpts)} .ckpt files in {folder}, expected one")
    return ckpts[0]
