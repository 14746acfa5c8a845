"""The options of a masking strategy (the group ``model.masking``): a frozen dataclass per
strategy, checked when built, whose errors name ``model.masking.<key>``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar


@dataclass(frozen=True)
class StrategyOptions:
    """A strategy's options, the group ``model.masking`` (``name`` plus these fields); each
    subclass is a frozen dataclass checked when built, its errors naming ``model.masking.<key>``."""

    name: ClassVar[str] = ""

    def as_config(self) -> dict[str, Any]:
        """``{"name": ..., option: value}`` with tuples as lists (a plain config / hparams value)."""
        plain = {f.name: getattr(self, f.name) for f in fields(self)}
        return {"name": self.name, **{k: list(v) if isinstance(v, tuple) else v for k, v in plain.items()}}


def option_error(key: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"model.masking.{key}={value!r} is invalid; allowed: {allowed}")


def check_range(key: str, value: float, low: float, high: float, closed_high: bool = True) -> float:
    """``value`` as a float in [low, high] (or [low, high)), else an error naming ``model.masking.<key>``."""
    ok = low <= value <= high if closed_high else low <= value < high
    if not ok:
        raise option_error(key, value, f"[{low}, {high}{']' if closed_high else ')'}")
    return float(value)


def momentum_pair(key: str, value: float | Sequence[float]) -> tuple[float, float]:
    """A teacher momentum option: one number (constant) or [start, end] (a schedule), start in
    [0, 1) and end in [0, 1] -> (start, end)."""
    pair = (value, value) if isinstance(value, (int, float)) else tuple(value)
    if len(pair) != 2:
        raise option_error(key, value, "a number in [0, 1) (constant) or [start, end] (a schedule)")
    return check_range(key, pair[0], 0.0, 1.0, closed_high=False), check_range(key, pair[1], 0.0, 1.0)
