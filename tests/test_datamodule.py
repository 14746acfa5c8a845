import dataclasses
import re

import numpy as np
import pytest
import torch

from datamodules import MedMNISTDataModule
from datamodules.base_datamodule import class_weights_from_labels
from tests.helpers import REAL_PNEUMONIA


def _dm(root, **kw):
    kw.setdefault("download", False)
    dm = MedMNISTDataModule(root=str(root), **kw)
    dm.setup("fit")
    return dm


def test_official_split_shapes_and_metadata(data_root):
    dm = _dm(data_root, flag="dermamnist", batch_size=16)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (210, 70, 70)
    assert dm.num_classes == 7 and dm.in_chans == 3
    assert dm.class_names[5] == "synthetic class 5 (like 'melanocytic nevi')"  # the fixture's file is synthetic
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_grayscale_resize_rgb_and_half_normalisation(data_root):
    dm = _dm(data_root, flag="pneumoniamnist", img_size=32, as_rgb=True, normalization="half")
    x, _ = dm.val_set[0]
    assert x.shape == (3, 32, 32)
    assert torch.equal(x[0], x[2])
    assert x.min() >= -1 and x.max() <= 1
    gray = _dm(data_root, flag="pneumoniamnist")
    assert gray.in_chans == 1 and gray.train_set[0][0].shape == (1, 28, 28)


def test_half_normalisation_maps_uint8_to_minus_one_one(data_root):
    dm = _dm(data_root, flag="pneumoniamnist", normalization="half")
    raw = torch.from_numpy(np.load(data_root / "pneumoniamnist.npz")["val_images"][3]).float()
    np.testing.assert_allclose(dm.val_set[3][0][0].numpy(), (raw / 255 * 2 - 1).numpy(), atol=1e-6)


def test_dataset_normalisation_uses_train_statistics(data_root):
    dm = _dm(data_root, flag="dermamnist", normalization="dataset")
    x = torch.stack([dm.train_set[i][0] for i in range(len(dm.train_set))])
    np.testing.assert_allclose(x.mean(dim=(0, 2, 3)).numpy(), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(dim=(0, 2, 3)).numpy(), 1, atol=1e-2)


def test_augmentation_only_on_train(data_root):
    aug = {"crop_padding": 4, "hflip": True, "rotation": 15, "erasing": 0.5}
    dm = _dm(data_root, flag="dermamnist", augment=aug)
    torch.manual_seed(0)
    assert not torch.equal(dm.train_set[0][0], dm.train_set[0][0])
    assert torch.equal(dm.val_set[0][0], dm.val_set[0][0])
    assert torch.equal(dm.test_set[0][0], dm.test_set[0][0])


def test_stratified_resplit_and_label_fraction_are_seeded(data_root):
    a = _dm(data_root, flag="dermamnist", split="stratified", val_fraction=0.2, label_fraction=0.5, split_seed=3)
    b = _dm(data_root, flag="dermamnist", split="stratified", val_fraction=0.2, label_fraction=0.5, split_seed=3)
    c = _dm(data_root, flag="dermamnist", split="stratified", val_fraction=0.2, label_fraction=0.5, split_seed=4)
    assert len(a.val_set) == pytest.approx(0.2 * 280, abs=7)
    assert torch.equal(a.train_set.labels, b.train_set.labels)
    assert torch.equal(a.train_set.images, b.train_set.images)
    assert not torch.equal(a.train_set.images, c.train_set.images)
    assert set(a.train_labels.reshape(-1)) == set(range(7))
    assert len(a.test_set) == 70  # test untouched


def test_mlo_levels_two_and_three_read_only_the_label_fractions_subset(data_root):
    """data.mlo.label_fraction: level I keeps every training image; levels II / III split exactly
    the labelled subset that a downstream run with data.label_fraction (same split_seed) trains on."""
    mlo = {"level3_fraction": 0.25, "cadence": [2, 1, 1]}
    fair = _dm(data_root, flag="dermamnist", split_seed=5, mlo={**mlo, "label_fraction": 0.5})
    downstream = _dm(data_root, flag="dermamnist", split_seed=5, label_fraction=0.5)
    everything = _dm(data_root, flag="dermamnist", split_seed=5, mlo=mlo)
    assert len(fair.train_set) == len(everything.train_set) == 210  # level I: every image
    levels = np.sort(np.r_[fair.level_indices["level2"], fair.level_indices["level3"]])
    assert len(np.intersect1d(fair.level_indices["level2"], fair.level_indices["level3"])) == 0
    np.testing.assert_array_equal(fair.train_set.images[levels].numpy(), downstream.train_set.images.numpy())
    assert len(levels) == len(downstream.train_set) < len(everything.level_indices["level2"]) + len(
        everything.level_indices["level3"])
    with pytest.raises(ValueError, match=r"data\.mlo\.label_fraction=0"):
        _dm(data_root, flag="dermamnist", mlo={**mlo, "label_fraction": 0})
    with pytest.raises(ValueError, match=r"data\.mlo has no option \['labelfraction'\]; allowed: .*'label_fraction'"):
        _dm(data_root, flag="dermamnist", mlo={**mlo, "labelfraction": 0.1})


