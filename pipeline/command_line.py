"""A pipeline's command line: what its root (the stage list) takes and what its stages take.

    python train.py experiment=mlo_mae_derma debug=fdr model.lr=2e-3 stages.pretrain.trainer.max_epochs=2

Hydra composes a pipeline's root (``conf/pipeline.yaml``: the stage list, the run folder, no run of
its own) with every override of a key or a chosen group that the root has (``seed``, ``task_name``,
``paths.*``, the stage list's own ``stages.<name>.{experiment,init_from,links,kind}``) and every
sweep. The others (``debug=fdr``, ``trainer=cpu``, ``model.lr``, ``stages.pretrain.trainer.max_epochs``:
the stages' groups and keys) travel in the root's ``stage_overrides`` list: Hydra's struct mode
would refuse a key the root lacks, and would compose a run group into the root. Every override
except the stage list's own reaches every stage; one named ``stages.<name>.…`` reaches stage
``<name>`` only, with that prefix taken off (``pipeline.stage_config``).
"""

from __future__ import annotations

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Quote, QuotedString
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.compose import compose

CARRIED = "stage_overrides"  # the root's list of the overrides only the stages have keys for
LISTING_KEYS = ("experiment", "init_from", "links", "kind")  # a stage's entry in the stage list
_ABSENT = object()


def parse(overrides: list[str]) -> list[Override]:
    return OverridesParser.create().parse_overrides(list(overrides))


def of_the_stage_list(override: Override) -> bool:
    """An override of the stage list itself (``experiment=<pipeline>``, ``stages.<name>=null``,
    ``stages.<name>.init_from.ckpt=last``, ...) or the carried list: not passed to the stages."""
    key = override.key_or_group
    if key in ("experiment", CARRIED) or override.is_hydra_override():
        return True
    parts = key.split(".")
    return parts[0] == "stages" and (len(parts) <= 2 or parts[2] in LISTING_KEYS)


def root_overrides(overrides: list[str], config_name: str = "train") -> list[str] | None:
    """The overrides Hydra composes a pipeline's root with: ``overrides`` with the ones the root has
    no key or group for moved into ``+stage_overrides=[...]``. None: ``overrides`` compose no
    pipeline. Raises ValueError for a sweep the root cannot take."""
    try:
        parsed = parse(overrides)
        own = [line for line, o in zip(overrides, parsed) if of_the_stage_list(o) and not o.is_sweep_override()]
        root = compose(config_name, own, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException):
        return None  # Hydra reports the problem when it composes the command line itself
    if not root.get("stages"):
        return None
    taken, carried = [], []
    for line, override in zip(overrides, parsed):
        if of_the_stage_list(override) or _root_has(root, override.key_or_group):
            taken.append(line)
        elif override.is_sweep_override():
            if not (override.is_add() or override.is_force_add()):
                body = line.lstrip("~+")
                hint = f"++{body}" if body.startswith("stages.") else \
                    f"++{body} (every stage) or ++stages.<name>.{body} (one stage)"
                raise ValueError(f"{line}: a multirun of a pipeline sweeps a key its stage list lacks with ++: {hint}")
            taken.append(line)
        else:
            carried.append(line)
    quoted = ",".join(QuotedString(text=line, quote=Quote.single).with_quotes() for line in carried)
    return taken + ([f"+{CARRIED}=[{quoted}]"] if carried else [])


def _root_has(root: DictConfig, key: str) -> bool:
    """Whether ``root`` has ``key``: a key, or a group it has chosen a config of (``conf/pipeline.yaml``
    leaves the run groups ``data``, ``model``, ``trainer``, ... to the stages; ``debug`` is null too)."""
    if root.hydra.runtime.choices.get(key) is not None:
        return True
    found = OmegaConf.select(root, key, default=_ABSENT, throw_on_missing=False, throw_on_resolution_failure=False)
    return found is not _ABSENT


def stage_command_line(task: list[str], carried: list[str]) -> list[str]:
    """Every stage's overrides: the root's (``task``, Hydra's ``overrides.task``) except the stage
    list's own, then the ``carried`` ones."""
    return [line for line, o in zip(task, parse(task)) if not of_the_stage_list(o)] + list(carried)
