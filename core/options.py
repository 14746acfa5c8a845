"""Typed option groups from config keys: the helpers every module with many options uses
(``datamodules.options``, ``lightning_modules.mlo_options``, ``lightning_modules.diffusion_options``).

A group is a frozen dataclass checked in ``__post_init__``. Its keys are either flat in the
config (``data.batch_size``: ``take`` gathers a group's fields from the flat keys) or nested
under one key (``model.masking.net``: ``group`` builds it from the mapping). Every error names
the config key as the user types it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any


def group(kind: type, key: str, value: Any):
    """``value`` of the nested config key ``key`` (e.g. ``model.masking``): None, a mapping from
    the config, or already a ``kind``, as a ``kind``; an unknown option is one error listing the
    known ones."""
    if isinstance(value, kind):
        return value
    known = [f.name for f in fields(kind)]
    if value is not None and not isinstance(value, Mapping):
        raise ValueError(f"{key}={value!r} is invalid: {key} is a group of options {known}; "
                         f"set one of them, e.g. {key}.{known[0]}=...")
    value = dict(value or {})
    if unknown := sorted(set(value) - set(known)):
        raise ValueError(f"{key} has no option {unknown}; allowed: {known}")
    return kind(**value)


def take(kind: type, keys: Mapping) -> tuple[Any, dict]:
    """(a ``kind`` built from the flat keys named by its fields, the other keys)."""
    names = {f.name for f in fields(kind)}
    return kind(**{k: v for k, v in keys.items() if k in names}), {k: v for k, v in keys.items() if k not in names}


def field_names(*kinds: type) -> list[str]:
    """The field names of ``kinds``, in order: the flat keys those groups take."""
    return [f.name for kind in kinds for f in fields(kind)]


def refuse_unknown(keys: Iterable[str], known: Iterable[str], owner: str, prefix: str) -> None:
    """One error naming every key of ``keys`` that ``owner`` does not take, e.g. ``data.batchsize
    is not an option of MedMNISTDataModule (unknown: [...]); allowed: [...]``."""
    known = sorted(set(known))
    if unknown := sorted(set(keys) - set(known)):
        raise ValueError(f"{prefix}.{unknown[0]} is not an option of {owner} (unknown: {unknown}); allowed: {known}")
