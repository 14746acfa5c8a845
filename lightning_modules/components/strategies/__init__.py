"""Masking strategies of ``MAEPretrain`` (``model.masking``), one per file; ``build_strategy``
makes one from its name and ``model.masking_args``.

MLO-MAE's learned masking (``mlo``) needs its three-level optimisation and lives in its own
LightningModule (``model=mlo_mae``); it draws its masks with the same top-k and ``MaskDraw``.
"""

from __future__ import annotations

import inspect

from lightning_modules.components.strategies.attmask import AttentionMasking
from lightning_modules.components.strategies.automae import AdversarialMasking
from lightning_modules.components.strategies.base import MaskDraw, MaskingStrategy
from lightning_modules.components.strategies.block import BlockMasking
from lightning_modules.components.strategies.hpm import HardPatchMining
from lightning_modules.components.strategies.random import RandomMasking

STRATEGIES = {"random": RandomMasking, "block": BlockMasking, "hpm": HardPatchMining, "attmask": AttentionMasking,
              "automae": AdversarialMasking}
ALL_MASKINGS = (*STRATEGIES, "mlo")


def build_strategy(name: str, mae, **options) -> MaskingStrategy:
    """The strategy ``name`` for the ``MaskedAutoencoder`` ``mae`` with its ``options``
    (``model.masking_args``; each class's docstring lists them)."""
    if name == "mlo":
        raise ValueError("model.masking=mlo is MLO-MAE's learned masking, trained by multi-level optimisation in "
                         "its own module: use model=mlo_mae (e.g. experiment=mlo_mae_small or mlo_mae_derma)")
    if name not in STRATEGIES:
        raise ValueError(f"model.masking={name!r} is invalid; allowed: {list(STRATEGIES)} (and mlo via model=mlo_mae)")
    cls = STRATEGIES[name]
    given = {"num_patches": mae.encoder.num_patches, "mask_ratio": mae.mask_ratio, "encoder": mae.encoder,
             "decoder": mae.decoder, "embed_dim": mae.encoder.embed_dim}
    params = inspect.signature(cls).parameters
    unknown = sorted(set(options) - set(params) | set(options) & set(given))
    if unknown:
        allowed = sorted(set(params) - set(given))
        raise ValueError(f"model.masking_args {unknown} do not apply to model.masking={name!r}; allowed: {allowed}")
    return cls(**{k: v for k, v in given.items() if k in params}, **options)


__all__ = ["ALL_MASKINGS", "STRATEGIES", "MaskDraw", "MaskingStrategy", "build_strategy"]
