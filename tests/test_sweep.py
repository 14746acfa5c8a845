"""sweep.py: Optuna (>= 4) with SQLite storage, resume, pruning and the monitor's direction."""

from __future__ import annotations

import csv
import json

import optuna
import pytest

from pipeline.sweep import default_space, final_monitor, run_sweep
from tests.helpers import compose_cfg, tiny_overrides


def _trials(sweep_dir) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="quickstart", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    return study.trials


@pytest.mark.slow
def test_sweep_resumes_from_its_sqlite_file_and_prunes(data_root, tmp_path):
    sweep_dir = tmp_path / "sweep"
    common = ["experiment=quickstart", *tiny_overrides(data_root), "trainer.max_epochs=4", "data.batch_size=32",
              f"sweep.dir={sweep_dir}", "sweep.startup_trials=1", "sweep.pruner_warmup_epochs=0",
              "~callbacks.evaluation"]
    good = "sweep.params={model.lr: {type: float, low: 0.002, high: 0.004}}"
    run_sweep([*common, good, "sweep.n_trials=2", "sweep.prune=false"])
    assert [t.state for t in _trials(sweep_dir)] == [optuna.trial.TrialState.COMPLETE] * 2
    # Resumed from optuna.db: only the missing trials run. They get learning rates that cannot
    # learn, so their epoch-0 val/auc is below the median of the finished ones: pruned.
    hopeless = "sweep.params={model.lr: {type: float, low: 1.0e-9, high: 2.0e-9}}"
    run_sweep([*common, hopeless, "sweep.n_trials=3"])
    trials = _trials(sweep_dir)
    assert [t.number for t in trials] == [0, 1, 2]
    assert trials[2].state == optuna.trial.TrialState.PRUNED and list(trials[2].intermediate_values) == [0]
    with open(sweep_dir / "trial_002" / "csv" / "metrics.csv", newline="") as f:
        assert {r["epoch"] for r in csv.DictReader(f) if r.get("val/auc")} == {"0"}  # stopped after epoch 0
    assert all(len(t.intermediate_values) == 4 for t in trials[:2])  # one report per epoch
    study = optuna.load_study(study_name="quickstart", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE  # quickstart monitors val/auc, mode max
    assert study.best_trial.number in (0, 1) and (sweep_dir / "best.json").is_file()


@pytest.mark.slow
def test_resumed_sweep_draws_new_values_and_retries_the_trial_of_a_killed_worker(data_root, tmp_path):
    sweep_dir = tmp_path / "sweep"
    # One validation batch of 64 images: debug=fdr's 4 images can all be one class (AUC undefined)
    common = ["experiment=quickstart", *tiny_overrides(data_root), "debug=fdr", "data.eval_batch_size=64",
              f"sweep.dir={sweep_dir}", "sweep.study_name=quickstart", "sweep.startup_trials=10", "~callbacks.evaluation",
              "sweep.grace_period=2", "sweep.heartbeat_interval=0.5"]
    run_sweep([*common, "sweep.n_trials=2"])
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    study = optuna.load_study(study_name="quickstart", storage=storage)
    killed = study.ask()  # a trial whose worker died: RUNNING, its last heartbeat long ago
    killed.suggest_float("model.lr", 1e-4, 1e-2, log=True)  # the experiment's space
    killed.set_user_attr("heartbeat", 0.0)
    run_sweep([*common, "sweep.n_trials=4"])
    trials = optuna.load_study(study_name="quickstart", storage=storage).trials
    assert trials[2].state == optuna.trial.TrialState.FAIL and "no heartbeat" in trials[2].user_attrs["fail_reason"]
    retry = trials[3]  # the killed trial, enqueued again with its parameters, ran first
    assert retry.user_attrs["retry_of"] == 2 and retry.params == trials[2].params
    values = [t.params["model.lr"] for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(values) == 4 and len(set(values)) == 4  # the resumed sampler does not replay trials 0 and 1


def test_only_silent_trials_are_failed_and_retried_at_most_max_retry_times(tmp_path):
    import logging
    import time

    from pipeline.sweep_workers import fail_stale_trials, make_storage

    storage, _ = make_storage("journal", tmp_path)
    study = optuna.create_study(study_name="s", storage=storage)
    silent, live, exhausted = study.ask(), study.ask(), study.ask()
    for trial, beat in ((silent, time.time() - 100), (live, time.time()), (exhausted, time.time() - 100)):
        trial.suggest_float("x", 0, 1)
        trial.set_user_attr("heartbeat", beat)
    exhausted.set_user_attr("retries", 1)
    assert fail_stale_trials(study, storage, grace_period=50, max_retry=1, log=logging.getLogger()) == [0, 2]
    states = [t.state for t in study.trials]
    running, fail, waiting = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL,
                              optuna.trial.TrialState.WAITING)
    assert states == [fail, running, fail, waiting]  # one retry: of trial 0, not of the exhausted trial 2
    assert study.trials[3].params == {} and study.trials[3].user_attrs == {"retry_of": 0, "retries": 1}
    assert study.trials[3].system_attrs["fixed_params"] == {"x": study.trials[0].params["x"]}


@pytest.mark.slow
def test_two_workers_on_one_journal_study_run_each_trial_exactly_once(data_root, tmp_path):
    """Two sweep.py processes (as on two nodes sharing a folder) on one journal-file study."""
    import subprocess
    import sys

    from tests.helpers import REPO

    sweep_dir = tmp_path / "sweep"
    args = ["experiment=quickstart", *tiny_overrides(data_root), "debug=fdr", "data.eval_batch_size=64",
            f"sweep.dir={sweep_dir}", "sweep.storage=journal", "sweep.study_name=quickstart", "sweep.n_trials=5", "~callbacks.evaluation",
            "sweep.heartbeat_interval=1"]
    workers = [subprocess.Popen([sys.executable, str(REPO / "sweep.py"), *args, f"sweep.worker={i}"], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    storage = optuna.storages.journal.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(sweep_dir / "optuna.journal")))
    trials = optuna.load_study(study_name="quickstart", storage=storage).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 5  # exactly the budget, none lost
    assert sorted(p.name for p in sweep_dir.glob("trial_*")) == [f"trial_{i:03d}" for i in range(5)]
    assert all((sweep_dir / f"trial_{i:03d}" / "metrics.json").is_file() for i in range(5))  # each ran once
    print("trials per worker:", {w: sum(t.user_attrs["worker"] == w for t in trials)
                                 for w in {t.user_attrs["worker"] for t in trials}})


def test_sweep_refuses_multi_device_trials(data_root, tmp_path):
    with pytest.raises(ValueError, match="use one device"):
        run_sweep(["experiment=quickstart", *tiny_overrides(data_root), "trainer=ddp_sim", f"sweep.dir={tmp_path}"])


def test_default_space_and_direction_follow_the_experiment(tmp_path):
    single = compose_cfg(["experiment=cnn_derma"], tmp_path)
    assert set(default_space(single)) == {"model.lr", "model.weight_decay"}
    pipeline = compose_cfg(["experiment=mae_small"], tmp_path)
    assert set(default_space(pipeline)) == {f"stages.{s}.model.{k}" for s in ("pretrain", "finetune")
                                            for k in ("lr", "weight_decay")}
    loss = compose_cfg(["experiment=cnn_derma", "monitor.metric=val/loss", "monitor.mode=min"], tmp_path)
    assert final_monitor(loss).mode == "min"


def test_sweep_refuses_a_key_that_the_experiment_lacks(data_root, tmp_path):
    with pytest.raises(ValueError, match="'model.momentum' is not in this experiment's config"):
        run_sweep(["experiment=quickstart", *tiny_overrides(data_root), f"sweep.dir={tmp_path}",
                   "~sweep.params", "+sweep.params={model.momentum: {type: float, low: 0.1, high: 0.9}}"])


def test_wandb_sweep_example_drives_train_py_with_keys_the_experiment_has(tmp_path):
    import yaml
    from omegaconf import OmegaConf

    from tests.helpers import REPO

    sweep = yaml.safe_load((REPO / "examples" / "wandb_sweep.yaml").read_text())
    assert sweep["program"] == "train.py" and "${args_no_hyphens}" in sweep["command"]
    experiment = next(a for a in sweep["command"] if a.startswith("experiment="))
    cfg = compose_cfg([experiment, "logger=many"], tmp_path)
    for key in sweep["parameters"]:
        assert OmegaConf.select(cfg, key, default="missing") != "missing", key
    assert (sweep["metric"]["goal"] == "maximize") == (cfg.monitor.mode == "max")


def _diverging_common(data_root, sweep_dir) -> list[str]:
    """One short epoch; Adam at lr 1e30 gives a NaN loss at step 1 (FloatingPointError)."""
    return ["experiment=quickstart", *tiny_overrides(data_root), "trainer.max_epochs=1",
            "trainer.limit_train_batches=3", "trainer.limit_val_batches=1", f"sweep.dir={sweep_dir}",
            "sweep.prune=false", "~callbacks.evaluation"]


@pytest.mark.slow
def test_a_sweep_where_every_trial_diverges_fails_them_and_ends(data_root, tmp_path):
    sweep_dir = tmp_path / "sweep"
    run_sweep([*_diverging_common(data_root, sweep_dir), "sweep.n_trials=2", "sweep.max_failures=3",
               "sweep.params={model.lr: {type: float, low: 1.0e29, high: 1.0e30, log: true}}"])
    trials = _trials(sweep_dir)
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] * 3  # stopped by max_failures
    assert all(t.user_attrs["fail_reason"].startswith("FloatingPointError: Training loss is nan") for t in trials)
    summary = json.loads((sweep_dir / "best.json").read_text())
    assert summary["trials"]["fail"] == 3 and "best_value" not in summary
    assert [f["trial"] for f in summary["failed"]] == ["trial_000", "trial_001", "trial_002"]
    assert "Lower the learning rate" in summary["failed"][0]["reason"]


