"""Experiment trackers: the W&B mode from W&B's own configuration, W&B resume and results
artifact, TensorBoard and MLflow loggers. Nothing here touches the network."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from pipeline.cli import train
from tests.helpers import REPO, compose_cfg, tiny_overrides

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # 40 characters, as a W&B key


def _mode_in(tmp_path, **env) -> subprocess.CompletedProcess:
    """``wandb_mode()`` in a fresh process (W&B caches credentials per process)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    environment = {**clean, "NETRC": str(tmp_path / "no_netrc"), "HOME": str(tmp_path / "home"),
                   "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"), **env}
    return subprocess.run([sys.executable, "-c", "from core.tracking import wandb_mode; print(wandb_mode())"],
                          cwd=REPO, env=environment, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "offline"),                                   # nothing configured: offline, no prompt
    ({"WANDB_API_KEY": FAKE_KEY, "WANDB_BASE_URL": "http://localhost"}, "online"),  # no server is asked
    ({"WANDB_BASE_URL": "http://localhost", "netrc": "localhost"}, "online"),  # a self-hosted server
    ({"netrc": "localhost"}, "offline"),  # a key for another host than the one in use (api.wandb.ai)
])
def test_wandb_mode_follows_wandb_credentials(env, expected, tmp_path):
    env = dict(env)
    host = env.pop("netrc", None)
    if host:
        netrc = tmp_path / "netrc"
        netrc.write_text(f"machine {host}\n  login user\n  password {FAKE_KEY}\n")
        netrc.chmod(0o600)
        env["NETRC"] = str(netrc)
    proc = _mode_in(tmp_path, **env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == expected


@pytest.mark.parametrize(("mode", "expected"), [("online", "online"), ("offline", "offline"),
                                                ("disabled", "disabled"), ("dryrun", "offline")])
def test_an_explicit_wandb_mode_wins(mode, expected, monkeypatch):
    from core.tracking import wandb_mode

    monkeypatch.setenv("WANDB_MODE", mode)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)  # offline even with a key, when WANDB_MODE says so
    assert wandb_mode() == expected


def test_invalid_wandb_mode_is_named(monkeypatch):
    from core.tracking import wandb_mode

    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="WANDB_MODE='sometimes' is invalid"):
        wandb_mode()


@pytest.mark.slow
def test_wandb_resume_continues_the_run_and_logs_the_results_artifact(data_root, tmp_path, monkeypatch):
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    overrides = ["experiment=quickstart", *tiny_overrides(data_root), "logger=wandb"]
    train(compose_cfg([*overrides, "trainer.max_epochs=1"], run))
    run_id = (run / "wandb_run_id.txt").read_text().strip()
    train(compose_cfg([*overrides, "trainer.max_epochs=2", f"ckpt_path={run}/checkpoints/last.ckpt"], run))
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(p.name.endswith(f"-{run_id}") for p in offline)  # one W&B run, resumed
    logged = b"".join(p.read_bytes() for p in offline[-1].glob("*.wandb"))
    assert f"results-{run_id}".encode() in logged and b"report.md" in logged
    assert b"synthetic-data" in logged and b"data.kind:synthetic" in logged  # the fixture's data, tagged


@pytest.mark.slow
def test_tensorboard_and_mlflow_loggers_write_under_the_run(data_root, tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    run = tmp_path / "run"
    cfg = compose_cfg(["experiment=quickstart", *tiny_overrides(data_root), "trainer.max_epochs=1",
                       "logger=[csv,tensorboard,mlflow]", f"paths.log_dir={tmp_path / 'logs'}"], run)
    assert cfg.logger.mlflow.tracking_uri == f"sqlite:///{tmp_path / 'logs'}/mlflow.db"  # one store for every run
    train(cfg)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=cfg.logger.mlflow.tracking_uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "quickstart"]
    (logged,) = client.search_runs([experiment.experiment_id])
    csv_rows = [r for r in pd.read_csv(run / "csv" / "metrics.csv").to_dict("records") if r.get("val/auc") == r.get("val/auc")]
    assert logged.data.metrics["val/auc"] == pytest.approx(csv_rows[-1]["val/auc"], abs=1e-6)  # MLflow = the CSV log
    assert "train/loss_epoch" in logged.data.metrics
    assert logged.data.params["model/lr"] == "0.003"
    assert logged.data.tags["data.synthetic"] == "true" and logged.data.tags["data.kind"] == "synthetic"
    assert logged.data.params["data_identity/kind"] == "synthetic"  # the run config names the data too


def test_many_composes_every_tracker(tmp_path):
    cfg = compose_cfg(["experiment=quickstart", "logger=many"], tmp_path)
    assert set(cfg.logger) == {"csv", "wandb", "tensorboard", "mlflow"}
