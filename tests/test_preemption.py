"""Preemption: a training stopped by a signal (SLURM's notice before the time limit, a
preemption's SIGTERM) and started again in its folder (as a requeue does) ends exactly where an
uninterrupted run does; a preempted sweep trial is retried in its own folder from its
checkpoint; the SLURM presets ask for the signal and the requeue."""

from __future__ import annotations

import csv
import json
import logging
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch

from callbacks.preemption import PREEMPTED_EXIT, Preempted, SignalFlag
from pipeline.cli import train
from tests.helpers import REPO, compose_cfg, tiny_overrides

COMMON = ["experiment=quickstart", "trainer.max_epochs=3", "data.batch_size=16", "data.augment.hflip=true",
          "data.sampler=oversample"]


def _state(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def _rows(run: Path) -> list[dict]:
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _assert_same_run(resumed: Path, straight: Path) -> None:
    """Same final weights, metrics and per-step log as the uninterrupted run (tests/test_resume.py's rule)."""
    a, b = _state(resumed), _state(straight)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (resumed, straight))
    for key in ("test/acc", "test/auc", "val/auc_best", "objective"):
        assert ma[key] == mb[key] or (math.isnan(ma[key]) and math.isnan(mb[key])), key
    assert [(r["step"], r.get("val/loss")) for r in _rows(resumed)] == [(r["step"], r.get("val/loss")) for r in _rows(straight)]


@pytest.mark.slow  # three training processes, ~40 s on 2 cores
def test_a_training_process_signalled_mid_epoch_and_started_again_ends_as_an_uninterrupted_one(data_root, tmp_path):
    common = [*COMMON, *tiny_overrides(data_root)]
    straight, preempted = tmp_path / "straight", tmp_path / "preempted"

    def cli(run: Path, extra: list[str]) -> list[str]:
        return [sys.executable, str(REPO / "train.py"), *common, f"hydra.run.dir={run}", *extra]

    assert subprocess.run(cli(straight, []), capture_output=True, text=True, cwd=tmp_path, timeout=600).returncode == 0
    steps = int(_rows(straight)[-1]["step"]) // 3  # per epoch
    marker = tmp_path / "paused"
    pause = ["+callbacks.pause._target_=tests.helpers.PauseAtStep", f"+callbacks.pause.step={steps + steps // 2}",
             f"+callbacks.pause.marker={marker}"]
    proc = subprocess.Popen(cli(preempted, pause), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists(), proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGUSR1)  # SLURM's notice, sent to the real process in its second epoch
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == PREEMPTED_EXIT, err[-2000:]
    assert "preempted (SIGUSR1): training stopped cleanly" in err and f"hydra.run.dir={preempted}" in err
    assert "Traceback" not in err + out
    assert (preempted / "checkpoints" / "last.ckpt").is_file() and not (preempted / "metrics.json").exists()

    again = subprocess.run(cli(preempted, []), capture_output=True, text=True, cwd=tmp_path, timeout=600)  # the requeue
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resuming the unfinished run" in (preempted / "train.log").read_text()
    _assert_same_run(preempted, straight)


@pytest.mark.slow  # three short trainings in-process (~10 s)
def test_sigterm_in_process_stops_cleanly_and_a_second_start_resumes_to_the_same_model(data_root, tmp_path, caplog):
    overrides = [*COMMON, *tiny_overrides(data_root), "trainer.max_epochs=2", "~callbacks.evaluation",
                 "data.batch_size=32"]
    straight = tmp_path / "straight"
    train(compose_cfg(overrides, straight))
    steps = int(_rows(straight)[-1]["step"]) // 2
    run = tmp_path / "preempted"
    before = signal.getsignal(signal.SIGTERM)
    signalled = [*overrides, "+callbacks.signal._target_=tests.helpers.SignalAtStep",
                 f"+callbacks.signal.step={steps + 1}", "+callbacks.signal.signal_name=SIGTERM"]
    with pytest.raises(Preempted, match="stopped on SIGTERM"):
        train(compose_cfg(signalled, run))
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers are given back
    assert not (run / "metrics.json").exists()
    assert int(_rows(run)[-1]["step"]) < 2 * steps  # it stopped in the second epoch
    with caplog.at_level(logging.INFO, logger="train"):
        train(compose_cfg(overrides, run))  # started again in its folder: resumes from checkpoints/last.ckpt
    assert f"Resuming the unfinished run in {run} from {run / 'checkpoints' / 'last.ckpt'}" in caplog.text
    _assert_same_run(run, straight)


