"""data.intensity: 12/16-bit and float images mapped to 8 bits by a stated rule, each mode
against a hand computation; the rule is part of the decoded cache's key; fixed splits across
training seeds."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra.utils import instantiate
from PIL import Image

from datamodules import ImageTableDataModule
from datamodules.image_cache import cached_images, decode_image
from datamodules.intensity import IntensityConfig, map_intensity
from pipeline.cli import train
from tests.helpers import (
    assert_reported_test_metrics,
    compose_cfg,
    linear_map_by_hand,
    tiny_overrides,
)

GRADIENT_12 = np.arange(4096, dtype=np.uint16).reshape(64, 64)  # every 12-bit level once


def _with_sbit(png: Path, bits: int) -> None:
    """Insert a PNG ``sBIT`` chunk (significant bits) right after IHDR."""
    data = png.read_bytes()
    ihdr_end = 8 + 8 + 13 + 4
    body = b"sBIT" + bytes([bits])
    chunk = struct.pack(">I", 1) + body + struct.pack(">I", zlib.crc32(body))
    png.write_bytes(data[:ihdr_end] + chunk + data[ihdr_end:])


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_auto_keeps_the_grey_levels_of_12_bit_content_in_16_bit_files(suffix, tmp_path):
    Image.fromarray(GRADIENT_12).save(tmp_path / f"xray{suffix}")
    out, bits = decode_image(tmp_path / f"xray{suffix}", 64, 1)
    assert bits == 12 and out.dtype == np.uint8
    assert len(np.unique(out)) == 256  # divided by 257 (the old decoding) it had 16
    # Each value is the hand computation round(v * 255 / 4095).
    np.testing.assert_array_equal(out, linear_map_by_hand(GRADIENT_12, 0, 4095))


def test_auto_uses_the_bit_depth_the_file_declares(tmp_path):
    dim = (GRADIENT_12 // 4).astype(np.uint16)  # 12-bit data that never goes above 1023
    Image.fromarray(dim).save(tmp_path / "inferred.png")
    Image.fromarray(dim).save(tmp_path / "declared.png")
    _with_sbit(tmp_path / "declared.png", 12)
    Image.fromarray(dim).save(tmp_path / "declared.tif", tiffinfo={281: 4095})  # MaxSampleValue
    inferred, bits = decode_image(tmp_path / "inferred.png", 64, 1)
    assert bits == 10 and inferred.max() == 255  # inferred from the maximum: 10 bits
    for name in ("declared.png", "declared.tif"):
        out, bits = decode_image(tmp_path / name, 64, 1)
        assert bits == 12, name
        np.testing.assert_array_equal(out, linear_map_by_hand(dim, 0, 4095))
        assert out.max() == 64  # dim, as the data are, not stretched


def test_full_16_bit_range_and_8_bit_images_are_unchanged_by_auto(tmp_path):
    full = np.array([[0, 257, 65535, 32768]], np.uint16)
    out, bits = map_intensity(full, IntensityConfig())
    assert bits == 16 and out.tolist() == [[0, 1, 255, 128]]
    eight = np.array([[0, 17, 255]], np.uint8)
    assert map_intensity(eight, IntensityConfig())[0] is eight


def test_each_mode_against_a_hand_computation():
    v = np.array([[100, 200, 300], [400, 500, 1100]], np.uint16)
    minmax, _ = map_intensity(v, IntensityConfig(mode="minmax"))
    np.testing.assert_array_equal(minmax, [[0, 26, 51], [77, 102, 255]])  # (v - 100) * 255 / 1000
    exact, _ = map_intensity(v, IntensityConfig(mode="window", center=300, width=400, function="linear_exact"))
    np.testing.assert_array_equal(exact, [[0, 64, 128], [191, 255, 255]])  # [100, 500] -> [0, 255]
    window, _ = map_intensity(v, IntensityConfig(mode="window", center=300, width=400))  # linear, DICOM's default:
    np.testing.assert_array_equal(window, [[0, 64, 128], [192, 255, 255]])  # ((v - 299.5) / 399 + 0.5) * 255
    fixed, _ = map_intensity(v, IntensityConfig(mode="fixed", min=0, max=1000))
    np.testing.assert_array_equal(fixed, [[26, 51, 77], [102, 128, 255]])
    ramp = np.arange(101, dtype=np.float32)  # percentiles of 0..100 are the values themselves
    pct, _ = map_intensity(ramp, IntensityConfig(mode="percentile", low=10, high=90))
    np.testing.assert_array_equal(pct, linear_map_by_hand(ramp, 10, 90))
    assert pct[10] == 0 and pct[90] == 255 and pct[50] == 128
    flat, _ = map_intensity(np.full((4, 4), 7.0), IntensityConfig(mode="minmax"))
    assert flat.max() == 0


def test_float_and_signed_images_need_an_explicit_mode(tmp_path):
    values = np.linspace(-1000, 3000, 64 * 64, dtype=np.float32).reshape(64, 64)  # e.g. Hounsfield units
    Image.fromarray(values).save(tmp_path / "ct.tif")
    with pytest.raises(ValueError, match="no bit depth .* minmax, percentile, window or fixed"):
        decode_image(tmp_path / "ct.tif", 64, 1)
    exact = IntensityConfig(mode="window", center=40, width=400, function="linear_exact")
    out, _ = decode_image(tmp_path / "ct.tif", 64, 1, exact)
    np.testing.assert_array_equal(out, linear_map_by_hand(values, -160, 240))
    with pytest.raises(ValueError, match="signed pixel values"):
        map_intensity(np.array([[-5, 10]], np.int32), IntensityConfig())


@pytest.mark.parametrize("function", ["linear", "linear_exact", "sigmoid"])
def test_windows_of_other_images_match_pydicoms_windowing(function, tmp_path):
    """A window on a TIFF / PNG is the DICOM formula: our ``window_fraction`` against pydicom's
    ``apply_windowing`` (its output range [y_min, y_max] mapped to 0..255 by the same rule).
    The two compute in a different order: at most 1 grey level apart (rounding at .5)."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.pixels import apply_windowing

    values = np.linspace(-1000, 3000, 64 * 64).reshape(64, 64)
    ds = pydicom.Dataset()
    ds.PhotometricInterpretation, ds.BitsStored, ds.PixelRepresentation = "MONOCHROME2", 16, 1
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 40.0, 400.0, function.upper()
    y_min, y_max = -(2**15), 2**15 - 1  # PS3.3 C.11.2.1.2: the signed 16-bit output range, by hand
    reference = linear_map_by_hand(apply_windowing(values, ds), y_min, y_max)
    ours, _ = map_intensity(values, IntensityConfig(mode="window", center=40, width=400, function=function))
    assert np.abs(ours - reference).max() <= 1 and (ours == reference).mean() > 0.99
    assert len(np.unique(ours)) > 200  # the window spans the grey levels


