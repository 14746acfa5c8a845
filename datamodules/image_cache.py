"""Decode image files once into a uint8 array cache.

Pixel values are mapped to 8 bits by ``data.intensity`` (see ``intensity``) before anything
is cached. The cache key hashes the file list (in order), each file's size and modification
time, the output size, channel count and intensity mapping, so a changed, added or removed
file or another mapping rebuilds it.
Caches are written atomically (temporary file, then rename); an older cache of the same
file list and settings is replaced. Nothing is written when any image fails to decode.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from core.io import atomic_path
from datamodules.dicom import read_dicom
from datamodules.dicom_frames import split_frame
from datamodules.image_records import rows_error
from datamodules.intensity import IntensityConfig, auto_depth, declared_bits, map_intensity

AUTO = IntensityConfig()  # the default mapping
RESIZE_MODES = ("shorter_side_crop", "pad", "stretch")
# bump when decoding changes: 2 intensity, 3 dataset bit depth, 4 aspect-preserving resize,
# 5 DICOM by the standard (VOI on modality values, LINEAR windows, VOI range to 0..255), frames
CACHE_VERSION = 5
STALE_PARTIAL_S = 24 * 3600.0  # an unfinished cache file this old was left by a killed process
DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # PIL modes of more than 8 bits per sample

log = logging.getLogger(__name__)


def file_stats(root: Path, paths: Sequence[str], rows: Sequence[str], source: str) -> list[tuple[int, int]]:
    """(size in bytes, mtime in ns) per file (a frame item: its file's); one error naming every missing file."""
    stats, missing = [], []
    for p, row in zip(paths, rows):
        try:
            st = split_frame(root / p)[0].stat()
            stats.append((st.st_size, st.st_mtime_ns))
        except OSError:
            missing.append(row)
    if missing:
        raise rows_error(source, f"name image files that do not exist under {root}", missing,
                         "fix the paths (relative to data.image_root) or remove these rows")
    return stats


def cache_key(root: Path, paths: Sequence[str], stats: Sequence[tuple[int, int]], size: int, channels: int,
              intensity: IntensityConfig, resize: str) -> str:
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, str(root.resolve()), size, channels,
                                        intensity.key(), resize]).encode())
    for p, (nbytes, mtime) in zip(paths, stats):
        digest.update(f"{p}\0{nbytes}\0{mtime}\n".encode())
    return digest.hexdigest()[:24]


def undeclared_peak(path: Path) -> int | None:
    """The largest value of a deep integer image that declares no bit depth; None otherwise
    (8-bit, float, declared, or unreadable: ``decode_image`` reports those)."""
    try:
        with Image.open(path) as im:
            if im.mode not in DEEP_MODES or im.mode == "F" or declared_bits(path, im):
                return None
            im.load()
            return int(np.asarray(im).max(initial=0))
    except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError):
        return None