@pytest.mark.slow
def test_diverging_trials_do_not_end_a_sweep_or_use_its_budget(data_root, tmp_path):
    sweep_dir = tmp_path / "sweep"
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    sweep_dir.mkdir()
    study = optuna.create_study(study_name="quickstart", storage=storage, direction="maximize")
    for lr in (1e30, 3e-3, 1e30, 3e-3):  # diverges, learns, diverges, learns
        study.enqueue_trial({"model.lr": lr})
    run_sweep([*_diverging_common(data_root, sweep_dir), "sweep.n_trials=2", "sweep.max_failures=5",
               "sweep.params={model.lr: {type: float, low: 1.0e-3, high: 1.0e30, log: true}}"])
    states = [t.state for t in _trials(sweep_dir)]
    fail, complete = optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE
    assert states == [fail, complete, fail, complete]  # the budget (2) counts complete trials only
    summary = json.loads((sweep_dir / "best.json").read_text())
    assert summary["best_trial"] in ("trial_001", "trial_003") and len(summary["failed"]) == 2


def test_an_experiment_sets_its_space_and_sampler_and_pruner_are_chosen_by_group(data_root, tmp_path):
    cfg = compose_cfg(["experiment=quickstart"], tmp_path)
    assert dict(cfg.sweep.params) == {"model.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
    assert cfg.sweep.sampler._target_ == "optuna.samplers.TPESampler"  # the defaults
    assert cfg.sweep.pruner._target_ == "optuna.pruners.MedianPruner"
    study = run_sweep(["experiment=quickstart", *tiny_overrides(data_root), "debug=fdr", f"sweep.dir={tmp_path}",
                       "sweep/sampler=random", "sweep/pruner=hyperband", "sweep.n_trials=1", "~callbacks.evaluation"])
    assert isinstance(study.sampler, optuna.samplers.RandomSampler)
    assert isinstance(study.pruner, optuna.pruners.HyperbandPruner)
    assert list(study.trials[0].params) == ["model.lr"]  # the experiment's space
    cmaes = compose_cfg(["experiment=quickstart", "sweep/sampler=cmaes", "sweep/pruner=none"], tmp_path)
    assert cmaes.sweep.sampler._target_.endswith("CmaEsSampler") and cmaes.sweep.pruner._target_.endswith("NopPruner")
