"""SHA-256 of data files, computed once per file version.

A file version is its (resolved path, size in bytes, modification time in ns): hashing a
MedMNIST+ file of several GB takes seconds, and every run (and every checkpoint it saves)
names its data by this hash. Hashes are kept in memory for the process, and for files of at
least ``PERSIST_MIN_BYTES`` also in ``<cache>/file_sha256.json`` (``$MEDMAE_CACHE``, else
``~/.cache/medmae``), so the next run on the same file does not read it again. A file that
changes gets a new size or mtime, hence a new hash; an unwritable cache only costs the re-read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from core.io import atomic_write_text, file_lock

PERSIST_MIN_BYTES = 64 * 2**20  # smaller files hash in well under a second
CHUNK = 1 << 20

log = logging.getLogger(__name__)
_memory: dict[str, str] = {}


def cache_dir() -> Path:
    """``$MEDMAE_CACHE`` or ``~/.cache/medmae``."""
    return Path(os.environ.get("MEDMAE_CACHE", "~/.cache/medmae")).expanduser()


def _version(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"


def _read_disk() -> dict[str, str]:
    """The stored hashes; {} when there are none, or when the file is damaged (it is rewritten)."""
    path = cache_dir() / "file_sha256.json"
    try:
        known = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        known = err
    if not isinstance(known, dict):
        log.warning("the hash cache %s is damaged (%s): the hashes are computed again and the file rewritten",
                    path, known if isinstance(known, Exception) else f"holds a {type(known).__name__}")
        return {}
    return known


def _write_disk(key: str, digest: str) -> None:
    path = cache_dir() / "file_sha256.json"
    try:
        with file_lock(path.with_name(path.name + ".lock")):
            known = _read_disk()
            known[key] = digest
            atomic_write_text(path, json.dumps(known, indent=0))
    except OSError as err:  # a read-only home: the hash is only recomputed next time
        log.debug("could not store the hash of %s in %s: %s", key.split("\0")[0], path, err)


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of the bytes of ``path`` (no caching)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 of ``path``, read once per file version (see the module docstring)."""
    path = Path(path)
    key = _version(path)
    if key in _memory:
        return _memory[key]
    big = path.stat().st_size >= PERSIST_MIN_BYTES
    digest = _read_disk().get(key) if big else None
    if digest is None:
        digest = sha256_of(path)
        if big:
            _write_disk(key, digest)
    _memory[key] = digest
    return digest
