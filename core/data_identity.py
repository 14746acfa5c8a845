"""What data a run saw, as plain data, and the checks that compare it.

Every datamodule names its source with ``source_identity()`` (``datamodules.data_source``); the
run writes that identity into ``metrics.json`` (``data_identity``), its checkpoints, the W&B /
MLflow run config and tags, and its report; exports and aggregate tables carry it on. An
identity is a dict with ``kind``, ``synthetic`` (bool), ``fingerprint`` (what two runs must
share to be pooled) and, by kind:

- ``medmnist``: ``flag``, ``size``, ``path``, ``sha256`` of the ``.npz`` file.
- ``synthetic``: the same, plus ``generator`` (the settings of ``datamodules.synthetic``'s
  generator: seed, sample counts, size, channels, classes) and ``note: "not real data"``; the
  flag is the dataset the file is shaped like, not the data it holds.
- ``table`` / ``folder``: ``path`` (the table file, or the folder), ``rows`` and ``fingerprint``
  (SHA-256 of the listing: every row's image path, label, predefined split and group, and file
  size in bytes; not of the pixels).
- ``union``: ``members``, the identities of the pooled datasets.
"""

from __future__ import annotations

SYNTHETIC_NOTE = "not real data"
SYNTHETIC_BANNER = ("**Synthetic data, not real data.** Every number, table and figure below was measured on "
                    "images made by the synthetic generator")
SHORT = 16  # hex digits of a hash shown in tables


def synthetic_class_names(names: list[str]) -> list[str]:
    """Class names of synthetic data, marked so that a table or figure cut out of a report cannot
    pass for a real result: ``synthetic class 4 (like 'melanoma')``."""
    return [f"synthetic class {i} (like {name!r})" for i, name in enumerate(names)]


def is_synthetic(identity: dict | None) -> bool:
    """Whether the identity (or any member of a union) is the synthetic generator's data."""
    if not identity:
        return False
    return bool(identity.get("synthetic")) or any(is_synthetic(m) for m in identity.get("members", []))


def describe(identity: dict | None) -> str:
    """One line naming the source: the file and its hash, the table / folder and its
    fingerprint, or the synthetic generator (marked "not real data")."""
    if not identity:
        return "unknown (the run recorded no data identity)"
    kind = identity.get("kind")
    if kind == "union":
        return "union of " + "; ".join(describe(m) for m in identity.get("members", []))
    if kind in ("medmnist", "synthetic"):
        file = f"file {identity.get('path')} (sha256 {str(identity.get('sha256'))[:SHORT]})"
        if kind == "medmnist":
            return f"MedMNIST {identity.get('flag')} at {identity.get('size')} px, {file}"
        g = identity.get("generator") or {}
        counts = "/".join(str(g.get(k, "?")) for k in ("n_train", "n_val", "n_test"))
        return (f"SYNTHETIC images, {SYNTHETIC_NOTE} (generator seed {g.get('seed', '?')}, {counts} train/val/test "
                f"images, {g.get('num_classes', '?')} classes shaped like {identity.get('flag')} at "
                f"{identity.get('size')} px), {file}")
    what = "table" if kind == "table" else "image folder"
    return (f"{what} {identity.get('path')}, {identity.get('rows')} rows "
            f"(fingerprint {str(identity.get('fingerprint'))[:SHORT]})")


def label(identity: dict | None) -> str:
    """A short name for table cells: ``dermamnist 28 px (sha256 1a2b3c4d)``, ``SYNTHETIC, like
    dermamnist 28 px (seed 0)``, ``table t.csv (fingerprint 1a2b3c4d)``, ``-`` for none."""
    if not identity:
        return "-"
    kind, short = identity.get("kind"), str(identity.get("fingerprint"))[:8]
    if kind == "union":
        return " + ".join(label(m) for m in identity.get("members", []))
    if kind == "synthetic":
        seed = (identity.get("generator") or {}).get("seed", "?")
        return f"SYNTHETIC, like {identity.get('flag')} {identity.get('size')} px (seed {seed}, sha256 {short})"
    if kind == "medmnist":
        return f"{identity.get('flag')} {identity.get('size')} px (sha256 {short})"
    name = str(identity.get("path", "")).replace("\\", "/").rsplit("/", 1)[-1]
    return f"{kind} {name} (fingerprint {short})"


def identity_tags(identity: dict) -> dict[str, str]:
    """Tracker tags of an identity (MLflow tags; W&B tags are ``key:value`` strings of the short
    ones): ``data.kind``, ``data.synthetic``, ``data.fingerprint`` (16 hex digits), ``data.source``."""
    return {"data.kind": str(identity.get("kind")), "data.synthetic": str(is_synthetic(identity)).lower(),
            "data.fingerprint": str(identity.get("fingerprint"))[:SHORT], "data.source": describe(identity)}


def data_key(identity: dict | None) -> tuple | None:
    """What two runs must share to be pooled: (kind, fingerprint), members' keys for a union;
    None for a run without an identity (recorded before runs named their data)."""
    if not identity:
        return None
    if identity.get("kind") == "union":
        return ("union", *(data_key(m) for m in identity.get("members", [])))
    return identity.get("kind"), identity.get("fingerprint")


def check_same_data(identities: dict[str, dict | None]) -> None:
    """ValueError naming the runs (``{run name: identity}``) unless all were made on the same
    data: the same kind (real or synthetic, file or table) and fingerprint. Runs without an
    identity are not compared."""
    groups: dict[tuple, list[str]] = {}
    shown: dict[tuple, str] = {}
    for run, identity in identities.items():
        key = data_key(identity)
        if key is not None:
            groups.setdefault(key, []).append(str(run))
            shown.setdefault(key, describe(identity))
    if len(groups) > 1:
        listed = "\n".join(f"  {shown[k]}: {', '.join(runs)}" for k, runs in groups.items())
        raise ValueError(f"these runs were made on different data and cannot be pooled:\n{listed}")
