"""Helpers shared by the benchmark scripts (run them from the repository root)."""

from __future__ import annotations

import statistics


def mean_std(values: list[float]) -> str:
    """``mean +- sample std`` with three decimals (std 0 for a single value)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} +- {sd:.3f}"