def square(im: Image.Image, size: int, resize: str) -> Image.Image:
    """``im`` as size x size (bicubic): ``shorter_side_crop`` scales the shorter side to ``size``
    and crops the centre (timm's and torchvision's eval transform), ``pad`` scales the longer
    side to ``size`` and pads the rest with black around the centred image, ``stretch``
    resizes both sides (changes the aspect ratio)."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"data.resize={resize!r} is invalid; allowed: {list(RESIZE_MODES)}")
    w, h = im.size
    if (w, h) == (size, size):
        return im
    if resize == "stretch" or w == h:
        return im.resize((size, size), Image.Resampling.BICUBIC)
    scale = size / (min(w, h) if resize == "shorter_side_crop" else max(w, h))
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    im = im.resize(new, Image.Resampling.BICUBIC)
    if resize == "shorter_side_crop":
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        return im.crop((left, top, left + size, top + size))
    canvas = Image.new(im.mode, (size, size))
    canvas.paste(im, ((size - new[0]) // 2, (size - new[1]) // 2))
    return canvas


def load_image(path: Path, channels: int, intensity: IntensityConfig = AUTO,
               fallback_bits: int | None = None) -> tuple[Image.Image, int | None]:
    """(the file as an 8-bit ``L`` or ``RGB`` image at its own size, bit depth ``auto`` used or None).

    Values are mapped to 8 bits by ``intensity`` first (16-bit and 32-bit images read as
    grayscale), then converted to the channel count. ``auto`` takes the bit depth the file
    declares, else ``fallback_bits`` (``decode_all``: the dataset's), else the file's own
    maximum. ``.dcm`` files go through ``dicom.read_dicom`` (modality LUT, VOI, presentation;
    ``<file>.dcm#frame=<k>`` reads one frame of a multi-frame file). ``intensity.windows`` give
    one channel per window. Raises OSError / ValueError on unreadable or truncated files.
    """
    mode = "L" if channels == 1 else "RGB"
    file, frame = split_frame(path)
    if file.suffix.lower() == ".dcm":
        return Image.fromarray(read_dicom(file, intensity, frame)).convert(mode), None
    with Image.open(path) as im:
        im.load()  # decodes fully: truncated files fail here
        if intensity.windows and im.mode not in (*DEEP_MODES, "L"):
            raise ValueError(f"data.intensity.windows window grayscale values; this image is {im.mode}: convert "
                             "the images to grayscale or drop data.intensity.windows")
        if im.mode in DEEP_MODES:
            values = np.asarray(im)
            values = values.astype(values.dtype.newbyteorder("="))  # big-endian 16-bit as native
            pixels, bits = map_intensity(values, intensity, declared_bits(path, im) or fallback_bits)
            im = Image.fromarray(pixels)
        elif intensity.mode != "auto":
            pixels, bits = map_intensity(np.asarray(im if intensity.windows else im.convert(mode)), intensity)
            im = Image.fromarray(pixels)
        else:
            bits = 8
        return im.convert(mode), bits


def decode_image(path: Path, size: int, channels: int, intensity: IntensityConfig = AUTO,
                 fallback_bits: int | None = None, resize: str = "shorter_side_crop") -> tuple[np.ndarray, int | None]:
    """(uint8 (size, size) for 1 channel or (size, size, 3), bit depth ``auto`` used or None):
    ``load_image``, then made square by ``resize`` (``square``)."""
    im, bits = load_image(path, channels, intensity, fallback_bits)
    return np.asarray(square(im, size, resize), dtype=np.uint8), bits


def dataset_depth(root: Path, paths: Sequence[str], intensity: IntensityConfig, workers: int | None = None
                  ) -> int | None:
    """The bit depth ``auto`` gives the files that declare none: the smallest that holds the
    largest value of all of them (None when no such file, or another mode)."""
    if intensity.mode != "auto":
        return None
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        peaks = [p for p in pool.map(lambda p: undeclared_peak(root / p), paths) if p is not None]
    return auto_depth(np.array(peaks), None) if peaks else None


def decode_all(root: Path, paths: Sequence[str], rows: Sequence[str], source: str, size: int,
               channels: int, intensity: IntensityConfig = AUTO, resize: str = "shorter_side_crop",
               workers: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 (N, size, size[, 3]) of every file, written into ``out`` when given (e.g. a
    memory-mapped file: the images never all sit in memory); one error naming every
    unreadable file.

    Under ``intensity.mode=auto`` the files that declare no bit depth share one
    (``dataset_depth``: a dark 12-bit image is not stretched as if it were 10-bit); a dataset
    whose files still map with different depths (declared ones differ) gets a warning, since
    their grey levels are then not on one scale."""
    shape = (len(paths), size, size) + ((3,) if channels == 3 else ())
    out = np.empty(shape, dtype=np.uint8) if out is None else out
    failures: dict[int, str] = {}
    depths: list[int | None] = [None] * len(paths)
    pool_size = workers or min(8, os.cpu_count() or 1)
    fallback = dataset_depth(root, paths, intensity, pool_size)

    def work(i: int) -> None:
        try:
            out[i], depths[i] = decode_image(root / paths[i], size, channels, intensity, fallback, resize)
        except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as err:
            failures[i] = f"{rows[i]} ({type(err).__name__}: {err})"

    with ThreadPoolExecutor(max_workers=pool_size) as pool:
        list(pool.map(work, range(len(paths))))
    if failures:
        raise rows_error(source, "name files that cannot be decoded as PNG / JPEG / TIFF / BMP / DICOM images "
                         "(unreadable or truncated)", [failures[i] for i in sorted(failures)],
                         "replace or remove these files")
    counts = Counter(d for d in depths if d is not None)
    if intensity.mode == "auto" and len(counts) > 1:
        log.warning("%s: data.intensity.mode=auto mapped files with different bit depths %s (bits: files); "
                    "their grey levels are not on one scale. For one mapping of every file set "
                    "data.intensity.mode=fixed with min / max (e.g. 0 / 4095 for 12-bit data).",
                    source, dict(sorted(counts.items())))
    return out


def reserve(path: Path) -> None:
    """Allocate the whole (sparse) file now: a full disk is then an OSError here, not a SIGBUS
    while decoding into the memory map."""
    if hasattr(os, "posix_fallocate"):
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)


def cached_images(root: Path, paths: Sequence[str], rows: Sequence[str], source: str, size: int,
                  channels: int, cache_dir: str | os.PathLike | None,
                  intensity: IntensityConfig = AUTO, resize: str = "shorter_side_crop") -> tuple[np.ndarray, bool]:
    """The decoded images of ``paths`` and whether they came from the cache.

    With ``cache_dir=None`` images are decoded every time and nothing is written.
    """
    stats = file_stats(root, paths, rows, source)
    if cache_dir is None:
        return decode_all(root, paths, rows, source, size, channels, intensity, resize), False
    cache_dir = Path(cache_dir).expanduser()
    key = cache_key(root, paths, stats, size, channels, intensity, resize)
    # One cache per (dataset, size, channels, mapping, resize): a rebuilt cache replaces the stale one.
    family = hashlib.sha256(json.dumps([source, str(root.resolve()), size, channels, intensity.key(),
                                        resize]).encode()).hexdigest()[:8]
    target = cache_dir / f"images-{family}-{key}.npy"
    expected = (len(paths), size, size) + ((3,) if channels == 3 else ())
    if target.is_file():
        try:
            images = np.load(target, mmap_mode="r")  # read per item (``image_rows.Rows``)
            if images.shape == expected and images.dtype == np.uint8:
                return images, True
            problem = f"holds {images.dtype} {images.shape}, expected uint8 {expected}"
        except (OSError, ValueError, EOFError) as err:
            problem = f"cannot be read ({type(err).__name__}: {err})"
        log.warning("the image cache %s %s (truncated or damaged): decoding the images again", target, problem)
        target.unlink(missing_ok=True)  # a damaged cache is rebuilt, never trusted
    for stale in cache_dir.glob(f".images-{family}-*.partial.npy"):  # left by a killed process
        if time.time() - stale.stat().st_mtime > STALE_PARTIAL_S:
            stale.unlink(missing_ok=True)
    with atomic_path(target) as tmp:  # decoded straight into the memory-mapped file
        images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=expected)
        reserve(tmp)
        decode_all(root, paths, rows, source, size, channels, intensity, resize, out=images)
        images.flush()
        del images
    for stale in cache_dir.glob(f"images-{family}-*.npy"):
        if stale != target:
            stale.unlink(missing_ok=True)
    return np.load(target, mmap_mode="r"), False
