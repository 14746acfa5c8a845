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
- ``window``: ``center`` / ``width`` with ``function`` (DICOM's VOI LUT Function: ``linear``,
  the standard's default, ``linear_exact`` or ``sigmoid``; ``window_fraction``), or ``windows``:
  a list of such windows, one output channel each (CT brain / subdural / bone as 3 channels);
  without either, each DICOM file's own VOI (``dicom.py``).
- ``fixed``: ``min`` / ``max`` for every image, clipped (one mapping for the whole dataset).

All modes round to the nearest integer (halves up). A constant image maps to 0 under ``minmax`` and
``percentile``. A window's output range (its display fraction 0..1) maps to 0..255.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

INTENSITY_MODES = ("auto", "minmax", "percentile", "window", "fixed")
WINDOW_FUNCTIONS = ("linear", "linear_exact", "sigmoid")  # DICOM VOI LUT Function (0028,1056), PS3.3 C.11.2.1.3
WINDOW_CHANNELS = (1, 3)  # one channel per window; the models take 1 or 3
AUTO_DEPTHS = (8, 10, 12, 14, 16)
TIFF_MAX_SAMPLE_VALUE = 281


@dataclass(frozen=True)
class Window:
    """One VOI window on the modality values (Hounsfield units for CT); ``function`` as DICOM's
    VOI LUT Function, lower case."""

    center: float
    width: float
    function: str = "linear"

    def problem(self) -> str | None:
        """What is wrong with this window (None when it is valid): the widths the standard allows."""
        if self.function not in WINDOW_FUNCTIONS:
            return f"function must be one of {list(WINDOW_FUNCTIONS)}"
        if self.function == "linear" and not self.width >= 1:
            return "a linear window needs width >= 1 (PS3.3 C.11.2.1.2.1)"
        if not self.width > 0:
            return f"a {self.function} window needs width > 0"
        return None

    def key(self) -> dict:
        return {"center": self.center, "width": self.width, "function": self.function}


def _window(entry, function: str, where: str) -> Window:
    """A ``Window`` from one ``data.intensity.windows`` entry ({center, width[, function]})."""
    if not isinstance(entry, Mapping) or not {"center", "width"} <= set(entry) or set(entry) - {
            "center", "width", "function"}:
        raise ValueError(f"{where}={entry!r} is invalid: each window is {{center: <number>, width: <number>}} "
                         f"with an optional function ({'/'.join(WINDOW_FUNCTIONS)}), e.g. {{center: 40, width: 80}}")
    try:
        window = Window(float(entry["center"]), float(entry["width"]), str(entry.get("function", function)).lower())
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}={dict(entry)!r} is invalid: center and width must be numbers") from err
    if window.problem():
        raise ValueError(f"{where}={dict(entry)!r} is invalid: {window.problem()}")
    return window


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
    function: str = "linear"  # window mode: VOI LUT Function of center / width and the default of windows
    windows: tuple | None = None  # window mode: several windows, one channel each (list of {center, width[, function]})

    def __post_init__(self) -> None:
        def bad(detail: str) -> ValueError:
            return ValueError(f"data.intensity={asdict(self)} is invalid: {detail}")

        if self.mode not in INTENSITY_MODES:
            raise bad(f"mode must be one of {list(INTENSITY_MODES)}")
        if self.mode == "percentile" and not 0 <= self.low < self.high <= 100:
            raise bad("percentile mode needs 0 <= low < high <= 100 (in %, e.g. low: 0.5, high: 99.5)")
        object.__setattr__(self, "function", str(self.function).lower())
        if self.function not in WINDOW_FUNCTIONS:
            raise bad(f"function must be one of {list(WINDOW_FUNCTIONS)} (DICOM's VOI LUT Function)")
        if self.mode == "window" and (self.center is None) != (self.width is None):
            raise bad("window mode needs both center and width (e.g. center: 40, width: 400), or neither to use "
                      "each DICOM file's own window")
        if self.mode == "window" and self.width is not None:
            problem = Window(float(self.center), float(self.width), self.function).problem()
            if problem:
                raise bad(problem)
        if self.windows is not None:
            self._check_windows(bad)
        if self.mode == "fixed" and (self.min is None or self.max is None or not self.min < self.max):
            raise bad("fixed mode needs min < max (e.g. min: 0, max: 4095 for 12-bit data)")

    def _check_windows(self, bad) -> None:
        """Validate ``windows`` and store them as a tuple of ``Window``."""
        where = "data.intensity.windows"
        if isinstance(self.windows, (str, bytes, Mapping)) or not hasattr(self.windows, "__len__"):
            raise ValueError(f"{where}={self.windows!r} is invalid: give a list of windows, e.g. "
                             "[{center: 40, width: 80}, {center: 80, width: 200}, {center: 600, width: 2800}]")
        if self.mode != "window":
            raise ValueError(f"{where} is set but data.intensity.mode={self.mode}: set data.intensity.mode=window "
                             f"(or {where}=null)")
        if self.center is not None:
            raise ValueError(f"{where} and data.intensity.center / width are both set: give one window as center / "
                             f"width, or several as {where}")
        if len(self.windows) not in WINDOW_CHANNELS:
            raise ValueError(f"{where} lists {len(self.windows)} window(s): each window is one channel and the models "
                             f"take {' or '.join(map(str, WINDOW_CHANNELS))} channels; list 1 or 3 windows")
        windows = tuple(w if isinstance(w, Window) else _window(w, self.function, f"{where}[{i}]")
                        for i, w in enumerate(self.windows))
        object.__setattr__(self, "windows", windows)

    def explicit_windows(self) -> tuple[Window, ...]:
        """The windows the config states (``windows``, or ``center`` / ``width``); () when the
        mode is not ``window`` or it takes each DICOM file's own VOI."""
        if self.mode != "window":
            return ()
        if self.windows:
            return self.windows
        return () if self.center is None else (Window(float(self.center), float(self.width), self.function),)

    def key(self) -> dict:
        """The settings that change the mapping (for the cache key and the export record; a
        valid ``IntensityConfig(**key)``)."""
        used = {"percentile": ("low", "high"), "window": ("center", "width", "function"), "fixed": ("min", "max")}
        if self.mode == "window" and self.windows:
            return {"mode": self.mode, "windows": [w.key() for w in self.windows]}
        if self.mode == "window" and self.center is None:
            return {"mode": self.mode}  # each DICOM file's own VOI
        return {"mode": self.mode, **{k: getattr(self, k) for k in used.get(self.mode, ())}}


