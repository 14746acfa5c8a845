"""DICOM through the standard's grayscale pipeline, with pydicom's own functions as the reference.

Files are written here (no downloads). The reference of every branch is pydicom's
``apply_modality_lut`` then ``apply_voi_lut`` (and ``apply_presentation_lut``) on the file,
its float output mapped to 0..255 by the stated rule, computed by hand here: a window's
output range [y_min, y_max] is PS3.3's (Bits Stored, Pixel Representation, rescale), a VOI
LUT's is [0, 2**bits - 1]; ``round((y - y_min) * 255 / (y_max - y_min))``, halves up.
Both sides run the same float operations, so the tests ask for exact equality (no rounding
slack).
"""

from __future__ import annotations

import csv
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.pixels import (  # noqa: E402
    apply_modality_lut,
    apply_presentation_lut,
    apply_voi_lut,
    pixel_array,
)
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid  # noqa: E402

from datamodules import ImageFolderDataModule  # noqa: E402
from datamodules.dicom import read_dicom  # noqa: E402
from datamodules.image_cache import decode_image  # noqa: E402
from datamodules.intensity import IntensityConfig  # noqa: E402
from pipeline.cli import train  # noqa: E402
from tests.helpers import compose_cfg, linear_map_by_hand, tiny_overrides  # noqa: E402


def write_dicom(path: Path, stored: np.ndarray, photometric: str = "MONOCHROME2", slope: float | None = 1.0,
                intercept: float | None = 0.0, window: tuple[float, float] | None = None, frames: int = 1,
                syntax=ExplicitVRLittleEndian, signed: bool = False, bits: int = 12, **tags) -> Path:
    """A grayscale DICOM file of ``stored`` ((H, W) or (F, H, W)), ``bits`` stored in 16;
    ``tags`` are set as they are (e.g. ``VOILUTFunction="SIGMOID"``, ``PresentationLUTShape``)."""
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
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, int(signed)
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if frames > 1:
        ds.NumberOfFrames = frames
    for key, value in tags.items():
        setattr(ds, key, value)
    if syntax == ExplicitVRLittleEndian:
        ds.PixelData = stored.astype("<i2" if signed else "<u2").tobytes()
    else:  # a compressed syntax whose data no installed decoder can read
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([b"\xff\xd8 not a jpeg \xff\xd9"])
    ds.save_as(path, enforce_file_format=True)
    return path


def voi_lut_item(first: int, values: np.ndarray, bits: int = 16) -> Dataset:
    """A VOI (or Modality) LUT Sequence item: LUT Descriptor [entries, first input value, bits],
    data as OW."""
    item = Dataset()
    item.add_new(0x00283002, "US", [len(values), first, bits])  # LUT Descriptor
    item.add_new(0x00283006, "OW", values.astype("<u2").tobytes())  # LUT Data
    return item


def window_range(ds) -> tuple[float, float]:
    """PS3.3 C.11.2.1.2: the output range of a window, by hand (unsigned or signed Bits Stored,
    through the rescale; after a Modality LUT Sequence its unsigned output, C.11.1.1.1)."""
    if ds.get("ModalityLUTSequence"):
        return 0, 2 ** ds.ModalityLUTSequence[0].LUTDescriptor[2] - 1
    b = int(ds.BitsStored)
    low, high = (-(2 ** (b - 1)), 2 ** (b - 1) - 1) if ds.PixelRepresentation else (0, 2**b - 1)
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    return low * slope + intercept, high * slope + intercept


def reference(path: Path, frame: int | None = None, ds=None) -> np.ndarray:
    """pydicom's modality LUT then VOI LUT on the file (or ``ds``), mapped by the stated rule."""
    ds = pydicom.dcmread(path) if ds is None else ds
    stored = ds.pixel_array if frame is None else ds.pixel_array[frame]
    with warnings.catch_warnings():  # "VOI LUT on a float input": the modality values are integers here
        warnings.simplefilter("ignore", UserWarning)
        voi = apply_voi_lut(apply_modality_lut(stored, ds), ds)  # pydicom: the LUT before the window
    if ds.get("VOILUTSequence"):
        return linear_map_by_hand(voi, 0, 2 ** ds.VOILUTSequence[0].LUTDescriptor[2] - 1).astype(np.uint8)
    return linear_map_by_hand(voi, *window_range(ds)).astype(np.uint8)


