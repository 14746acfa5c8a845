"""Hyperparameter search with Optuna (>= 4): ``python sweep.py experiment=<name> [overrides]``.

    python sweep.py experiment=cnn_derma sweep.n_trials=30
    python sweep.py experiment=mae_small sweep.dir=logs/mae_small/sweeps/<time>   # resume that study
    optuna-dashboard sqlite:///logs/cnn_derma/sweeps/<time>/optuna.db

Every trial is one ``train(cfg)`` of the composed config plus the trial's sampled overrides,
in ``<sweep dir>/trial_<n>/``. The study lives in ``<sweep dir>/optuna.db`` (SQLite), so a
sweep interrupted at any point resumes with ``sweep.dir=<that folder>`` and the dashboard reads
it. The objective is the run's best monitored validation value (``objective`` in
metrics.json); the direction comes from ``monitor.mode`` (of the last stage for pipelines).
The sampler and pruner are Optuna classes picked by config group (``sweep/sampler=tpe |
random | cmaes``, ``sweep/pruner=median | hyperband | none``); trials are pruned from the
per-epoch validation metric (median rule after ``sweep.pruner_warmup_epochs`` by default). The search space is ``sweep.params``: ``{key: spec}`` with
``spec`` ``{type: float|int, low, high, log}`` or ``{type: categorical, choices: [...]}``;
``null`` means the default space of the experiment (its learning rate and weight decay,
``model.lr`` / ``model.weight_decay``, for every stage of a pipeline).

A trial whose loss diverges (``FloatingPointError``) or that logs no objective ends FAILED,
with its message in the trial's ``fail_reason`` user attribute and in ``best.json``, and the
sweep goes on: it runs until ``sweep.n_trials`` trials are complete or pruned, or until
``sweep.max_failures`` trials of this worker have failed (a space where everything diverges).

Several workers may run one study at once (``sweep_workers``): start the same command with
``sweep.dir=<one folder>`` several times, on one machine (``sweep.storage=sqlite``) or on
nodes sharing the folder (``sweep.storage=journal``) or a database (an RDB URL). Together
they run exactly ``sweep.n_trials`` trials; a killed worker's trial is failed after
``sweep.grace_period`` seconds without a heartbeat and run again by another worker. A retried
trial (a killed worker's, or one stopped by a preemption signal: ``callbacks.preemption``, the
worker exits 75 and is requeued under SLURM) continues in its own ``trial_<n>/`` folder from its
``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime
from pathlib import Path

import optuna
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna_integration import PyTorchLightningPruningCallback

from callbacks.preemption import Preempted
from core.io import file_lock
from pipeline.cli import compose_config, train
from pipeline.preemption import exit_preempted
from pipeline.stage_config import compose_stage
from pipeline.stages import training_stages
from pipeline.sweep_workers import FINISHED, claim, enqueue_retry, heartbeat, make_storage

log = logging.getLogger("sweep")

TRIAL_ERRORS = (FloatingPointError, RuntimeError)  # a diverging or empty trial: FAILED, the sweep goes on
LR = {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}
WEIGHT_DECAY = {"type": "float", "low": 1e-6, "high": 1e-1, "log": True}


def default_space(cfg: DictConfig) -> dict[str, dict]:
    """Learning rate and weight decay of the model, or of each stage's model in a pipeline."""
    prefixes = [f"stages.{n}.model" for n in training_stages(cfg)] if cfg.get("stages") else ["model"]
    return {f"{p}.{k}": spec for p in prefixes for k, spec in (("lr", LR), ("weight_decay", WEIGHT_DECAY))}


def training_stage_configs(cfg: DictConfig) -> dict[str, DictConfig] | None:
    """The config of every training stage of pipeline ``cfg`` in running order (None: not a pipeline)."""
    if not cfg.get("stages"):
        return None
    return {n: compose_stage(cfg, n, Path(cfg.paths.output_dir) / n) for n in training_stages(cfg)}


def final_monitor(cfg: DictConfig, stages: dict[str, DictConfig] | None = None) -> DictConfig:
    """The monitor whose best value is the objective: the last training stage's, else the run's."""
    stages = stages if stages is not None else training_stage_configs(cfg)
    return list(stages.values())[-1].monitor if stages else cfg.monitor


