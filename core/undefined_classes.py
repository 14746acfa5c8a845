"""Which classes (labels) a ranking metric is defined for in an evaluated split, and the one
warning that names the others.

The one-vs-rest AUROC and average precision of a class, or of a label of a multi-label task,
need both a positive and a negative sample in the split: without them there is no ROC curve.
Such a class is *undefined*: NaN in per-class tables and per-class logged keys, left out of
every macro mean (the mean over the defined classes; NaN when none is), counted in the summary
(``auc_defined_labels``) and named in an ``UndefinedClassWarning``. Counting it as 0 (what a
plain mean over torchmetrics' or scikit-learn's per-class values would do) biases the mean down.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np


class UndefinedClassWarning(UserWarning):
    """A class / label has no positive or no negative sample: its AUROC and AP are undefined."""


def defined_classes(positives: Sequence[int] | np.ndarray, total: int) -> np.ndarray:
    """(K,) bool: class c is defined when ``0 < positives[c] < total`` (``positives`` (K,) counts
    of samples of the class among ``total`` samples)."""
    positives = np.asarray(positives).reshape(-1)
    return (positives > 0) & (positives < total)


def undefined_message(split: str, names: Sequence[str], positives: Sequence[int] | np.ndarray, total: int) -> str | None:
    """The warning text naming each undefined class with its count, or None when all are defined."""
    positives = np.asarray(positives).reshape(-1)
    ok = defined_classes(positives, total)
    if ok.all():
        return None
    listed = ", ".join(f"{names[c]!r} ({int(positives[c])} of {total} positive)" for c in np.flatnonzero(~ok))
    return (f"{split}: AUROC and average precision are undefined for {listed} (no positive or no negative "
            f"sample): NaN per class, left out of the macro means ({int(ok.sum())} of {len(ok)} classes defined)")


ISSUED: set[str] = set()  # messages warned in this process


def warn_undefined(split: str, names: Sequence[str], positives: Sequence[int] | np.ndarray, total: int) -> None:
    """Issue an ``UndefinedClassWarning`` naming the undefined classes (none when all are defined),
    each distinct message once per process: every validation epoch and every metric of the split
    (AUC, per-class AUROC and AP, macro AP) would otherwise repeat it."""
    message = undefined_message(split, names, positives, total)
    if message is not None and message not in ISSUED:
        ISSUED.add(message)
        warnings.warn(message, UndefinedClassWarning, stacklevel=2)


def mean_over_defined(values: np.ndarray) -> float:
    """Mean of the finite values (the defined classes); NaN when there is none."""
    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values)
    return float(values[finite].mean()) if finite.any() else float("nan")
