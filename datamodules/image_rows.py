"""Images of a split read one at a time, so that no process holds a whole dataset in memory.

``Rows``: chosen rows of a uint8 array, usually the memory-mapped decoded cache (the page
cache shares it between processes; DataLoader workers reopen the file instead of receiving a
copy). ``FileImages``: image files decoded when an item is read (``data.decode=lazy``).
Both index like the arrays they replace: ``x[i]`` is one image (H, W) or (H, W, 3), ``x[a:b]``
a stacked chunk, ``len(x)``, ``x.shape`` and ``x.ndim``; ``np.asarray(x)`` reads everything.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from datamodules.image_cache import AUTO, decode_image, load_image
from datamodules.intensity import IntensityConfig
from datamodules.medmnist_files import DatasetError

CHUNK = 512  # images per chunk of the streaming passes (statistics, fingerprints)


class ImageSeq(abc.ABC):
    """The shared protocol: subclasses implement ``__len__``, ``image(i)`` and set ``image_shape``."""

    image_shape: tuple[int, ...]
    dtype = np.dtype(np.uint8)

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of images."""

    @abc.abstractmethod
    def image(self, i: int) -> np.ndarray:
        """Image ``i`` (0 <= i < len), uint8 (H, W) or (H, W, 3)."""

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.image_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.image_shape)

    def __getitem__(self, key: int | slice) -> np.ndarray:
        if isinstance(key, slice):
            picked = range(*key.indices(len(self)))
            return np.stack([self.image(i) for i in picked]) if picked else np.empty((0, *self.image_shape), np.uint8)
        if not -len(self) <= key < len(self):
            raise IndexError(f"image {key} of {len(self)}")
        return self.image(key % len(self))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[0:len(self)]
        return out if dtype is None else out.astype(dtype)


class Rows(ImageSeq):
    """Rows ``index`` of ``array`` (N, H, W[, 3]) uint8; a memory-mapped ``array`` stays on disk."""

    def __init__(self, array: np.ndarray, index: np.ndarray) -> None:
        self.array, self.index = array, np.asarray(index, dtype=np.int64)
        self.image_shape = tuple(array.shape[1:])
        self._file = array.filename if isinstance(array, np.memmap) else None

    def __len__(self) -> int:
        return len(self.index)

    def image(self, i: int) -> np.ndarray:
        return np.array(self.array[self.index[i]])  # a copy: the memory map stays read-only

    def __getitem__(self, key: int | slice) -> np.ndarray:
        if isinstance(key, slice):  # one read of the chunk's rows
            return np.array(self.array[self.index[key]])
        return super().__getitem__(key)

    def __getstate__(self) -> dict:  # workers reopen the memory map instead of pickling its data
        state = dict(self.__dict__)
        if self._file is not None:
            state["array"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.array is None:
            self.array = np.load(self._file, mmap_mode="r")


class FileImages(ImageSeq):
    """Image files decoded on every read (``decode_image``); ``size=None`` keeps each file's
    own size (``data.augment.random_resized_crop`` from the full image): items then differ in
    shape and cannot be stacked."""

    def __init__(self, root: Path, paths: Sequence[str], size: int | None, channels: int,
                 intensity: IntensityConfig = AUTO, fallback_bits: int | None = None,
                 resize: str = "shorter_side_crop") -> None:
        self.root, self.paths = Path(root), list(paths)
        self.size, self.channels, self.intensity = size, channels, intensity
        self.fallback_bits, self.resize = fallback_bits, resize
        self.image_shape = (size or 0, size or 0) + ((3,) if channels == 3 else ())

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> np.ndarray:
        path = self.root / self.paths[i]
        try:
            if self.size is None:
                return np.asarray(load_image(path, self.channels, self.intensity, self.fallback_bits)[0], np.uint8)
            return decode_image(path, self.size, self.channels, self.intensity, self.fallback_bits, self.resize)[0]
        except (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError) as err:
            raise DatasetError(f"{path} cannot be decoded ({type(err).__name__}: {err}); replace or remove it "
                               "(data.decode=cache checks every file before training)") from err

    def __getitem__(self, key: int | slice) -> np.ndarray:
        if isinstance(key, slice) and self.size is None:
            raise TypeError("full-size images differ in shape: read them one at a time")
        return super().__getitem__(key)


def chunks(images: np.ndarray | ImageSeq, size: int = CHUNK) -> Iterator[np.ndarray]:
    """Consecutive stacked chunks of an array or image sequence, in order (full-size files:
    one image per chunk, since they differ in shape)."""
    step = 1 if isinstance(images, FileImages) and images.size is None else size
    for start in range(0, len(images), step):
        yield np.asarray(images[start:start + step]) if step > 1 else images[start][None]
