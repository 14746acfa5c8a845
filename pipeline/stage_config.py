"""Each pipeline stage's config, composed by Hydra.

A stage is composed from ``conf/train.yaml`` like a single run, with these overrides in order:

1. the run's command-line overrides (``experiment=...``, ``debug=fdr``, ``trainer=cpu``,
   ``seed=1``, a sweep's values), without the ``stages.<name>.…`` ones;
2. the stage's own group choices: ``/model@stages.pretrain.model: mae`` in the experiment's
   defaults becomes ``model=mae`` for stage ``pretrain`` (a stage's choice of a group wins over
   the command line's choice of the same group);
3. ``stage=<name>``: the stage's own keys (``stages.<name>``, as the run composed them) in the
   ``stage`` slot of the defaults list, after the experiment and before ``debug``;
4. the command line's ``stages.<name>.…`` overrides, with the prefix taken off.

So for every stage the stage's keys win over the experiment's, ``debug=...`` wins over the
stage's keys, the command line wins over both, and ``stages.<name>.key=value`` wins over all for
that stage only. Nothing is merged by hand.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.cli import CONF_DIR

log = logging.getLogger("train")
PIPELINE_KEYS = ("init_from", "links", "kind")  # read by the pipeline, not part of a stage's config
STAGE_SLOT = "stage"  # the defaults-list slot of conf/train.yaml that holds a stage's own keys


def composed_with(cfg: DictConfig) -> tuple[str, list[str], dict]:
    """The primary config's name, the command-line overrides (with ``hydra.searchpath``, which
    finds configs outside ``conf/``) and the group choices ``cfg`` was composed with."""
    if "hydra" in cfg:
        hydra_cfg = cfg.hydra
    elif HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
    else:
        raise ValueError("a pipeline's stages are composed by Hydra: compose its config with train.py "
                         "or pipeline.cli.compose_config, not by hand")
    searchpath = [o for o in hydra_cfg.overrides.hydra if o.lstrip("+").startswith("hydra.searchpath")]
    return (hydra_cfg.job.config_name or "train", [*searchpath, *hydra_cfg.overrides.task],
            OmegaConf.to_container(hydra_cfg.runtime.choices))


def split_overrides(overrides: list[str], names: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The overrides for every stage, and each stage's own ``stages.<name>.…`` ones with the
    prefix taken off. An addition (``+``) becomes add-or-set (``++``): the stage's keys, which
    already carry it, are composed in before. Overrides of the pipeline itself
    (``stages.<name>=null``, ``init_from``, ``links``, ``kind``) stay with the pipeline."""
    common: list[str] = []
    own: dict[str, list[str]] = {n: [] for n in names}
    for line, override in zip(overrides, OverridesParser.create().parse_overrides(overrides)):
        key = override.key_or_group
        if not key.startswith("stages."):
            common.append(line)
            continue
        _, name, rest = (key.split(".", 2) + [""])[:3]
        if name not in own or not rest or rest.split(".")[0] in PIPELINE_KEYS:
            continue
        prefix = "~" if override.is_delete() else "++" if override.is_add() or override.is_force_add() else ""
        own[name].append(prefix + line.lstrip("+~").replace(f"stages.{name}.", "", 1))
    return common, own


def stage_choices(choices: dict, name: str) -> list[str]:
    """The stage's group choices as overrides: ``model@stages.<name>.model: mae`` -> ``model=mae``.
    Choices nested in them (``autoencoder@stages.<name>.model.mae``) come again from the chosen
    config's own defaults. Hydra records no choice for a list (``[default, reconstructions]``):
    such a stage's callbacks arrive as its keys, its whole set."""
    overrides = []
    for key, value in choices.items():
        group, _, package = key.partition("@")
        if package == f"stages.{name}.{group}" and value is not None:
            overrides.append(f"{group}={value}")
    return overrides


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    if GlobalHydra.instance().is_initialized():  # inside train.py's @hydra.main
        return compose(config_name, overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name, overrides=overrides)


def compose_stage(cfg: DictConfig, name: str, output_dir: str | Path) -> DictConfig:
    """The config of pipeline stage ``name`` of ``cfg`` (see the module docstring), writing to
    ``output_dir``. Raises ValueError naming the stage when an override does not fit it."""
    config_name, overrides, choices = composed_with(cfg)
    common, own = split_overrides(overrides, list(cfg.stages))
    pinned = stage_choices(choices, name)
    if cfg.stages[name].get("kind", "train") == "train" and not any(p.startswith("model=") for p in pinned):
        raise ValueError(f"stages.{name} trains but chooses no model (an experiment's training stages each "
                         f"name one: /model@stages.{name}.model: <model> in its defaults); is {name!r} a typo?")
    keys = {k: v for k, v in OmegaConf.to_container(cfg.stages[name]).items() if k not in PIPELINE_KEYS}
    ConfigStore.instance().store(group=STAGE_SLOT, name=name, node=keys, package="_global_")
    try:
        scfg = _compose(config_name, [*common, *pinned, f"{STAGE_SLOT}={name}", *own[name]])
    except (HydraException, OmegaConfBaseException) as err:
        raise ValueError(f"stage {name!r}: {err}\nAn override for one stage only names it: "
                         f"stages.{name}.<key>=<value>") from err
    final = OmegaConf.to_container(scfg)
    _announce(name, pinned, keys, common, final)
    stage_cfg = OmegaConf.create(final)  # unlocked: links and init_from set keys later
    stage_cfg.pop("stages", None)
    stage_cfg.paths.output_dir = str(output_dir)
    return stage_cfg


def _announce(name: str, pinned: list[str], keys: dict, common: list[str], final: dict) -> None:
    """Log what the command line (``common``) does not do as a reader may expect: a group choice
    (``model=resnet18``) that does not reach a stage choosing that group itself, and a value that
    replaces one the stage sets itself (``data.label_fraction=0.01`` also reaches a pretraining
    stage that sets 1.0; values compared as written, unresolved)."""
    chosen = dict(p.split("=", 1) for p in pinned)
    for override in OverridesParser.create().parse_overrides(common):
        key = override.key_or_group
        if override.is_delete() or key.startswith("hydra") or "/" in key:
            continue
        if override.package is None and key in chosen:
            log.warning("stage %r chooses %s=%s itself; the command line's %s does not reach it (for that stage: "
                        "%s@stages.%s.%s=...)", name, key, chosen[key], override.input_line, key, name, key)
        own, now = _lookup(keys, key), _lookup(final, key)
        if own is not None and not isinstance(own, (dict, list)) and own != now:
            log.warning("stage %r sets %s=%s; the command line's %s=%s replaces it (to set one stage only: "
                        "stages.%s.%s=...)", name, key, own, key, now, name, key)


def _lookup(node, dotted: str):
    """``node[a][b]`` for ``a.b`` in a plain container, or None."""
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
