"""Weights & Biases, in one place: the mode of a run (the ``${wandb_mode:}`` resolver of
``logger=wandb``), the run of a command that reads or writes artifacts (``wandb_job``,
``artifact_job``: evaluate / export / predict), model artifacts named by reference
(``wandb:ENTITY/PROJECT/NAME:VERSION``) and their download, a run folder's W&B id, what a run
logs besides metrics (its results artifact, its data tags, an exported model) and the end of
the active run. ``wandb`` is imported only where it is used. Lightning's ``WandbLogger`` is
picked out of a trainer's loggers by the callers (``callbacks.images.wandb_loggers``,
``pipeline.loggers``)."""

from __future__ import annotations

import os
import re
import secrets
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

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


# ----- model artifacts named by reference ---------------------------------------------------
WANDB_PREFIX = "wandb:"


def artifact_cache() -> Path:
    """Where downloaded artifacts are kept: ``$MEDMAE_ARTIFACTS`` or ``~/.cache/medmae/artifacts``."""
    return Path(os.environ.get("MEDMAE_ARTIFACTS", "~/.cache/medmae/artifacts")).expanduser()


def is_wandb(ref: str | os.PathLike) -> bool:
    return str(ref).startswith(WANDB_PREFIX)


def wandb_name(ref: str | os.PathLike) -> str:
    """``ENTITY/PROJECT/NAME:VERSION`` of a ``wandb:`` reference, or a ValueError showing the form."""
    text = str(ref)
    name = text[len(WANDB_PREFIX):]
    if name.count("/") != 2 or ":" not in name.rsplit("/", 1)[1]:
        raise ValueError(f"{text}: expected wandb:ENTITY/PROJECT/NAME:VERSION (e.g. wandb:me/medmae/model-abc123:v0)")
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
    """The W&B run (``wandb_job``) of a command given ``refs``: in the project of the first W&B
    reference among them (when W&B is online: an offline run cannot fetch an artifact), or in
    ``project`` when the command logs an artifact itself (``log``, online or offline); None (no
    run) otherwise."""
    home = wandb_home(refs)
    if not log and (home is None or wandb_mode() != "online"):
        yield None
        return
    entity, project = home or (None, project)
    with wandb_job(job_type, project, entity, folder) as run:
        yield run


def download_model_artifact(name: str, run=None) -> Path:
    """The local folder of the model artifact ``name`` (``ENTITY/PROJECT/NAME:VERSION``), downloaded
    into ``artifact_cache()`` once. With ``run`` (an online W&B run) it is fetched through it
    (``run.use_artifact``), so W&B records it as the run's input (lineage); else through the public API."""
    import wandb

    online = run is not None and not (run.offline or run.disabled)  # offline runs cannot fetch
    artifact = run.use_artifact(name, type="model") if online else wandb.Api().artifact(name, type="model")
    return Path(artifact.download(root=str(artifact_cache() / name.replace("/", "_").replace(":", "_"))))


# ----- what a training run logs besides its metrics ------------------------------------------
def wandb_run_id(output_dir: Path) -> str:
    """The W&B run id of the run folder: read from ``wandb_run_id.txt``, or new and written there
    (by rank 0), so that resuming in the same folder continues the same W&B run."""
    path = output_dir / "wandb_run_id.txt"
    if path.is_file():
        return path.read_text().strip()
    run_id = secrets.token_hex(6)  # W&B run ids: lowercase letters and digits
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))) == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(run_id + "\n")
    return run_id


def log_results_artifact(run, output_dir: Path) -> None:
    """Log the run folder's results to the W&B ``run`` as one artifact (type ``results``):
    report.md, metrics.json, config.yaml, splits.csv, the predictions tables and ``eval/``."""
    import wandb

    files = [output_dir / n for n in ("report.md", "metrics.json", "config.yaml", "splits.csv")]
    files += sorted((output_dir / "predictions").glob("*.csv")) + sorted((output_dir / "eval").glob("*"))
    artifact = wandb.Artifact(f"results-{run.id}", type="results",
                              description=f"report, metrics, predictions and eval/ of {output_dir.name}")
    for f in files:
        if f.is_file():
            artifact.add_file(str(f), name=f.relative_to(output_dir).as_posix())
    run.log_artifact(artifact)


def tag_data(run, tags: dict[str, str]) -> None:
    """Add the data's tags (``core.data_identity.identity_tags``) to the W&B ``run``:
    ``data.kind:<kind>``, ``data.fingerprint:<hash>`` and ``synthetic-data`` for synthetic data."""
    extra = [f"{k}:{tags[k]}" for k in ("data.kind", "data.fingerprint")]
    extra += ["synthetic-data"] if tags["data.synthetic"] == "true" else []
    run.tags = tuple(dict.fromkeys([*(run.tags or ()), *extra]))


def log_model_files(run, name: str, files: Iterable[Path], description: str, metadata: dict) -> None:
    """Log ``files`` to the W&B ``run`` as one artifact of type ``model`` named ``name`` (made
    safe for W&B; W&B numbers its versions), with ``metadata``."""
    import wandb

    artifact = wandb.Artifact(re.sub(r"[^A-Za-z0-9._-]", "-", name), type="model", description=description,
                              metadata=metadata)
    for f in files:
        artifact.add_file(str(f), name=Path(f).name)
    run.log_artifact(artifact)


def finish_active_run() -> None:
    """Close the active W&B run (if wandb was imported at all), so that each multirun job
    becomes its own run."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
