"""Decode image files once into a uint8 array cache.

The cache key hashes the file list (in order), each file's size and modification time,
the output size and channel count, so a changed, added or removed file rebuilds it.
Caches are written atomically (temporary file, then rename); an older cache of the same
file list and settings is replaced. Nothing is written when any image fails to decode.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from datamodules.image_records import rows_error

CACHE_VERSION = 1  # bump when decoding changes, so old caches are not reused


def file_stats(root: Path, paths: Sequence[str], rows: Sequence[str], source: str) -> list[tuple[int, int]]:
    """(size in bytes, mtime in ns) per file; one error naming every missing file."""
    stats, missing = [], []
    for p, row in zip(paths, rows):
        try:
            st = (root / p).stat()
            stats.append((st.st_size, st.st_mtime_ns))
        except OSError:
            missing.append(row)
    if missing:
        raise rows_error(source, f"name image files that do not exist under {root}", missing,
                         "fix the paths (relative to data.image_root) or remove these rows")
    return stats


def cache_key(root: Path, paths: Sequence[str], stats: Sequence[tuple[int, int]], size: int, channels: int) -> str:
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, str(root.resolve()), size, channels]).encode())
    for p, (nbytes, mtime) in zip(paths, stats):
        digest.update(f"{p}\0{nbytes}\0{mtime}\n".encode())
    return digest.hexdigest()[:24]


def decode_image(path: Path, size: int, channels: int) -> np.ndarray:
    """uint8 (size, size) for 1 channel or (size, size, 3), resized with bicubic filtering.

    16-bit grayscale is scaled to 8 bits (value / 257). Raises OSError / ValueError on
    unreadable or truncated files.
    """
    with Image.open(path) as im:
        im.load()  # decodes fully: truncated files fail here
        if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
            im = Image.fromarray((np.asarray(im, dtype=np.float64) / 257.0).round().astype(np.uint8))
        elif im.mode in ("I", "F"):
            raise ValueError(f"unsupported pixel mode {im.mode!r} (32-bit); convert to 8 or 16 bits")
        im = im.convert("L" if channels == 1 else "RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BICUBIC)
        return np.asarray(im, dtype=np.uint8)


def decode_all(root: Path, paths: Sequence[str], rows: Sequence[str], source: str, size: int,
               channels: int, workers: int | None = None) -> np.ndarray:
    """uint8 (N, size, size[, 3]) of every file; one error naming every unreadable file."""
    out = np.empty((len(paths), size, size) + ((3,) if channels == 3 else ()), dtype=np.uint8)
    failures: dict[int, str] = {}

    def work(i: int) -> None:
        try:
            out[i] = decode_image(root / paths[i], size, channels)
        except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as err:
            failures[i] = f"{rows[i]} ({type(err).__name__}: {err})"

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(work, range(len(paths))))
    if failures:
        raise rows_error(source, "name files that cannot be decoded as PNG / JPEG / TIFF / BMP images "
                         "(unreadable or truncated)", [failures[i] for i in sorted(failures)],
                         "replace or remove these files")
    return out


def cached_images(root: Path, paths: Sequence[str], rows: Sequence[str], source: str, size: int,
                  channels: int, cache_dir: str | os.PathLike | None) -> tuple[np.ndarray, bool]:
    """The decoded images of ``paths`` and whether they came from the cache.

    With ``cache_dir=None`` images are decoded every time and nothing is written.
    """
    stats = file_stats(root, paths, rows, source)
    if cache_dir is None:
        return decode_all(root, paths, rows, source, size, channels), False
    cache_dir = Path(cache_dir).expanduser()
    key = cache_key(root, paths, stats, size, channels)
    # One cache per (dataset, size, channels): a rebuilt cache replaces the stale one.
    family = hashlib.sha256(json.dumps([source, str(root.resolve()), size, channels]).encode()).hexdigest()[:8]
    target = cache_dir / f"images-{family}-{key}.npy"
    expected = (len(paths), size, size) + ((3,) if channels == 3 else ())
    if target.is_file():
        try:
            images = np.load(target, mmap_mode="r")  # rows are copied out when the splits are built
            if images.shape == expected and images.dtype == np.uint8:
                return images, True
        except (OSError, ValueError, EOFError):
            pass
        target.unlink(missing_ok=True)  # a damaged cache is rebuilt, never trusted
    images = decode_all(root, paths, rows, source, size, channels)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache_dir, suffix=".npy.tmp", delete=False) as tmp:
        try:
            np.save(tmp, images)
        except BaseException:
            Path(tmp.name).unlink(missing_ok=True)
            raise
    os.replace(tmp.name, target)
    for stale in cache_dir.glob(f"images-{family}-*.npy"):
        if stale != target:
            stale.unlink(missing_ok=True)
    return images, False
