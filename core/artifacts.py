"""Checkpoints named by reference: a file path, or a W&B model artifact
(``wandb:ENTITY/PROJECT/NAME:VERSION``, as ``logger.wandb.log_model=true`` uploads them),
fetched through the W&B run of the command that uses it (``artifact_job``) so that W&B's
lineage shows which job read which model."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from core.config import CheckpointError
from core.tracking import wandb_job, wandb_mode

WANDB_PREFIX = "wandb:"


def artifact_cache() -> Path:
    """Where downloaded artifacts are kept: ``$MEDMAE_ARTIFACTS`` or ``~/.cache/medmae/artifacts``."""
    return Path(os.environ.get("MEDMAE_ARTIFACTS", "~/.cache/medmae/artifacts")).expanduser()


def is_wandb(ref: str | os.PathLike) -> bool:
    return str(ref).startswith(WANDB_PREFIX)


def wandb_name(ref: str | os.PathLike) -> str:
    """``ENTITY/PROJECT/NAME:VERSION`` of a ``wandb:`` reference, or a CheckpointError showing the form."""
    text = str(ref)
    name = text[len(WANDB_PREFIX):]
    if name.count("/") != 2 or ":" not in name.rsplit("/", 1)[1]:
        raise CheckpointError(f"{text}: expected wandb:ENTITY/PROJECT/NAME:VERSION (e.g. wandb:me/medmae/model-abc123:v0)")
    return name


def wandb_home(refs) -> tuple[str, str] | None:
    """(entity, project) of the first W&B reference among ``refs`` (where a job that uses it is
    logged), or None when none is one."""
    for ref in refs:
        if is_wandb(ref):
            entity, project, _ = wandb_name(ref).split("/")
            return entity, project
    return None


@contextmanager
def artifact_job(refs: Iterable[str | os.PathLike], job_type: str, log: bool = False, project: str | None = None,
                 folder: str | os.PathLike | None = None) -> Iterator[object | None]:
    """The W&B run (``core.tracking.wandb_job``) of a command given ``refs``: in the project of the
    first W&B reference among them (when W&B is online: an offline run cannot fetch an artifact),
    or in ``project`` when the command logs an artifact itself (``log``, online or offline); None
    (no run) otherwise."""
    home = wandb_home(refs)
    if not log and (home is None or wandb_mode() != "online"):
        yield None
        return
    entity, project = home or (None, project)
    with wandb_job(job_type, project, entity, folder) as run:
        yield run


def resolve_checkpoint(ref: str | os.PathLike, run=None) -> Path:
    """The local checkpoint file of ``ref``; a W&B artifact is downloaded first (once).

    With ``run`` (an online W&B run: ``core.tracking.wandb_job``) the artifact is fetched through
    it (``run.use_artifact``), so W&B records it as the run's input (lineage); else through the
    public API. The artifact must hold exactly one ``.ckpt`` file. Checkpoints of this project
    carry their config, so nothing else is needed to evaluate or export them.
    """
    text = str(ref)
    if not is_wandb(text):
        return Path(text)
    name = wandb_name(text)
    try:
        import wandb

        online = run is not None and not (run.offline or run.disabled)  # offline runs cannot fetch
        artifact = run.use_artifact(name, type="model") if online else wandb.Api().artifact(name, type="model")
        folder = Path(artifact.download(root=str(artifact_cache() / name.replace("/", "_").replace(":", "_"))))
    except Exception as err:  # network, credentials, unknown artifact: one message naming the fix
        raise CheckpointError(f"{text}: the W&B artifact could not be downloaded ({type(err).__name__}: {err}); "
                              "check the name, `wandb login` and the network, or pass the .ckpt file") from err
    ckpts = sorted(folder.rglob("*.ckpt"))
    if len(ckpts) != 1:
        raise CheckpointError(f"{text}: the artifact holds {len(ckpts)} .ckpt files in {folder}, expected one")
    return ckpts[0]