@pytest.mark.slow  # three short trainings in-process (~25 s)
def test_a_preempted_sweep_trial_is_retried_in_its_own_folder_from_its_checkpoint(data_root, tmp_path, caplog):
    from pipeline.sweep import run_sweep

    lr = 0.003
    training = [*COMMON, *tiny_overrides(data_root), "trainer.max_epochs=2", "~callbacks.evaluation"]
    straight = tmp_path / "straight"
    reference = train(compose_cfg([*training, f"model.lr={lr}"], straight))
    steps = int(_rows(straight)[-1]["step"]) // 2
    sweep_dir = tmp_path / "sweep"
    common = [*training, f"sweep.dir={sweep_dir}", "sweep.study_name=quickstart", "sweep.n_trials=1",
              "sweep.prune=false", f"++sweep.params={{model.lr: {{type: categorical, choices: [{lr}]}}}}"]
    with pytest.raises(Preempted):  # SLURM's notice in the trial's second epoch
        run_sweep([*common, "+callbacks.signal._target_=tests.helpers.SignalAtStep", f"+callbacks.signal.step={steps + 1}"])
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    trials = optuna.load_study(study_name="quickstart", storage=storage).trials
    assert trials[0].state == optuna.trial.TrialState.FAIL and trials[0].user_attrs["fail_reason"] == "preempted (SIGUSR1)"
    assert trials[1].state == optuna.trial.TrialState.WAITING
    assert trials[1].user_attrs["run_dir"] == str(sweep_dir / "trial_000")
    last = sweep_dir / "trial_000" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 0  # the first epoch's checkpoint

    with caplog.at_level(logging.INFO, logger="train"):
        run_sweep(common)  # the worker started again (requeued): it claims the retry
    assert f"Resuming the unfinished run in {sweep_dir / 'trial_000'}" in caplog.text
    trials = optuna.load_study(study_name="quickstart", storage=storage).trials
    retry = trials[1]
    assert retry.state == optuna.trial.TrialState.COMPLETE and retry.user_attrs["retry_of"] == 0
    assert retry.params == trials[0].params == {"model.lr": lr}
    assert sorted(p.name for p in sweep_dir.glob("trial_*")) == ["trial_000"]  # no new folder
    assert retry.value == reference["objective"]  # continued, not restarted: as the uninterrupted run
    _assert_same_run(sweep_dir / "trial_000", straight)


def test_a_stale_trial_retry_keeps_its_folder(tmp_path):
    import logging

    from pipeline.sweep_workers import fail_stale_trials, make_storage

    storage, _ = make_storage("sqlite", tmp_path)
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2)})
    trial.set_user_attr("run_dir", str(tmp_path / "trial_000"))
    trial.set_user_attr("heartbeat", 0.0)
    assert fail_stale_trials(study, storage, grace_period=1, max_retry=1, log=logging.getLogger()) == [0]
    assert study.trials[1].user_attrs == {"retry_of": 0, "retries": 1, "run_dir": str(tmp_path / "trial_000")}
    assert study.trials[1].system_attrs["fixed_params"] == study.trials[0].params  # enqueued with its values


def test_after_a_clean_stop_the_scheduler_gets_the_job_back(monkeypatch, capsys):
    from pipeline import preemption

    asked = []
    flag = SignalFlag("SIGUSR2", {"SIGUSR2": lambda signum, frame: asked.append(("submitit", signum))})
    with pytest.raises(SystemExit) as stop:
        preemption.exit_preempted(Preempted(flag), "run it again")
    assert stop.value.code == PREEMPTED_EXIT == 75 and asked == [("submitit", signal.SIGUSR2)]  # submitit requeues
    assert "preempted (SIGUSR2): training stopped cleanly; run it again" in capsys.readouterr().err

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setattr(preemption.subprocess, "run", lambda cmd, **kw: asked.append(cmd) or
                        subprocess.CompletedProcess(cmd, 0, "", ""))
    with pytest.raises(SystemExit):
        preemption.exit_preempted(Preempted(SignalFlag("SIGUSR1", {"SIGUSR1": signal.SIG_DFL})), "run it again")
    assert asked[-1] == ["scontrol", "requeue", "4242"] and "SLURM job 4242 requeued" in capsys.readouterr().err


def test_the_slurm_preset_asks_for_the_signal_before_the_time_limit_and_requeues(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string

    cfg = compose_cfg(["hydra/launcher=slurm"], tmp_path)
    launcher = cfg.hydra.launcher
    assert launcher.signal_delay_s == 300 and launcher.max_num_timeout == 10
    assert "SlurmLauncher" in launcher._target_
    sbatch = _make_sbatch_string(command="python train.py", folder=str(tmp_path), signal_delay_s=launcher.signal_delay_s)
    assert "#SBATCH --signal=USR2@300" in sbatch
    multinode = compose_cfg(["hydra/launcher=slurm_multinode", "trainer=ddp"], tmp_path).hydra.launcher
    assert multinode.signal_delay_s == 300 and multinode.max_num_timeout == 10
