"""Multi-stage pipelines (pretrain -> fine-tune -> test): the running order, each stage's run
folder, ``init_from`` checkpoints, ``links`` between stages, ``stage.json`` markers and resume
from ``last.ckpt``. Each stage is an experiment of its own, composed by Hydra with the command
line (``pipeline.stage_config``). Stages train by default; ``kind: synthesize`` samples a
diffusion model into a synthetic training set and ``kind: export`` exports a classifier (DerMAE)."""

from __future__ import annotations

import difflib
import json
import logging
import time
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from core.checkpoints import check_checkpoint_file
from core.io import atomic_write_text
from evaluation.report import write_pipeline_report
from pipeline.run import is_global_zero, run_stage
from pipeline.stage_config import compose_stage

log = logging.getLogger("train")
KINDS = ("train", "synthesize", "export")


INIT_CKPTS = ("best", "last")


def _did_you_mean(value: str) -> str:
    close = difflib.get_close_matches(value, INIT_CKPTS, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def init_stage(name: str, init: DictConfig) -> str | None:
    """The stage ``stages.<name>.init_from`` starts from (None: a checkpoint file, or no stage).
    Checks the value first (before any stage runs): ``ckpt`` is best / last with a stage, else an
    existing, complete checkpoint file; a typo names the allowed values."""
    ckpt, source = str(init.get("ckpt", "best")), init.get("stage")
    key = f"stages.{name}.init_from"
    if source is not None and ckpt not in INIT_CKPTS:
        if Path(ckpt).is_file():
            raise ValueError(f"{key} names both stage {source!r} and the file {ckpt!r}; set stage=null to start from "
                             "the file")
        raise ValueError(f"{key}.ckpt={ckpt!r} is invalid; allowed: best, last (the checkpoints of {key}.stage="
                         f"{source!r}) or, with {key}.stage=null, an existing checkpoint file{_did_you_mean(ckpt)}")
    if source is None and ckpt in INIT_CKPTS:
        raise ValueError(f"{key}.ckpt={ckpt} needs {key}.stage=<the stage whose {ckpt} checkpoint to start from>")
    if source is None:
        if not Path(ckpt).is_file():
            raise FileNotFoundError(f"{key}.ckpt={ckpt}: no such checkpoint file; allowed: best, last (with {key}.stage)"
                                    f" or an existing checkpoint file{_did_you_mean(ckpt)}")
        check_checkpoint_file(ckpt, f"{key}.ckpt")
    return source


def init_checkpoint(name: str, init: DictConfig, done: dict[str, dict]) -> str:
    """The checkpoint ``stages.<name>.init_from`` names: ``{stage: S, ckpt: best|last}`` (a stage
    that ran before) or ``{ckpt: <file>}`` (any checkpoint, e.g. one copied or downloaded alone)."""
    ckpt, source = str(init.get("ckpt", "best")), init_stage(name, init)
    if source is None:  # a checkpoint file, checked by init_stage
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
    """The stages to run (null ones skipped): each after every stage its ``init_from`` and
    ``links`` read from, otherwise in the order of ``cfg.stages``."""
    stages = {n: s for n, s in cfg.stages.items() if s is not None}
    for name, stage in stages.items():
        if not stage.get("experiment"):
            raise ValueError(f"stages.{name} names no experiment: stages.{name}.experiment=<pipeline>/<stage>")
    needs = {n: _reads_from(n, s) for n, s in stages.items()}
    for name, sources in needs.items():
        if missing := sorted(sources - set(stages)):
            raise ValueError(f"stages.{name} reads from stage(s) {missing}, which this pipeline does not run; "
                             f"run them, or point stages.{name}.init_from / links elsewhere")
    order: list[str] = []
    while len(order) < len(stages):
        ready = [n for n in stages if n not in order and needs[n] <= set(order)]
        if not ready:
            raise ValueError(f"stages {[n for n in stages if n not in order]} read from each other in a cycle")
        order.append(ready[0])
    return order


def _reads_from(name: str, stage: DictConfig) -> set[str]:
    sources = {str(ref).partition(".")[0] for ref in (stage.get("links") or {}).values()}
    source = init_stage(name, stage.init_from) if stage.get("init_from") else None
    return sources | ({source} if source is not None else set())


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
    return read_marker(marker, name)


def read_marker(marker: Path, name: str) -> dict:
    """The results a finished stage left in ``stage.json``, or a ValueError naming the file and the fix."""
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{marker} cannot be read ({type(err).__name__}: {err}); delete it to run stage {name!r} "
                         "again (it resumes from its checkpoints/last.ckpt)") from err


def run_step(kind: str, scfg: DictConfig, callbacks: list | None) -> dict:
    """Run one stage of ``kind`` in ``scfg.paths.output_dir``; returns its results."""
    if kind == "train":
        return run_stage(scfg, callbacks)
    L.seed_everything(scfg.seed)
    out = Path(scfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(scfg, resolve=True))
    if kind == "synthesize":
        from synthesis.synthesize import run_synthesis_stage

        return run_synthesis_stage(scfg)
    from deploy.export import run_export_stage

    return run_export_stage(scfg)


def run_pipeline(cfg: DictConfig, last_stage_callbacks: list | None = None) -> dict:
    """Run ``cfg.stages`` in ``stage_order``, each in ``<output_dir>/<stage>/`` with its config
from ``compose_stage`` (all composed before the first stage starts).

    A stage with ``init_from: {stage: NAME, ckpt: best|last}`` starts its network from that
    stage's checkpoint (``model.net.pretrained_ckpt``), or with ``{ckpt: <file>}`` from a file. A finished stage leaves
    ``stage.json`` and is skipped when the pipeline is run again in the same directory
    (``hydra.run.dir=<run dir>``); an interrupted stage resumes from its ``last.ckpt``.
    Returns the last stage's metrics plus every stage's under ``<stage>/<key>``.
    ``last_stage_callbacks`` join the callbacks of the last stage that trains.
    """
    output_dir = Path(cfg.paths.output_dir)
    done: dict[str, dict] = {}
    metrics: dict = {}
    names = stage_order(cfg)
    for name in names:  # kinds first, then every stage's config: a bad override fails before any training
        if (kind := cfg.stages[name].get("kind", "train")) not in KINDS:
            raise ValueError(f"stages.{name}.kind={kind!r} is invalid; allowed: {list(KINDS)}")
    configs = {name: compose_stage(cfg, name, output_dir / name) for name in names}
    last_training = (training_stages(cfg) or [None])[-1]  # a sweep's pruning callback watches its validation metric
    for name in names:
        stage = cfg.stages[name]
        stage_dir = output_dir / name
        marker = stage_dir / "stage.json"
        if marker.is_file():
            log.info("Stage %r already finished (%s): skipped.", name, marker)
            done[name] = read_marker(marker, name)
        else:
            kind = stage.get("kind", "train")
            scfg = configs[name]
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
                done[name] = run_step(kind, scfg, last_stage_callbacks if name == last_training else None)
                if is_global_zero():
                    atomic_write_text(marker, json.dumps(done[name], indent=2, sort_keys=True))  # never half-written
        metrics.update({f"{name}/{k}": v for k, v in done[name].items()})
        metrics.update(done[name])
    if is_global_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        write_pipeline_report(output_dir, names, cfg.task_name)
    return metrics
