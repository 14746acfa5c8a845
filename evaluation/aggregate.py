"""Aggregate runs over seeds: mean +- std tables (markdown and CSV) and a label-fraction plot.

    python aggregate.py logs/mae_transfer/multiruns/<time>             # every job of a multirun
    python aggregate.py RUN_DIR [RUN_DIR ...] --metrics test/acc test/auc
    python aggregate.py <multirun dir> --plot-x data.label_fraction --plot-metric test/auc
    python aggregate.py <multirun dir> --metrics test/f1 test/auprc test/recall test/specificity  # binary tasks
    python aggregate.py ensembles/                   # evaluate.py outputs (ensemble/0, ensemble/1, ...)

Runs are grouped by their command-line overrides (``.hydra/overrides.yaml``) except the
seed keys, so ``-m seed=0,1,2 data.label_fraction=0.1,1.0`` gives one row per fraction.
Runs without ``metrics.json`` (or without a metric) are listed and left out; a metric that
no run logged is an error that lists the metrics that exist. A metric a run logged as NaN
(undefined, e.g. AUC on a test split where no class has both positives and negatives) is
neither 0 nor silently dropped: the mean is over the runs where it is defined, and the table
says how many of the group's runs that is (``<metric>_defined_runs`` in the CSV).

Runs are pooled only when they were made on the same data (``data_identity`` in
``metrics.json``: the same MedMNIST file, table or synthetic generator; see
``core.data_identity``): a group that mixes data is an error naming its runs, unless
``--allow-mixed-data``. The ``data`` column names each row's data.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path

import yaml

from core.data_identity import check_same_data, data_key
from core.data_identity import label as data_label

SEED_KEYS = ("seed", "data.split_seed")
DEFAULT_METRICS = ("test/acc", "test/auc", "test/bal_acc", "test/f1_macro")


def is_run(p: Path) -> bool:
    """A training run (``.hydra/overrides.yaml``) or an ``evaluate.py`` output (``metrics.json``)."""
    return (p / ".hydra" / "overrides.yaml").is_file() or (p / "metrics.json").is_file()


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders at or one level below each path."""
    runs = []
    for p in paths:
        if is_run(p):
            runs.append(p)
        elif p.is_dir():
            runs += sorted(q for q in p.iterdir() if q.is_dir() and is_run(q))
    return runs


def run_group(run: Path) -> tuple[tuple[str, str], ...]:
    """The run's overrides except seeds and hydra.*, as sorted (key, value) pairs; () for a
    folder without overrides (``evaluate.py`` output: all such folders form one group)."""
    path = run / ".hydra" / "overrides.yaml"
    overrides = (yaml.safe_load(path.read_text()) or []) if path.is_file() else []
    pairs = []
    for item in overrides:
        key, _, value = item.lstrip("+~").partition("=")
        if key not in SEED_KEYS and not key.startswith("hydra."):
            pairs.append((key, value))
    return tuple(sorted(pairs))


def collect(runs: list[Path], metrics: list[str]) -> tuple[dict, list[str], dict]:
    """{group: {metric: [values]}} (a NaN value kept: the metric is undefined in that run),
    warnings about runs that lack metrics or have undefined ones, and {group: {run: data identity}}."""
    groups: dict = {}
    identities: dict = {}
    warnings, seen = [], set()
    for run in runs:
        path = run / "metrics.json"
        if not path.is_file():
            warnings.append(f"{run}: no metrics.json (unfinished or failed run); left out")
            continue
        values = json.loads(path.read_text())
        seen.update(values)
        missing = [m for m in metrics if not isinstance(values.get(m), (int, float))]
        if missing:
            warnings.append(f"{run}: lacks {missing}; left out of those columns")
        undefined = [m for m in metrics if m not in missing and not math.isfinite(values[m])]
        if undefined:
            warnings.append(f"{run}: {undefined} undefined (NaN); counted as undefined runs, not as 0")
        group = groups.setdefault(run_group(run), {m: [] for m in metrics})
        identities.setdefault(run_group(run), {})[str(run)] = values.get("data_identity")
        for m in metrics:
            if m not in missing:
                group[m].append(float(values[m]))
    unknown = [m for m in metrics if m not in seen]
    if unknown and seen:
        raise SystemExit(f"error: no run logged {unknown}. Metrics that exist: {sorted(seen)}")
    if not groups:
        raise SystemExit("error: no run with metrics.json found; " + "; ".join(warnings or ["no run folders"]))
    return groups, warnings, identities


