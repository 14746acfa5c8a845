"""Loggers: a CSV logger that keeps ``metrics.csv`` across a resume, the W&B mode, run id
and results artifact, and the data tags of W&B and MLflow runs."""

from __future__ import annotations

import csv
import os
import secrets
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from core.data_identity import identity_tags
from core.io import file_lock


class _ResumableWriter(ExperimentWriter):
    """Appends to an existing ``metrics.csv``. Rows at or after the first step this writer
    logs are dropped from it first: they belong to the interrupted run past its checkpoint
    and are logged again, so every step appears once."""

    def _check_log_dir_exists(self) -> None:  # Lightning's writer deletes the file here
        self._resumed_rows: list[dict] | None = None
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                reader = csv.DictReader(f)
                self._resumed_rows = list(reader)
                self.metrics_keys = sorted(reader.fieldnames or [])

    def save(self) -> None:
        if self._resumed_rows is not None and self.metrics:
            first = min(int(m["step"]) for m in self.metrics)
            kept = [r for r in self._resumed_rows if r.get("step") in (None, "") or int(r["step"]) < first]
            with self._fs.open(self.metrics_file_path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
            self._resumed_rows = None
        super().save()


class ResumableCSVLogger(CSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` whose ``metrics.csv`` survives a resume in the
    same run folder (``ckpt_path=<run>/checkpoints/last.ckpt``, or a pipeline re-run).

    ``resume_from``: the checkpoint the run resumes from (``${ckpt_path}``); None = a fresh run,
    which starts a new ``metrics.csv`` as Lightning's logger does.
    """

    def __init__(self, *args, resume_from: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.resume_from = resume_from

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            writer = _ResumableWriter if self.resume_from else ExperimentWriter
            self._experiment = writer(log_dir=self.log_dir)
        return self._experiment


# ----- Weights & Biases -------------------------------------------------------------------
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


def log_run_artifact(loggers: list, output_dir: Path) -> None:
    """Log the run's results to every W&B logger as one artifact (type ``results``): report.md,
    metrics.json, config.yaml, the predictions tables and everything in ``eval/``."""
    from lightning.pytorch.loggers import WandbLogger

    wandb_loggers = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    if not wandb_loggers:
        return
    import wandb

    files = [output_dir / n for n in ("report.md", "metrics.json", "config.yaml", "splits.csv")]
    files += sorted((output_dir / "predictions").glob("*.csv")) + sorted((output_dir / "eval").glob("*"))
    for lg in wandb_loggers:
        run = lg.experiment
        artifact = wandb.Artifact(f"results-{run.id}", type="results",
                                  description=f"report, metrics, predictions and eval/ of {output_dir.name}")
        for f in files:
            if f.is_file():
                artifact.add_file(str(f), name=f.relative_to(output_dir).as_posix())
        run.log_artifact(artifact)


def log_data_identity(loggers: list, identity: dict | None) -> None:
    """Tag the run with its data (``core.data_identity.identity_tags``): MLflow tags, and W&B
    tags ``data.kind:<kind>``, ``data.fingerprint:<hash>`` and ``synthetic-data`` for synthetic
    data (the identity itself is in the run config as ``data_identity``). Rank zero only."""
    if identity is None:
        return
    from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

    tags = identity_tags(identity)
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            run = lg.experiment
            extra = [f"{k}:{tags[k]}" for k in ("data.kind", "data.fingerprint")]
            extra += ["synthetic-data"] if tags["data.synthetic"] == "true" else []
            run.tags = tuple(dict.fromkeys([*(run.tags or ()), *extra]))
        elif isinstance(lg, MLFlowLogger):
            for key, value in tags.items():
                lg.experiment.set_tag(lg.run_id, key, value)


def prepare_stores(logger_cfg) -> None:
    """Create every SQLite tracking store a logger config names (``tracking_uri:
    sqlite:///<path>``, e.g. MLflow's shared ``logs/mlflow.db``) and its experiment, one process
    at a time: parallel runs of a multirun or a sweep would otherwise race on creating the
    schema and the experiment. Logging to it afterwards is SQLite's own concurrency."""
    for entry in (logger_cfg or {}).values():
        uri = str((entry or {}).get("tracking_uri") or "")
        if not uri.startswith("sqlite:///"):
            continue
        path = Path(uri[len("sqlite:///"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        if "MLFlowLogger" in str(entry.get("_target_", "")):
            try:
                import mlflow
            except ImportError:  # the logger itself names the missing extra
                continue
            with file_lock(path.with_name(path.name + ".lock")):
                client = mlflow.MlflowClient(tracking_uri=uri)  # creates / migrates the schema
                name = entry.get("experiment_name") or "Default"
                if client.get_experiment_by_name(name) is None:
                    client.create_experiment(name)
