"""Helpers shared by the benchmark scripts (run them from the repository root)."""

from __future__ import annotations

import hashlib
import json
import statistics
import time
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


class Units:
    """JSON results of units of work under ``root``, keyed by a hash of their settings."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str, settings: dict) -> Path:
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        return self.root / f"{name}-{key}.json"

    def peek(self, name: str, settings: dict) -> dict | None:
        """The cached result, or None (nothing is computed)."""
        path = self.path(name, settings)
        return json.loads(path.read_text()) if path.is_file() else None

    def get(self, name: str, settings: dict, work) -> dict:
        """The cached result, or ``work(stem)``'s (``stem``: the unit's file name without
        suffix, which names its run folder, so another setting never reuses a folder)."""
        path = self.path(name, settings)
        if path.is_file():
            return json.loads(path.read_text())
        start = time.time()
        result = work(path.stem)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: done in {time.time() - start:.0f} s", flush=True)
        atomic_write_text(path, json.dumps({"settings": settings, **result}, indent=2))
        return json.loads(path.read_text())  # the same (string) keys whether fresh or cached
