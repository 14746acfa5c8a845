"""Atomic writes: the content goes to a temporary file in the target's folder (so that the
rename is atomic on one filesystem) and replaces the target only when it is complete; on any
error the temporary file is removed and the target is untouched."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _temp_next_to(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # the target's suffix last: writers that choose a format by extension (np.save, ONNX) keep it
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".partial{path.suffix}")
    os.close(fd)
    os.chmod(name, 0o644)  # mkstemp's 0600 would hide the file from the rest of a group
    return Path(name)


@contextmanager
def atomic_files(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Temporary paths, one per target, to write to; on a clean exit they are renamed onto
    their targets (parents created), on an error they are removed and no target changes."""
    targets = [Path(p) for p in paths]
    temps: list[Path] = []
    try:
        temps = [_temp_next_to(t) for t in targets]
        yield temps
        for tmp, target in zip(temps, targets):
            os.replace(tmp, target)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """``atomic_files`` for one target: yields its temporary path."""
    with atomic_files(path) as (tmp,):
        yield tmp


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