def test_several_windows_of_a_16_bit_image_become_channels(tmp_path):
    hu = np.linspace(-1024, 3000, 64 * 64).reshape(64, 64)
    Image.fromarray((hu + 1024).astype(np.uint16)).save(tmp_path / "ct.png")  # HU + 1024, as CT PNG exports
    windows = [{"center": 1064, "width": 80}, {"center": 1104, "width": 200}, {"center": 1624, "width": 2800}]
    cfg = IntensityConfig(mode="window", windows=windows)
    out, _ = decode_image(tmp_path / "ct.png", 64, 3, cfg)
    assert out.shape == (64, 64, 3)
    for c, w in enumerate(windows):
        single = IntensityConfig(mode="window", center=w["center"], width=w["width"])
        np.testing.assert_array_equal(out[..., c], decode_image(tmp_path / "ct.png", 64, 1, single)[0])
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="data.intensity.windows window grayscale values; this image is RGB"):
        decode_image(tmp_path / "rgb.png", 8, 3, cfg)


def test_modes_apply_to_8_bit_rgb_images_too(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = np.arange(64).reshape(8, 8) + 50
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    out, _ = decode_image(tmp_path / "rgb.png", 8, 3, IntensityConfig(mode="minmax"))
    np.testing.assert_array_equal(out[..., 0], linear_map_by_hand(rgb[..., 0], 0, 113))  # min 0 (green), max 113


@pytest.mark.parametrize(("settings", "message"), [
    ({"mode": "gamma"}, "mode must be one of"),
    ({"mode": "window", "center": 40}, "window mode needs both center and width"),
    ({"mode": "fixed", "min": 10, "max": 10}, "fixed mode needs min < max"),
    ({"mode": "percentile", "low": 99, "high": 1}, "0 <= low < high <= 100"),
])
def test_invalid_settings_name_the_key_and_the_fix(settings, message):
    with pytest.raises(ValueError, match=message) as err:
        IntensityConfig(**settings)
    assert "data.intensity=" in str(err.value)


def test_auto_uses_one_depth_for_the_dataset_and_the_cache_key_includes_the_mapping(tmp_path, caplog):
    root = tmp_path / "images"
    root.mkdir()
    Image.fromarray(GRADIENT_12).save(root / "a.png")
    Image.fromarray((GRADIENT_12 // 4).astype(np.uint16)).save(root / "b.png")  # a dark image: looks 10-bit
    args = (root, ["a.png", "b.png"], ["a", "b"], "test", 32, 1, tmp_path / "cache")
    with caplog.at_level(logging.WARNING):
        auto, hit = cached_images(*args)
    assert not hit and "different bit depths" not in caplog.text
    alone, bits = decode_image(root / "b.png", 32, 1)
    assert bits == 10 and alone.max() >= 250  # on its own it would be stretched 4x ...
    assert 60 <= auto[1].max() <= 64 and auto[0].max() >= 250  # ... in the dataset it keeps the 12-bit scale
    assert cached_images(*args)[1]  # same mapping: read from the cache
    fixed, hit = cached_images(*args, IntensityConfig(mode="fixed", min=0, max=4095))
    assert not hit  # another mapping is never served from the auto cache
    np.testing.assert_array_equal(fixed, auto)  # here auto's dataset depth is 12 bits: the same mapping
    assert len(list((tmp_path / "cache").glob("images-*.npy"))) == 2  # both mappings kept
    _with_sbit(root / "b.png", 10)  # declared depths that differ: one scale is impossible, say so
    with caplog.at_level(logging.WARNING):
        cached_images(*args)
    assert "different bit depths {10: 1, 12: 1}" in caplog.text


def test_16_bit_table_trains_with_its_grey_levels(tmp_path):
    """A table of 12-bit PNGs through data=image_table: the datamodule's images span 0..255."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        label = i % 2
        img = np.clip(rng.normal(1200 + 1800 * label, 300, (16, 16)), 0, 4095).astype(np.uint16)
        Image.fromarray(img).save(tmp_path / f"x{i}.png")
        rows.append({"path": f"x{i}.png", "label": label})
    pd.DataFrame(rows).to_csv(tmp_path / "table.csv", index=False)
    dm = ImageTableDataModule(table=str(tmp_path / "table.csv"), channels=1, img_size=16, cache_dir=None,
                              intensity={"mode": "fixed", "min": 0, "max": 4095},
                              fractions={"train": 0.6, "val": 0.2, "test": 0.2})
    dm.setup()
    means = [dm.images[dm.records.labels == c].mean() for c in (0, 1)]
    assert means[0] == pytest.approx(1200 * 255 / 4095, abs=6) and means[1] == pytest.approx(3000 * 255 / 4095, abs=6)
    cfg = compose_cfg(["experiment=cnn_derma", "data=image_table", f"data.table={tmp_path / 'table.csv'}",
                       *tiny_overrides(tmp_path)[3:], "data.channels=1", "data.img_size=16", "data.cache_dir=null",
                       "data.intensity.mode=fixed", "data.intensity.min=0", "data.intensity.max=4095",
                       "debug=fdr"], tmp_path / "run")
    assert_reported_test_metrics(tmp_path / "run", train(cfg))
    assert "mode: fixed" in (tmp_path / "run" / "config.yaml").read_text()  # the rule is in the run's config


def test_own_data_splits_stay_fixed_across_training_seeds(tmp_path):
    """data.split_seed is a constant by default: two training seeds share splits.csv."""
    rows = []
    for i in range(40):
        Image.fromarray(np.full((16, 16), 40 + 150 * (i % 2), np.uint8)).save(tmp_path / f"x{i}.png")
        rows.append({"path": f"x{i}.png", "label": i % 2})
    pd.DataFrame(rows).to_csv(tmp_path / "table.csv", index=False)
    splits = []
    for seed in (1, 2):  # the runs' datamodules, as train() builds them (the split needs no training)
        cfg = compose_cfg(["experiment=cnn_derma", "data=image_table", f"data.table={tmp_path / 'table.csv'}",
                           *tiny_overrides(tmp_path)[3:], "data.channels=1", "data.img_size=16",
                           "data.cache_dir=null", f"seed={seed}", f"data.splits_file={tmp_path}/splits{seed}.csv"],
                          tmp_path / f"run{seed}")
        assert cfg.data.split_seed == 0 and cfg.data.shuffle_seed == seed
        dm = instantiate(cfg.data, _convert_="all")
        dm.setup("fit")
        splits.append((tmp_path / f"splits{seed}.csv").read_text())
    assert splits[0] == splits[1]
    assert {row.split(",")[3] for row in splits[0].splitlines()[1:]} == {"train", "val", "test"}


def test_non_square_images_keep_their_aspect_ratio_by_default(tmp_path):
    wide = np.tile((np.arange(40) * 6).astype(np.uint8), (20, 1))  # 40 wide, 20 high; value = 6 x column
    Image.fromarray(wide).save(tmp_path / "wide.png")
    crop, _ = decode_image(tmp_path / "wide.png", 10, 1)  # shorter side -> 10 (20 x 10), centre 10 columns
    assert abs(int(crop[:, 0].mean()) - 6 * 10.5) <= 8 and abs(int(crop[:, -1].mean()) - 6 * 28.5) <= 8
    pad, _ = decode_image(tmp_path / "wide.png", 10, 1, resize="pad")  # longer side -> 10 (10 x 5), rows 2-6
    assert pad[[0, 1, 7, 8, 9]].max() == 0  # black borders above and below
    assert pad[2:7, 0].max() < 20 and pad[2:7, -1].min() > 200  # the whole width is there
    stretch, _ = decode_image(tmp_path / "wide.png", 10, 1, resize="stretch")
    assert stretch[:, 0].max() < 20 and stretch[:, -1].min() > 200 and stretch[0].tolist() == stretch[9].tolist()
    with pytest.raises(ValueError, match="data.resize='squash' is invalid"):
        decode_image(tmp_path / "wide.png", 10, 1, resize="squash")
