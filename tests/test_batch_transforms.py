"""The batched on-device transforms against torchvision's per-image pipeline: exact where the
operation is deterministic, the same distribution where it is random."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as scistats
from torchvision.transforms.v2 import functional as TF

from datamodules.batch_transforms import (
    BatchTransform,
    expanded_size,
    random_crop,
    random_erasing,
    resize,
    rotate,
)
from datamodules.transforms import AugmentConfig, build_transform

STATS = ([0.5, 0.4, 0.3], [0.25, 0.2, 0.3])


def _image(size: int = 28, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """A uint8 (C, H, W) image with structure (a diagonal ramp) and noise, so that flips,
    crops and rotations all change the pixel statistics."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 200, size)[None, :, None] + torch.linspace(0, 50, size)[None, None, :]
    return (ramp + torch.randint(0, 50, (channels, size, size), generator=g)).clamp(0, 255).to(torch.uint8)


def _draws(cfg: AugmentConfig | None, img_size: int, n: int, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """n augmentations of one image by torchvision (one call per image) and by the batched path."""
    torch.manual_seed(1)
    per_image = build_transform(img_size, image.shape[-1], STATS, cfg)
    cpu = torch.stack([per_image(image.float() / 255.0) for _ in range(n)])
    torch.manual_seed(2)
    batched = BatchTransform(img_size, STATS, cfg)(image.expand(n, -1, -1, -1).clone())
    return cpu, batched


def _max_z(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest two-sample z statistic of the per-pixel means (over all C x H x W pixels)."""
    n = len(a)
    se = ((a.var(0) + b.var(0)) / n).sqrt().clamp_min(1e-6)
    return ((a.mean(0) - b.mean(0)).abs() / se).max().item()


def test_evaluation_transform_is_exact(data_root):
    images = torch.stack([_image(seed=s) for s in range(5)])
    for img_size in (28, 32, 20):
        ref = torch.stack([build_transform(img_size, 28, STATS, None)(im.float() / 255.0) for im in images])
        out = BatchTransform(img_size, STATS)(images)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    x = images.float() / 255
    torch.testing.assert_close(resize(x, 56), torch.stack([TF.resize(im, [56, 56]) for im in x]))


@pytest.mark.parametrize("size", [28, 27])
@pytest.mark.parametrize("angle", [10.0, -37.0, 90.0, 145.0, -179.0])
def test_rotation_matches_torchvision_pixel_for_pixel(angle, size):
    x = _image(size).float()[None] / 255
    torch.testing.assert_close(rotate(x, torch.tensor([angle]))[0], TF.rotate(x[0], angle), atol=0, rtol=0)
    expanded = TF.rotate(x[0], angle, expand=True)
    canvas = int(expanded_size(torch.tensor([angle]), size))
    assert canvas == expanded.shape[-1]
    torch.testing.assert_close(rotate(x, torch.tensor([angle]), canvas)[0], expanded, atol=0, rtol=0)


def test_random_crop_outputs_crops_at_uniform_offsets():
    torch.manual_seed(0)
    x = torch.rand(4000, 1, 12, 12)
    out = random_crop(x, 2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    crops = torch.stack([padded[..., i:i + 12, j:j + 12] for i in range(5) for j in range(5)], 1)  # (N, 25, ...)
    match = (crops == out[:, None]).flatten(2).all(-1)
    assert match.any(1).all()  # every output is a crop of its padded image
    counts = np.bincount(match.float().argmax(1).numpy(), minlength=25)
    assert scistats.chisquare(counts).pvalue > 1e-3  # offsets uniform over the 5 x 5 positions


def test_erasing_box_distribution_matches_torchvision():
    n = 3000
    x = torch.ones(n, 1, 20, 20)
    torch.manual_seed(0)
    ours = (random_erasing(x, 0.6) == 0).flatten(1).float().mean(1)
    torch.manual_seed(1)
    erase = build_transform(20, 20, None, AugmentConfig(erasing=0.6))
    theirs = torch.stack([(erase(im) == 0).float().mean() for im in x])
    assert abs((ours > 0).float().mean() - (theirs > 0).float().mean()) < 0.04  # erase rate ~0.6
    assert scistats.ks_2samp(ours[ours > 0].numpy(), theirs[theirs > 0].numpy()).pvalue > 1e-3  # box areas


def test_erasing_box_placement_matches_torchvision():
    """Where the boxes land: per-pixel erase frequencies (placement, not only area)."""
    n = 3000
    x = torch.ones(n, 1, 20, 20)
    torch.manual_seed(0)
    ours = (random_erasing(x, 1.0) == 0).float()
    torch.manual_seed(1)
    erase = build_transform(20, 20, None, AugmentConfig(erasing=1.0))
    theirs = torch.stack([(erase(im) == 0).float() for im in x])
    assert _max_z(ours, theirs) < 5.5
    shifted = torch.roll(ours, shifts=1, dims=-1)  # the comparison sees a one-pixel placement error
    assert _max_z(shifted, theirs) > 6


AUGMENTS = {
    "crop_flips": (AugmentConfig(crop_padding=3, hflip=True, vflip=True), 28),
    "rotation_half_the_time": (AugmentConfig(rotation=30.0, rotation_p=0.5), 28),
    "rotation_expand_any_angle": (AugmentConfig(rotation=180.0, rotation_expand=True), 28),
    "erasing": (AugmentConfig(erasing=0.5), 28),
    "everything_with_resize": (AugmentConfig(crop_padding=4, hflip=True, rotation=15.0, erasing=0.25), 32),
}


# The combinations cost the most (torchvision augments 2,500 images one by one); each of their
# parts keeps a default test here, expansion is pixel-exact above, resizing exact in the first test.
SLOW_AUGMENTS = ("rotation_expand_any_angle", "everything_with_resize")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_AUGMENTS else n
                                  for n in AUGMENTS])
def test_batched_augmentation_has_torchvisions_pixel_statistics(name):
    cfg, img_size = AUGMENTS[name]
    cpu, batched = _draws(cfg, img_size, 2500, _image())
    assert cpu.shape == batched.shape == (2500, 3, img_size, img_size)
    # Means per pixel: 2,352-3,072 z statistics, whose maximum stays below ~4.5 for equal laws.
    assert _max_z(cpu, batched) < 5.5
    # Spread per pixel, and the share of zeroed (padded / erased / rotated-out) pixels.
    torch.testing.assert_close(batched.std(0).mean(), cpu.std(0).mean(), rtol=0.03, atol=0)
    zero = -torch.tensor(STATS[0])[:, None, None] / torch.tensor(STATS[1])[:, None, None]
    padded = lambda t: ((t - zero).abs() < 1e-6).float().mean()  # noqa: E731
    assert abs(padded(batched) - padded(cpu)) < 0.01
    assert abs((batched == 0).float().mean() - (cpu == 0).float().mean()) < 0.01


def test_the_statistical_comparison_detects_a_different_distribution():
    """The comparison above has power: a batched pipeline that never flips is caught."""
    image = _image()
    cpu, _ = _draws(AugmentConfig(hflip=True), 28, 2500, image)
    _, batched = _draws(AugmentConfig(), 28, 2500, image)
    assert _max_z(cpu, batched) > 20
    cpu, _ = _draws(AugmentConfig(rotation=30.0, rotation_p=0.5), 28, 2500, image)
    _, batched = _draws(AugmentConfig(rotation=30.0, rotation_p=1.0), 28, 2500, image)
    assert _max_z(cpu, batched) > 6


@pytest.mark.parametrize(("option", "named"), [
    ({"rotation": 200.0}, r"data\.augment\.rotation=200\.0"), ({"rotation": -5.0}, r"data\.augment\.rotation=-5\.0"),
    ({"rotation": 30.0, "rotation_p": 0.0}, r"rotation_p=0\.0"), ({"erasing": 1.5}, r"data\.augment\.erasing=1\.5"),
    ({"crop_padding": -1}, r"data\.augment\.crop_padding=-1"),
    ({"random_resized_crop": [0.5, 0.2]}, r"data\.augment\.random_resized_crop=\[0\.5, 0\.2\]"),
])
def test_invalid_augmentation_is_rejected_when_built_naming_the_key(option, named):
    """Both paths (per image and batched) take only a checked AugmentConfig: the error comes
    when the config is built, before either transform exists."""
    with pytest.raises(ValueError, match=named):
        AugmentConfig(**option)
    assert AugmentConfig(rotation=180.0, rotation_p=0.5).rotation == 180.0  # the edges are allowed
