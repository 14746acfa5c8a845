"""Code the test modules share: paths, config composition, tiny model overrides, small data
writers, MLO-MAE fixtures and a test-only callback. Test modules import from here (never from
each other or from conftest.py, which holds only pytest fixtures; tests/test_layers.py checks it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from datamodules import MedMNISTDataModule
from lightning_modules.components.mae import MaskedAutoencoder
from lightning_modules.components.vit import ViTEncoder
from lightning_modules.mlo_mae import MLOMAE
from pipeline.cli import compose_config as compose_cfg  # noqa: F401  (the test modules compose through it)

REPO = Path(__file__).resolve().parents[1]
REAL_PNEUMONIA = REPO.parent / "shared" / "data" / "pneumoniamnist.npz"

# A one-block ViT (and a small decoder) for any experiment that builds an encoder.
TINY_VIT = ["encoder.depth=1", "encoder.embed_dim=32", "encoder.num_heads=2", "encoder.patch_size=4",
            "encoder.decoder_dim=16", "encoder.decoder_depth=1", "encoder.decoder_heads=2"]


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


def run_train_cli(args: list[str], cwd: Path, timeout: int = 300, **env) -> subprocess.CompletedProcess:
    """``python train.py ARGS`` in ``cwd`` (for tests of the process boundary: multirun, DDP, kill)."""
    cwd.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=environment)


def linear_map_by_hand(values, low: float, high: float) -> np.ndarray:
    """The 8-bit mapping written out: round((v - low) * 255 / (high - low)), clipped to [0, 255]."""
    return np.clip(np.floor((np.asarray(values, float) - low) * 255 / (high - low) + 0.5), 0, 255)


def write_multilabel_chestmnist(root: Path, seed: int = 0, sizes: tuple[int, int, int] = (96, 32, 32),
                                absent_in_test: int | None = None) -> None:
    """A small ChestMNIST-format file: 14 labels, each image's label i brightens band i (rows 2i,
    2i + 1); ``sizes`` images in train / val / test; label ``absent_in_test`` has no positive there."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes):
        labels = (rng.random((n, 14)) < 0.3).astype(np.uint8)
        labels[:14] |= np.eye(14, dtype=np.uint8)  # every label present in every split
        if split == "test" and absent_in_test is not None:
            labels[:, absent_in_test] = 0
        images = rng.normal(60, 20, size=(n, 28, 28))
        for k in range(14):
            images[labels[:, k] == 1, 2 * k: 2 * k + 2, :] += 120
        arrays[f"{split}_images"] = images.clip(0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels
    np.savez(root / "chestmnist.npz", **arrays)


def recomputed_test_metrics(run_dir: Path) -> dict[str, float]:
    """``test/acc`` and (where every class occurs) ``test/auc`` recomputed by medmnist's own
    Evaluator functions from the prediction file the run in ``run_dir`` wrote
    (``predictions/test_predictions.npz``; the task from its ``config.yaml``), and ``n``, the row count."""
    import yaml
    from medmnist.evaluator import getACC, getAUC

    task = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())["data"]["task"]
    with np.load(Path(run_dir) / "predictions" / "test_predictions.npz") as data:
        probs, labels = data["probs"].astype(np.float64), data["labels"]
    labels = labels.reshape(len(labels), -1)
    out = {"n": len(labels), "test/acc": getACC(labels, probs, task)}
    defined = labels.min(0).max() == 0 and labels.max(0).min() == 1 if labels.shape[1] > 1 else (
        len(np.unique(labels)) == probs.shape[1])
    if defined:
        out["test/auc"] = getAUC(labels, probs, task)
    return out


def assert_reported_test_metrics(run_dir: Path, metrics: dict, n: int | None = None) -> None:
    """The run's reported test ACC (and AUC where defined) equal medmnist's definitions on the
    predictions it wrote, over ``n`` test images when given."""
    import pytest

    recomputed = recomputed_test_metrics(run_dir)
    if n is not None:
        assert recomputed["n"] == n, f"{recomputed['n']} test predictions, expected {n}"
    for key, value in recomputed.items():
        if key != "n":
            assert metrics[key] == pytest.approx(value, abs=1e-5), key


def save_encoder(mae, path) -> str:
    """A checkpoint holding ``mae``'s encoder as MAEPretrain saves it (``mae.encoder.*``)."""
    torch.save({"state_dict": {f"mae.encoder.{k}": v for k, v in mae.encoder.state_dict().items()}}, path)
    return str(path)


