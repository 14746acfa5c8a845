"""A pipeline's stage list, and each stage's config.

A pipeline file lists its stages. Each names an ordinary experiment, runnable alone
(``python train.py experiment=mlo_mae_derma/pretrain``), and how it reads from earlier stages::

    stages:
      pretrain: {experiment: mlo_mae_derma/pretrain}
      finetune: {experiment: mlo_mae_derma/finetune, init_from: {stage: pretrain, ckpt: best}}

(``links`` sets config keys from earlier stages' results; ``kind: synthesize | export`` marks a
stage that trains nothing: ``pipeline.stages``.) Each stage is composed once, by Hydra, as
``python train.py experiment=<its experiment> <overrides>`` would be, with the command line's
overrides except the stage list's own (``pipeline.command_line``), its ``stages.<name>.…`` ones
last and without the prefix. Hydra's precedence holds in every stage: the command line wins over
the experiment, and a stage's own override over the others.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.command_line import CARRIED, parse, stage_command_line
from pipeline.compose import compose

log = logging.getLogger("train")


def composed_with(cfg: DictConfig) -> tuple[str, list[str], list[str]]:
    """The primary config's name, the ``hydra.searchpath`` overrides (configs outside ``conf/``)
    and the stages' overrides of pipeline ``cfg``."""
    if "hydra" in cfg:
        hydra_cfg = cfg.hydra
    elif HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
    else:
        raise ValueError("a pipeline's stages are composed by Hydra: compose its config with train.py "
                         "or pipeline.cli.compose_config, not by hand")
    searchpath = [o for o in hydra_cfg.overrides.hydra if o.lstrip("+").startswith("hydra.searchpath")]
    carried = OmegaConf.to_container(cfg[CARRIED]) if CARRIED in cfg else []  # as written: no ${...} resolved
    return hydra_cfg.job.config_name or "train", searchpath, stage_command_line(list(hydra_cfg.overrides.task), carried)


def split_by_stage(overrides: list[str], names: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The overrides for every stage, and each stage's own ``stages.<name>.…`` ones with the
    prefix taken off (``+``, ``++`` and ``~`` kept; a group of one stage,
    ``model/masking@stages.pretrain.model.masking=attmask``, becomes ``model/masking=attmask``).
    Raises ValueError naming a stage the pipeline does not list."""
    common: list[str] = []
    own: dict[str, list[str]] = {n: [] for n in names}
    for line, override in zip(overrides, parse(overrides)):
        package = override.package or ""
        if not (override.key_or_group.startswith("stages.") or package.startswith("stages.")):
            common.append(line)
            continue
        name = (package or override.key_or_group).split(".")[1]
        if name not in own:
            raise ValueError(f"{line}: this pipeline has no stage {name!r} (its stages: {', '.join(names)})")
        body = line.lstrip("~+")
        if package:  # a group for one stage: model/masking@stages.pretrain.model.masking=attmask
            where = package.split(".", 2)[2]
            key = override.key_or_group if where == override.key_or_group.replace("/", ".") else \
                f"{override.key_or_group}@{where}"
            body = f"{key}={body.split('=', 1)[1]}"
        own[name].append(line[: len(line) - len(line.lstrip("~+"))] + body.replace(f"stages.{name}.", "", 1))
    return common, own


def stage_overrides(cfg: DictConfig, name: str) -> tuple[str, list[str]]:
    """The primary config's name and the overrides that compose stage ``name`` of pipeline ``cfg``:
    ``hydra.searchpath`` (configs outside ``conf/``), its experiment, the command line's overrides
    for every stage, then its own."""
    stage = cfg.stages[name]
    experiment = stage.get("experiment") if stage is not None else None
    if not experiment:
        raise ValueError(f"stages.{name} names no experiment: stages.{name}.experiment=<pipeline>/<stage>")
    config_name, searchpath, overrides = composed_with(cfg)
    common, own = split_by_stage(overrides, list(cfg.stages))
    return config_name, [*searchpath, f"experiment={experiment}", *common, *own[name]]


def compose_stage(cfg: DictConfig, name: str, output_dir: str | Path) -> DictConfig:
    """The config of stage ``name`` of pipeline ``cfg`` (see the module docstring), writing to
    ``output_dir``. Raises ValueError naming the stage when its experiment or an override fails."""
    config_name, overrides = stage_overrides(cfg, name)
    experiment = cfg.stages[name].experiment
    try:
        scfg = compose(config_name, overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ValueError(f"stage {name!r} (experiment={experiment}): {err}\nAn override for one stage only "
                         f"names it: stages.{name}.<key>=<value>") from err
    if scfg.get("stages"):
        raise ValueError(f"stages.{name}.experiment={experiment} is a pipeline; a stage names one run's experiment")
    log.info("stage %r: %s", name, " ".join(o for o in overrides if not o.lstrip("+").startswith("hydra.")))
    stage_cfg = OmegaConf.create(OmegaConf.to_container(scfg))  # unlocked: links and init_from set keys later
    stage_cfg.paths.output_dir = str(output_dir)
    return stage_cfg
