"""``report.md`` of a run: quick results, per-class table, figures and the protocol.

Called by ``train.py`` at the end of every run (and of every pipeline stage); it reads
what the run left in its folder (``eval/``, ``reconstructions/``, ``mask_maps/``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from omegaconf import DictConfig

from core.data_identity import SYNTHETIC_BANNER
from evaluation.data_report import banner_lines, data_rows, undefined_note
from lightning_modules.components.masking import mask_warnings

QUICK = (("test/acc", "ACC"), ("test/auc", "AUC"), ("test/bal_acc", "balanced acc"), ("test/f1_macro", "macro F1"))
# binary tasks only (positive class): ``test/<key>`` in the metrics, else ``<key>`` in eval/test_summary.json
BINARY_QUICK = (("precision", "precision"), ("recall", "recall"), ("specificity", "specificity"), ("f1", "F1"),
                ("auprc", "AUPRC"))


def _fmt(value) -> str:
    """4 decimals; an undefined value (NaN) as ``NaN``, never as a number."""
    if isinstance(value, float):
        return "NaN" if value != value else f"{value:.4f}"
    return str(value)


def _latest_png(folder: Path) -> Path | None:
    pngs = sorted(folder.glob("*.png"))
    return pngs[-1] if pngs else None


def protocol_rows(cfg: DictConfig, metrics: dict) -> list[tuple[str, str]]:
    """What a reader needs to reproduce the numbers (the data rows name the source: ``metrics``'
    ``data_identity``, see ``evaluation.data_report``)."""
    data, trainer, model = cfg.data, cfg.trainer, cfg.model
    loss = model.get("loss") or {}
    rows = [
        ("experiment", f"{cfg.get('task_name')} ({model.get('_target_', '').rsplit('.', 1)[-1]})"),
        *data_rows(data, metrics.get("data_identity")),
        ("label fraction", str(data.get("label_fraction", 1.0))),
        ("sampler", f"{data.get('sampler', 'none')} (epoch length {data.get('epoch_length', 'original')})"),
        ("loss", f"{loss.get('name', '-')}, class weighted {loss.get('class_weighted', False)}, "
                 f"label smoothing {loss.get('label_smoothing', 0.0)}" if loss else "see model"),
        ("selection", f"{cfg.monitor.metric} ({cfg.monitor.mode}) on validation; best value "
                      f"{_fmt(metrics.get('objective'))}"),
        ("tested checkpoint", str(metrics.get("test_checkpoint", "-"))),
        ("epochs", f"max {trainer.get('max_epochs')}"),
        ("seed", f"{cfg.get('seed')} (split seed {data.get('split_seed')})"),
        ("git commit", str(metrics.get("git_commit") or "-")),
        ("wall time", f"{metrics.get('wall_time_s', float('nan')):.0f} s"),
    ]
    return rows


MASK_ROWS = {  # statistic: (what it measures, its null or reference value)
    "diversity": ("pairwise mask difference / that of random masks (0 = one mask for all)", "1 (random masks)"),
    "context_iou": ("kept-set IoU of an image across 4 batch contexts, the masker's own randomness held fixed "
                    "(1 = the batch never moves its mask)", "context_iou_random"),
    "ess": ("level-I weights' effective sample size / masked patches", "1 (uniform weights)"),
    "level1_scale": ("mean level-I weight over masked patches (0 = level I switched off)", "1"),
    "mean_prob": ("mean masking probability", "mask ratio"),
    "change": ("share of patches whose mask changed since the last epoch", "-"),
    "entropy": ("mean binary entropy of the probabilities, nats (max ln 2 = 0.693)", "-"),
    "saturated": ("share of probabilities within 0.01 of 0 or 1", "-"),
}
MASK_FEATURES = {
    "intensity": "patch intensity",
    "edges": "edge energy inside the patch",
    "recon": "reconstruction error of the reference MAE under random masks",
    "recon_own": "reconstruction error of this run's own MAE under random masks (partly built in: that MAE "
                 "learned the patches its masker hides)",
}
MASK_COLUMNS = (("", "scores"), ("_shuffled", "scores, other images"), ("_within", "scores within positions"),
                ("_mask", "drawn masks"), ("_mask_shuffled", "masks, other images"),
                ("_mask_within", "masks within positions"))


def _feature_of(key: str) -> str:
    """``rho_<feature>[_mask][_within|_shuffled]`` -> the feature."""
    name = key.removeprefix("rho_")
    for suffix in ("_shuffled", "_within", "_mask"):
        name = name.removesuffix(suffix)
    return name


def mask_correlation_table(stats: dict[str, float]) -> list[str]:
    """The ``rho_*`` diagnostics: one row per patch feature, raw correlations beside their
    shuffled-images null and the within-position ones (null 0)."""
    features = list(dict.fromkeys(_feature_of(k) for k in stats if k.startswith("rho_")))
    if not features:
        return []
    lines = ["| patch feature | " + " | ".join(label for _, label in MASK_COLUMNS) + " |",
             "|---|" + "---|" * len(MASK_COLUMNS)]
    for f in features:
        cells = [f"{stats[key]:+.3f}" if (key := f"rho_{f}{suffix}") in stats else "-" for suffix, _ in MASK_COLUMNS]
        lines.append(f"| {MASK_FEATURES.get(f, f)} | " + " | ".join(cells) + " |")
    return lines + ["", "Per-image Spearman correlation across patches of the masking scores (higher = hidden first) "
                    "or of the drawn masks (1 = hidden) with the feature, mean over the batch: it mixes position "
                    "and image. *Other images*: the same draws paired with another image's content, what the "
                    "masker's position preferences alone give (a masker that ignores the image scores the same "
                    "there). *Within positions*: ranks centred on their patch position's mean over the batch "
                    "before correlating, 0 for any masker that ignores the image, about 0 for random masks: "
                    "only this part says the masks follow the image.", ""]


def mask_section(metrics: dict) -> list[str]:
    """The masking at the end of the stage (fixed validation batch): each statistic beside its
    null or reference value, the content correlations beside their nulls (a diagnostic is
    evidence of learning only where it differs from them), and the warnings."""
    stats = {k.removeprefix("val/mask_"): v for k, v in metrics.items()
             if k.startswith("val/mask_") and isinstance(v, float)}
    if "diversity" not in stats:
        return []
    lines = ["## Masking (fixed validation batch, last epoch)", "",
             "| statistic | value | null / reference | what it measures |", "|---|---|---|---|"]
    for key, value in stats.items():
        if key == "context_iou_random" or key.startswith("rho_"):
            continue
        meaning, baseline = MASK_ROWS.get(key, ("", "-"))
        if baseline in stats:
            baseline = f"{stats[baseline]:.3f} (if the batch decided every mask)"
        lines.append(f"| {key} | {value:.4g} | {baseline} | {meaning} |")
    lines += ["", *mask_correlation_table(stats)]
    lines += [*(f"> **Warning:** {w}" + "\n" for w in mask_warnings(stats))]
    return lines


def write_run_report(run_dir: Path, cfg: DictConfig, metrics: dict, title: str | None = None) -> Path:
    """Write ``run_dir/report.md`` from ``metrics`` and the files the run left; a run on
    synthetic data says so on the line after the title, before any number."""
    lines = [f"# {title or cfg.get('task_name', 'run')}", "", *banner_lines(cfg.data, metrics.get("data_identity"))]
    quick = [(label, metrics[key]) for key, label in QUICK if isinstance(metrics.get(key), float)]
    summary_path = run_dir / "eval" / "test_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    binary = [(label, metrics.get(f"test/{key}", summary.get(key))) for key, label in BINARY_QUICK]
    binary = [(label, v) for label, v in binary if isinstance(v, float)]
    quick += binary
    if "ece" in summary:
        quick.append(("ECE", summary["ece"]))
    if quick:
        lines += ["## Test results (checkpoint selected on validation)", "",
                  "| " + " | ".join(k for k, _ in quick) + " |", "|" + "---|" * len(quick),
                  "| " + " | ".join(_fmt(v) for _, v in quick) + " |", ""]
        if binary:
            lines += ["Binary task, positive class = class 1: precision, recall (sensitivity), specificity and F1 "
                      "of P(class 1) > 0.5; AUPRC = average precision of P(class 1).", ""]
    tuning_path = run_dir / "eval" / "test_threshold_tuning.json"
    if tuning_path.is_file():
        t = json.loads(tuning_path.read_text())
        if "threshold" in t:
            rule = f"threshold {t['threshold']:.4f}"
        elif "thresholds" in t:
            rule = "thresholds " + ", ".join(f"{v:.3f}" for v in t["thresholds"])
        else:
            rule = "offsets " + ", ".join(f"{v:+.2f}" for v in t["offsets"])
        names = list(t["untuned"])
        lines += [f"## Threshold tuning ({t['kind']}, objective {t['objective']}, fitted on validation: {rule})", "",
                  "| | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
        lines += [f"| {which} | " + " | ".join(_fmt(float(t[which][n])) for n in names) + " |"
                  for which in ("untuned", "tuned")]
        lines.append("")
    table = run_dir / "eval" / "test_per_class.csv"
    if table.is_file():
        with open(table) as f:
            rows = list(csv.reader(f))
        lines += ["## Per-class test metrics", "", "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| " + " | ".join(_fmt(float(c)) if i > 1 else c for i, c in enumerate(r)) + " |" for r in rows[1:]]
        lines.append("")
        lines += undefined_note(rows)
    lines += mask_section(metrics)
    figures = sorted((run_dir / "eval").glob("test_*.png")) if (run_dir / "eval").is_dir() else []
    curves = write_learning_curves(run_dir, cfg.monitor.metric)
    if curves is not None:
        figures.insert(0, curves)
    for folder in ("reconstructions", "mask_maps"):
        latest = _latest_png(run_dir / folder)
        if latest is not None:
            figures.append(latest)
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{p.stem}]({p.relative_to(run_dir).as_posix()})" for p in figures]
        lines.append("")
    lines += ["## Protocol", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in protocol_rows(cfg, metrics)]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_learning_curves(run_dir: Path, monitor: str) -> Path | None:
    """``eval/learning_curves.png`` from the run's ``csv/metrics.csv``; None without a log or epochs."""
    log_file = run_dir / "csv" / "metrics.csv"
    if not log_file.is_file():
        return None
    with open(log_file, newline="") as f:
        rows = list(csv.DictReader(f))
    if not any(r.get("epoch") not in (None, "") for r in rows):
        return None
    import matplotlib.pyplot as plt

    from evaluation.figures import learning_curves_figure

    path = run_dir / "eval" / "learning_curves.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = learning_curves_figure(rows, monitor)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_pipeline_report(run_dir: Path, stages: list[str], title: str) -> Path:
    """Root ``report.md`` of a pipeline: every stage's report, image links re-rooted; the
    synthetic-data banner of any stage also on the line after the pipeline's title."""
    lines = [f"# {title} (pipeline: {' -> '.join(stages)})", ""]
    reports = [(name, run_dir / name / "report.md") for name in stages]
    reports = [(name, path.read_text().splitlines()) for name, path in reports if path.is_file()]
    synthetic = [name for name, body in reports if any(line.startswith(f"> {SYNTHETIC_BANNER}") for line in body[1:4])]
    if synthetic:
        lines += [f"> {SYNTHETIC_BANNER} in stage(s) {', '.join(synthetic)} (each stage's protocol names its "
                  "data source). Nothing here is a result on real images.", ""]
    for name, body in reports:
        body = body[1:]  # drop the stage's title
        body = [line.replace("](", f"]({name}/") if line.startswith("![") else line for line in body]
        lines += [f"# Stage: {name}", *[("#" + line) if line.startswith("## ") else line for line in body], ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
