"""One training run: build data, model, callbacks, loggers and Trainer from a config, fit,
test the checkpoint the monitor chose, and write ``config.yaml``, ``metrics.json`` and
``report.md`` into the run folder."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from callbacks.monitor_check import MonitorDefined
from callbacks.preemption import Preempted, SignalFlag, StopOnSignal, preemption_signals
from callbacks.run_config import StoreRunConfig, source_identity
from callbacks.seeding import EpochSeeding
from core.checkpoints import check_checkpoint_file
from core.io import atomic_write_text
from core.tracking import finish_active_run, wandb_run_id
from evaluation.report import write_run_report
from lightning_modules.manual_optimization import check_manual_optimization_trainer
from pipeline.loggers import log_data_identity, log_run_artifact, prepare_stores

log = logging.getLogger("train")


def is_global_zero() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0))) == 0


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


def checkpoint_paths(trainer: L.Trainer) -> dict[str, str | None]:
    """``best``: the monitored ModelCheckpoint's best file; ``last``: the file of the one without a
    monitor (``callbacks.last_checkpoint``, rewritten every epoch), else the monitored one's
    ``last_model_path``. None where nothing was saved."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    callbacks = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]
    best = next((cb for cb in callbacks if cb.monitor is not None), None)
    latest = next((cb for cb in callbacks if cb.monitor is None), None)
    return {"best": (best.best_model_path or None) if best else None,
            "last": (latest.best_model_path if latest else best.last_model_path if best else None) or None}


def _test_checkpoint(trainer: L.Trainer, which: str, fast_dev_run_ckpt: str | None = None) -> str | None:
    """The checkpoint to test: ``which`` of ``checkpoint_paths``; under fast_dev_run the one saved
    of the current weights (so the decision rule tuned after the test is stored in a file too)."""
    if which not in ("best", "last"):
        raise ValueError(f"test_ckpt={which!r} is invalid; allowed: best, last")
    if trainer.fast_dev_run and fast_dev_run_ckpt:
        return fast_dev_run_ckpt
    if trainer.fast_dev_run or trainer.checkpoint_callback is None:
        log.warning("No checkpoint was saved (fast_dev_run or no ModelCheckpoint): testing current weights.")
        return None
    path = checkpoint_paths(trainer)[which]
    if not path:
        raise RuntimeError(f"No {which} checkpoint was written; check callbacks.model_checkpoint / last_checkpoint.")
    return path


def resume_unfinished(cfg: DictConfig, output_dir: Path) -> None:
    """Set ``ckpt_path`` to ``<output_dir>/checkpoints/last.ckpt`` when that file exists and the
    run never finished (no ``metrics.json``): a run started again in its folder (a requeued SLURM
    job, a retried sweep trial, a rerun by hand) continues where it stopped. Before the loggers
    are built: the CSV logger appends (``resume_from: ${ckpt_path}``)."""
    last = output_dir / "checkpoints" / "last.ckpt"
    if cfg.get("auto_resume", True) and not cfg.get("ckpt_path") and last.is_file() \
            and not (output_dir / "metrics.json").is_file():
        log.info("Resuming the unfinished run in %s from %s", output_dir, last)
        cfg.ckpt_path = str(last)


def run_stage(cfg: DictConfig, extra_callbacks: list | None = None) -> dict:
    """Fit, then test the checkpoint chosen by ``cfg.monitor``; returns all logged metrics.

    Writes ``config.yaml`` (resolved) and ``metrics.json`` into ``cfg.paths.output_dir``.
    ``objective`` is the best monitored validation value; ``best_checkpoint`` and
    ``last_checkpoint`` are the saved checkpoint paths (None when none was saved);
    ``data_identity`` names the data (``core.data_identity``; None on other DDP ranks).
    ``extra_callbacks`` join the configured callbacks. An unfinished run in the same folder is
    resumed (``resume_unfinished``); a preemption signal during the fit stops it at the next
    batch with ``Preempted`` (``callbacks.preemption``), leaving no metrics.json.
    """
    with preemption_signals() as flag:
        return _run_stage(cfg, extra_callbacks, flag)


