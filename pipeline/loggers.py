"""Loggers: a CSV logger that keeps ``metrics.csv`` across a resume, the results artifact and
data tags of the W&B and MLflow loggers of a run (the W&B calls themselves: ``core.tracking``),
and the SQLite tracking stores."""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from core.data_identity import identity_tags
from core.io import file_lock
from core.tracking import log_results_artifact, tag_data


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


# ----- Weights & Biases (core.tracking does the W&B calls) ----------------------------------
def log_run_artifact(loggers: list, output_dir: Path) -> None:
    """Log the run's results to every W&B logger as one artifact (``core.tracking.log_results_artifact``)."""
    from lightning.pytorch.loggers import WandbLogger

    for lg in loggers:
        if isinstance(lg, WandbLogger):
            log_results_artifact(lg.experiment, output_dir)


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
            tag_data(lg.experiment, tags)
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
