"""Helpers shared by the benchmark scripts (run them from the repository root)."""

from __future__ import annotations

import statistics
from pathlib import Path

from core.io import atomic_write_text  # noqa: F401  (re-exported for the benchmark scripts)


def mean_std(values: list[float]) -> str:
    """``mean +- sample std`` with three decimals (std 0 for a single value)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} +- {sd:.3f}"


def real_data_root(path: Path) -> Path:
    """The folder that holds the real ``pneumoniamnist.npz``, resolved; exits with a message
    naming the fix when the file is not there."""
    if not (path / "pneumoniamnist.npz").is_file():
        raise SystemExit(f"pneumoniamnist.npz not found in {path}; pass --data-root")
    return path.resolve()
