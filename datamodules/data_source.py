"""The identity of a datamodule's source (the format is ``core.data_identity``): a MedMNIST
``.npz`` file, a file of the synthetic generator, or an image table / folder."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from core.data_identity import SYNTHETIC_NOTE
from core.file_hash import file_sha256
from datamodules.dicom_frames import split_frame
from datamodules.image_records import ImageRecords
from datamodules.synthetic import SYNTHETIC_KEY


def synthetic_marker(path: Path) -> dict | None:
    """The generator settings a synthetic ``.npz`` carries (``datamodules.synthetic``), or None
    for a file without the entry. An unreadable file gives None here: reading its arrays names
    the problem (``medmnist_files.load_arrays``)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if SYNTHETIC_KEY not in npz.files:
                return None
            return json.loads(str(npz[SYNTHETIC_KEY]))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def npz_identity(flag: str, size: int, path: Path, generator: dict | None) -> dict:
    """A MedMNIST-format file: real (``generator`` None) or the synthetic generator's."""
    sha = file_sha256(path)
    identity = {"kind": "medmnist", "synthetic": False, "flag": flag, "size": int(size),
                "path": str(Path(path).resolve()), "sha256": sha, "fingerprint": sha}
    if generator is not None:
        identity.update(kind="synthetic", synthetic=True, generator=generator, note=SYNTHETIC_NOTE)
    return identity


def records_fingerprint(records: ImageRecords) -> str:
    """SHA-256 of the listing: each row's image path (a frame of a multi-frame DICOM as
    ``<path>#frame=<k>``), label, predefined split, group and file size in bytes (-1 for a
    missing file), in table order; the pixels are not read."""
    h = hashlib.sha256()
    splits = records.splits if records.splits is not None else [""] * len(records)
    groups = records.groups if records.groups is not None else [""] * len(records)
    for i, rel in enumerate(records.paths):
        try:
            size = split_frame(records.root / rel)[0].stat().st_size
        except OSError:
            size = -1
        h.update(json.dumps([rel, records.label_text(i), str(splits[i]), str(groups[i]), size]).encode() + b"\n")
    return h.hexdigest()


def records_identity(kind: str, path: str | Path, records: ImageRecords) -> dict:
    """An image table (``kind="table"``, ``path`` the table file) or folder (``path`` the folder)."""
    return {"kind": kind, "synthetic": False, "path": str(Path(path).resolve()), "image_root": str(records.root),
            "rows": len(records), "classes": list(records.classes), "fingerprint": records_fingerprint(records)}