def to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
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
        return to_uint8(values, 0, 2**bits - 1), bits
    if cfg.mode == "minmax":
        return to_uint8(values, float(values.min()), float(values.max())), None
    if cfg.mode == "percentile":
        low, high = np.percentile(values, [cfg.low, cfg.high])
        return to_uint8(values, float(low), float(high)), None
    if cfg.mode == "window":
        windows = cfg.explicit_windows()
        if not windows:
            raise ValueError("data.intensity.mode=window without center / width takes each DICOM file's own "
                             "window; this file is not DICOM: set data.intensity.center and width")
        if cfg.windows and values.ndim == 3:
            raise ValueError(f"data.intensity.windows window grayscale values; this image has {values.shape[2]} "
                             "channels: convert the images to grayscale or drop data.intensity.windows")
        channels = [to_uint8(window_fraction(values, w), 0.0, 1.0) for w in windows]
        return (np.stack(channels, -1) if cfg.windows and len(channels) > 1 else channels[0]), None
    return to_uint8(values, cfg.min, cfg.max), None


def window_fraction(values: np.ndarray, window: Window) -> np.ndarray:
    """float64 array of ``values``' shape: the window's output as a fraction of its output range
    [y_min, y_max] (0 = y_min, 1 = y_max), by DICOM PS3.3 C.11.2.1.2 (``linear``: center - 0.5,
    width - 1; ``linear_exact``) and C.11.2.1.3.1 (``sigmoid``). For images that are not DICOM;
    DICOM files go through pydicom's ``apply_windowing`` (``dicom.py``), and the tests hold the
    two equal."""
    x = np.asarray(values, dtype=np.float64)
    if window.function == "sigmoid":
        return 1.0 / (1.0 + np.exp(-4.0 * (x - window.center) / window.width))
    center, width = window.center, window.width
    if window.function == "linear":
        center, width = center - 0.5, width - 1.0
    below, above = x <= center - width / 2, x > center + width / 2
    with np.errstate(divide="ignore", invalid="ignore"):  # width 0 (linear, width 1): every value is below or above
        out = (x - center) / width + 0.5
    return np.where(below, 0.0, np.where(above, 1.0, out))


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
