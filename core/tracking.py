"""The W&B mode of a run (the ``${wandb_mode:}`` resolver of ``logger=wandb``), and the W&B run
of a command that reads or writes artifacts (``wandb_job``: evaluate / export / predict)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

WANDB_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline",
               "disabled": "disabled"}


def wandb_mode() -> str:
    """``online``, ``offline`` or ``disabled``, decided by W&B's own configuration and never by
    a prompt: ``WANDB_MODE`` when set; else ``online`` when W&B finds credentials for its
    server (``WANDB_API_KEY``, ``wandb login`` / the netrc entry of ``WANDB_BASE_URL``'s host,
    an identity token, the ``api_key`` setting), else ``offline``."""
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env:
        if env not in WANDB_MODES:
            raise ValueError(f"WANDB_MODE={env!r} is invalid; allowed: {sorted(WANDB_MODES)}")
        return WANDB_MODES[env]
    import wandb

    settings = wandb.setup().settings
    silent = settings.silent
    settings.silent = True  # else login asks the server for the user name (retries when unreachable)
    try:
        return "online" if wandb.login(prompt=False, verify=False) else "offline"
    finally:
        settings.silent = silent


@contextmanager
def wandb_job(job_type: str, project: str | None = None, entity: str | None = None,
              folder: str | os.PathLike | None = None) -> Iterator[object]:
    """A W&B run of ``job_type`` (project ``medmae`` unless given) in ``wandb_mode()`` (offline
    without credentials, never a prompt), finished when the block ends; its files under ``folder``
    (W&B's default: ``./wandb``). Artifacts used (``use_artifact``) and logged through it show as
    the job's inputs and outputs in W&B's lineage."""
    import wandb

    run = wandb.init(project=project or "medmae", entity=entity, job_type=job_type, mode=wandb_mode(),
                     dir=None if folder is None else str(folder))
    try:
        yield run
    finally:
        run.finish()