GRID = np.arange(64 * 64).reshape(64, 64)
STORED = (GRID % 4096).astype(np.uint16)  # every 12-bit value
CT_STORED = (GRID * 7 % 4096 - 2048).astype(np.int16)  # every signed 12-bit value, shuffled


def test_voi_lut_sequence_is_applied_to_the_rescaled_values(tmp_path):
    # slope 2: modality values 0..8190; a 8192-entry LUT (a gamma curve) indexed by them
    lut = np.round(65535 * (np.arange(8192) / 8191) ** 0.5).astype(np.uint16)
    path = write_dicom(tmp_path / "lut.dcm", STORED, slope=2.0, intercept=0.0, VOILUTSequence=[voi_lut_item(0, lut)])
    ours = read_dicom(path, IntensityConfig())
    np.testing.assert_array_equal(ours, reference(path))
    on_stored = linear_map_by_hand(apply_voi_lut(STORED, pydicom.dcmread(path)), 0, 65535)  # the old defect
    assert (np.abs(ours.astype(int) - on_stored) > 20).mean() > 0.5


def test_the_voi_lut_is_preferred_to_a_window_as_pydicom_does(tmp_path):
    lut = np.round(np.linspace(0, 4095, 4096) ** 1.5 / 4095**0.5).astype(np.uint16)
    both = write_dicom(tmp_path / "both.dcm", STORED, window=(1000.0, 500.0),
                       VOILUTSequence=[voi_lut_item(0, lut, bits=12)])
    ours = read_dicom(both, IntensityConfig())
    np.testing.assert_array_equal(ours, reference(both))
    np.testing.assert_array_equal(ours, linear_map_by_hand(lut[STORED], 0, 4095))  # the LUT, by hand
    window_only = write_dicom(tmp_path / "window.dcm", STORED, window=(1000.0, 500.0))
    assert (read_dicom(window_only, IntensityConfig()) != ours).mean() > 0.5


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID", None])
def test_the_file_window_with_its_voi_lut_function(function, tmp_path):
    # CT: signed stored values, HU = stored - 1024; window c=40, w=400 (LINEAR when absent)
    tags = {"VOILUTFunction": function} if function else {}
    path = write_dicom(tmp_path / "ct.dcm", CT_STORED, slope=1.0, intercept=-1024.0, window=(40.0, 400.0),
                       signed=True, **tags)
    ours = read_dicom(path, IntensityConfig())
    np.testing.assert_array_equal(ours, reference(path))
    assert 0 < (ours == 128).sum() and len(np.unique(ours)) > 200  # a real ramp, not a constant
    exact = linear_map_by_hand(CT_STORED - 1024.0, -160, 240)  # LINEAR_EXACT by hand: [c - w/2, c + w/2] -> [0, 255]
    if function == "LINEAR_EXACT":
        np.testing.assert_array_equal(ours, exact)
    else:  # LINEAR (centre - 0.5, width - 1) and SIGMOID differ from it
        assert (ours != exact).any()


def test_an_explicit_window_replaces_the_files_voi(tmp_path):
    path = write_dicom(tmp_path / "ct.dcm", CT_STORED, slope=1.0, intercept=-1024.0, window=(40.0, 400.0),
                       signed=True, VOILUTFunction="SIGMOID")
    for function in ("linear", "linear_exact", "sigmoid"):
        ds = pydicom.dcmread(path)
        ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = -600, 1500, function.upper()
        ours = read_dicom(path, IntensityConfig(mode="window", center=-600, width=1500, function=function))
        np.testing.assert_array_equal(ours, reference(path, ds=ds))