def test_class_weights_match_sklearn_balanced_formula(data_root):
    from sklearn.utils.class_weight import compute_class_weight

    dm = _dm(data_root, flag="dermamnist", label_fraction=0.5)
    y = dm.train_labels.reshape(-1)
    expected = compute_class_weight("balanced", classes=np.arange(7), y=y)
    np.testing.assert_allclose(dm.class_weights.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(class_weights_from_labels(np.array([0, 0, 2]), 3).numpy(), [0.75, 0, 1.5])


def test_oversampling_loader_balances_batches(data_root):
    dm = _dm(data_root, flag="dermamnist", sampler="oversample", epoch_length="balanced", batch_size=50)
    labels = torch.cat([y for _, y in dm.train_dataloader()])
    counts = torch.bincount(labels, minlength=7).float()
    assert counts.min() / counts.max() > 0.5  # raw data has a 1:58 imbalance (df vs nv)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"size": 30}, "data.size=30"),
        ({"label_fraction": 0.0}, "data.label_fraction=0.0"),
        ({"label_fraction": 1.5}, "data.label_fraction=1.5"),
        ({"val_fraction": 1.0}, "data.val_fraction=1.0"),
        ({"batch_size": -1}, "data.batch_size=-1"),
        ({"sampler": "smote"}, "data.sampler='smote'"),
        ({"normalization": "zscore"}, "data.normalization='zscore'"),
        ({"num_classes": 5}, "data.num_classes=5 disagrees"),
        ({"eval_batch_size": 0}, "data.eval_batch_size=0"),
        ({"num_workers": -2}, "data.num_workers=-2"),
        ({"epoch_length": "long"}, "data.epoch_length='long'"),
        ({"img_size": 4}, "data.img_size=4"),
        ({"synthetic_max_ratio": 1.0}, "data.synthetic_max_ratio=1.0"),
        ({"augment": {"hflipp": True}}, "data.augment has no option ['hflipp']"),
        ({"augment": {"erasing": 2.0}}, "data.augment.erasing=2.0"),
        ({"mlo": {"cadence": [2, 1]}}, "data.mlo.cadence=[2, 1]"),
        ({"batchsize": 8}, "data.batchsize is not an option of MedMNISTDataModule"),
    ],
)
def test_invalid_config_names_key_and_range(kwargs, key):
    """Every option is checked when the datamodule is built (its typed group), naming the key."""
    with pytest.raises(ValueError, match=re.escape(key)):
        MedMNISTDataModule(flag="dermamnist", **kwargs)


def test_the_flat_keys_land_in_their_typed_groups():
    from datamodules.options import LoaderOptions, SamplingOptions

    dm = MedMNISTDataModule(flag="dermamnist", batch_size=16, num_workers=2, sampler="sqrt", shuffle_seed=9,
                            split_seed=4, augment={"hflip": True}, mlo={"cadence": [3, 1, 1]})
    assert dm.options.loader == LoaderOptions(batch_size=16, eval_batch_size=16, num_workers=2)
    assert dm.options.sampling == SamplingOptions(sampler="sqrt", shuffle_seed=9)
    assert (dm.split_seed, dm.shuffle_seed, dm.img_size, dm.normalization) == (4, 9, 28, "half")
    assert dm.augment.hflip and dm.mlo.cadence == (3, 1, 1) and dm.mlo.level3_fraction == 0.2
    with pytest.raises(dataclasses.FrozenInstanceError):
        dm.options.loader.batch_size = 8  # checked once, then fixed


def test_synthetic_data_is_written_once_through_prepare_data(tmp_path):
    dm = MedMNISTDataModule(flag="dermamnist", root=str(tmp_path), download=False,
                            synthetic={"n_train": 70, "n_val": 14, "n_test": 14})
    dm.prepare_data()
    path = tmp_path / "dermamnist.npz"
    mtime = path.stat().st_mtime_ns
    dm.prepare_data()
    assert path.stat().st_mtime_ns == mtime
    dm.setup("fit")
    assert len(dm.train_set) == 70


@pytest.mark.skipif(not REAL_PNEUMONIA.is_file(), reason="real PneumoniaMNIST not available")
def test_real_pneumoniamnist_official_split():
    dm = _dm(REAL_PNEUMONIA.parent, flag="pneumoniamnist")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (4708, 524, 624)
    assert np.bincount(dm.train_labels.reshape(-1)).tolist() == [1214, 3494]
    assert dm.task == "binary-class" and dm.class_names == ["normal", "pneumonia"]
    w = dm.class_weights
    assert w[0] > w[1]  # the minority class (normal) gets the larger weight


def test_union_pools_sets_drops_labels_and_harmonises_channels(data_root):
    from datamodules.union_datamodule import MedMNISTUnionDataModule

    dm = MedMNISTUnionDataModule(["dermamnist", "pneumoniamnist"], in_chans=3,
                                 root=str(data_root), download=False)
    dm.setup("fit")
    assert len(dm.train_set) == 210 + 120 and len(dm.val_set) == 70 + 40
    x, y = dm.train_set[len(dm.train_set) - 1]  # a pneumonia (grayscale) image
    assert x.shape == (3, 28, 28) and y.item() == -1
    with pytest.raises(ValueError, match=r"in_chans=1 but \['dermamnist'\] are RGB"):
        MedMNISTUnionDataModule(["dermamnist", "pneumoniamnist"], in_chans=1)
