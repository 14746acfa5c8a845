"""The labelled datamodules' shared options as typed, frozen groups, each checked when built.

The keys users type stay flat (``data.batch_size``, ``data.sampler``, ``data.label_fraction``;
nested only where the config nests them: ``data.augment.*``, ``data.mlo.*``): ``DataOptions.from_keys``
routes each key to its group, and every error names the key as it is typed
(``data.batch_size=0 is invalid; allowed: an integer >= 1``). One new option is one field in
one group (and its line in the data config).

Groups of ``DataOptions`` (every labelled datamodule):

- ``InputOptions``: ``img_size``, ``normalization`` (what the network receives);
- ``LoaderOptions``: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``pin_memory``, ``on_device``;
- ``SamplingOptions``: ``sampler``, ``epoch_length``, ``shuffle_seed`` (the training order);
- ``SplitOptions``: ``split_seed``, ``label_fraction`` (the subsets we draw);
- ``GeneratedTrainOptions``: ``synthetic_train``, ``synthetic_max_ratio`` (DerMAE's generated images);
- ``data.augment``: ``transforms.AugmentConfig``; ``data.mlo``: ``mlo_levels.MLOLevelOptions``.

Own-image datamodules add ``image_options`` (decoding and row splits); tables add
``image_records.TableColumns``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from core.options import field_names, group, refuse_unknown, take
from datamodules.mlo_levels import MLOLevelOptions
from datamodules.samplers import EPOCH_LENGTHS, SAMPLER_MODES
from datamodules.transforms import NORMALIZATIONS, AugmentConfig


def require(ok: bool, key: str, value, allowed: str) -> None:
    """ValueError naming the config key ``data.<key>`` when ``ok`` is false."""
    if not ok:
        raise ValueError(f"data.{key}={value!r} is invalid; allowed: {allowed}")


@dataclass(frozen=True)
class InputOptions:
    """img_size: the network's input size in px (None: the source size); normalization:
    ``imagenet``, ``half`` ([-1, 1]), ``dataset`` (training mean / std) or ``none``."""

    img_size: int | None = None
    normalization: str = "half"

    def __post_init__(self) -> None:
        require(self.img_size is None or self.img_size >= 8, "img_size", self.img_size, "an integer >= 8")
        require(self.normalization in NORMALIZATIONS, "normalization", self.normalization, str(list(NORMALIZATIONS)))


@dataclass(frozen=True)
class LoaderOptions:
    """batch_size (training), eval_batch_size (None: batch_size), num_workers, pin_memory;
    on_device: the uint8 images live on the training device and whole batches are augmented
    there (``on_device.py``; the loaders then yield indices and ignore the workers)."""

    batch_size: int = 128
    eval_batch_size: int | None = None
    num_workers: int = 0
    pin_memory: bool = False
    on_device: bool = False

    def __post_init__(self) -> None:
        require(self.batch_size > 0, "batch_size", self.batch_size, "an integer >= 1")
        require(self.eval_batch_size is None or self.eval_batch_size > 0, "eval_batch_size", self.eval_batch_size,
                "an integer >= 1, or null (the batch_size)")
        require(self.num_workers >= 0, "num_workers", self.num_workers, "an integer >= 0")
        object.__setattr__(self, "eval_batch_size", self.eval_batch_size or self.batch_size)
        object.__setattr__(self, "on_device", bool(self.on_device))


@dataclass(frozen=True)
class SamplingOptions:
    """The training order: sampler (``samplers.SAMPLER_MODES``), epoch_length (``original`` or
    ``balanced``, with a sampler) and shuffle_seed (None: ``split_seed``; ``${seed}`` in the configs)."""

    sampler: str = "none"
    epoch_length: str = "original"
    shuffle_seed: int | None = None

    def __post_init__(self) -> None:
        require(self.sampler in SAMPLER_MODES, "sampler", self.sampler, str(list(SAMPLER_MODES)))
        require(self.epoch_length in EPOCH_LENGTHS, "epoch_length", self.epoch_length, str(list(EPOCH_LENGTHS)))


@dataclass(frozen=True)
class SplitOptions:
    """split_seed: seed of every split we make (validation re-split, label fraction, MLO-MAE
    levels; a constant, so runs over training seeds share them); label_fraction: the
    stratified, seeded share of the training split kept, in (0, 1]."""

    split_seed: int = 0
    label_fraction: float = 1.0

    def __post_init__(self) -> None:
        require(0 < self.label_fraction <= 1, "label_fraction", self.label_fraction, "(0, 1]")


@dataclass(frozen=True)
class GeneratedTrainOptions:
    """synthetic_train: a generated set (``synthesize.py``: ``.npz`` + JSON card) joined to the
    training split only, after the label fraction; synthetic_max_ratio: at most this share of
    each class's training images is generated (None: all of the set)."""

    synthetic_train: str | None = None
    synthetic_max_ratio: float | None = None

    def __post_init__(self) -> None:
        ratio = self.synthetic_max_ratio
        require(ratio is None or 0 < ratio < 1, "synthetic_max_ratio", ratio,
                "(0, 1), e.g. 0.5 (at most as many generated as real images per class), or null")


@dataclass(frozen=True)
class DataOptions:
    """Every labelled datamodule's options (see the module docstring)."""

    input: InputOptions = field(default_factory=InputOptions)
    loader: LoaderOptions = field(default_factory=LoaderOptions)
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    split: SplitOptions = field(default_factory=SplitOptions)
    generated: GeneratedTrainOptions = field(default_factory=GeneratedTrainOptions)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mlo: MLOLevelOptions | None = None

    FLAT = {"input": InputOptions, "loader": LoaderOptions, "sampling": SamplingOptions, "split": SplitOptions,
            "generated": GeneratedTrainOptions}
    NESTED = {"augment": AugmentConfig, "mlo": MLOLevelOptions}

    @classmethod
    def keys(cls) -> list[str]:
        """Every config key the groups take."""
        return field_names(*cls.FLAT.values()) + list(cls.NESTED)

    @classmethod
    def from_keys(cls, keys: Mapping, owner: str, own: tuple[str, ...] = ()) -> DataOptions:
        """The groups of the flat config ``keys`` of ``owner`` (whose own keys are ``own``);
        a key no group takes is one error listing every key ``owner`` takes."""
        refuse_unknown(keys, [*cls.keys(), *own], owner, "data")
        groups = {}
        for name, kind in cls.FLAT.items():
            groups[name], keys = take(kind, keys)
        mlo = keys.get("mlo")
        return cls(**groups, augment=group(AugmentConfig, "data.augment", keys.get("augment")),
                   mlo=None if not mlo else group(MLOLevelOptions, "data.mlo", mlo))
