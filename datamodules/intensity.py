"""Map decoded pixel values to 8 bits by a stated rule (``data.intensity``).

Images of more than 8 bits (16-bit PNG / TIFF holding 12-bit X-ray content, 32-bit
integer or float TIFF) are mapped to uint8 only here, before the decoded-image cache, so
the cache key records the rule. The modes:

- ``auto``: 8-bit images unchanged; deeper images scaled by their bit depth
  ``value * 255 / (2**bits - 1)``. The depth is the one the file declares (PNG ``sBIT``,
  TIFF ``MaxSampleValue``), else the smallest of 8, 10, 12, 14, 16 bits that holds the
  largest value of the dataset's undeclared files (``image_cache.decode_all``; a single
  image: its own maximum), so 12-bit content in a 16-bit file keeps its grey levels and a
  dark image is not brightened. Float images have no bit depth: ``auto`` refuses them and
  names the modes that work.
- ``minmax``: per image, ``(v - min) / (max - min)``.
- ``percentile``: per image, the ``low`` / ``high`` percentiles (in %) map to 0 / 255, clipped.
- ``window``: ``center`` / ``width`` (as a radiology viewer), clipped to the window; without
  them, each DICOM file's own window (``dicom.py``).
- ``fixed``: ``min`` / ``max`` for every image, clipped (one mapping for the whole dataset).

All modes round to the nearest integer (halves up). A constant image maps to 0 under ``minmax`` and
``percentile``.
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

INTENSITY_MODES = ("auto", "minmax", "percentile", "window", "fixed")
AUTO_DEPTHS = (8, 10, 12, 14, 16)
TIFF_MAX_SAMPLE_VALUE = 281


@dataclass(frozen=True)
class IntensityConfig:
    """``data.intensity``; see the module docstring for the modes."""

    mode: str = "auto"
    low: float = 0.5  # percentile mode, in %
    high: float = 99.5
    center: float | None = None  # window mode
    width: float | None = None
    min: float | None = None  # fixed mode
    max: float | None = None

    def __post_init__(self) -> None:
        def bad(detail: str) -> ValueError:
            return ValueError(f"data.intensity={asdict(self)} is invalid: {detail}")

        if self.mode not in INTENSITY_MODES:
            raise bad(f"mode must be one of {list(INTENSITY_MODES)}")
        if self.mode == "percentile" and not 0 <= self.low < self.high <= 100:
            raise bad("percentile mode needs 0 <= low < high <= 100 (in %, e.g. low: 0.5, high: 99.5)")
        if self.mode == "window" and (self.center is None) != (self.width is None):
            raise bad("window mode needs both center and width (e.g. center: 40, width: 400), or neither to use "
                      "each DICOM file's own window")
        if self.mode == "window" and self.width is not None and not self.width > 0:
            raise bad("window mode needs width > 0")
        if self.mode == "fixed" and (self.min is None or self.max is None or not self.min < self.max):
            raise bad("fixed mode needs min < max (e.g. min: 0, max: 4095 for 12-bit data)")

    def key(self) -> dict:
        """The settings that change the mapping (for the cache key)."""
        used = {"percentile": ("low", "high"), "window": ("center", "width"), "fixed": ("min", "max")}
        return {"mode": self.mode, **{k: getattr(self, k) for k in used.get(self.mode, ())}}


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """uint8 of ``(values - low) / (high - low) * 255``, rounded half up and clipped; 0 where high <= low."""
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    out = (values.astype(np.float64) - low) * 255.0 / (high - low)
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)  # halves round up


def auto_depth(values: np.ndarray, declared: int | None) -> int:
    """Bits per sample of an integer image: ``declared`` when given, else the smallest of
    ``AUTO_DEPTHS`` that holds its maximum (beyond 16 bits: the maximum's own bit length)."""
    if declared:
        return int(declared)
    peak = int(values.max(initial=0))
    return next((b for b in AUTO_DEPTHS if peak < 2**b), max(peak.bit_length(), 1))


def map_intensity(values: np.ndarray, cfg: IntensityConfig, declared_bits: int | None = None) -> tuple[np.ndarray, int | None]:
    """(uint8 image of the same shape, bit depth used by ``auto`` or None).

    ``values`` is one decoded image, (H, W) or (H, W, C), of any integer or float dtype.
    """
    if cfg.mode == "auto":
        if values.dtype == np.uint8:
            return values, 8
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"a {values.dtype} image has no bit depth for data.intensity.mode=auto; "
                             "set data.intensity.mode to minmax, percentile, window or fixed")
        if values.min(initial=0) < 0:
            raise ValueError("signed pixel values (below 0) have no bit depth for data.intensity.mode=auto; "
                             "set data.intensity.mode to window or fixed with the range of your data")
        bits = auto_depth(values, declared_bits)
        return _scale(values, 0, 2**bits - 1), bits
    if cfg.mode == "minmax":
        return _scale(values, float(values.min()), float(values.max())), None
    if cfg.mode == "percentile":
        low, high = np.percentile(values, [cfg.low, cfg.high])
        return _scale(values, float(low), float(high)), None
    if cfg.mode == "window":
        if cfg.center is None:
            raise ValueError("data.intensity.mode=window without center / width takes each DICOM file's own "
                             "window; this file is not DICOM: set data.intensity.center and width")
        return _scale(values, cfg.center - cfg.width / 2, cfg.center + cfg.width / 2), None
    return _scale(values, cfg.min, cfg.max), None


def declared_bits(path: Path, image) -> int | None:
    """Significant bits per sample that a file declares: PNG ``sBIT`` (its first value) or
    TIFF ``MaxSampleValue`` (as bits); None when it declares nothing."""
    fmt = getattr(image, "format", None)
    if fmt == "PNG":
        return _png_sbit(path)
    if fmt == "TIFF":
        tag = getattr(image, "tag_v2", {}).get(TIFF_MAX_SAMPLE_VALUE)
        value = tag[0] if isinstance(tag, tuple) else tag
        return int(value).bit_length() if value else None
    return None


def _png_sbit(path: Path) -> int | None:
    """The ``sBIT`` chunk's first byte (significant bits of the grey / red channel), if any."""
    with open(path, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
        while True:
            head = f.read(8)
            if len(head) < 8:
                return None
            length, kind = struct.unpack(">I4s", head)
            if kind == b"sBIT":
                data = f.read(length)
                return data[0] if data else None
            if kind in (b"IDAT", b"IEND"):  # sBIT must come before the image data
                return None
            f.seek(length + 4, 1)  # data and CRC
