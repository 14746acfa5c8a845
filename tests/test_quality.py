"""synthesis/quality.py: the synthetic-set quality report on small hand-made sets (CPU, seconds)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from unittest import mock

import matplotlib.image
import numpy as np
import pytest

from datamodules.generated_set import file_sha256
from datamodules.medmnist_files import medmnist_info
from datamodules.synthetic import make_synthetic_arrays
from pipeline.cli import train
from synthesis.quality import quality_report
from tests.helpers import compose_cfg, tiny_overrides

PNEUMONIA = [medmnist_info("pneumoniamnist")["label"][str(i)] for i in range(2)]
FIGURES = ("samples.png", "nn_distances.png", "closest_pairs.png")


def dark_bright(seed: int, n_per_class: int = 60, noise: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """Class 0 dark, class 1 bright 28 x 28 gray images with pixel noise: uint8 (N, 28, 28), labels (N, 1)."""
    rng = np.random.default_rng(seed)
    means = np.repeat([60.0, 190.0], n_per_class)
    images = np.clip(means[:, None, None] + rng.normal(0, noise, (len(means), 28, 28)), 0, 255).astype(np.uint8)
    return images, np.repeat([0, 1], n_per_class).reshape(-1, 1)


def write_set(path: Path, images: np.ndarray, labels: np.ndarray, class_names: list[str] = PNEUMONIA,
              **card_changes) -> Path:
    """``path`` (.npz) and its card, as synthesize.py writes them; ``card_changes`` override card keys."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1, 1)
    np.savez(path, train_images=images, train_labels=labels)
    card = {"format": "medmae-synthetic-v1", "data_source": "MedMNIST pneumoniamnist",
            "num_classes": len(class_names), "class_names": class_names, "image_size": images.shape[1],
            "channels": 1 if images.ndim == 3 else 3,
            "counts": {str(c): int((labels == c).sum()) for c in range(len(class_names))},
            "checkpoint": "/runs/diffusion/last.ckpt", "seed": 0, "steps": 50, "guidance_scale": 2.0,
            "sha256": file_sha256(path), **card_changes}
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


@pytest.fixture(scope="module")
def classifier_ckpt(data_root, tmp_path_factory) -> Path:
    """A CNN trained (one fast_dev_run batch) on the synthetic pneumoniamnist file of ``data_root``."""
    run = tmp_path_factory.mktemp("classifier")
    cfg = compose_cfg(["experiment=quickstart", *tiny_overrides(data_root), "data=pneumoniamnist", "debug=fdr"], run)
    return Path(train(cfg)["best_checkpoint"])


@pytest.fixture(scope="module")
def pneumonia_train(data_root) -> tuple[np.ndarray, np.ndarray]:
    with np.load(data_root / "pneumoniamnist.npz") as f:
        return f["train_images"], f["train_labels"]


def test_report_with_classifier_writes_tables_figures_and_keys(classifier_ckpt, pneumonia_train, tmp_path):
    real, real_y = pneumonia_train
    fresh = make_synthetic_arrays(num_classes=2, channels=1, n_train=40, n_val=2, n_test=2, seed=7)
    keep = fresh["train_labels"].reshape(-1) == 0  # only "normal" was generated: "pneumonia" shows "-"
    npz = write_set(tmp_path / "synthetic.npz", fresh["train_images"][keep], fresh["train_labels"][keep])

    figures = quality_report(npz, real, real_y, PNEUMONIA, tmp_path / "quality", classifier_ckpt=classifier_ckpt)

    out = tmp_path / "quality"
    report = (out / "report.md").read_text()
    for name in FIGURES:
        assert f"]({name})" in report
        assert matplotlib.image.imread(out / name).ndim == 3
    for section in ("Classifier check", "FID / KID", "Memorisation", "Samples", "Protocol:"):
        assert section in report
    assert "/runs/diffusion/last.ckpt" in report and "guidance scale | 2.0" in report
    assert "DermaCNN features (not Inception: not comparable to published FIDs)" in report
    assert 0 <= figures["classifier/acc_synthetic/normal"] <= 1
    assert math.isnan(figures["classifier/acc_synthetic/pneumonia"])
    assert "| pneumonia | 0 | - |" in report
    assert all(0 <= figures[f"classifier/acc_real/{n}"] <= 1 for n in PNEUMONIA)
    assert figures["n_synthetic"] == figures["n_real"] == keep.sum()
    assert math.isfinite(figures["fid_judge"]) and math.isfinite(figures["kid_judge_mean"]) and "kid_judge_std" in figures
    assert math.isfinite(figures["fid_judge/normal"]) and "fid_judge/pneumonia" not in figures  # none generated
    assert figures["nn/synthetic_median/normal"] > 0 and figures["nn/real_median/pneumonia"] > 0
    # another generator's images: flagged about as often as real pairs fall under the 1st percentile
    assert figures["nn/copy_fraction"] == figures["nn/copies"] / figures["n_synthetic"] <= 0.1


