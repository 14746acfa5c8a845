"""A CSV logger that keeps ``metrics.csv`` across a resume instead of deleting it."""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


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
    same run folder (``ckpt_path=<run>/checkpoints/last.ckpt``, or a pipeline re-run)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumableWriter(log_dir=self.log_dir)
        return self._experiment
