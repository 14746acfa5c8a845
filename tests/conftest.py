"""Shared fixtures: small synthetic MedMNIST files and Hydra config composition."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules.synthetic import write_synthetic_medmnist
from pipeline.cli import compose_config as compose_cfg  # noqa: F401  (used by the test modules)
from pipeline.cli import register_resolvers

register_resolvers()  # tests that load configs without composing them resolve ${...} too

REPO = Path(__file__).resolve().parents[1]
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
    for flag, k in (("pathmnist", 9), ("bloodmnist", 8)):  # for cross-dataset pretraining
        write_synthetic_medmnist(root / f"{flag}.npz", num_classes=k, n_train=90, n_val=27, n_test=27, seed=k)
    return root


def tiny_overrides(data_root: Path) -> list[str]:
    """Overrides that make any experiment run in seconds on CPU with synthetic data."""
    return [
        f"data.root={data_root}",
        f"paths.medmnist_root={data_root}",
        "data.download=false",
        "data.num_workers=0",
        "trainer=cpu",
        "logger=csv",
        "~callbacks.rich_progress_bar",
    ]
