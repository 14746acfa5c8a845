"""The own-image datamodules' options (``data=image_table`` / ``data=image_folder``) beyond the
shared ones (``options.py``), in two typed groups checked when built; the keys stay flat
(``data.channels``, ``data.fractions.val``), and errors name them as typed.

- ``DecodeOptions``: how files become the cached uint8 images (channels, intensity, DICOM
  frames, resize, cache or lazy decoding, cache folder);
- ``RowOptions``: how rows are split and filtered (fractions, stratify columns, exclusions,
  ``splits.csv``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from core.options import group
from datamodules.dicom_frames import DICOM_FRAMES
from datamodules.image_cache import RESIZE_MODES
from datamodules.intensity import IntensityConfig
from datamodules.medmnist_files import SPLITS
from datamodules.options import require

DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
DECODE_MODES = ("cache", "lazy")


def check_fractions(fractions: Mapping | None) -> dict[str, float]:
    """``{train, val, test}`` fractions, each in [0, 1], train > 0, summing to 1. ``val: 0``
    (with no predefined validation rows) is the "no validation set" protocol: no model
    selection, the last epoch is tested (``experiment=resnet18_mhist_noval``)."""
    fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
    require(set(fractions) == set(SPLITS), "fractions", fractions, "keys train, val and test")
    ok = all(0 <= float(v) <= 1 for v in fractions.values()) and fractions["train"] > 0
    require(ok and abs(sum(map(float, fractions.values())) - 1) < 1e-6, "fractions", fractions,
            "values in [0, 1] with train > 0, summing to 1 (e.g. {train: 0.7, val: 0.1, test: 0.2})")
    return {k: float(v) for k, v in fractions.items()}


@dataclass(frozen=True)
class DecodeOptions:
    """channels: 1 (grayscale) or 3 (RGB), every image converted; intensity: how pixel values
    become 8 bits (``IntensityConfig``; ``windows``: one channel per window, so ``channels``
    must equal their count); dicom_frames: multi-frame DICOM as ``all`` frames (one item each,
    the file their group) or the ``first`` / ``middle`` one; resize: ``shorter_side_crop``
    (timm's eval transform), ``pad`` or ``stretch`` to ``img_size``; decode: ``cache`` (every
    file decoded once into a memory-mapped file under ``cache_dir``; None: in memory on every
    setup) or ``lazy`` (each file decoded when read, in the loader's workers)."""

    channels: int = 3
    intensity: IntensityConfig = field(default_factory=IntensityConfig)
    dicom_frames: str = "all"
    resize: str = "shorter_side_crop"
    decode: str = "cache"
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        require(self.channels in (1, 3), "channels", self.channels, "1 or 3")
        object.__setattr__(self, "intensity", group(IntensityConfig, "data.intensity", self.intensity))
        windows = len(self.intensity.windows or ())
        require(not windows or windows == self.channels, "channels", self.channels,
                f"{windows}: data.intensity.windows lists {windows} window(s), one channel each")
        require(self.dicom_frames in DICOM_FRAMES, "dicom_frames", self.dicom_frames, str(list(DICOM_FRAMES)))
        require(self.resize in RESIZE_MODES, "resize", self.resize, str(list(RESIZE_MODES)))
        require(self.decode in DECODE_MODES, "decode", self.decode, str(list(DECODE_MODES)))


@dataclass(frozen=True)
class RowOptions:
    """fractions: ``{train, val, test}`` for the splits the data do not predefine;
    stratify_columns: extra columns the split is stratified on (with the label); exclude:
    ``{column: [values]}``, rows with a listed value dropped from the splits in
    ``exclude_from`` (after splitting, so the split itself is unchanged); splits_file: where
    ``splits.csv`` is written (None: nowhere)."""

    fractions: Mapping | None = None
    stratify_columns: tuple[str, ...] = ()
    exclude: Mapping | None = None
    exclude_from: tuple[str, ...] = ("train",)
    splits_file: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "fractions", check_fractions(self.fractions))
        object.__setattr__(self, "stratify_columns", tuple(str(c) for c in self.stratify_columns))
        exclude = {str(k): frozenset(str(v) for v in values) for k, values in (self.exclude or {}).items()}
        object.__setattr__(self, "exclude", exclude)
        object.__setattr__(self, "exclude_from", tuple(self.exclude_from))
        require(set(self.exclude_from) <= set(SPLITS), "exclude_from", list(self.exclude_from), str(list(SPLITS)))

    @property
    def named_columns(self) -> list[str]:
        """The table columns these options read (stratification, then exclusion), each once."""
        return list(dict.fromkeys([*self.stratify_columns, *self.exclude]))
