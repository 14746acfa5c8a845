"""DICOM through pydicom: files generated here (no downloads), decoded pixels against a hand
computation (rescale, window, MONOCHROME1), multi-frame and compressed data refused with the
fix, and a DICOM image folder that trains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid  # noqa: E402

from datamodules.image_cache import decode_image  # noqa: E402
from datamodules.intensity import IntensityConfig  # noqa: E402
from pipeline.cli import train  # noqa: E402
from tests.conftest import compose_cfg, tiny_overrides  # noqa: E402
from tests.test_intensity import _hand  # noqa: E402  (the written-out mapping)


def write_dicom(path: Path, stored: np.ndarray, photometric: str = "MONOCHROME2", slope: float = 1.0,
                intercept: float = 0.0, window: tuple[float, float] | None = None, frames: int = 1,
                syntax=ExplicitVRLittleEndian) -> Path:
    """A 12-bit-in-16 grayscale DICOM file of ``stored`` (uint16 (H, W) or (F, H, W))."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if frames > 1:
        ds.NumberOfFrames = frames
    if syntax == ExplicitVRLittleEndian:
        ds.PixelData = stored.astype("<u2").tobytes()
    else:  # a compressed syntax whose data no installed decoder can read
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([b"\xff\xd8 not a jpeg \xff\xd9"])
    ds.save_as(path, enforce_file_format=True)
    return path


STORED = (np.arange(64 * 64) % 4096).astype(np.uint16).reshape(64, 64)


def test_rescale_window_and_monochrome1_against_a_hand_computation(tmp_path):
    # CT-like: HU = 2 x stored - 1024; the file's window c=40, w=400 -> [-160, 240] HU
    path = write_dicom(tmp_path / "ct.dcm", STORED, slope=2.0, intercept=-1024.0, window=(40.0, 400.0))
    hu = STORED * 2.0 - 1024.0
    auto, bits = decode_image(path, 64, 1)
    assert bits is None
    np.testing.assert_array_equal(auto, _hand(hu, -160, 240))
    own = decode_image(path, 64, 1, IntensityConfig(mode="window"))[0]  # window without values: the file's
    np.testing.assert_array_equal(own, auto)
    lung = decode_image(path, 64, 1, IntensityConfig(mode="window", center=-600, width=1500))[0]
    np.testing.assert_array_equal(lung, _hand(hu, -1350, 150))
    fixed = decode_image(path, 64, 1, IntensityConfig(mode="fixed", min=-1024, max=7166))[0]
    np.testing.assert_array_equal(fixed, _hand(hu, -1024, 7166))
    inverted = write_dicom(tmp_path / "m1.dcm", STORED, photometric="MONOCHROME1")  # no window: min-max
    np.testing.assert_array_equal(decode_image(inverted, 64, 1)[0], 255 - _hand(STORED, 0, 4095))


def test_multi_frame_and_undecodable_compressed_files_name_the_fix(tmp_path):
    multi = write_dicom(tmp_path / "cine.dcm", np.stack([STORED, STORED]), frames=2)
    with pytest.raises(ValueError, match="multi-frame DICOM \\(2 frames\\).*one frame per file"):
        decode_image(multi, 64, 1)
    jpeg = write_dicom(tmp_path / "jpeg.dcm", STORED, syntax=JPEGBaseline8Bit)
    with pytest.raises(ValueError, match="install a decoder plugin \\(pip install pylibjpeg"):
        decode_image(jpeg, 64, 1)
    with pytest.raises(ValueError, match="this file is not DICOM"):  # a PNG has no window of its own
        from PIL import Image

        Image.fromarray(STORED).save(tmp_path / "x.png")
        decode_image(tmp_path / "x.png", 64, 1, IntensityConfig(mode="window"))


def test_a_dicom_image_folder_trains(tmp_path):
    rng = np.random.default_rng(0)
    for label, level in (("normal", 800), ("effusion", 3000)):
        (tmp_path / "dcm" / label).mkdir(parents=True)
        for i in range(12):
            stored = np.clip(rng.normal(level, 200, (32, 32)), 0, 4095).astype(np.uint16)
            kind = "MONOCHROME1" if i % 2 else "MONOCHROME2"
            write_dicom(tmp_path / "dcm" / label / f"{i}.dcm", stored, photometric=kind,
                        slope=1.0, intercept=0.0, window=(2000.0, 4000.0))
    cfg = compose_cfg(["experiment=cnn_derma", "data=image_folder", f"data.root={tmp_path / 'dcm'}",
                       *tiny_overrides(tmp_path)[3:], "data.channels=1", "data.img_size=16", "data.cache_dir=null",
                       "debug=fdr"], tmp_path / "run")
    assert "test/acc" in train(cfg)
