"""Own data: image folders and tables, grouped / stratified splits, filters, cache, errors,
the MHIST experiments and evaluate.py on them. No network."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import f1_score, precision_score, recall_score

from datamodules import DatasetError, ImageFolderDataModule, ImageTableDataModule
from datamodules.export import export_npz
from datamodules.image_cache import decode_image
from datamodules.synthetic import write_synthetic_medmnist
from pipeline.cli import train
from tests.helpers import REAL_PNEUMONIA, REPO, TINY_VIT, assert_reported_test_metrics, compose_cfg

AGREE = "Number of Annotators who Selected SSA (Out of 7)"


@pytest.fixture(scope="session")
def png_dataset(tmp_path_factory) -> Path:
    """PneumoniaMNIST as PNGs (the real images when REAL_PNEUMONIA exists) + table.csv with
    path, label (normal / pneumonia), split and a made-up group column."""
    out = tmp_path_factory.mktemp("png")
    npz = REAL_PNEUMONIA
    if not npz.is_file():
        npz = write_synthetic_medmnist(out / "synthetic.npz", num_classes=2, channels=1, proportions=[0.3, 0.7],
                                       n_train=60, n_val=30, n_test=30, seed=3)
    return export_npz(npz, out, max_per_split=60, class_names=["normal", "pneumonia"])


@pytest.fixture(scope="session")
def mhist_like(tmp_path_factory) -> Path:
    """A folder in MHIST's layout: annotations.csv (MHIST's column names) + images/*.png (RGB)."""
    root = tmp_path_factory.mktemp("mhist")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(120):
        votes = int(rng.integers(0, 8))
        label = "SSA" if votes >= 4 else "HP"
        colour = np.array([200, 80, 120]) if label == "SSA" else np.array([90, 160, 200])
        img = np.clip(colour + rng.normal(0, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
        name = f"MHIST_{i:03d}.png"
        Image.fromarray(img).save(root / "images" / name)
        rows.append({"Image Name": name, "Majority Vote Label": label, AGREE: votes,
                     "Partition": "test" if i % 4 == 0 else "train"})
    pd.DataFrame(rows).to_csv(root / "annotations.csv", index=False)
    return root


def _table_dm(table: Path, tmp_path: Path, **kwargs) -> ImageTableDataModule:
    args = {"channels": 1, "img_size": 28, "cache_dir": str(tmp_path / "cache"), "normalization": "half",
            "batch_size": 16, **kwargs}
    return ImageTableDataModule(table=str(table), **args)


def _own_overrides(tmp_path: Path) -> list[str]:
    """CPU, CSV, a cache in tmp_path; with debug=fdr the whole val / test split in one batch (the
    tests compare every test prediction). ``hydra.run.dir`` last."""
    return ["trainer=cpu", "logger=csv", "~callbacks.rich_progress_bar", f"data.cache_dir={tmp_path}/cache",
            "data.eval_batch_size=1024", f"hydra.run.dir={tmp_path}/run"]


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_table_run_writes_splits_and_predictions_in_table_order(png_dataset, tmp_path):
    cfg = compose_cfg(["experiment=cnn_derma", "data=image_table", f"data.table={png_dataset}",
                       "data.split_column=split", "data.group_column=group", "data.channels=1", "data.img_size=28",
                       "debug=fdr", *_own_overrides(tmp_path)], tmp_path / "run")
    assert cfg.data.num_classes == 2 and cfg.data.task == "binary-class" and cfg.data.in_chans == 1
    metrics = train(cfg)
    run = tmp_path / "run"
    table = _read_csv(png_dataset)
    splits = _read_csv(run / "splits.csv")
    assert [(r["path"], r["label"], r["group"], r["split"]) for r in splits] == [
        (r["path"], r["label"], r["group"], r["split"]) for r in table]
    preds = _read_csv(run / "predictions" / "test_predictions.csv")
    test_rows = [r for r in table if r["split"] == "test"]
    assert [p["path"] for p in preds] == [r["path"] for r in test_rows]
    assert [int(p["label"]) for p in preds] == [["normal", "pneumonia"].index(r["label"]) for r in test_rows]
    per_class = _read_csv(run / "eval" / "test_per_class.csv")
    assert [r["class"] for r in per_class[:2]] == ["normal", "pneumonia"]
    assert_reported_test_metrics(run, metrics, n=len(test_rows))
    labels, probs = np.array([int(p["label"]) for p in preds]), np.array([float(p["prob_1"]) for p in preds])
    negatives = labels == 0  # specificity: true negative rate of the 0.5 threshold on the positive class
    assert metrics["test/specificity"] == pytest.approx(((probs < 0.5) & negatives).sum() / negatives.sum(), abs=1e-5)


def test_folder_run_with_predefined_split(png_dataset, tmp_path):
    cfg = compose_cfg(["experiment=cnn_derma", "data=image_folder", f"data.root={png_dataset.parent / 'images'}",
                       "data.channels=1", "data.img_size=28", "debug=fdr", *_own_overrides(tmp_path)], tmp_path / "run")
    assert cfg.data.num_classes == 2
    train(cfg)
    splits = _read_csv(tmp_path / "run" / "splits.csv")
    assert {r["split"] for r in splits} == {"train", "val", "test"}
    assert all(r["path"].startswith(r["split"] + "/" + r["label"] + "/") for r in splits)
    preds = _read_csv(tmp_path / "run" / "predictions" / "test_predictions.csv")
    assert [p["path"] for p in preds] == [r["path"] for r in splits if r["split"] == "test"]


def test_splits_are_seeded_stratified_and_grouped(png_dataset, tmp_path):
    def split_of(seed):
        dm = _table_dm(png_dataset, tmp_path, group_column="group", split_seed=seed)
        dm.setup()
        return dm, dm.split_of.copy()

    dm, a = split_of(0)
    _, b = split_of(0)
    _, c = split_of(1)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    n = len(a)
    fractions = {s: (a == s).mean() for s in ("train", "val", "test")}
    assert fractions["train"] == pytest.approx(0.7, abs=0.07) and fractions["test"] == pytest.approx(0.2, abs=0.07)
    groups = dm.records.groups
    for seed_split in (a, c):
        per_group = pd.DataFrame({"g": groups, "s": seed_split}).groupby("g")["s"].nunique()
        assert per_group.max() == 1, "a group crosses splits"
    labels = dm.records.labels
    for s in ("train", "val", "test"):  # stratified: class balance of each split near the whole
        assert labels[a == s].mean() == pytest.approx(labels.mean(), abs=0.15)
    assert n == len(dm.records)


def test_split_without_groups_is_exactly_stratified(png_dataset, tmp_path):
    dm = _table_dm(png_dataset, tmp_path, fractions={"train": 0.6, "val": 0.2, "test": 0.2})
    dm.setup()
    for c in (0, 1):
        rows = dm.records.labels == c
        for s, f in (("val", 0.2), ("test", 0.2)):
            assert (dm.split_of[rows] == s).sum() == pytest.approx(f * rows.sum(), abs=1.01)


def test_mhist_filters_apply_to_training_only_and_split_is_stratified_on_agreement(mhist_like, tmp_path):
    dm = ImageTableDataModule(
        table=str(mhist_like / "annotations.csv"), image_root=str(mhist_like / "images"), path_column="Image Name",
        label_column="Majority Vote Label", split_column="Partition", stratify_columns=[AGREE],
        exclude={AGREE: [3, 4]}, fractions={"train": 0.8, "val": 0.2, "test": 0.0}, img_size=32,
        cache_dir=None, splits_file=str(tmp_path / "splits.csv"))
    dm.setup()
    votes = dm.records.columns[AGREE].astype(int)
    predefined = dm.records.splits
    assert not np.isin(votes[dm.split_of == "train"], [3, 4]).any()
    assert np.isin(votes[dm.split_of == "val"], [3, 4]).any() and np.isin(votes[dm.split_of == "test"], [3, 4]).any()
    np.testing.assert_array_equal(dm.split_of == "test", predefined == "test")  # MHIST's test partition kept
    assigned, _ = dm.plan()
    for v in np.unique(votes[predefined == "train"]):  # 20 % of each agreement level goes to val
        rows = (predefined == "train") & (votes == v)
        assert (assigned[rows] == "val").sum() == pytest.approx(0.2 * rows.sum(), abs=1.01)
    excluded = [r["excluded"] for r in _read_csv(tmp_path / "splits.csv")]
    assert excluded.count("exclude") == int(((assigned == "train") & np.isin(votes, [3, 4])).sum()) > 0
    assert set(excluded) == {"", "exclude"}
    assert len(dm.train_set) == int((dm.split_of == "train").sum())
    assert dm.class_names == ["HP", "SSA"] and dm.task == "binary-class"
    sampling = replace(dm.options.sampling, sampler="oversample", epoch_length="balanced")  # MHIST's protocol
    dm.options = replace(dm.options, sampling=sampling)
    assert len(dm.train_dataloader().sampler) == 2 * np.bincount(dm.train_labels).max()


def _corrupt(root: Path, kind: str) -> dict:
    """Write a bad copy of a small table under ``root``; returns datamodule kwargs."""
    images = root / "img"
    images.mkdir(parents=True)
    rows = []
    for i in range(12):
        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(images / f"{i}.png")
        rows.append({"path": f"{i}.png", "label": "a" if i % 2 else "b", "split": ["train", "val", "test"][i % 3],
                     "group": f"p{i}"})
    kwargs = {"split_column": "split", "group_column": "group"}
    if kind == "missing":
        (images / "3.png").unlink()
    elif kind == "truncated":
        data = (images / "5.png").read_bytes()
        (images / "5.png").write_bytes(data[: len(data) // 2])
    elif kind == "unreadable":
        (images / "7.png").write_text("not an image")
    elif kind == "unknown_label":
        rows[4]["label"] = "c"
        kwargs["classes"] = ["a", "b"]
    elif kind == "empty_class":
        kwargs["classes"] = ["a", "b", "z"]
    elif kind == "split_value":
        rows[2]["split"] = "holdout"
    elif kind == "group_crossing":
        rows[0]["group"] = rows[1]["group"] = "shared"  # rows 0 (train) and 1 (val)
    elif kind == "blank_label":
        rows[6]["label"] = ""
    elif kind == "blank_group":
        rows[8]["group"] = ""
    elif kind == "duplicate":
        rows[9]["path"] = "0.png"
    elif kind == "no_training_class":  # every "a" image of train excluded
        kwargs["exclude"] = {"label": ["a"]}
    elif kind == "exclude_matches_nothing":  # 3.0 against the label column's 'a' / 'b'
        kwargs["exclude"] = {"label": ["a", 3.0]}
    elif kind == "empty_split":  # no test rows predefined and none carved (only val may be empty: no_val)
        for r in rows:
            r["split"] = "val" if r["split"] == "test" else r["split"]
        kwargs["fractions"] = {"train": 0.8, "val": 0.2, "test": 0.0}
    pd.DataFrame(rows).to_csv(root / "table.csv", index=False)
    return {**kwargs, "table": str(root / "table.csv"), "image_root": str(images)}


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("missing", r"1 row\(s\) name image files that do not exist.*line 5: 3.png"),
        ("truncated", r"cannot be decoded.*line 7: 5.png"),
        ("unreadable", r"cannot be decoded.*line 9: 7.png"),
        ("unknown_label", r"label outside data.classes=\['a', 'b'\].*line 6: 4.png"),
        ("empty_class", r"class\(es\) \['z'\] have no images"),
        ("split_value", r"'split' value other than \['train', 'val', 'test'\].*line 4: 2.png \(split='holdout'\)"),
        ("group_crossing", r"1 group\(s\) that appear in more than one split.*line 2: 0.png \(group 'shared', split train"),
        ("blank_label", r"empty label cell \('label'\).*line 8: 6.png"),
        ("blank_group", r"empty group cell \('group'\).*line 10: 8.png"),
        ("duplicate", r"list an image that an earlier row already lists.*line 11: 0.png \(also line 2: 0.png\)"),
        ("no_training_class", r"class\(es\) \['a'\] have no training image after splitting and data.exclude"),
        ("exclude_matches_nothing", r"data.exclude.label lists \['3.0'\], which no row has; column 'label' holds \['a', 'b'\]"),
        ("empty_split", r"the test split is empty \(data.fractions.test=0.0"),
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(kind, expected, tmp_path):
    kwargs = _corrupt(tmp_path / "data", kind)
    splits_file, cache = tmp_path / "run" / "splits.csv", tmp_path / "cache"
    with pytest.raises(DatasetError, match=f"(?s){expected}") as err:
        dm = ImageTableDataModule(channels=1, img_size=8, cache_dir=str(cache), splits_file=str(splits_file), **kwargs)
        dm.prepare_data()  # would write the cache
        dm.setup()  # would write splits.csv
    assert "table.csv" in str(err.value)
    if "row(s)" in str(err.value):
        assert "\nFix: " in str(err.value)
    assert not splits_file.exists() and not (cache.exists() and any(cache.iterdir()))


def test_error_lists_the_first_ten_rows_and_the_count(tmp_path):
    kwargs = _corrupt(tmp_path / "data", "none")
    for i in range(12):
        (Path(kwargs["image_root"]) / f"{i}.png").unlink()
    with pytest.raises(DatasetError) as err:
        ImageTableDataModule(channels=1, img_size=8, cache_dir=None, **kwargs).prepare_data()
    message = str(err.value)
    assert "12 row(s)" in message and "line 11: 9.png" in message and "line 12: 10.png" not in message
    assert "... and 2 more" in message


def test_cache_is_reused_and_rebuilt_when_a_file_changes(png_dataset, tmp_path):
    shutil.copytree(png_dataset.parent / "images", tmp_path / "data" / "images")
    table = shutil.copy(png_dataset, tmp_path / "data" / "table.csv")

    def load():
        dm = _table_dm(table, tmp_path, split_column="split")
        dm.setup()
        return dm, sorted(p.name for p in (tmp_path / "cache").iterdir())

    first, cached = load()
    second, again = load()
    assert first.from_cache is False and second.from_cache is True and len(cached) == 1 and again == cached
    np.testing.assert_array_equal(first.images, second.images)
    target = tmp_path / "data" / _read_csv(png_dataset)[0]["path"]
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(target)  # new content
    third, rebuilt = load()
    assert third.from_cache is False and third.images[0].max() == 0
    assert len(rebuilt) == 1 and rebuilt != cached  # the stale cache was replaced
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))  # touched only
    assert load()[0].from_cache is False
    (tmp_path / "cache" / load()[1][0]).write_bytes(b"")  # a damaged cache is rebuilt, not trusted
    fourth, _ = load()
    assert fourth.from_cache is False
    np.testing.assert_array_equal(fourth.images, third.images)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".bmp"])
def test_decode_formats_modes_and_resize(suffix, tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / f"rgb{suffix}")
    out, _ = decode_image(tmp_path / f"rgb{suffix}", 16, 3)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert abs(int(out[..., 0].mean()) - 200) <= 3 and out[..., 1].max() <= 3
    gray, _ = decode_image(tmp_path / f"rgb{suffix}", 16, 1)
    assert gray.shape == (16, 16) and abs(int(gray.mean()) - round(0.299 * 200)) <= 3  # ITU-R 601 luma


def test_rotation_by_any_angle_keeps_the_size():
    from datamodules.transforms import AugmentConfig, build_transform

    tf = build_transform(32, 32, None, AugmentConfig(rotation=180))
    x = torch.zeros(1, 32, 32)
    x[:, 2:8, 13:19] = 1  # a bright spot above the centre: its angle about the centre is the rotation
    rows, cols = torch.meshgrid(torch.arange(32.0) - 15.5, torch.arange(32.0) - 15.5, indexing="ij")
    torch.manual_seed(0)
    angles = []
    for _ in range(200):
        out = tf(x)[0]
        assert out.shape == (32, 32)
        angles.append(float(torch.rad2deg(torch.atan2((out * cols).sum(), -(out * rows).sum()))))
    angles = np.abs(angles)
    assert angles.min() < 20 and angles.max() > 160 and ((angles > 90) & (angles < 135)).any()  # the whole circle
    with pytest.raises(ValueError, match="rotation_p"):
        build_transform(32, 32, None, AugmentConfig(rotation=90, rotation_p=0))


def test_mhist_protocol_settings():
    """The MHIST protocol (Wei et al. 2021, as the MHIST replication report runs it), as composed."""
    for name, batch in (("resnet18_mhist", 32), ("vit_b16_mhist", 8)):
        cfg = compose_cfg([f"experiment={name}"], Path("/tmp/unused"))
        d, m = cfg.data, cfg.model
        assert (d.img_size, d.batch_size, d.channels) == (224, batch, 3)
        assert (d.sampler, d.epoch_length) == ("random_oversample", "balanced")
        assert d.augment.hflip and d.augment.vflip and d.augment.rotation == 180
        assert d.fractions.val == 0.2 and d.fractions.train == 0.8 and list(d.stratify_columns)
        assert dict(d.exclude) and list(d.exclude_from) == ["train"]
        assert m.optimizer._target_ == "torch.optim.Adam"
        assert m.scheduler._target_ == "torch.optim.lr_scheduler.ExponentialLR" and m.scheduler.gamma == 0.91
        assert (cfg.monitor.metric, cfg.monitor.mode, cfg.test_ckpt) == ("val/f1", "max", "best")
        assert cfg.callbacks.early_stopping.monitor == "val/f1" and m.net.pretrained
    assert compose_cfg(["experiment=resnet18_mhist"], Path("/tmp/unused")).model.lr == 1e-3
    assert compose_cfg(["experiment=vit_b16_mhist"], Path("/tmp/unused")).model.net.drop_rate == 0.5


@pytest.mark.slow
def test_mhist_experiments_run_offline_with_a_local_weights_file(mhist_like, tmp_path):
    import timm

    weights = tmp_path / "resnet18_weights.pth"
    reference = timm.create_model("resnet18", num_classes=1000)
    torch.save(reference.state_dict(), weights)
    common = [f"data.table={mhist_like / 'annotations.csv'}", f"data.image_root={mhist_like / 'images'}",
              "data.img_size=32", "data.batch_size=8", "debug=fdr", *_own_overrides(tmp_path)]
    cfg = compose_cfg(["experiment=resnet18_mhist", f"model.net.pretrained_file={weights}", *common], tmp_path / "run")
    assert cfg.monitor.metric == "val/f1" and cfg.data.fractions.val == 0.2
    from hydra.utils import instantiate

    net = instantiate(cfg.model.net)
    assert torch.equal(net.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    metrics = train(cfg)
    assert_reported_test_metrics(tmp_path / "run", metrics)
    test = np.load(tmp_path / "run" / "predictions" / "test_predictions.npz")
    predicted = test["probs"][:, 1] >= 0.5  # the positive class (SSA) at threshold 0.5
    assert metrics["test/recall"] == pytest.approx(recall_score(test["labels"], predicted, zero_division=0), abs=1e-5)
    assert metrics["test/precision"] == pytest.approx(precision_score(test["labels"], predicted, zero_division=0),
                                                      abs=1e-5)
    assert metrics["test/f1"] == pytest.approx(f1_score(test["labels"], predicted, zero_division=0), abs=1e-5)
    vit = compose_cfg(["experiment=vit_b16_mhist", "model.net.pretrained=false", "+model.net.img_size=32",
                       "+model.net.depth=1", *common[:-1], f"hydra.run.dir={tmp_path}/vit"], tmp_path / "vit")
    assert vit.model.net.drop_rate == 0.5 and vit.model.lr == 1e-5
    train(vit)
    assert (tmp_path / "vit" / "eval" / "test_per_class.csv").is_file()


@pytest.mark.slow
def test_mhist_without_a_validation_set_tests_the_last_epoch(mhist_like, tmp_path):
    """The report's "no val" rows: the whole train partition trains, nothing is selected, the
    last epoch's weights are tested once."""
    for name in ("resnet18_mhist_noval", "vit_b16_mhist_noval"):
        cfg = compose_cfg([f"experiment={name}"], Path("/tmp/unused"))
        assert cfg.data.fractions.val == 0 and cfg.test_ckpt == "last" and cfg.callbacks.model_checkpoint is None
        assert cfg.callbacks.early_stopping is None and not cfg.callbacks.evaluation.tune_thresholds
    overrides = ["experiment=resnet18_mhist_noval", "model.net.pretrained=false", f"data.table={mhist_like / 'annotations.csv'}",
                 f"data.image_root={mhist_like / 'images'}", "data.img_size=32", "data.batch_size=16",
                 "trainer.max_epochs=2", *_own_overrides(tmp_path)]
    metrics = train(compose_cfg(overrides, tmp_path / "run"))
    splits = _read_csv(tmp_path / "run" / "splits.csv")
    assert {r["split"] for r in splits} == {"train", "test"}  # no validation rows
    assert metrics["test_checkpoint"].endswith("last.ckpt")
    assert_reported_test_metrics(tmp_path / "run", metrics)
    assert not any(k.startswith("val/") for k in metrics)
    assert not (tmp_path / "run" / "eval" / "test_threshold_tuning.json").exists()
    dm = _table_dm(mhist_like / "annotations.csv", tmp_path, image_root=str(mhist_like / "images"),
                   path_column="Image Name", label_column="Majority Vote Label", split_column="Partition",
                   fractions={"train": 1.0, "val": 0.0, "test": 0.0})
    assert set(dm.plan()[0]) == {"train", "test"}


@pytest.mark.slow
def test_evaluate_ensembles_runs_of_one_table_and_refuses_other_test_sets(png_dataset, tmp_path):
    from evaluation import evaluate

    def run(name, extra):
        cfg = compose_cfg(["data=image_table", f"data.table={png_dataset}", "data.channels=1", "data.img_size=28",
                           "debug=fdr", *_own_overrides(tmp_path)[:-1], f"hydra.run.dir={tmp_path / name}", *extra],
                          tmp_path / name)
        return Path(train(cfg)["best_checkpoint"])

    cnn = run("cnn", ["experiment=cnn_derma", "data.split_column=split"])
    resnet = run("resnet", ["experiment=resnet18_derma", "data.split_column=split", "data.normalization=imagenet",
                            "data.img_size=40", "data.channels=3"])  # other size, channels and normalisation
    result = evaluate.evaluate([cnn, resnet], out=tmp_path / "ensemble")
    preds = _read_csv(tmp_path / "ensemble" / "predictions" / "test_predictions.csv")
    single = np.load(cnn.parent.parent / "predictions" / "test_predictions.npz")
    assert [p["path"] for p in preds] == list(single["ids"])
    cnn_alone = evaluate.evaluate([cnn], out=tmp_path / "cnn_alone")["probs"]
    np.testing.assert_allclose(cnn_alone, single["probs"], atol=1e-5)  # its own preprocessing
    resnet_alone = evaluate.evaluate([resnet], out=tmp_path / "resnet_alone")["probs"]
    resnet_saved = np.load(resnet.parent.parent / "predictions" / "test_predictions.npz")["probs"]
    np.testing.assert_allclose(resnet_alone, resnet_saved, atol=1e-5)
    np.testing.assert_allclose(result["probs"], (cnn_alone + resnet_alone) / 2, atol=1e-6)
    other = run("other", ["experiment=cnn_derma"])  # seeded 70/10/20 split: another test set
    with pytest.raises(evaluate.CheckpointError, match="different test set"):
        evaluate.evaluate([cnn, other], out=tmp_path / "bad")
    frame = pd.read_csv(png_dataset)  # the same test images, listed in another order
    test_rows = frame[frame.split == "test"]
    frame.loc[test_rows.index] = test_rows.iloc[::-1].to_numpy()
    shuffled = png_dataset.parent / "shuffled.csv"
    frame.to_csv(shuffled, index=False)
    reordered = run("reordered", ["experiment=cnn_derma", "data.split_column=split", f"data.table={shuffled}"])
    with pytest.raises(evaluate.CheckpointError, match="or the same in another order"):
        evaluate.evaluate([cnn, reordered], out=tmp_path / "bad")
    assert result["summary"]["n"] == len(preds)


@pytest.mark.slow
def test_cli_names_a_missing_table_in_one_message(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "experiment=cnn_derma", "data=image_table",
         f"data.table={tmp_path}/nope.csv", f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode != 0
    assert f"{tmp_path}/nope.csv" in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_folder_errors_name_the_problem(tmp_path):
    (tmp_path / "data" / "train" / "a").mkdir(parents=True)
    (tmp_path / "data" / "train" / "b").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "data" / "train" / "a" / "x.png")
    with pytest.raises(DatasetError, match=r"class folder\(s\) \['b'\] hold no"):
        ImageFolderDataModule(root=str(tmp_path / "data"))
    with pytest.raises(DatasetError, match="is not a folder"):
        ImageFolderDataModule(root=str(tmp_path / "nowhere"))


@pytest.mark.parametrize(("experiment", "arch"), [("resnet18_mhist", "resnet18"),
                                                   pytest.param("vit_b16_mhist", "vit_base_patch16_224",
                                                                marks=pytest.mark.slow)])
def test_mhist_full_size_configs_instantiate_from_local_weights(experiment, arch, mhist_like, tmp_path):
    import timm
    from hydra.utils import instantiate

    weights = tmp_path / f"{arch}.pth"
    torch.save(timm.create_model(arch).state_dict(), weights)
    cfg = compose_cfg([f"experiment={experiment}", f"data.table={mhist_like / 'annotations.csv'}",
                       f"data.image_root={mhist_like / 'images'}", f"model.net.pretrained_file={weights}"], tmp_path)
    model = instantiate(cfg.model, _convert_="all")
    assert cfg.data.img_size == 224 and cfg.data.batch_size == (8 if experiment == "vit_b16_mhist" else 32)
    out = model(torch.zeros(1, 3, 224, 224))
    assert out.shape == (1, 2)
    assert instantiate(cfg.data).num_classes == cfg.model.num_classes == 2


@pytest.mark.parametrize("experiment", ["mae_derma", pytest.param("mlo_mae_derma", marks=pytest.mark.slow)])
def test_mae_and_mlo_mae_pipelines_run_on_an_image_table(experiment, png_dataset, tmp_path):

    cfg = compose_cfg([f"experiment={experiment}", "data=image_table", f"data.table={png_dataset}",
                       "data.split_column=split", "data.channels=1", "debug=fdr", *TINY_VIT,
                       "++stages.pretrain.data.batch_size=8", "++stages.finetune.data.batch_size=8",
                       *_own_overrides(tmp_path)], tmp_path / "run")
    metrics = train(cfg)
    assert_reported_test_metrics(tmp_path / "run" / "finetune", metrics)
    assert Path(metrics["pretrain/best_checkpoint"]).is_file()
    preds = _read_csv(tmp_path / "run" / "finetune" / "predictions" / "test_predictions.csv")
    assert [p["path"] for p in preds] == [r["path"] for r in _read_csv(png_dataset) if r["split"] == "test"]


def test_label_fraction_and_class_weights_on_a_table(png_dataset, tmp_path):
    full = _table_dm(png_dataset, tmp_path, split_column="split")
    full.setup()
    half = _table_dm(png_dataset, tmp_path, split_column="split", label_fraction=0.5)
    half.setup()
    for c in (0, 1):
        n = int((full.train_labels == c).sum())
        assert int((half.train_labels == c).sum()) == round(0.5 * n)
    counts = np.bincount(half.train_labels, minlength=2)
    np.testing.assert_allclose(half.class_weights.numpy(), counts.sum() / (2 * counts), rtol=1e-6)
    assert half.sample_ids("train") == [p for p, s in zip(half.records.paths, half.split_of) if s == "train"]
    assert len(half.sample_ids("train")) == len(half.train_set) < len(full.train_set)


@pytest.mark.slow
def test_ten_seed_multirun_then_aggregate_on_the_mhist_layout(mhist_like, tmp_path):
    import timm

    from evaluation import aggregate

    weights = tmp_path / "r18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), weights)
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "-m", "experiment=resnet18_mhist", "seed=0,1",
         f"data.table={mhist_like / 'annotations.csv'}", f"data.image_root={mhist_like / 'images'}",
         f"model.net.pretrained_file={weights}", "data.img_size=32", "data.batch_size=8", "debug=fdr",
         "trainer=cpu", "logger=csv", "~callbacks.rich_progress_bar", f"data.cache_dir={tmp_path}/cache",
         f"hydra.sweep.dir={tmp_path}/multirun"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "multirun" / "0" / "splits.csv").is_file()
    assert aggregate.main([str(tmp_path / "multirun"), "--metrics", "test/f1", "test/auprc", "test/specificity"]) == 0
    rows = _read_csv(tmp_path / "multirun" / "aggregate.csv")
    assert len(rows) == 1 and rows[0]["n"] == "2"  # one group: the two seeds
    assert "test/auprc" in (tmp_path / "multirun" / "aggregate.md").read_text()


def test_plain_class_folders_are_split_by_fractions(png_dataset, tmp_path):
    root = tmp_path / "flat"
    for split in ("train", "val", "test"):
        for class_dir in (png_dataset.parent / "images" / split).iterdir():
            shutil.copytree(class_dir, root / class_dir.name, dirs_exist_ok=True)
    dm = ImageFolderDataModule(root=str(root), channels=1, img_size=28, cache_dir=None,
                               splits_file=str(tmp_path / "splits.csv"))
    dm.setup()
    assert dm.records.splits is None and dm.class_names == ["normal", "pneumonia"]
    for c in (0, 1):  # 70 / 10 / 20 of every class (no groups: exact up to rounding)
        rows = dm.records.labels == c
        assert (dm.split_of[rows] == "test").sum() == pytest.approx(0.2 * rows.sum(), abs=1)
        assert (dm.split_of[rows] == "val").sum() == pytest.approx(0.1 * rows.sum(), abs=1.5)
    assert all(r["path"].split("/")[0] == r["label"] for r in _read_csv(tmp_path / "splits.csv"))


def test_assign_splits_carves_missing_splits_by_whole_groups():
    from datamodules.splits import assign_splits

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(200), 3).astype(str)
    labels = rng.integers(0, 2, 600)
    predefined = np.where(np.repeat(np.arange(200), 3) % 5 == 0, "test", "train")
    out = assign_splits(labels, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=0, groups=groups, predefined=predefined)
    np.testing.assert_array_equal(out == "test", predefined == "test")  # predefined rows never move
    assert (out == "val").sum() / (predefined == "train").sum() == pytest.approx(0.1 / 0.8, abs=0.02)
    assert pd.DataFrame({"g": groups, "s": out}).groupby("g")["s"].nunique().max() == 1
    plain = assign_splits(labels, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=0)
    for c in (0, 1):  # no groups: exactly stratified
        rows = labels == c
        assert (plain[rows] == "test").sum() == round(0.2 * rows.sum())
    assert (assign_splits(labels, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=1) != plain).any()
    with pytest.raises(ValueError, match="needs at least 2 groups"):
        assign_splits(labels[:3], {"train": 0.7, "val": 0.1, "test": 0.2}, seed=0, groups=groups[:3])


def test_tsv_table_and_rank_other_than_zero_writes_no_splits_file(png_dataset, tmp_path, monkeypatch):
    from lightning.pytorch.utilities import rank_zero_only

    tsv = png_dataset.parent / "table.tsv"
    pd.read_csv(png_dataset).to_csv(tsv, sep="\t", index=False)
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    dm = _table_dm(tsv, tmp_path, split_column="split", splits_file=str(tmp_path / "splits.csv"))
    dm.setup()
    assert len(dm.test_set) == sum(r["split"] == "test" for r in _read_csv(png_dataset))
    assert not (tmp_path / "splits.csv").exists()


def _lesion_images(root: Path, n: int = 48) -> pd.DataFrame:
    """HAM10000-shaped metadata (lesion_id, image_id without extension, dx) and <image_id>.jpg
    files: two images per lesion, three classes with a brightness each."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        dx = ("nv", "mel", "bkl")[(i // 2) % 3]
        level = {"nv": 60, "mel": 130, "bkl": 200}[dx]
        img = np.clip(level + rng.normal(0, 10, (20, 20, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"ISIC_{i:07d}.jpg")
        rows.append({"lesion_id": f"HAM_{i // 2:07d}", "image_id": f"ISIC_{i:07d}", "dx": dx,
                     "dx_type": "histo", "age": 50, "sex": "male", "localization": "back"})
    return pd.DataFrame(rows)


def test_ham10000_metadata_trains_as_it_comes_with_lesion_grouped_splits(tmp_path):
    _lesion_images(tmp_path).to_csv(tmp_path / "HAM10000_metadata.csv", index=False)
    cfg = compose_cfg(["experiment=cnn_derma", "data=image_table", f"data.table={tmp_path / 'HAM10000_metadata.csv'}",
                       "data.path_column=null", "data.path_template='{image_id}.jpg'", "data.label_column=dx",
                       "data.group_column=lesion_id", "data.img_size=16", "debug=fdr",
                       *_own_overrides(tmp_path)], tmp_path / "run")
    metrics = train(cfg)
    assert "test/acc" in metrics
    splits = pd.read_csv(tmp_path / "run" / "splits.csv")
    assert splits["path"].str.endswith(".jpg").all() and set(splits["label"]) == {"nv", "mel", "bkl"}
    assert splits.groupby("group")["split"].nunique().max() == 1  # no lesion crosses splits


def test_isic_one_hot_ground_truth_trains_with_its_column_order_as_classes(tmp_path):
    meta = _lesion_images(tmp_path)
    onehot = pd.DataFrame({"image": meta["image_id"]})
    for c in ("MEL", "NV", "BKL"):
        onehot[c] = (meta["dx"].str.upper() == c).astype(float)  # ISIC writes 1.0 / 0.0
    onehot.to_csv(tmp_path / "gt.csv", index=False)
    common = ["data.path_column=null", "data.path_template='{image}.jpg'", "data.label_column=null",
              "data.label_columns=[MEL,NV,BKL]"]
    dm = ImageTableDataModule(table=str(tmp_path / "gt.csv"), path_column=None, path_template="{image}.jpg",
                              label_column=None, label_columns=["MEL", "NV", "BKL"], channels=3, img_size=16,
                              cache_dir=None)
    assert dm.class_names == ["MEL", "NV", "BKL"]
    expected = meta["dx"].map({"mel": 0, "nv": 1, "bkl": 2}).to_numpy()
    np.testing.assert_array_equal(dm.records.labels, expected)
    cfg = compose_cfg(["experiment=cnn_derma", "data=image_table", f"data.table={tmp_path / 'gt.csv'}", *common,
                       "data.img_size=16", "debug=fdr", *_own_overrides(tmp_path)], tmp_path / "run")
    assert cfg.data.num_classes == 3 and "test/acc" in train(cfg)


@pytest.mark.parametrize(("change", "message"), [
    ({"MEL": 1.0}, "mark not exactly one of data.label_columns"),  # two classes on line 2
    ({"MEL": 2.0}, "value other than 0 / 1"),
])
def test_one_hot_tables_with_bad_rows_name_them(change, message, tmp_path):
    rows = [{"image": f"x{i}", "MEL": float(i % 2), "NV": float(1 - i % 2)} for i in range(6)]
    rows[0].update(change)
    pd.DataFrame(rows).to_csv(tmp_path / "gt.csv", index=False)
    with pytest.raises(DatasetError, match=message) as err:
        ImageTableDataModule(table=str(tmp_path / "gt.csv"), path_column=None, path_template="{image}.jpg",
                             label_column=None, label_columns=["MEL", "NV"], cache_dir=None)
    assert "line 2: x0.jpg" in str(err.value)


def test_path_template_and_column_choices_are_checked(tmp_path):
    pd.DataFrame({"image_id": ["a", "b"], "dx": ["nv", "mel"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ValueError, match=r"names \['patient'\], which are not columns"):
        ImageTableDataModule(table=str(tmp_path / "t.csv"), path_column=None, path_template="{patient}/{image_id}.png",
                             label_column="dx", cache_dir=None)
    with pytest.raises(ValueError, match="exactly one of data.path_column and data.path_template"):
        ImageTableDataModule(table=str(tmp_path / "t.csv"), path_column="image_id", path_template="{image_id}.jpg",
                             label_column="dx", cache_dir=None)


@pytest.fixture(scope="session")
def multi_label_table(tmp_path_factory) -> Path:
    """180 grayscale images, 3 findings (each brightens its own third of the image), 0-3 per
    image, 60 patients of 3 images; the table in ChestX-ray14's shape ("a|b" cells, a patient
    column) plus the same labels as 0 / 1 columns."""
    root = tmp_path_factory.mktemp("multi_label")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    names, rows = ["effusion", "nodule", "atelectasis"], []
    for i in range(180):
        on = rng.random(3) < [0.5, 0.3, 0.15]
        img = rng.normal(60, 20, (24, 24))
        for k in np.flatnonzero(on):
            img[:, 8 * k:8 * (k + 1)] += 120
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / f"{i}.png")
        rows.append({"path": f"images/{i}.png", "findings": "|".join(n for n, o in zip(names, on) if o) or "none",
                     "patient": f"p{i // 3}", **{n: int(o) for n, o in zip(names, on)}})
    pd.DataFrame(rows).to_csv(root / "table.csv", index=False)
    return root / "table.csv"


@pytest.mark.slow
def test_a_multi_label_table_trains_and_its_per_label_aucs_equal_sklearn(multi_label_table, tmp_path):
    from sklearn.metrics import roc_auc_score

    overrides = ["experiment=cnn_derma", "data=image_table", f"data.table={multi_label_table}",
                 "data.label_column=findings", "data.multi_label=true", "data.label_separator='|'",
                 "data.classes=[effusion,nodule,atelectasis]", "data.group_column=patient", "data.channels=1",
                 "data.img_size=24", "data.batch_size=16", "trainer.max_epochs=5", "model.lr=0.05", *_own_overrides(tmp_path)]
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException, match=r"(?s)label outside data.classes=\['effusion', 'nodule', "
                                                     r"'atelectasis'\].*\('none'\)"):  # named, not dropped
        train(compose_cfg(overrides, tmp_path / "run"))
    overrides[overrides.index("data.classes=[effusion,nodule,atelectasis]")] = "data.classes=[effusion,nodule,atelectasis,none]"
    cfg = compose_cfg(overrides, tmp_path / "run")
    assert cfg.data.task == "multi-label, binary-class" and cfg.data.num_classes == 4
    metrics = train(cfg)
    preds = np.load(tmp_path / "run" / "predictions" / "test_predictions.npz")
    assert preds["labels"].shape[1] == 4 and preds["probs"].shape == preds["labels"].shape
    for k, name in enumerate(["effusion", "nodule", "atelectasis"]):
        assert metrics[f"test/auroc/{name}"] == pytest.approx(roc_auc_score(preds["labels"][:, k], preds["probs"][:, k]),
                                                              abs=1e-5)
    assert metrics["test/auroc/effusion"] > 0.9  # the bright band is learnable: training happened
    splits = _read_csv(tmp_path / "run" / "splits.csv")
    per_patient = pd.DataFrame(splits).groupby("group")["split"].nunique()
    assert per_patient.max() == 1  # no patient crosses splits
    table = pd.read_csv(multi_label_table)
    assert [r["label"] for r in splits] == table["findings"].tolist()  # per-row positives, as written


def test_multi_label_from_zero_one_columns_and_its_mistakes(multi_label_table, tmp_path):
    dm = _table_dm(multi_label_table, tmp_path, label_column=None, label_columns=["effusion", "nodule", "atelectasis"],
                   multi_label=True, classes=["nodule", "effusion", "atelectasis"])
    table = pd.read_csv(multi_label_table)
    np.testing.assert_array_equal(dm.records.labels, table[["nodule", "effusion", "atelectasis"]].to_numpy())
    assert dm.task == "multi-label, binary-class" and dm.num_classes == 3
    assert set(dm.plan()[0]) == {"train", "val", "test"}
    with pytest.raises(ValueError, match="data.multi_label=true needs data.label_columns .* or data.label_separator"):
        _table_dm(multi_label_table, tmp_path, label_column="findings", multi_label=True)
    with pytest.raises(ValueError, match=r"data.label_separator='\|' splits multi-label cells: set data.multi_label=true"):
        _table_dm(multi_label_table, tmp_path, label_column="findings", label_separator="|")


def test_the_cache_is_read_as_a_memory_map_row_by_row(png_dataset, tmp_path):
    import pickle

    from datamodules.image_rows import Rows

    dm = _table_dm(png_dataset, tmp_path, split_column="split")
    dm.prepare_data()
    dm.setup()
    assert isinstance(dm.images, np.memmap)  # the whole decoded set stays on disk
    assert dm.train_set._tensor is None and isinstance(dm.train_set._lazy, Rows)
    first = np.flatnonzero(dm.split_of == "train")[0]
    expected = decode_image(png_dataset.parent / dm.records.paths[first], 28, 1)[0]
    np.testing.assert_array_equal(dm.train_set._lazy[0], expected)
    x, _ = dm.train_set[0]
    np.testing.assert_allclose(x[0].numpy(), expected / 127.5 - 1, atol=1e-6)  # normalization=half
    shipped = pickle.dumps(dm.train_set._lazy)  # what a DataLoader worker receives: the file name, not the pixels
    assert len(shipped) < dm.train_set._lazy.array.nbytes / 4
    np.testing.assert_array_equal(pickle.loads(shipped)[3], dm.train_set._lazy[3])


@pytest.mark.slow
def test_lazy_decoding_gives_the_cache_paths_metrics(png_dataset, tmp_path):
    def run(decode: str) -> dict:
        cfg = compose_cfg(["experiment=cnn_derma", "data=image_table", f"data.table={png_dataset}",
                           "data.split_column=split", "data.channels=1", "data.img_size=28", f"data.decode={decode}",
                           "trainer.max_epochs=2", *_own_overrides(tmp_path)[:-1],
                           f"hydra.run.dir={tmp_path / decode}"], tmp_path / decode)
        return train(cfg)

    cached, lazy = run("cache"), run("lazy")
    for key in ("test/acc", "test/auc", "val/loss"):
        assert lazy[key] == pytest.approx(cached[key], abs=1e-6), key


def test_lazy_random_resized_crop_reads_full_size_files_and_bad_settings_are_named(tmp_path):
    from datamodules.image_rows import FileImages
    from datamodules.transforms import channel_stats

    (tmp_path / "img").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):  # non-square 48 x 32 images
        Image.fromarray(rng.integers(0, 255, (32, 48), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
        rows.append({"path": f"img/{i}.png", "label": "ab"[i % 2]})
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    dm = _table_dm(tmp_path / "t.csv", tmp_path, decode="lazy", img_size=16, normalization="dataset",
                   augment={"random_resized_crop": [0.5, 1.0]})
    dm.prepare_data()
    dm.setup()
    train_images, val_images = dm.train_set._lazy, dm.val_set._lazy
    assert isinstance(train_images, FileImages) and train_images.size is None and train_images[0].shape == (32, 48)
    assert val_images.size == 16 and val_images[0].shape == (16, 16)  # evaluation: the cache path's square images
    assert dm.train_set[0][0].shape == (1, 16, 16)
    full = np.stack([np.asarray(Image.open(tmp_path / p)) for p in train_images.paths]) / 255.0
    mean, std = channel_stats(train_images)  # one full-size image at a time
    assert mean[0] == pytest.approx(full.mean(), abs=1e-9) and std[0] == pytest.approx(full.std(), abs=1e-9)
    with pytest.raises(ValueError, match=r"data.decode='lazy' is invalid.*data.on_device=false"):
        _table_dm(tmp_path / "t.csv", tmp_path, decode="lazy", on_device=True)
    with pytest.raises(ValueError, match=r"random_resized_crop=\[0.0, 1.0\] is invalid"):
        _table_dm(tmp_path / "t.csv", tmp_path, augment={"random_resized_crop": [0.0, 1.0]}).setup()
    (tmp_path / "img" / "3.png").write_bytes(b"not a png")  # lazy: found when read, named
    images = next(s._lazy for s in (dm.train_set, dm.val_set, dm.test_set) if "img/3.png" in s._lazy.paths)
    with pytest.raises(DatasetError, match=r"3.png cannot be decoded"):
        images[images.paths.index("img/3.png")]


def test_streamed_statistics_and_fingerprints_equal_the_whole_array_ones():
    import hashlib

    from datamodules.generated_set import train_fingerprint
    from datamodules.image_rows import Rows
    from datamodules.transforms import channel_stats

    rng = np.random.default_rng(0)
    for shape in ((1200, 8, 8), (1200, 8, 8, 3)):
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        index = rng.permutation(1200)[:1100]
        rows = Rows(images, index)
        picked = images[index].astype(np.float64) / 255
        axes = (0, 1, 2)
        mean, std = channel_stats(rows)
        np.testing.assert_allclose(mean, picked.mean(axis=axes).reshape(-1), atol=1e-12)
        np.testing.assert_allclose(std, picked.std(axis=axes).reshape(-1), atol=1e-9)
        labels = np.arange(1100)
        whole = hashlib.sha256(np.ascontiguousarray(images[index]).tobytes())
        whole.update(labels.astype(np.int64).tobytes())
        assert train_fingerprint(rows, labels) == whole.hexdigest()[:16] == train_fingerprint(images[index], labels)


def test_table_options_are_checked_before_reading_and_row_problems_come_together(tmp_path):
    """table_records parses (TableColumns: the options, checked when built, before the table is
    read), then validates the rows: every problem found is in one error, each naming its rows."""
    from datamodules.image_records import TableColumns, table_records
    from datamodules.medmnist_files import DatasetError

    with pytest.raises(ValueError, match="exactly one of data.label_column and data.label_columns"):
        TableColumns(label_column=None)
    with pytest.raises(ValueError, match="data.label_separator='|' splits multi-label cells"):
        TableColumns(label_separator="|")
    rows = [{"path": f"{i}.png", "label": "ab"[i % 2], "split": "train"} for i in range(6)]
    for i in range(6):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    rows[1]["label"] = ""  # blank label
    rows[3]["path"] = "2.png"  # listed twice
    rows[4]["split"] = "holdout"  # not a split
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DatasetError) as err:
        table_records(tmp_path / "t.csv", TableColumns(split_column="split"))
    message = str(err.value)
    assert message.startswith(f"{len(['blank', 'duplicate', 'split'])} problems")
    assert "line 3: 1.png" in message and "empty label cell" in message  # line 1 is the header
    assert "line 5: 2.png (also line 4: 2.png)" in message
    assert "line 6: 4.png (split='holdout')" in message
