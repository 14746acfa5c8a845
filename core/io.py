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
        for target in targets:  # one at a time: a failure on the second still removes the first
            temps.append(_temp_next_to(target))
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


LOCK_STALE_S = 120.0  # a lock file older than this was left by a killed process


@contextmanager
def file_lock(path: str | os.PathLike, poll_s: float = 0.05) -> Iterator[None]:
    """An exclusive lock between processes, and machines sharing the folder: the lock file is
    created with O_EXCL (atomic on local and NFS filesystems). For short critical sections: a
    lock older than ``LOCK_STALE_S`` is taken to be left by a killed holder and removed."""
    import socket
    import time

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                if time.time() - path.stat().st_mtime > LOCK_STALE_S:
                    path.unlink(missing_ok=True)
                    continue
            except FileNotFoundError:
                continue
            time.sleep(poll_s)
    try:
        os.write(fd, f"{socket.gethostname()}:{os.getpid()}".encode())
        yield
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
