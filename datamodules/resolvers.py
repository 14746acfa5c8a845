"""OmegaConf resolvers so configs can read dataset metadata from ``medmnist.INFO``.

``${medmnist_num_classes:dermamnist}`` -> 7, ``${medmnist_in_chans:pneumoniamnist,true}`` -> 3,
``${medmnist_task:pneumoniamnist}`` -> "binary-class".
"""

from __future__ import annotations

from omegaconf import OmegaConf

from datamodules.medmnist_files import medmnist_info


def _in_chans(flag: str, as_rgb: bool = False) -> int:
    return 3 if as_rgb else int(medmnist_info(flag)["n_channels"])


def register_resolvers() -> None:
    """Register the resolvers once (idempotent)."""
    resolvers = {
        "medmnist_num_classes": lambda flag: len(medmnist_info(flag)["label"]),
        "medmnist_in_chans": _in_chans,
        "medmnist_task": lambda flag: medmnist_info(flag)["task"],
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
