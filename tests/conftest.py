"""Shared fixtures: small synthetic MedMNIST files and Hydra config composition."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import train  # noqa: F401  (registers the OmegaConf resolvers)
from datamodules.synthetic import write_synthetic_medmnist

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
REAL_PNEUMONIA = REPO.parent / "shared" / "data" / "pneumoniamnist.npz"


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A MEDMNIST root with small synthetic dermamnist (RGB, 7 classes) and pneumoniamnist files."""
    root = tmp_path_factory.mktemp("medmnist")
    write_synthetic_medmnist(root / "dermamnist.npz", n_train=210, n_val=70, n_test=70, seed=1)
    write_synthetic_medmnist(
        root / "pneumoniamnist.npz", num_classes=2, channels=1, proportions=[0.26, 0.74],
        n_train=120, n_val=40, n_test=40, seed=2,
    )
    return root


def compose_cfg(overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/train.yaml`` like ``python train.py <overrides>`` would, output in ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.runtime.cwd = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def tiny_overrides(data_root: Path) -> list[str]:
    """Overrides that make any experiment run in seconds on CPU with synthetic data."""
    return [
        f"data.root={data_root}",
        "data.download=false",
        "data.num_workers=0",
        "trainer=cpu",
        "logger=csv",
        "~callbacks.rich_progress_bar",
    ]