def test_a_file_with_neither_window_nor_lut_is_mapped_by_its_min_max(tmp_path):
    path = write_dicom(tmp_path / "plain.dcm", STORED[:, :40], slope=3.0, intercept=-100.0)
    hu = apply_modality_lut(pydicom.dcmread(path).pixel_array, pydicom.dcmread(path))
    assert not {"WindowCenter", "VOILUTSequence"} & set(pydicom.dcmread(path).dir())
    ours = read_dicom(path, IntensityConfig())
    np.testing.assert_array_equal(ours, linear_map_by_hand(hu, hu.min(), hu.max()))
    np.testing.assert_array_equal(read_dicom(path, IntensityConfig(mode="window")), ours)  # window without values
    fixed = read_dicom(path, IntensityConfig(mode="fixed", min=-100, max=5000))
    np.testing.assert_array_equal(fixed, linear_map_by_hand(hu, -100, 5000))  # other modes: on the modality values


def test_a_modality_lut_sequence_comes_before_the_voi(tmp_path):
    curve = np.round(65535 * (np.arange(4096) / 4095) ** 3).astype(np.uint16)  # not affine: min-max notices
    lut = {"ModalityLUTSequence": [voi_lut_item(0, curve)]}
    plain = write_dicom(tmp_path / "plain.dcm", STORED, slope=None, **lut)
    modality = apply_modality_lut(STORED, pydicom.dcmread(plain))
    np.testing.assert_array_equal(read_dicom(plain, IntensityConfig()), linear_map_by_hand(modality, modality.min(), modality.max()))
    windowed = write_dicom(tmp_path / "windowed.dcm", STORED, slope=None, window=(20000.0, 30000.0), **lut)
    ours = read_dicom(windowed, IntensityConfig())
    np.testing.assert_array_equal(ours, reference(windowed))  # output range: the LUT's 16 bits
    assert len(np.unique(ours)) > 200
    config = IntensityConfig(mode="window", center=20000, width=30000)  # the same window from the config
    np.testing.assert_array_equal(read_dicom(plain, config), ours)


def test_monochrome1_and_the_presentation_lut_shape_invert_once(tmp_path):
    window = (2000.0, 3000.0)  # clips at both ends: the output reaches 0 and 255
    m2 = reference(write_dicom(tmp_path / "m2.dcm", STORED, window=window))
    assert m2.min() == 0 and m2.max() == 255
    m1 = write_dicom(tmp_path / "m1.dcm", STORED, photometric="MONOCHROME1", window=window)
    np.testing.assert_array_equal(read_dicom(m1, IntensityConfig()), 255 - m2)
    inverse = write_dicom(tmp_path / "inv.dcm", STORED, window=window, PresentationLUTShape="INVERSE")
    # pydicom inverts by the image's maximum, which is the range's (255) here
    np.testing.assert_array_equal(read_dicom(inverse, IntensityConfig()),
                                  apply_presentation_lut(m2, pydicom.dcmread(inverse)))
    both = write_dicom(tmp_path / "m1inv.dcm", STORED, photometric="MONOCHROME1", window=window,
                       PresentationLUTShape="INVERSE")  # the standard's pair: one inversion
    np.testing.assert_array_equal(read_dicom(both, IntensityConfig()), 255 - m2)
    identity = write_dicom(tmp_path / "id.dcm", STORED, window=window, PresentationLUTShape="IDENTITY")
    np.testing.assert_array_equal(read_dicom(identity, IntensityConfig()), m2)