def test_exact_copies_are_flagged_and_fresh_images_are_not(tmp_path):
    real, real_y = dark_bright(seed=0)
    copies = quality_report(write_set(tmp_path / "copies.npz", real, real_y), real, real_y, PNEUMONIA,
                            tmp_path / "copies")
    assert copies["nn/copy_fraction"] == 1.0 and copies["nn/synthetic_median/normal"] == 0.0
    assert "FID / KID skipped" in (tmp_path / "copies" / "report.md").read_text()

    fresh, fresh_y = dark_bright(seed=1)
    new = quality_report(write_set(tmp_path / "fresh.npz", fresh, fresh_y), real, real_y, PNEUMONIA,
                         tmp_path / "fresh")
    assert new["nn/copy_fraction"] < 0.1
    for name in PNEUMONIA:  # fresh images of the same distribution: as far from the real ones as those are apart
        assert new[f"nn/synthetic_median/{name}"] == pytest.approx(new[f"nn/real_median/{name}"], rel=0.2)


@pytest.mark.slow
def test_fid_is_zero_for_identical_sets_and_larger_for_a_different_set(classifier_ckpt, tmp_path):
    real, real_y = dark_bright(seed=0, n_per_class=30)
    same = quality_report(write_set(tmp_path / "same.npz", real, real_y), real, real_y, PNEUMONIA, tmp_path / "same",
                          classifier_ckpt=classifier_ckpt)
    stripes = real.copy()
    stripes[:, ::4] = 255  # clearly different: bright horizontal lines over every image
    other = quality_report(write_set(tmp_path / "other.npz", stripes, real_y), real, real_y, PNEUMONIA,
                           tmp_path / "other", classifier_ckpt=classifier_ckpt)
    assert abs(same["fid_judge"]) < 1e-3 and abs(same["kid_judge_mean"]) < 1e-3
    assert other["fid_judge"] > 100 * max(abs(same["fid_judge"]), 1e-6)  # the fast_dev_run CNN has small features
    assert other["kid_judge_mean"] > same["kid_judge_mean"]
    for name in PNEUMONIA:  # per class too
        assert abs(same[f"fid_judge/{name}"]) < 1e-3 < other[f"fid_judge/{name}"]


def test_fid_compares_like_with_like_not_the_class_mix(classifier_ckpt, tmp_path):
    """Synthetic images of the minority class only (copies of the real bright ones): per class and
    class-matched they are identical to the real ones (FID 0); against the whole training split,
    which is half dark, they would not be."""
    real, real_y = dark_bright(seed=0, n_per_class=30)
    bright = real_y.reshape(-1) == 1
    figures = quality_report(write_set(tmp_path / "minority.npz", real[bright], real_y[bright]), real, real_y,
                             PNEUMONIA, tmp_path / "minority", classifier_ckpt=classifier_ckpt)
    assert abs(figures["fid_judge"]) < 1e-3 and abs(figures["fid_judge/pneumonia"]) < 1e-3
    assert "fid_judge/normal" not in figures
    from synthesis.quality import classifier_space, fid_kid, load_classifier_view

    view = load_classifier_view(classifier_ckpt, 2, 28, 1)
    space = classifier_space(view, 28, 1, torch_device())
    unmatched = fid_kid(space, real, real[bright], torch_device(), 0)["fid"]
    assert unmatched > 100 * max(abs(figures["fid_judge"]), 1e-6)  # what the old pooled FID measured


def torch_device():
    import torch

    return torch.device("cpu")


@pytest.mark.parametrize(("change", "message"), [
    ({"num_classes": 3}, "num_classes 3 vs 2"),
    ({"image_size": 64}, "image_size 64 vs 28"),
    ({"class_names": ["a", "b"]}, "class_names"),
    ({"counts": {"0": 1, "1": 0}}, "card counts [1, 0] but the file holds [60, 60]"),
])
def test_card_that_does_not_fit_raises_one_readable_error(change, message, tmp_path):
    real, real_y = dark_bright(seed=0)
    npz = write_set(tmp_path / "synthetic.npz", real, real_y, **change)
    with pytest.raises(ValueError, match="synthetic") as err:
        quality_report(npz, real, real_y, PNEUMONIA, tmp_path / "out")
    assert message in str(err.value)
    assert not (tmp_path / "out" / "report.md").exists()


def test_missing_card_or_file_raises_value_error(tmp_path):
    real, real_y = dark_bright(seed=0)
    npz = write_set(tmp_path / "synthetic.npz", real, real_y)
    npz.with_suffix(".json").unlink()
    with pytest.raises(ValueError, match="synthetic.json does not exist"):
        quality_report(npz, real, real_y, PNEUMONIA, tmp_path / "out")
    with pytest.raises(ValueError, match="absent.npz does not exist"):
        quality_report(tmp_path / "absent.npz", real, real_y, PNEUMONIA, tmp_path / "out")


@pytest.mark.slow
def test_inception_features_come_from_the_local_weights_file(tmp_path):
    import torch
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    # a random-init weights file in torch-fidelity's format (the real one would be downloaded)
    with mock.patch.object(tf_inception, "load_state_dict_from_url", return_value={}), \
            mock.patch.object(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None):
        net = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    weights = tmp_path / "inception.pth"
    torch.save(net.state_dict(), weights)
    real, real_y = dark_bright(seed=0, n_per_class=2)  # Inception runs at 299 px: keep it to 4 + 4 images
    npz = write_set(tmp_path / "synthetic.npz", *dark_bright(seed=1, n_per_class=2))

    figures = quality_report(npz, real, real_y, PNEUMONIA, tmp_path / "out", inception_weights=weights)

    report = (tmp_path / "out" / "report.md").read_text()
    assert "FID/KID on Inception-v3" in report and "not comparable" not in report
    assert "subsets of 4" in report  # KID subset size <= the number of images
    assert math.isfinite(figures["fid_inception"]) and math.isfinite(figures["kid_inception_mean"])