def check_space(cfg: DictConfig, space: dict[str, dict], stages: dict[str, DictConfig] | None = None) -> None:
    """Every key exists in the experiment's config (a pipeline's ``stages.<name>.<key>`` in that
    stage's, another key in every training stage's) and every spec is a valid distribution."""
    for key, spec in space.items():
        if _missing(cfg, key, stages):
            raise ValueError(f"sweep.params key {key!r} is not in this experiment's config; for a pipeline "
                             "name the stage, e.g. stages.finetune.model.lr")
        kind = spec.get("type")
        if kind in ("float", "int"):
            if not spec.get("low") < spec.get("high"):
                raise ValueError(f"sweep.params.{key}: needs low < high, got {dict(spec)}")
        elif kind == "categorical":
            if not spec.get("choices"):
                raise ValueError(f"sweep.params.{key}: categorical needs a non-empty choices list")
        else:
            raise ValueError(f"sweep.params.{key}.type={kind!r} is invalid; allowed: float, int, categorical")


def _missing(cfg: DictConfig, key: str, stages: dict[str, DictConfig] | None) -> bool:
    targets = [cfg] if stages is None else list(stages.values())
    if stages is not None and key.startswith("stages."):
        _, name, key = (key.split(".", 2) + [""])[:3]
        targets = [stages[name]] if name in stages else []
    return not targets or any(OmegaConf.select(t, key, default="__missing__") == "__missing__" for t in targets)


def suggest(trial: optuna.Trial, space: dict[str, dict]) -> list[str]:
    """The trial's values as Hydra overrides (``key=value``)."""
    overrides = []
    for key, spec in space.items():
        if spec["type"] == "float":
            value = trial.suggest_float(key, spec["low"], spec["high"], log=bool(spec.get("log")))
        elif spec["type"] == "int":
            value = trial.suggest_int(key, spec["low"], spec["high"], log=bool(spec.get("log")))
        else:
            value = trial.suggest_categorical(key, list(spec["choices"]))
        overrides.append(f"{key}={value}")
    return overrides


