"""Shared pytest fixtures (small synthetic MedMNIST files); never imported by the test modules,
which take shared code from tests/helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules.synthetic import write_synthetic_medmnist
from pipeline.cli import register_resolvers

register_resolvers()  # tests that load configs without composing them resolve ${...} too


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