def check_groups_data(identities: dict, allow_mixed: bool) -> list[str]:
    """Refuse (SystemExit naming the runs) a group whose runs were made on different data, unless
    ``allow_mixed``; warnings for runs that recorded no data identity (not compared) and, when
    allowed, for the mixed groups."""
    warnings = []
    for group_runs in identities.values():
        unknown = [run for run, identity in group_runs.items() if data_key(identity) is None]
        if unknown and len(unknown) < len(group_runs):
            warnings.append(f"{', '.join(unknown)}: no data identity recorded (older run); not compared with the "
                            "others of its group")
        try:
            check_same_data(group_runs)
        except ValueError as err:
            if not allow_mixed:
                raise SystemExit(f"error: {err}\nAggregate them separately, or pass --allow-mixed-data to pool "
                                 "them anyway (the data column then says MIXED)") from err
            warnings.append(f"pooled although {err}")
    return warnings


def group_data(group_runs: dict) -> str:
    """The data column of a group: its data's short name, ``MIXED: a | b`` when allowed to mix."""
    names = list(dict.fromkeys(data_label(i) for i in group_runs.values() if data_key(i) is not None))
    return names[0] if len(names) == 1 else "MIXED: " + " | ".join(names) if names else "-"


def mean_std(values: list[float]) -> tuple[float, float, int, int]:
    """(mean, std, runs where defined, runs) over the finite values; NaN mean when none is."""
    defined = [v for v in values if math.isfinite(v)]
    if not defined:
        return math.nan, math.nan, 0, len(values)
    std = statistics.stdev(defined) if len(defined) > 1 else 0.0
    return statistics.mean(defined), std, len(defined), len(values)


def table_rows(groups: dict, metrics: list[str], identities: dict | None = None) -> tuple[list[str], list[list]]:
    """Header and rows (one per group): override keys, ``data`` (when any run recorded its data),
    ``n`` and a ``mean_std`` tuple per metric."""
    keys = sorted({k for g in groups for k, _ in g})
    identities = identities or {}
    with_data = any(data_key(i) is not None for runs in identities.values() for i in runs.values())
    header = [*keys, *(["data"] if with_data else []), "n", *metrics]
    rows = []
    for group, values in sorted(groups.items()):
        d = dict(group)
        n = max(len(v) for v in values.values())
        data = [group_data(identities.get(group, {}))] if with_data else []
        rows.append([*[d.get(k, "") for k in keys], *data, n, *[mean_std(values[m]) for m in metrics]])
    return header, rows


def _cell(c) -> str:
    if not isinstance(c, tuple):
        return str(c)
    mean, std, defined, n = c
    if defined == 0:
        return f"undefined (0 of {n} runs)"
    text = f"{mean:.4f} +- {std:.4f}"
    return text if defined == n else f"{text} (defined in {defined} of {n} runs)"


def to_markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines)


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    """``<metric>_mean``, ``_std`` and ``_defined_runs`` (runs where it is not NaN) per metric."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        n_keys = header.index("n") + 1
        writer.writerow([*header[:n_keys], *[f"{m}_{s}" for m in header[n_keys:]
                                             for s in ("mean", "std", "defined_runs")]])
        for row in rows:
            writer.writerow([*row[:n_keys], *[v for c in row[n_keys:] for v in c[:3]]])


def plot(groups: dict, x_key: str, metric: str, path: Path) -> None:
    """Metric (mean +- std over seeds) against ``x_key``, one line per remaining group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines: dict = {}
    for group, values in groups.items():
        d = dict(group)
        if x_key not in d or not values[metric]:
            continue
        label = ", ".join(f"{k}={v}" for k, v in group if k != x_key) or metric
        lines.setdefault(label, []).append((float(d[x_key]), *mean_std(values[metric])))
    if not lines:
        raise SystemExit(f"error: no run was swept over {x_key!r}")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, pts in sorted(lines.items()):
        pts.sort()
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                    label=label)
    ax.set_xscale("log")
    ax.set_xlabel(x_key)
    ax.set_ylabel(f"{metric} (mean +- std over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="multirun folder(s) or run folders")
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    parser.add_argument("--out", type=Path, default=None, help="folder for aggregate.md/.csv (default: first path)")
    parser.add_argument("--plot-x", default=None, help="swept key for the x axis, e.g. data.label_fraction")
    parser.add_argument("--plot-metric", default="test/auc")
    parser.add_argument("--allow-mixed-data", action="store_true",
                        help="pool runs made on different data (another file, real with synthetic) into one row")
    args = parser.parse_args(argv)
    runs = find_runs(args.paths)
    groups, warnings, identities = collect(runs, args.metrics)
    warnings += check_groups_data(identities, args.allow_mixed_data)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    header, rows = table_rows(groups, args.metrics, identities)
    out = args.out or args.paths[0]
    out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(header, rows)
    (out / "aggregate.md").write_text(f"Runs: {len(runs)} ({len(warnings)} warnings)\n\n{markdown}\n")
    write_csv(out / "aggregate.csv", header, rows)
    print(markdown)
    if args.plot_x:
        plot(groups, args.plot_x, args.plot_metric, out / f"aggregate_{args.plot_metric.replace('/', '_')}.png")
    return 0
