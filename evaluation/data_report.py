"""The parts of a report that say what the numbers were measured on: the data rows of the
protocol (naming the source: file and sha256, table / folder and fingerprint, or the synthetic
generator), the synthetic-data banner at the top, and the note on classes whose AUROC / AP are
undefined in the test split."""

from __future__ import annotations

import math

from omegaconf import DictConfig

from core.data_identity import SYNTHETIC_BANNER, SYNTHETIC_NOTE, describe, is_synthetic


def synthetic_run(data: DictConfig, identity: dict | None) -> bool:
    """Synthetic data: the identity says so, or (a run without one) the config writes the
    synthetic generator's file (``data.synthetic``)."""
    return is_synthetic(identity) or bool(data.get("synthetic"))


def banner_lines(data: DictConfig, identity: dict | None) -> list[str]:
    """The report's first line after its title for a synthetic run (nothing for real data)."""
    if not synthetic_run(data, identity):
        return []
    source = describe(identity) if identity else "the generator of data.synthetic"
    return [f"> {SYNTHETIC_BANNER}. Nothing here is a result on real images. Source: {source}.", ""]


def _medmnist_rows(data: DictConfig, synthetic: bool) -> list[tuple[str, str]]:
    split = data.get("split", "official")
    if split == "stratified":
        split += f" (val fraction {data.get('val_fraction')})"
    name = data.get("flag", data.get("flags"))
    if synthetic:
        name = f"SYNTHETIC ({SYNTHETIC_NOTE}; images shaped like {name})"
    return [("dataset", f"{name}, {data.get('size')} px -> {data.get('img_size')} px"), ("split", split)]


def _own_rows(data: DictConfig) -> list[tuple[str, str]]:
    source = data.get("table") or data.get("root")
    fractions = data.get("fractions") or {}
    parts = [f"predefined by column {data.split_column!r}" if data.get("split_column") else
             "predefined folders, if any" if data.get("root") else "none predefined",
             "missing splits carved with train/val/test = "
             + "/".join(str(fractions.get(k)) for k in ("train", "val", "test")),
             "stratified on label" + "".join(f" x {c!r}" for c in data.get("stratify_columns") or [])]
    if data.get("group_column"):
        parts.append(f"grouped by {data.group_column!r}")
    if data.get("exclude"):
        parts.append(f"excluded from {list(data.get('exclude_from'))}: {dict(data.exclude)}")
    return [("dataset", f"{source}, {data.get('channels')} channel(s) at {data.get('img_size')} px"),
            ("split", "; ".join(parts) + " (row by row in splits.csv)")]


def data_rows(data: DictConfig, identity: dict | None = None) -> list[tuple[str, str]]:
    """Dataset, data source and split rows of the protocol, for MedMNIST (real or synthetic) and
    own (table / folder) data; ``identity`` is the run's ``data_identity`` (``core.data_identity``)."""
    medmnist = "flag" in data or "flags" in data
    rows = _medmnist_rows(data, synthetic_run(data, identity)) if medmnist else _own_rows(data)
    source = describe(identity) if identity else (
        f"synthetic generator (data.synthetic), {SYNTHETIC_NOTE}" if data.get("synthetic")
        else "not recorded (a run from before runs named their data)")
    return [rows[0], ("data source", source), *rows[1:]]


def undefined_note(rows: list[list[str]]) -> list[str]:
    """A line under the per-class table naming the classes whose AUROC / AP are undefined (NaN)
    in the test split; ``rows`` are ``test_per_class.csv``'s (header first, the averages last)."""
    column = rows[0].index("auroc") if rows and "auroc" in rows[0] else None
    if column is None:
        return []
    classes = rows[1:-2]
    undefined = [r[0] for r in classes if math.isnan(float(r[column]))]
    if not undefined:
        return []
    return [f"AUROC and AP are undefined (NaN) for {', '.join(repr(n) for n in undefined)}: no positive or no "
            f"negative image in the test split. AUC, macro and weighted averages are over the other "
            f"{len(classes) - len(undefined)} of {len(classes)} classes, never counting an undefined one as 0.", ""]