def run_sweep(overrides: list[str]) -> optuna.Study:
    """Compose ``train.yaml`` with ``overrides``, then run trials until the study has
    ``sweep.n_trials`` complete or pruned ones. One sweep process per study: on start, trials
    still marked RUNNING are taken to be left by a killed sweep and marked failed."""
    probe = compose_config(overrides, "/tmp/medmae-sweep-probe")
    settings = probe.sweep
    space = OmegaConf.to_container(settings.params, resolve=True) if settings.params else default_space(probe)
    stages = training_stage_configs(probe)
    check_space(probe, space, stages)
    monitor = final_monitor(probe, stages)
    if monitor.mode not in ("min", "max"):
        raise ValueError(f"monitor.mode={monitor.mode!r} is invalid; allowed: min, max")
    for run in list(stages.values()) if stages else [probe]:
        devices = run.trainer.get("devices", 1)
        if run.trainer.get("strategy") not in (None, "auto") or (isinstance(devices, int) and devices > 1):
            raise ValueError("sweep.py runs each trial in one process: use one device (trainer=cpu or trainer=gpu); "
                             "for multi-GPU trials use W&B Sweeps (examples/wandb_sweep.yaml)")
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
    sweep_dir = Path(settings.dir or Path(probe.paths.log_dir) / probe.task_name / "sweeps" / stamp).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    storage, where = make_storage(settings.get("storage"), sweep_dir)
    name = settings.study_name or probe.task_name
    resumed = name in optuna.study.get_all_study_names(storage)
    previous = optuna.load_study(study_name=name, storage=storage).trials if resumed else []
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        load_if_exists=True,
        direction="maximize" if monitor.mode == "max" else "minimize",
        # a resumed study must not replay the trials it already has: seed by how many there are
        # (and by the worker, so that workers started together do not draw the same values)
        sampler=instantiate(settings.sampler, seed=settings.seed + 1000 * int(settings.get("worker") or 0)
                            + len(previous)),
        pruner=instantiate(settings.pruner) if settings.prune else optuna.pruners.NopPruner(),
    )
    (sweep_dir / "space.json").write_text(json.dumps({"overrides": overrides, "space": space,
                                                      "monitor": OmegaConf.to_container(monitor)}, indent=2))

    def objective(trial: optuna.Trial) -> float:
        # a retry continues in its trial's folder (from its last.ckpt: pipeline.run resumes an unfinished run)
        run_dir = Path(trial.user_attrs.get("run_dir") or sweep_dir / f"trial_{trial.number:03d}")
        trial.set_user_attr("run_dir", str(run_dir))
        cfg = compose_config([*overrides, *suggest(trial, space)], run_dir)
        try:
            # reports the per-epoch monitor (the dashboard's curves); prunes only with a MedianPruner
            metrics = train(cfg, callbacks=[PyTorchLightningPruningCallback(trial, monitor=monitor.metric)])
            value = metrics.get("objective")
            if value is None or value != value:  # NaN: nothing was monitored
                raise RuntimeError(f"trial {trial.number}: no {monitor.metric} was logged ({run_dir})")
        except TRIAL_ERRORS as err:
            trial.set_user_attr("fail_reason", f"{type(err).__name__}: {err}")
            log.warning("trial %d failed (%s: %s); the sweep goes on", trial.number, type(err).__name__, err)
            raise
        return float(value)

    remaining = settings.n_trials - len(study.get_trials(states=FINISHED))
    log.info("Sweep %s: %d trial(s) to run, storage %s", sweep_dir, max(remaining, 0), where)
    run_worker(study, storage, objective, settings, sweep_dir)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    summary = {"sweep_dir": str(sweep_dir), "direction": study.direction.name.lower(),
               "trials": {s.name.lower(): len(study.get_trials(states=(s,))) for s in optuna.trial.TrialState},
               "failed": [{"trial": f"trial_{t.number:03d}", "params": t.params,
                           "reason": t.user_attrs.get("fail_reason", "killed or crashed")}
                          for t in study.get_trials(states=(optuna.trial.TrialState.FAIL,))]}
    if complete:
        summary.update(best_value=study.best_value, best_params=study.best_params,
                       best_trial=f"trial_{study.best_trial.number:03d}")
    (sweep_dir / "best.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return study


def run_worker(study: optuna.Study, storage, objective, settings: DictConfig, sweep_dir: Path) -> None:
    """Claim and run trials until the study has ``sweep.n_trials`` complete or pruned ones
    (every worker of the study together: ``sweep_workers``), or until this worker has seen
    ``sweep.max_failures`` of its trials fail (a space where everything diverges). Failed trials
    (diverged, crashed or killed) do not use up the budget."""
    max_failures = int(settings.get("max_failures") or settings.n_trials)
    grace, interval = float(settings.grace_period), float(settings.heartbeat_interval)
    failed = 0
    while failed < max_failures:
        trial = claim(study, storage, int(settings.n_trials), sweep_dir / ".claim.lock", grace,
                      int(settings.max_retry), log)
        if trial is False:
            return
        if trial is None:  # the rest of the budget is running in other workers: wait for them (or their death)
            time.sleep(min(interval, 5.0))
            continue
        with heartbeat(trial, interval):
            try:
                value = objective(trial)
            except optuna.TrialPruned:
                study.tell(trial, state=optuna.trial.TrialState.PRUNED, skip_if_finished=True)
                continue
            except Preempted as err:  # the worker is being stopped: the trial is retried in its folder
                trial.set_user_attr("fail_reason", f"preempted ({err.flag.name})")
                study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
                with file_lock(sweep_dir / ".claim.lock"):
                    enqueue_retry(study, trial, int(settings.max_retry), log, f"was preempted ({err.flag.name})")
                err.sweep_dir = sweep_dir
                raise
            except TRIAL_ERRORS:
                study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
                failed += 1
                continue
            except BaseException:  # an error of the sweep itself (or Ctrl-C): the trial fails, the worker stops
                study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
                raise
        study.tell(trial, value, skip_if_finished=True)  # (failed as stale meanwhile: its retry stands)
    log.error("%d trials of this worker failed (sweep.max_failures=%d): stopping; see best.json", failed, max_failures)


def main(argv: list[str] | None = None) -> int:
    """``sweep.py`` / ``medmae-sweep``: Hydra-style ``key=value`` overrides only."""
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    bad = [a for a in args if a.startswith("-")]
    if bad:
        print(f"error: sweep.py takes key=value overrides only, got {bad}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    try:
        run_sweep(args)
    except Preempted as err:  # requeue (SLURM) and exit 75; started again, the retry continues its trial
        exit_preempted(err, f"run the same command again with sweep.dir={getattr(err, 'sweep_dir', '<the sweep folder>')}: "
                            "the trial is retried in its folder from its checkpoints/last.ckpt")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