def _run_stage(cfg: DictConfig, extra_callbacks: list | None, flag: SignalFlag) -> dict:
    start = time.time()
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.get("float32_matmul_precision") or "highest")
    output_dir = Path(cfg.paths.output_dir)

    datamodule: L.LightningDataModule = instantiate(cfg.data, _convert_="all")
    identity = None
    if is_global_zero():  # fail within seconds on missing data, before building the model; other
        datamodule.prepare_data()  # DDP ranks wait for Lightning's prepare_data (local rank 0) instead
        identity = source_identity(datamodule)  # the file's sha256 / the table's fingerprint, once
    model: L.LightningModule = instantiate(cfg.model, _convert_="all")
    if hasattr(model, "check_precision"):
        model.check_precision(cfg.trainer.get("precision"))
    if not model.automatic_optimization:
        check_manual_optimization_trainer(cfg.trainer.get("gradient_clip_val"), cfg.trainer.get("accumulate_grad_batches", 1))
    callbacks = [*instantiate_group(cfg.get("callbacks")), EpochSeeding(cfg.seed), *(extra_callbacks or []),
                 StopOnSignal(flag)]
    if (cfg.get("monitor") or {}).get("metric"):
        callbacks.append(MonitorDefined(cfg.monitor.metric))  # a NaN monitor stops the run, named
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    # Resuming in this folder continues the same W&B run; a W&B sweep agent assigns its own id.
    if wandb_cfg is not None and wandb_cfg.get("id") is None and not os.environ.get("WANDB_RUN_ID"):
        wandb_cfg.id = wandb_run_id(output_dir)
    if is_global_zero():
        prepare_stores(cfg.get("logger"))
    resume_unfinished(cfg, output_dir)
    if cfg.get("ckpt_path"):  # one message naming the file, not torch.load's traceback from inside fit
        check_checkpoint_file(cfg.ckpt_path, "ckpt_path")
    loggers = instantiate_group(cfg.get("logger"))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    callbacks.append(StoreRunConfig(resolved))  # every checkpoint carries its config
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    hparams = {**resolved, "git_commit": (commit := git_commit()), "data_identity": identity}
    for lg in loggers:
        lg.log_hyperparams(hparams)
    log_data_identity(loggers, identity)

    try:
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        except SIGTERMException:  # Lightning's own stop on SIGTERM (between validation batches)
            raise Preempted(flag) from None
        if flag.name is not None:  # the signal came after the last batch: the run started again tests
            raise Preempted(flag)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        ckpt_cb = trainer.checkpoint_callback
        best = ckpt_cb.best_model_score if ckpt_cb is not None else None
        metrics["objective"] = float(best) if best is not None else metrics.get(cfg.monitor.metric, float("nan"))
        paths = checkpoint_paths(trainer)
        metrics["best_checkpoint"], metrics["last_checkpoint"] = paths["best"], paths["last"]
        if trainer.fast_dev_run:  # ModelCheckpoint is off: save one so later stages can load it
            path = output_dir / "checkpoints" / "fast_dev_run.ckpt"
            trainer.save_checkpoint(path)
            metrics["best_checkpoint"] = metrics["last_checkpoint"] = str(path)
        if cfg.get("test"):
            fdr_ckpt = metrics["best_checkpoint"] if trainer.fast_dev_run else None
            ckpt_path = _test_checkpoint(trainer, cfg.get("test_ckpt", "best"), fdr_ckpt)
            # verbose=False: the per-class table (tens of rows) goes to report.md and the loggers, not the console
            trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
            metrics["test_checkpoint"] = ckpt_path
        metrics["wall_time_s"] = time.time() - start
        metrics["git_commit"] = commit
        metrics["data_identity"] = identity
        if trainer.is_global_zero:
            atomic_write_text(output_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
            write_run_report(output_dir, cfg, metrics)
            log_run_artifact(loggers, output_dir)
    finally:
        finish_active_run()  # each multirun job its own W&B run
    return metrics