# ----- MLO-MAE ----------------------------------------------------------------------------
def tiny_module(seed=0, masking=None, levels=None, hypergradient=None, lr=0.5) -> MLOMAE:
    """A tiny MLO-MAE (8 px, 1 channel, 3 classes); ``masking`` / ``levels`` / ``hypergradient``
    entries replace the defaults here. No Trainer: ``manual_backward`` is a plain backward."""
    torch.manual_seed(seed)
    enc = ViTEncoder(img_size=8, patch_size=2, in_chans=1, embed_dim=16, depth=2, num_heads=2)
    mae = MaskedAutoencoder(enc, 0.75, decoder_dim=8, decoder_depth=1, decoder_heads=2)
    module = MLOMAE(mae, num_classes=3, task="multi-class", masking={"net": "mlp", "hidden": 8, **(masking or {})},
                    levels={"cadence": (1, 1, 1), "lr_head": 0.5, "lr_mask": 5.0, "head_dropout": 0.0, **(levels or {})},
                    hypergradient=hypergradient, lr=lr)
    module.manual_backward = lambda loss: loss.backward()  # no Trainer in these unit tests
    return module


def global_batch(seed=1, n=8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Three (images (n, 1, 8, 8), labels (n,)) batches for ``tiny_module``: levels I, II, III."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)) for _ in range(3)]


def sgd_optimizers(module):
    """Plain SGD per level (its update is linear in the gradient, so schedules and precisions
    can be compared through the updates), as ``configure_optimizers`` returns them."""
    return [
        torch.optim.SGD(module.mae.parameters(), lr=module.hparams.lr),
        torch.optim.SGD(module.head.parameters(), lr=module.levels.lr_head),
        torch.optim.SGD(module.masknet.parameters(), lr=module.levels.lr_mask),
    ], None


class SGDMLOMAE(MLOMAE):
    """MLO-MAE with plain SGD at every level and no schedulers: runs compare to rounding
    (Adam's first step, lr * g / |g|, blows float noise in exactly-zero gradients such as the
    attention key bias's up to lr). Module level: DDP spawn pickles it."""

    def configure_optimizers(self):
        return sgd_optimizers(self)[0]

    def on_train_epoch_end(self) -> None:  # no schedulers
        pass


def mlo_setup(data_root, batch_size: int, reduce: bool = True, on_device: bool = False):
    """(a tiny SGD MLO-MAE, the synthetic DermaMNIST datamodule with MLO levels); seeded."""
    torch.manual_seed(0)
    enc = ViTEncoder(img_size=28, patch_size=7, in_chans=3, embed_dim=16, depth=1, num_heads=2)
    module = SGDMLOMAE(MaskedAutoencoder(enc, 0.75, decoder_dim=8, decoder_depth=1, decoder_heads=2),
                       num_classes=7, task="multi-class", masking={"net": "mlp", "hidden": 8},
                       levels={"head_dropout": 0.0, "cadence": (2, 1, 1), "lr_head": 0.1, "lr_mask": 10.0},
                       hypergradient={"reduce": reduce}, lr=0.1)
    dm = MedMNISTDataModule(flag="dermamnist", root=data_root, download=False, batch_size=batch_size,
                            mlo={"level3_fraction": 0.2, "cadence": [2, 1, 1]}, on_device=on_device)
    return module, dm


def fit_state(module, dm, steps: int, epochs: int = 1, **trainer_kwargs) -> dict[str, torch.Tensor]:
    """Fit ``epochs`` of ``steps`` training batches on the CPU (no validation, no files); the
    final state dict."""
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, limit_train_batches=steps, limit_val_batches=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, **trainer_kwargs)
    trainer.fit(module, datamodule=dm)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ----- callbacks added on the command line (``+callbacks.x._target_=tests.helpers.X``) -------
class KillAtStep(L.Callback):
    """SIGKILLs its own process (no cleanup, like ``kill -9``) once ``global_step`` reaches ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class PauseAtStep(L.Callback):
    """Once ``global_step`` reaches ``step``: writes the file ``marker`` and waits (up to
    ``timeout_s``) for a preemption signal from outside (``callbacks.preemption``'s flag rises),
    so that a test signals a training process at a known point."""

    def __init__(self, step: int, marker: str, timeout_s: float = 120.0) -> None:
        self.step, self.marker, self.timeout_s = step, Path(marker), timeout_s

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        flags = [cb.flag for cb in trainer.callbacks if hasattr(cb, "flag")]
        self.marker.write_text(str(os.getpid()))
        deadline = time.monotonic() + self.timeout_s
        while not any(f.name for f in flags) and time.monotonic() < deadline:
            time.sleep(0.05)


class SignalAtStep(L.Callback):
    """Sends ``signal_name`` to its own process once ``global_step`` reaches ``step`` (a preemption
    notice, in-process)."""

    def __init__(self, step: int, signal_name: str = "SIGUSR1") -> None:
        self.step, self.signum = step, getattr(signal, signal_name)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class DeleteAtTrainStart(L.Callback):
    """Deletes the file ``path`` when training starts (a file that vanishes during a run)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_start(self, trainer, pl_module) -> None:
        self.path.unlink()
