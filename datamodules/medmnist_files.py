"""Find, download and validate MedMNIST ``.npz`` files.

We read the ``.npz`` files directly and use the ``medmnist`` package only for its
metadata (``medmnist.INFO``: task, label names, channels, URLs and MD5 per size).
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.io import atomic_path
from core.tasks import MULTI_LABEL

SIZES = (28, 64, 128, 224)
SPLITS = ("train", "val", "test")
DOWNLOAD_TIMEOUT_S = 30.0


class DatasetError(RuntimeError):
    """A dataset file is missing, unreachable or malformed. The message says how to fix it."""


def medmnist_info(flag: str) -> dict:
    """``medmnist.INFO[flag]`` for a 2D flag, or a ValueError listing the valid flags."""
    from medmnist import INFO

    flags_2d = sorted(k for k in INFO if not k.endswith("3d"))
    if flag not in flags_2d:
        raise ValueError(f"Unknown MedMNIST flag {flag!r}. Valid 2D flags: {', '.join(flags_2d)}")
    return INFO[flag]


def check_size(size: int) -> None:
    if size not in SIZES:
        raise ValueError(f"data.size={size} is invalid; allowed sizes are {list(SIZES)}")


def file_name(flag: str, size: int) -> str:
    """``{flag}.npz`` at 28 px, ``{flag}_{size}.npz`` otherwise (MedMNIST+ naming)."""
    check_size(size)
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def resolve_root(root: str | os.PathLike | None) -> Path:
    """Explicit value, then ``$MEDMNIST_ROOT``, then ``~/.medmnist``."""
    chosen = root or os.environ.get("MEDMNIST_ROOT") or "~/.medmnist"
    return Path(chosen).expanduser().resolve()


def url_and_md5(flag: str, size: int) -> tuple[str, str]:
    info = medmnist_info(flag)
    suffix = "" if size == 28 else f"_{size}"
    try:
        return info[f"url{suffix}"], info[f"MD5{suffix}"]
    except KeyError as err:
        raise DatasetError(f"medmnist.INFO has no download entry for {flag} at {size} px") from err


def download_file(url: str, dest: Path, md5: str, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Stream ``url`` into a temporary file next to ``dest``, check its MD5, rename atomically.

    On any failure the temporary file is removed and ``dest`` is left untouched.
    """
    created = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
    try:
        with atomic_path(dest) as tmp:
            digest = hashlib.md5()
            with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as resp:
                while chunk := resp.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != md5:
                raise DatasetError(
                    f"MD5 mismatch for {url}: expected {md5}, got {digest.hexdigest()} "
                    "(the download was corrupted or the file changed upstream)."
                )
    except BaseException:
        for folder in created:  # folders this call made, innermost first, if still empty
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    return dest


def _missing_message(flag: str, size: int, path: Path, url: str, cause: str) -> str:
    return (
        f"MedMNIST file for {flag!r} at {size} px is not available: {cause}\n"
        f"  expected path: {path}\n"
        f"  download URL:  {url}\n"
        "To fix: download the file by hand (Zenodo is slow and sometimes down; retry later) and "
        f"place it at the expected path, or point `data.root=...` or the MEDMNIST_ROOT "
        "environment variable at the folder that already holds it."
    )


def ensure_file(flag: str, size: int, root: str | os.PathLike | None, download: bool) -> Path:
    """Path of the dataset file, downloading it first if it is absent and ``download``."""
    path = resolve_root(root) / file_name(flag, size)
    if path.is_file():
        return path
    url, md5 = url_and_md5(flag, size)
    if not download:
        raise DatasetError(_missing_message(flag, size, path, url, "file not found and data.download=false"))
    try:
        return download_file(url, path, md5)
    except Exception as err:  # network errors, HTTP errors, MD5 mismatch
        raise DatasetError(_missing_message(flag, size, path, url, f"download failed ({err})")) from err


@dataclass(frozen=True)
class MedMNISTArrays:
    """The six arrays of a MedMNIST file. Images uint8 (N, H, W) or (N, H, W, 3); labels (N, K)."""

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]


def load_arrays(path: Path, num_classes: int, task: str, size: int | None = None) -> MedMNISTArrays:
    """Read and validate a MedMNIST ``.npz``; any problem raises one DatasetError naming the file."""

    def fail(problem: str) -> DatasetError:
        return DatasetError(
            f"Invalid MedMNIST file {path}: {problem}. The file was left in place; replace it with "
            "a correct copy (delete it to let the loader download it again)."
        )

    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels") if f"{s}_{k}" not in npz]
            if missing:
                raise fail(f"missing keys {missing} (found {sorted(npz.files)})")
            images = {s: npz[f"{s}_images"] for s in SPLITS}
            labels = {s: npz[f"{s}_labels"] for s in SPLITS}
    except DatasetError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError) as err:
        raise fail(f"not a readable .npz archive, truncated or corrupt ({type(err).__name__}: {err})") from err

    first_shape = None
    for s in SPLITS:
        x, y = images[s], labels[s]
        if x.dtype != np.uint8:
            raise fail(f"{s}_images has dtype {x.dtype}, expected uint8")
        if not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] == 3)):
            raise fail(f"{s}_images has shape {x.shape}, expected (N, H, W) or (N, H, W, 3)")
        if x.shape[1] != x.shape[2] or (size is not None and x.shape[1] != size):
            raise fail(f"{s}_images has shape {x.shape}, expected square {size or 'H'} px images")
        if first_shape is not None and x.shape[1:] != first_shape:
            raise fail(f"{s}_images has image shape {x.shape[1:]}, train has {first_shape}")
        first_shape = x.shape[1:]
        if not np.issubdtype(y.dtype, np.integer):
            raise fail(f"{s}_labels has dtype {y.dtype}, expected an integer type")
        if y.ndim != 2 or y.shape[0] != x.shape[0]:
            raise fail(f"{s}_labels has shape {y.shape}, expected ({x.shape[0]}, K)")
        if task == MULTI_LABEL:
            if y.shape[1] != num_classes or not np.isin(y, (0, 1)).all():
                raise fail(f"{s}_labels must be a 0/1 matrix with {num_classes} columns")
        else:
            if y.shape[1] != 1:
                raise fail(f"{s}_labels has shape {y.shape}, expected ({x.shape[0]}, 1)")
            if len(y) and (y.min() < 0 or y.max() >= num_classes):
                raise fail(f"{s}_labels lie in [{y.min()}, {y.max()}], outside [0, {num_classes - 1}]")
    if task != MULTI_LABEL:
        absent = sorted(set(range(num_classes)) - set(np.unique(labels["train"]).tolist()))
        if absent:
            raise fail(f"classes {absent} have no training image")
    return MedMNISTArrays(images=images, labels={s: labels[s].astype(np.int64) for s in SPLITS})
