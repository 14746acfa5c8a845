"""The on-device data path (``data.on_device=true``) gives the batches of the DataLoader path:
same samplers, label fractions, MLO-MAE level loaders and evaluation order."""

from __future__ import annotations

import pytest
import torch
import yaml
from lightning.pytorch.utilities import CombinedLoader

from datamodules import MedMNISTDataModule
from datamodules.on_device import IndexBatch
from pipeline.cli import train
from tests.helpers import assert_reported_test_metrics, compose_cfg, tiny_overrides


def _dm(root, **kw) -> MedMNISTDataModule:
    dm = MedMNISTDataModule(flag="dermamnist", root=str(root), download=False, **kw)
    dm.setup("fit")
    return dm


def _batches(loader) -> list:
    """The batches of a DataLoader, or of a CombinedLoader (which yields (batch, idx, loader idx))."""
    return [b[0] if isinstance(loader, CombinedLoader) else b for b in loader]


def _materialized(dm: MedMNISTDataModule, loader) -> list:
    """Every batch of ``loader`` after the datamodule's device hook (CPU here)."""
    return [dm.on_after_batch_transfer(batch, 0) for batch in _batches(loader)]


def _assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        if isinstance(x, dict):
            assert x.keys() == y.keys()
            _assert_same_batches([x[k] for k in x], [y[k] for k in y])
            continue
        torch.testing.assert_close(x[0], y[0], atol=1e-6, rtol=0)
        assert torch.equal(x[1], y[1])


@pytest.mark.parametrize("kw", [
    {},
    {"sampler": "oversample", "epoch_length": "balanced", "label_fraction": 0.5},
    {"sampler": "random_oversample", "epoch_length": "balanced", "img_size": 32},
    {"mlo": {"level3_fraction": 0.2, "cadence": [2, 1, 1]}},
])
def test_on_device_loaders_yield_the_dataloader_paths_batches(data_root, kw):
    cpu, dev = _dm(data_root, batch_size=16, **kw), _dm(data_root, batch_size=16, on_device=True, **kw)
    raw = _batches(dev.train_dataloader())[0]
    first = raw["level1"] if "mlo" in kw else raw
    assert isinstance(first, IndexBatch) and first.split == "train" and first.index.dtype == torch.long
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        torch.manual_seed(0)
        expected = _batches(getattr(cpu, loader)())
        torch.manual_seed(0)
        _assert_same_batches(_materialized(dev, getattr(dev, loader)()), expected)


def test_on_device_images_move_once_and_training_images_are_augmented(data_root):
    dm = _dm(data_root, batch_size=32, on_device=True, augment={"crop_padding": 4, "hflip": True, "erasing": 0.5})
    batches = _materialized(dm, dm.train_dataloader())
    stored = dm.device_images.images("train", torch.device("cpu"))
    assert stored.dtype == torch.uint8 and stored.shape == (210, 3, 28, 28)
    assert stored is dm.device_images.images("train", torch.device("cpu"))  # moved once, then reused
    assert all(x.shape == (32, 3, 28, 28) and x.dtype == torch.float32 for x, _ in batches)
    plain = _dm(data_root, batch_size=32, on_device=True)
    torch.manual_seed(0)
    aug = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)[0]
    torch.manual_seed(0)
    assert torch.equal(aug, plain.on_after_batch_transfer(next(iter(plain.val_dataloader())), 0)[0])  # val: none
    index = next(iter(dm.train_dataloader()))
    assert not torch.equal(dm.device_images.materialize(index)[0], dm.device_images.materialize(index)[0])


@pytest.mark.slow
def test_training_on_device_reproduces_the_dataloader_run(data_root, tmp_path):
    """No augmentation: the same images in the same order, so the same model and metrics."""
    runs = {}
    for on_device in (False, True):
        cfg = compose_cfg(["experiment=quickstart", *tiny_overrides(data_root), "trainer.max_epochs=2",
                           "data.sampler=oversample", "data.label_fraction=0.6", f"data.on_device={on_device}"],
                          tmp_path / str(on_device))
        runs[on_device] = train(cfg)
    for key in ("val/auc_best", "test/acc", "test/auc", "test/loss"):
        assert runs[True][key] == pytest.approx(runs[False][key], abs=1e-6), key


def test_gpu_trainer_defaults_to_the_on_device_path(tmp_path):
    gpu = compose_cfg(["experiment=mlo_mae_small/pretrain", "trainer=gpu"], tmp_path)
    cpu = compose_cfg(["experiment=mlo_mae_small/pretrain"], tmp_path)
    assert gpu.data.on_device is True and gpu.data.pin_memory is True and gpu.data.num_workers >= 1
    assert cpu.data.on_device is False and cpu.data.num_workers == 0 and cpu.data.pin_memory is False
    ddp = compose_cfg(["experiment=cnn_derma", "trainer=ddp"], tmp_path)
    assert ddp.data.on_device is True


@pytest.mark.slow
def test_mlo_mae_pipeline_runs_on_device_with_augmentation(data_root, tmp_path):
    cfg = compose_cfg(["experiment=mlo_mae_small", "data=dermamnist", "debug=fdr", *tiny_overrides(data_root),
                       "data.batch_size=8", "++stages.finetune.data.batch_size=8", "data.on_device=true",
                       "++stages.finetune.data.augment.crop_padding=2", "++stages.finetune.data.augment.hflip=true"],
                      tmp_path)
    metrics = train(cfg)
    assert_reported_test_metrics(tmp_path / "finetune", metrics)
    fine = yaml.safe_load((tmp_path / "finetune" / "config.yaml").read_text())["data"]
    assert fine["on_device"] is True and fine["augment"]["hflip"] is True
