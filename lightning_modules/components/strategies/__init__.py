"""Masking strategies of ``MAEPretrain`` (``model.masking``), one per file, each with its options
(a frozen dataclass): ``masking_options`` reads the group ``model.masking`` (a name, or a mapping
with ``name`` and that strategy's options), ``build_strategy`` makes the strategy.

MLO-MAE's learned masking (``mlo``) needs its three-level optimisation and lives in its own
LightningModule (``model=mlo_mae``); it draws its masks with the same top-k and ``MaskDraw``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from lightning_modules.components.strategies.adversarial import (
    AdversarialMasking,
    AdversarialOptions,
)
from lightning_modules.components.strategies.attmask import AttentionMasking, AttMaskOptions
from lightning_modules.components.strategies.automae import AutoMAEMasking, AutoMAEOptions
from lightning_modules.components.strategies.base import MaskDraw, MaskingStrategy
from lightning_modules.components.strategies.block import BlockMasking, BlockOptions
from lightning_modules.components.strategies.hpm import HardPatchMining, HPMOptions
from lightning_modules.components.strategies.options import StrategyOptions
from lightning_modules.components.strategies.random import RandomMasking, RandomOptions
from lightning_modules.components.strategies.schedules import TrainingClock

OPTIONS: dict[str, type[StrategyOptions]] = {o.name: o for o in (RandomOptions, BlockOptions, HPMOptions, AttMaskOptions,
                                                                  AutoMAEOptions, AdversarialOptions)}
STRATEGIES: dict[str, type[MaskingStrategy]] = {"random": RandomMasking, "block": BlockMasking, "hpm": HardPatchMining,
                                                "attmask": AttentionMasking, "automae": AutoMAEMasking,
                                                "adversarial": AdversarialMasking}
ALL_MASKINGS = (*STRATEGIES, "mlo")
MLO_HINT = ("model.masking=mlo is MLO-MAE's learned masking, trained by multi-level optimisation in its own module: "
            "use model=mlo_mae (e.g. experiment=mlo_mae_small or mlo_mae_derma)")


def masking_options(value: str | Mapping | StrategyOptions | None) -> StrategyOptions:
    """The options of ``model.masking``: a strategy's name (its published defaults), a mapping
    ``{name: ..., <option>: ...}`` (conf/model/masking/<name>.yaml), or options already built.
    A wrong name or option is one error naming the key and what is allowed."""
    if isinstance(value, StrategyOptions):
        return value
    if value is None or isinstance(value, str):
        name, given = value or "random", {}
    elif isinstance(value, Mapping):
        given = dict(value)
        name = given.pop("name", None)
        if name is None:
            raise ValueError(f"model.masking={value!r} has no name; set model.masking.name (one of {list(OPTIONS)}) "
                             "or choose the group: model.masking=<name>")
    else:
        raise ValueError(f"model.masking={value!r} is invalid: a strategy name ({list(OPTIONS)}) or a mapping "
                         "with its name and options")
    if name == "mlo":
        raise ValueError(MLO_HINT)
    if name not in OPTIONS:
        raise ValueError(f"model.masking={name!r} is invalid; allowed: {list(OPTIONS)} (and mlo via model=mlo_mae)")
    kind = OPTIONS[name]
    known = [f.name for f in fields(kind)]
    if unknown := sorted(set(given) - set(known)):
        raise ValueError(f"model.masking has no option {unknown} for model.masking={name!r}; allowed: {known}")
    return kind(**given)


def build_strategy(masking: str | Mapping | StrategyOptions | None, mae, **options: Any) -> MaskingStrategy:
    """The strategy of ``masking`` (see ``masking_options``; ``options`` add to a name or mapping)
    for the ``MaskedAutoencoder`` ``mae``."""
    if options:
        if isinstance(masking, StrategyOptions):
            masking = masking.as_config()
        base = {"name": masking or "random"} if masking is None or isinstance(masking, str) else dict(masking)
        masking = {**base, **options}
    built = masking_options(masking)
    return STRATEGIES[built.name](mae, built)


__all__ = ["ALL_MASKINGS", "OPTIONS", "STRATEGIES", "MaskDraw", "MaskingStrategy", "StrategyOptions", "TrainingClock",
           "build_strategy", "masking_options"]
