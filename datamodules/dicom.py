"""DICOM (``.dcm``) images to 8 bits through pydicom (the optional ``dicom`` extra).

The stored values go through the modality LUT (Rescale Slope / Intercept: Hounsfield units
for CT), then ``data.intensity``:

- ``auto`` and ``window`` without ``center`` / ``width``: the file's own window (the first
  Window Center / Width), else its VOI LUT, else the image's min-max;
- the other modes as for any image (``intensity.map_intensity``) on the modality values.

MONOCHROME1 images (white = low values) are inverted after the mapping, so that every image
reaches the model with white = high. Multi-frame files are refused (export one frame per
file); compressed pixel data that pydicom cannot decode names the decoder plugins to install.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from datamodules.intensity import IntensityConfig, map_intensity

PLUGINS = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle"


def _first(value) -> float | None:
    """A DICOM decimal string or its first value when it has several (None when absent)."""
    if value is None or value == "":
        return None
    try:
        return float(value[0]) if not isinstance(value, (str, bytes)) and hasattr(value, "__len__") else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def read_dicom(path: Path, intensity: IntensityConfig) -> np.ndarray:
    """uint8 (H, W) grayscale or (H, W, 3) RGB of one single-frame DICOM file."""
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as err:
        raise ValueError("reading .dcm files needs pydicom: pip install -e '.[dicom]'") from err
    try:
        ds = pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError as err:
        raise ValueError(f"not a DICOM file ({err})") from err
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ValueError(f"multi-frame DICOM ({frames} frames) is not supported; export one frame per file")
    try:
        stored = ds.pixel_array
    except (RuntimeError, NotImplementedError, ValueError) as err:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise ValueError(f"its pixel data ({name}) cannot be decoded here: install a decoder plugin ({PLUGINS}); "
                         f"pydicom said: {err}") from err
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    if stored.ndim == 3:  # colour (RGB / YBR converted by pydicom): 8-bit, taken as it is
        return np.asarray(stored, dtype=np.uint8) if stored.dtype == np.uint8 else \
            map_intensity(stored, IntensityConfig(mode="minmax"))[0]
    values = apply_modality_lut(stored, ds).astype(np.float64)
    if intensity.mode == "auto" or (intensity.mode == "window" and intensity.center is None):
        center, width = _first(getattr(ds, "WindowCenter", None)), _first(getattr(ds, "WindowWidth", None))
        if center is not None and width is not None and width > 0:
            mapping = IntensityConfig(mode="window", center=center, width=width)
        elif "VOILUTSequence" in ds:
            values, mapping = apply_voi_lut(stored, ds).astype(np.float64), IntensityConfig(mode="minmax")
        else:
            mapping = IntensityConfig(mode="minmax")
    else:
        mapping = intensity
    pixels = map_intensity(values, mapping)[0]
    return 255 - pixels if photometric == "MONOCHROME1" else pixels
