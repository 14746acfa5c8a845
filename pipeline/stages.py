"""Multi-stage pipelines (pretrain -> fine-tune -> test): each stage's config, its run
folder, ``init_from`` checkpoints, ``stage.json`` markers and resume from ``last.ckpt``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from evaluation.report import write_pipeline_report
from pipeline.run import is_global_zero, run_stage

log = logging.getLogger("train")


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


def run_pipeline(cfg: DictConfig, last_stage_callbacks: list | None = None) -> dict:
    """Run ``cfg.stages`` in order, each in ``<output_dir>/<stage>/``.

    A stage with ``init_from: {stage: NAME, ckpt: best|last}`` starts its network from that
    stage's checkpoint (``model.net.pretrained_ckpt``). A finished stage leaves
    ``stage.json`` and is skipped when the pipeline is run again in the same directory
    (``hydra.run.dir=<run dir>``); an interrupted stage resumes from its ``last.ckpt``.
    Returns the last stage's metrics plus every stage's under ``<stage>/<key>``.
    ``last_stage_callbacks`` join the last stage's callbacks.
    """
    output_dir = Path(cfg.paths.output_dir)
    base = cfg.copy()
    OmegaConf.set_struct(base, False)
    del base["stages"]
    done: dict[str, dict] = {}
    metrics: dict = {}
    names = [n for n, s in cfg.stages.items() if s is not None]
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
            done[name] = run_stage(scfg, last_stage_callbacks if name == names[-1] else None)
            if is_global_zero():
                marker.write_text(json.dumps(done[name], indent=2, sort_keys=True))
        metrics.update({f"{name}/{k}": v for k, v in done[name].items()})
        metrics.update(done[name])
    if is_global_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        write_pipeline_report(output_dir, names, cfg.task_name)
    return metrics
