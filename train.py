"""Training entry point: ``python train.py experiment=<name> [overrides]``.

``train(cfg)`` is a plain function (used by tests and sweeps); ``main`` is the thin
``@hydra.main`` wrapper whose return value (the best monitored validation metric) is
the sweep objective.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import hydra
import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from callbacks.run_report import write_pipeline_report, write_run_report
from datamodules.medmnist_files import DatasetError
from datamodules.resolvers import register_resolvers
from lightning_modules.manual_optimization import check_manual_optimization_trainer

log = logging.getLogger("train")
CONF_DIR = Path(__file__).resolve().parent / "conf"


def wandb_offline() -> bool:
    """True unless a W&B API key is configured (env var or ~/.netrc), so W&B never prompts."""
    if os.environ.get("WANDB_API_KEY"):
        return False
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return not (netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"))


def _register_all_resolvers() -> None:
    register_resolvers()
    if not OmegaConf.has_resolver("wandb_offline"):
        OmegaConf.register_new_resolver("wandb_offline", wandb_offline)
    if not OmegaConf.has_resolver("cwd"):
        OmegaConf.register_new_resolver("cwd", os.getcwd)


_register_all_resolvers()


def compose_config(overrides: list[str], output_dir: str | os.PathLike) -> DictConfig:
    """Compose ``conf/train.yaml`` as ``python train.py <overrides>`` would, writing to ``output_dir``.

    For tests, benchmarks and notebooks that call ``train(cfg)`` without the CLI.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(Path(output_dir).resolve())
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every entry of a group (callbacks, loggers) that has a ``_target_``."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if isinstance(node, DictConfig) and "_target_" in node]


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _finish_wandb() -> None:
    """Close the W&B run so that each multirun job becomes its own run."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def _test_checkpoint(trainer: L.Trainer, which: str) -> str | None:
    if which not in ("best", "last"):
        raise ValueError(f"test_ckpt={which!r} is invalid; allowed: best, last")
    ckpt_cb = trainer.checkpoint_callback
    if trainer.fast_dev_run or ckpt_cb is None:
        log.warning("No checkpoint was saved (fast_dev_run or no ModelCheckpoint): testing current weights.")
        return None
    path = ckpt_cb.best_model_path if which == "best" else ckpt_cb.last_model_path
    if not path:
        raise RuntimeError(f"No {which} checkpoint was written; check callbacks.model_checkpoint.")
    return path


def run_stage(cfg: DictConfig) -> dict:
    """Fit, then test the checkpoint chosen by ``cfg.monitor``; returns all logged metrics.

    Writes ``config.yaml`` (resolved) and ``metrics.json`` into ``cfg.paths.output_dir``.
    ``objective`` is the best monitored validation value; ``best_checkpoint`` and
    ``last_checkpoint`` are the saved checkpoint paths (None when none was saved).
    """
    start = time.time()
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)

    datamodule: L.LightningDataModule = instantiate(cfg.data, _convert_="all")
    if is_global_zero():  # fail within seconds on missing data, before building the model; other
        datamodule.prepare_data()  # DDP ranks wait for Lightning's prepare_data (local rank 0) instead
    model: L.LightningModule = instantiate(cfg.model, _convert_="all")
    if hasattr(model, "check_precision"):
        model.check_precision(cfg.trainer.get("precision"))
    if not model.automatic_optimization:
        check_manual_optimization_trainer(cfg.trainer.get("gradient_clip_val"), cfg.trainer.get("accumulate_grad_batches", 1))
    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    hparams = OmegaConf.to_container(cfg, resolve=True)
    hparams["git_commit"] = commit = git_commit()
    for lg in loggers:
        lg.log_hyperparams(hparams)

    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        ckpt_cb = trainer.checkpoint_callback
        best = ckpt_cb.best_model_score if ckpt_cb is not None else None
        metrics["objective"] = float(best) if best is not None else metrics.get(cfg.monitor.metric, float("nan"))
        metrics["best_checkpoint"] = (ckpt_cb.best_model_path or None) if ckpt_cb else None
        metrics["last_checkpoint"] = (ckpt_cb.last_model_path or None) if ckpt_cb else None
        if trainer.fast_dev_run:  # ModelCheckpoint is off: save one so later stages can load it
            path = output_dir / "checkpoints" / "fast_dev_run.ckpt"
            trainer.save_checkpoint(path)
            metrics["best_checkpoint"] = metrics["last_checkpoint"] = str(path)
        if cfg.get("test"):
            ckpt_path = _test_checkpoint(trainer, cfg.get("test_ckpt", "best"))
            trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
            metrics["test_checkpoint"] = ckpt_path
    finally:
        _finish_wandb()

    metrics["wall_time_s"] = time.time() - start
    metrics["git_commit"] = commit
    if trainer.is_global_zero:
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        write_run_report(output_dir, cfg, metrics)
    return metrics


def stage_config(base: DictConfig, stage: DictConfig, stage_dir: Path) -> DictConfig:
    """The config of one pipeline stage: ``base`` with the stage's nodes applied.

    A stage node that has a ``_target_`` (a model, a datamodule) replaces the base node;
    any other node is merged into it. Everything the stage writes goes to ``stage_dir``.
    """
    cfg = base.copy()
    OmegaConf.set_struct(cfg, False)
    for key, value in stage.items():
        if key == "init_from":
            continue
        replace = not isinstance(value, DictConfig) or "_target_" in value or key not in cfg
        if replace:
            cfg[key] = value
        else:
            cfg[key] = OmegaConf.merge(cfg[key], value)
    cfg.paths.output_dir = str(stage_dir)
    return cfg


def run_pipeline(cfg: DictConfig) -> dict:
    """Run ``cfg.stages`` in order, each in ``<output_dir>/<stage>/``.

    A stage with ``init_from: {stage: NAME, ckpt: best|last}`` starts its network from that
    stage's checkpoint (``model.net.pretrained_ckpt``). A finished stage leaves
    ``stage.json`` and is skipped when the pipeline is run again in the same directory
    (``hydra.run.dir=<run dir>``); an interrupted stage resumes from its ``last.ckpt``.
    Returns the last stage's metrics plus every stage's under ``<stage>/<key>``.
    """
    output_dir = Path(cfg.paths.output_dir)
    base = cfg.copy()
    OmegaConf.set_struct(base, False)
    del base["stages"]
    done: dict[str, dict] = {}
    metrics: dict = {}
    for name, stage in cfg.stages.items():
        if stage is None:
            continue
        stage_dir = output_dir / name
        marker = stage_dir / "stage.json"
        if marker.is_file():
            log.info("Stage %r already finished (%s): skipped.", name, marker)
            done[name] = json.loads(marker.read_text())
        else:
            scfg = stage_config(base, stage, stage_dir)
            init = stage.get("init_from")
            if init:
                if init.stage not in done:
                    raise ValueError(f"stages.{name}.init_from.stage={init.stage!r} has not run before {name!r}")
                key = f"{init.get('ckpt', 'best')}_checkpoint"
                if not done[init.stage].get(key):
                    raise RuntimeError(f"stage {init.stage!r} saved no {key}; cannot initialise {name!r}")
                scfg.model.net.pretrained_ckpt = done[init.stage][key]
            last = stage_dir / "checkpoints" / "last.ckpt"
            if last.is_file() and not scfg.get("ckpt_path"):
                log.info("Resuming stage %r from %s", name, last)
                scfg.ckpt_path = str(last)
            done[name] = run_stage(scfg)
            if is_global_zero():
                marker.write_text(json.dumps(done[name], indent=2, sort_keys=True))
        metrics.update({f"{name}/{k}": v for k, v in done[name].items()})
        metrics.update(done[name])
    if is_global_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        write_pipeline_report(output_dir, [n for n, s in cfg.stages.items() if s is not None], cfg.task_name)
    return metrics


def is_global_zero() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))) == 0


def train(cfg: DictConfig) -> dict:
    """One training run, or a pipeline when the config declares ``stages``."""
    return run_pipeline(cfg) if cfg.get("stages") else run_stage(cfg)

def dataset_error_in(err: BaseException) -> DatasetError | None:
    """The DatasetError that ``err`` wraps (config resolvers raise inside OmegaConf errors)."""
    while err is not None and not isinstance(err, DatasetError):
        err = err.__cause__ or err.__context__
    return err


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except (DatasetError, InstantiationException, ValueError) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        # One readable message instead of a deep stack trace; HYDRA_FULL_ERROR=1 shows it.
        print(f"\nerror: {dataset_error_in(err) or err}", file=sys.stderr)
        sys.exit(1)
    return metrics.get("objective")


if __name__ == "__main__":
    main()
