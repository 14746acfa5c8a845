"""The W&B mode of a run (the ``${wandb_mode:}`` resolver of ``logger=wandb``)."""

from __future__ import annotations

import os

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
