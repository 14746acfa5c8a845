"""DICOM (``.dcm``) images to 8 bits by the standard's grayscale pipeline (PS3.3 C.11, PS3.4
N.2), through pydicom (the optional ``dicom`` extra).

One frame's stored values go, in this order, through

1. the **Modality LUT**: Modality LUT Sequence (0028,3000), else Rescale Slope / Intercept
   (0028,1053) / (0028,1052) (Hounsfield units for CT): ``pydicom.pixels.apply_modality_lut``;
2. the **VOI LUT**, on the modality values: under ``data.intensity.mode=auto`` (and ``window``
   without values) the file's own, as ``pydicom.pixels.apply_voi_lut`` chooses it (its first
   VOI LUT Sequence (0028,3010) item when there is one, else its first Window Center / Width
   (0028,1050) / (0028,1051) with its VOI LUT Function (0028,1056): LINEAR, LINEAR_EXACT or
   SIGMOID, LINEAR when absent); a file with neither is mapped by its min-max. A window from
   the config (``center`` / ``width`` / ``function``, or several ``windows``, one channel
   each) replaces the file's VOI (``pydicom.pixels.apply_windowing``). The other modes map the
   modality values as for any image (``intensity.map_intensity``);
3. the **Presentation LUT**: inverted (white = low values) when Presentation LUT Shape
   (2050,0020) is INVERSE, or when the file has no shape and is MONOCHROME1; IDENTITY is left
   as it is. So every image reaches the model with white = high.

The VOI output range becomes 0..255 by one rule: a window's output range is [y_min, y_max] as
pydicom's ``apply_windowing`` defines it (from Bits Stored, Pixel Representation and the
rescale), mapped linearly; a VOI LUT's is [0, 2**n - 1], n = the third value of its LUT
Descriptor (bits per entry); rounding halves up. Enhanced multi-frame files carry the rescale and
window per frame (Shared / Per-frame Functional Groups, PS3.3 C.7.6.16): a frame's own values
are used. Multi-frame files are read one frame at a time (``dicom_frames``); compressed pixel
data that pydicom cannot decode gives one error naming the decoder plugins to install, with
pydicom's own log of the failure silenced.
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from datamodules.intensity import IntensityConfig, Window, map_intensity, to_uint8

PLUGINS = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle"
# the tags the pipeline reads, copied onto a frame's view of the file
PIPELINE_TAGS = ("PhotometricInterpretation", "BitsStored", "PixelRepresentation", "ModalityLUTSequence",
                 "RescaleSlope", "RescaleIntercept", "VOILUTSequence", "WindowCenter", "WindowWidth",
                 "VOILUTFunction", "PresentationLUTShape")
# functional-group sequences of enhanced multi-frame files -> the tags they hold for a frame
FRAME_GROUPS = {"PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept"),
                "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence")}

_quiet = threading.local()


class _QuietWhileDecoding(logging.Filter):
    """Drops what pydicom logs from this thread while ``quiet_pydicom`` is on (its decoders log
    a traceback per failed plugin; our error names the file, each plugin's message and the fix)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_quiet, "on", False)


_FILTER = _QuietWhileDecoding()


@contextmanager
def quiet_pydicom():
    """Silence pydicom's loggers for the current thread only (other threads decode on)."""
    names = ["pydicom", *(n for n in list(logging.root.manager.loggerDict) if n.startswith("pydicom."))]
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    _quiet.on = True
    try:
        yield
    finally:
        _quiet.on = False


def _pydicom():
    try:
        import pydicom
        import pydicom.pixels  # noqa: F401
    except ImportError as err:
        raise ValueError("reading .dcm files needs pydicom: pip install -e '.[dicom]'") from err
    return pydicom


def frame_view(ds, frame: int | None):
    """A small Dataset of the tags the pipeline reads for ``frame`` (None: a single-frame file):
    the file's own, overridden by its Shared, then its Per-frame Functional Groups."""
    from pydicom.dataset import Dataset

    view = Dataset()
    if hasattr(ds, "file_meta"):  # LUT data of VR OW: its byte order
        view.file_meta = ds.file_meta
    view.set_original_encoding(*ds.original_encoding)
    for tag in PIPELINE_TAGS:
        if tag in ds:
            view[tag] = ds[tag]
    groups = [ds.SharedFunctionalGroupsSequence[0]] if ds.get("SharedFunctionalGroupsSequence") else []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame is not None and frame < len(per_frame):
        groups.append(per_frame[frame])
    for group in groups:
        for sequence, tags in FRAME_GROUPS.items():
            if group.get(sequence):
                item = group[sequence][0]
                for tag in tags:
                    if tag in item:
                        view[tag] = item[tag]
    return view


def _has_voi_lut(view) -> bool:
    """pydicom's own test (``apply_voi_lut``): a first VOI LUT Sequence item with its descriptor and data."""
    items = view.get("VOILUTSequence")
    return bool(items) and None not in (items[0].get("LUTDescriptor"), items[0].get("LUTData"))


def _has_window(view) -> bool:
    return view.get("WindowCenter") is not None and view.get("WindowWidth") is not None


def _windowed(modality: np.ndarray, view) -> np.ndarray:
    """uint8 of ``apply_windowing`` on the modality values, its output range [y_min, y_max]
    (pydicom's images of -inf and +inf, so the range is pydicom's own) mapped to 0..255."""
    from pydicom.pixels import apply_windowing

    y_min, y_max = apply_windowing(np.array([-np.inf, np.inf]), view)
    return to_uint8(apply_windowing(modality.astype(np.float64), view), float(y_min), float(y_max))


def file_voi(modality: np.ndarray, view) -> np.ndarray | None:
    """uint8 of the file's own VOI on its modality values, as ``apply_voi_lut`` chooses it (the
    LUT before the window); None when the file has neither."""
    from pydicom.pixels import apply_voi_lut

    if _has_voi_lut(view):
        entries, first, bits = (int(v) for v in view.VOILUTSequence[0].LUTDescriptor)
        entries = entries or 2**16
        # the LUT is indexed by integers: modality values rounded, kept inside its input range
        index = np.clip(np.rint(modality), first, first + entries - 1).astype(np.int64)
        return to_uint8(apply_voi_lut(index, view, prefer_lut=True), 0.0, float(2**bits - 1))
    if _has_window(view):
        return _windowed(modality, view)
    return None


def config_window(modality: np.ndarray, view, window: Window) -> np.ndarray:
    """uint8 of a config window on the modality values, in place of the file's VOI."""
    from pydicom.dataset import Dataset

    own = Dataset()
    for tag in ("PhotometricInterpretation", "BitsStored", "PixelRepresentation", "ModalityLUTSequence",
                "RescaleSlope", "RescaleIntercept"):  # what apply_windowing's output range depends on
        if tag in view:
            own[tag] = view[tag]
    own.PhotometricInterpretation = "MONOCHROME2"  # presentation comes after, from the file
    own.WindowCenter, own.WindowWidth = window.center, window.width
    own.VOILUTFunction = window.function.upper()
    return _windowed(modality, own)


def presented(pixels: np.ndarray, view) -> np.ndarray:
    """``pixels`` after the Presentation LUT: inverted (255 - v, the output range onto itself)
    when Presentation LUT Shape is INVERSE, or when it is absent and the image is MONOCHROME1."""
    shape = str(view.get("PresentationLUTShape", "") or "").strip().upper()
    if shape not in ("", "IDENTITY", "INVERSE"):
        raise ValueError(f"Presentation LUT Shape {shape!r} is neither IDENTITY nor INVERSE")
    photometric = str(view.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    invert = shape == "INVERSE" if shape else photometric == "MONOCHROME1"
    return 255 - pixels if invert else pixels


def _stored(ds, frame: int | None) -> np.ndarray:
    """The stored values of ``frame`` (None: the only one); RGB for colour (palette expanded)."""
    from pydicom.pixels import apply_color_lut, pixel_array

    try:
        with quiet_pydicom():
            stored = pixel_array(ds, index=frame)
    except (RuntimeError, NotImplementedError, ValueError, AttributeError) as err:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise ValueError(f"its pixel data ({name}) cannot be decoded here: install a decoder plugin ({PLUGINS}); "
                         f"pydicom said: {err}") from err
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "PALETTE COLOR":
        stored = apply_color_lut(stored, ds)
    return stored


def read_dicom(path: Path, intensity: IntensityConfig, frame: int | None = None) -> np.ndarray:
    """uint8 (H, W) grayscale, (H, W, C) for C config windows, or (H, W, 3) RGB of one DICOM
    image: the file, or frame ``frame`` (0-based) of a multi-frame file."""
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError as err:
        raise ValueError(f"not a DICOM file ({err})") from err
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frame is None and frames > 1:
        raise ValueError(f"multi-frame DICOM ({frames} frames) read on its own: put it in an image folder or table "
                         "(data.dicom_frames: all | first | middle) or name one frame as '<file>#frame=<k>' (0-based)")
    if frame is not None and not 0 <= frame < frames:
        raise ValueError(f"frame {frame} does not exist: the file has {frames} frame(s) (0-based)")
    stored = _stored(ds, frame if frames > 1 else None)
    view = frame_view(ds, frame)
    if stored.ndim == 3:  # colour (RGB / YBR converted by pydicom): no grayscale pipeline
        if intensity.windows:
            raise ValueError("data.intensity.windows window grayscale images; this DICOM image is colour "
                             f"({ds.get('PhotometricInterpretation')})")
        return stored if stored.dtype == np.uint8 else map_intensity(stored, IntensityConfig(mode="minmax"))[0]
    from pydicom.pixels import apply_modality_lut

    modality = apply_modality_lut(stored, view)
    windows = intensity.explicit_windows()
    if windows:
        channels = [config_window(modality, view, w) for w in windows]
        pixels = np.stack(channels, -1) if intensity.windows and len(channels) > 1 else channels[0]
    elif intensity.mode in ("auto", "window"):  # the file's own VOI, else min-max
        pixels = file_voi(modality, view)
        if pixels is None:
            pixels = map_intensity(modality.astype(np.float64), IntensityConfig(mode="minmax"))[0]
    else:
        pixels = map_intensity(modality.astype(np.float64), intensity)[0]
    return presented(pixels, view)
