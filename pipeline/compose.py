"""Composing configs with Hydra: the config folder, and one ``compose`` call that works inside
``train.py``'s ``@hydra.main`` and outside it (tests, benchmarks, notebooks).

Importing this module imports neither torch nor Lightning.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def _conf_dir() -> Path:
    """The configs next to this code (a checkout), else the installed package ``medmae_conf``."""
    checkout = Path(__file__).resolve().parent.parent / "conf"
    if (checkout / "train.yaml").is_file():
        return checkout
    import medmae_conf

    return Path(medmae_conf.__file__).resolve().parent


CONF_DIR = _conf_dir()


def compose(config_name: str, overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    """``config_name`` (a primary config of ``CONF_DIR``, or of a ``hydra.searchpath`` folder named
    in ``overrides``) composed with ``overrides``, by Hydra, as the command line would compose it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside train.py's @hydra.main, or a test's compose
        return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)