def test_each_frame_of_a_multi_frame_file(tmp_path):
    frames = np.stack([STORED, 4095 - STORED, STORED // 2])
    path = write_dicom(tmp_path / "cine.dcm", frames, frames=3, window=(1500.0, 2000.0))
    for k in range(3):
        ours = read_dicom(path, IntensityConfig(), frame=k)
        np.testing.assert_array_equal(ours, reference(path, frame=k))
        np.testing.assert_array_equal(decode_image(Path(f"{path}#frame={k}"), 64, 1)[0], ours)
    with pytest.raises(ValueError, match=r"multi-frame DICOM \(3 frames\) read on its own.*data.dicom_frames.*'<file>#frame=<k>'"):
        read_dicom(path, IntensityConfig())
    with pytest.raises(ValueError, match="frame 3 does not exist: the file has 3 frame"):
        read_dicom(path, IntensityConfig(), frame=3)


def test_enhanced_multi_frame_files_use_each_frames_functional_groups(tmp_path):
    def group(**sequences) -> Dataset:
        item = Dataset()
        for name, tags in sequences.items():
            inner = Dataset()
            for key, value in tags.items():
                setattr(inner, key, value)
            setattr(item, name, [inner])
        return item

    shared = group(FrameVOILUTSequence={"WindowCenter": 40, "WindowWidth": 400})
    per_frame = [group(PixelValueTransformationSequence={"RescaleSlope": s, "RescaleIntercept": -1024})
                 for s in (1.0, 2.0)]
    path = write_dicom(tmp_path / "enhanced.dcm", np.stack([STORED, STORED]), frames=2, slope=None,
                       SharedFunctionalGroupsSequence=[shared], PerFrameFunctionalGroupsSequence=per_frame)
    for k, slope in enumerate((1.0, 2.0)):
        ds = pydicom.dcmread(path)  # the frame's values lifted to the top level by hand
        ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth = slope, -1024, 40, 400
        np.testing.assert_array_equal(read_dicom(path, IntensityConfig(), frame=k), reference(path, k, ds))


CT_WINDOWS = [{"center": 40, "width": 80}, {"center": 80, "width": 200}, {"center": 600, "width": 2800}]


def test_several_windows_become_channels(tmp_path):
    path = write_dicom(tmp_path / "head.dcm", CT_STORED, slope=1.0, intercept=-1024.0, window=(40.0, 400.0),
                       signed=True)
    cfg = IntensityConfig(mode="window", windows=CT_WINDOWS)
    ours = read_dicom(path, cfg)
    assert ours.shape == (64, 64, 3) and ours.dtype == np.uint8
    for c, window in enumerate(CT_WINDOWS):
        ds = pydicom.dcmread(path)
        ds.WindowCenter, ds.WindowWidth = window["center"], window["width"]
        np.testing.assert_array_equal(ours[..., c], reference(path, ds=ds))
    assert len({ours[..., c].tobytes() for c in range(3)}) == 3
    np.testing.assert_array_equal(decode_image(path, 64, 3, cfg)[0], ours)
    assert IntensityConfig(**cfg.key()) == cfg  # the key (cache, export record) rebuilds the mapping


@pytest.mark.parametrize("settings, message", [
    ({"mode": "auto", "windows": CT_WINDOWS}, "data.intensity.windows is set but data.intensity.mode=auto"),
    ({"mode": "window", "windows": CT_WINDOWS[:2]}, "data.intensity.windows lists 2 window"),
    ({"mode": "window", "windows": [{"center": 40}]}, r"data.intensity.windows\[0\]=.*each window is"),
    ({"mode": "window", "windows": [{"center": 40, "width": 0.5}]}, "linear window needs width >= 1"),
    ({"mode": "window", "windows": [{"center": 40, "width": 80, "function": "gamma"}]}, "function must be one of"),
    ({"mode": "window", "center": 40, "width": 80, "windows": CT_WINDOWS}, "both set"),
    ({"mode": "window", "windows": "brain"}, "give a list of windows"),
])
def test_invalid_windows_name_the_key_and_the_fix(settings, message):
    with pytest.raises(ValueError, match=message):
        IntensityConfig(**settings)


def test_undecodable_pixel_data_gives_one_message_and_no_pydicom_traceback(tmp_path, caplog):
    jpeg = write_dicom(tmp_path / "jpeg.dcm", STORED, syntax=JPEGBaseline8Bit)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(RuntimeError):  # pydicom alone logs a traceback per plugin ...
        pixel_array(pydicom.dcmread(jpeg))
    assert any(r.name.startswith("pydicom") and r.exc_info for r in caplog.records)
    caplog.clear()
    with pytest.raises(ValueError, match=r"install a decoder plugin \(pip install pylibjpeg"):
        decode_image(jpeg, 64, 1)
    assert not [r for r in caplog.records if r.name.startswith("pydicom")]  # ... our read logs nothing
    assert "Traceback" not in caplog.text


def _folder(root: Path, multi_frames: int = 3) -> Path:
    """Two classes of single-frame CT files and one multi-frame file each."""
    rng = np.random.default_rng(0)
    for label, level in (("normal", -900), ("bleed", 60)):
        (root / label).mkdir(parents=True)
        for i in range(8):
            stored = np.clip(rng.normal(level + 1024, 40, (16, 16)), -2048, 2047).astype(np.int16)
            write_dicom(root / label / f"{i}.dcm", stored, slope=1.0, intercept=-1024.0, signed=True)
        series = np.clip(rng.normal(level + 1024, 40, (multi_frames, 16, 16)), -2048, 2047).astype(np.int16)
        write_dicom(root / label / "series.dcm", series, slope=1.0, intercept=-1024.0, signed=True,
                    frames=multi_frames)
    return root


@pytest.mark.parametrize("mode, frames", [("all", [0, 1, 2]), ("first", [0]), ("middle", [1])])
def test_multi_frame_files_as_items_grouped_by_file(mode, frames, tmp_path):
    root = _folder(tmp_path / "ct")
    dm = ImageFolderDataModule(root=str(root), channels=1, img_size=16, cache_dir=None, dicom_frames=mode,
                               splits_file=str(tmp_path / "splits.csv"), split_seed=3,
                               fractions={"train": 0.5, "val": 0.25, "test": 0.25})
    dm.prepare_data()
    dm.setup()
    series = [p for p in dm.records.paths if "series.dcm" in p]
    assert sorted(series) == sorted(f"{c}/series.dcm#frame={k}" for c in ("bleed", "normal") for k in frames)
    assert len(dm.records) == 16 + len(series)
    with open(tmp_path / "splits.csv") as f:
        rows = list(csv.DictReader(f))
    for label in ("bleed", "normal"):
        mine = [r for r in rows if r["path"].startswith(f"{label}/series.dcm#")]
        assert len({r["split"] for r in mine}) == 1  # never two splits
        if mode == "all":
            assert {r["group"] for r in mine} == {f"{label}/series.dcm"}
    i = dm.records.paths.index(f"normal/series.dcm#frame={frames[-1]}")  # 16 x 16 files: no resize
    expected = read_dicom(root / "normal" / "series.dcm", IntensityConfig(), frame=frames[-1])
    np.testing.assert_array_equal(dm.images[i], expected)


def test_a_three_window_ct_folder_trains(tmp_path):
    root = _folder(tmp_path / "ct", multi_frames=2)
    cfg = compose_cfg(["experiment=cnn_derma", "data=ct_windows", f"data.root={root}", *tiny_overrides(tmp_path)[3:],
                       "data.img_size=16", "data.cache_dir=null", "debug=fdr"], tmp_path / "run")
    assert cfg.data.in_chans == 3 and cfg.model.net.in_chans == 3
    assert "test/acc" in train(cfg)
    with open(tmp_path / "run" / "splits.csv") as f:
        paths = [r["path"] for r in csv.DictReader(f)]
    assert "bleed/series.dcm#frame=1" in paths and len(paths) == 20
    with pytest.raises(ValueError, match="data.channels=1 is invalid.*data.intensity.windows lists 3 window"):
        ImageFolderDataModule(root=str(root), channels=1, img_size=16, cache_dir=None,
                              intensity={"mode": "window", "windows": CT_WINDOWS})


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
