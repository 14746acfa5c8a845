"""Multi-stage pipelines (pretrain -> fine-tune -> test): each stage's config, its run
folder, ``init_from`` checkpoints, ``links`` between stages, ``stage.json`` markers and resume
from ``last.ckpt``. Stages train by default; ``kind: synthesize`` samples a diffusion model
into a synthetic training set and ``kind: export`` exports a classifier (DerMAE)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from evaluation.report import write_pipeline_report
from pipeline.run import is_global_zero, run_stage, with_every_stage

log = logging.getLogger("train")
STAGE_KEYS = ("init_from", "links", "kind")  # read by run_pipeline, not part of a stage's config
KINDS = ("train", "synthesize", "export")


def init_checkpoint(name: str, init: DictConfig, done: dict[str, dict]) -> str:
    """The checkpoint ``stages.<name>.init_from`` names: ``{stage: S, ckpt: best|last}`` (a stage
    that ran before) or ``{ckpt: <file>}`` (any checkpoint, e.g. one copied or downloaded alone)."""
    ckpt, source = str(init.get("ckpt", "best")), init.get("stage")
    if ckpt not in ("best", "last"):
        if source is not None:
            raise ValueError(f"stages.{name}.init_from names both stage {source!r} and the file {ckpt!r}; "
                             "set stage=null to start from the file")
        if not Path(ckpt).is_file():
            raise FileNotFoundError(f"stages.{name}.init_from.ckpt={ckpt}: no such checkpoint file")
        return ckpt
    if source not in done:
        raise ValueError(f"stages.{name}.init_from.stage={source!r} has not run before {name!r}")
    key = f"{ckpt}_checkpoint"
    if not done[source].get(key):
        raise RuntimeError(f"stage {source!r} saved no {key}; cannot initialise {name!r}")
    return done[source][key]


def apply_links(scfg: DictConfig, name: str, links: DictConfig | None, done: dict[str, dict]) -> None:
    """Set config keys from earlier stages' results: ``links: {data.synthetic_train:
    synthesize.synthetic_train, model.teacher_ckpt: finetune.best_checkpoint}``."""
    for key, ref in (links or {}).items():
        source, _, result = str(ref).partition(".")
        if source not in done:
            raise ValueError(f"stages.{name}.links.{key}={ref!r}: stage {source!r} has not run before {name!r}")
        value = done[source].get(result)
        if value is None:
            raise RuntimeError(f"stage {source!r} gave no {result!r}; cannot set {key} of stage {name!r}")
        OmegaConf.update(scfg, key, value, force_add=True)


def stage_order(cfg: DictConfig) -> list[str]:
    """The stages to run, in ``cfg.stage_order`` when given (Hydra puts stages that come from
    the defaults list before the others), else in the order of ``cfg.stages``; null stages
    are skipped."""
    order = list(cfg.get("stage_order") or cfg.stages.keys())
    unknown = [n for n in order if n not in cfg.stages]
    left_out = [n for n in cfg.stages if n not in order and cfg.stages[n] is not None]
    if unknown or left_out:
        raise ValueError(f"stage_order={order} does not match stages {list(cfg.stages)}: unknown {unknown}, "
                         f"left out {left_out}")
    return [n for n in order if cfg.stages[n] is not None]


def training_stages(cfg: DictConfig) -> list[str]:
    """The stages that train a model (kind ``train``), in running order."""
    return [n for n in stage_order(cfg) if cfg.stages[n].get("kind", "train") == "train"]


def wait_for_marker(marker: Path, name: str, timeout_s: float = 24 * 3600, poll_s: float = 2.0) -> dict:
    """The results of stage ``name`` that global rank zero runs alone (other DDP ranks wait)."""
    deadline = time.monotonic() + timeout_s
    while not marker.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"stage {name!r}: rank zero wrote no {marker} within {timeout_s:.0f} s")
        time.sleep(poll_s)
    return json.loads(marker.read_text())


def run_step(kind: str, scfg: DictConfig, callbacks: list | None) -> dict:
    """Run one stage of ``kind`` in ``scfg.paths.output_dir``; returns its results."""
    if kind == "train":
        return run_stage(scfg, callbacks)
    scfg = with_every_stage(scfg)
    L.seed_everything(scfg.seed)
    out = Path(scfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(scfg, resolve=True))
    if kind == "synthesize":
        from synthesis.synthesize import run_synthesis_stage

        return run_synthesis_stage(scfg)
    from deploy.export import run_export_stage

    return run_export_stage(scfg)


def stage_config(base: DictConfig, stage: DictConfig, stage_dir: Path) -> DictConfig:
    """The config of one pipeline stage: ``base`` with the stage's nodes applied.

    A stage node that has a ``_target_`` (a model, a datamodule) replaces the base node;
    any other node is merged into it. Everything the stage writes goes to ``stage_dir``.
    """
    cfg = base.copy()
    OmegaConf.set_struct(cfg, False)
    for key, value in stage.items():
        if key in STAGE_KEYS:
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
    stage's checkpoint (``model.net.pretrained_ckpt``), or with ``{ckpt: <file>}`` from a file. A finished stage leaves
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
    names = stage_order(cfg)
    for name in names:
        stage = cfg.stages[name]
        stage_dir = output_dir / name
        marker = stage_dir / "stage.json"
        if marker.is_file():
            log.info("Stage %r already finished (%s): skipped.", name, marker)
            done[name] = json.loads(marker.read_text())
        else:
            kind = stage.get("kind", "train")
            if kind not in KINDS:
                raise ValueError(f"stages.{name}.kind={kind!r} is invalid; allowed: {list(KINDS)}")
            scfg = stage_config(base, stage, stage_dir)
            apply_links(scfg, name, stage.get("links"), done)
            if stage.get("init_from"):
                scfg.model.net.pretrained_ckpt = init_checkpoint(name, stage.init_from, done)
            last = stage_dir / "checkpoints" / "last.ckpt"
            if kind == "train" and last.is_file() and not scfg.get("ckpt_path"):
                log.info("Resuming stage %r from %s", name, last)
                scfg.ckpt_path = str(last)
            if kind != "train" and not is_global_zero():  # one process samples / exports; DDP ranks wait
                done[name] = wait_for_marker(marker, name)
            else:
                done[name] = run_step(kind, scfg, last_stage_callbacks if name == names[-1] else None)
                if is_global_zero():
                    marker.write_text(json.dumps(done[name], indent=2, sort_keys=True))
        metrics.update({f"{name}/{k}": v for k, v in done[name].items()})
        metrics.update(done[name])
    if is_global_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        write_pipeline_report(output_dir, names, cfg.task_name)
    return metrics
