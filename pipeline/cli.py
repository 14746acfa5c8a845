"""The training command behind ``train.py`` and ``medmae-train``.

``train(cfg)`` is a plain function (used by tests, benchmarks and ``sweep.py``); ``main`` is the
thin ``@hydra.main`` wrapper whose return value (the best monitored validation metric) is a
sweep's objective; ``compose_config`` composes a config as the command line would.

Importing this module imports neither torch nor Lightning (``train.py --help`` answers at once);
the training code and the config resolvers are imported when first needed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from pipeline.command_line import CARRIED, root_overrides
from pipeline.compose import CONF_DIR, compose


def register_resolvers() -> None:
    """The project's config resolvers (``datamodules.resolvers``), registered once."""
    from datamodules.resolvers import register_resolvers as register

    register()


def compose_config(overrides: list[str], output_dir: str | os.PathLike) -> DictConfig:
    """Compose ``conf/train.yaml`` as ``python train.py <overrides>`` would, writing to ``output_dir``
    (a pipeline's root takes the overrides it has keys for: ``pipeline.command_line``).

    For tests, benchmarks and notebooks that call ``train(cfg)`` without the CLI.
    """
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf import open_dict

    register_resolvers()
    GlobalHydra.instance().clear()
    cfg, error = None, None
    try:
        cfg = compose("train", list(overrides), return_hydra_config=True)
    except HydraException as err:
        error = err
    if cfg is None or cfg.get("stages"):  # a pipeline, or a command line only a pipeline may take
        routed = root_overrides(list(overrides))
        if routed is None and error is not None:  # not a pipeline: Hydra's own error stands
            raise error
        if routed is not None and (cfg is None or routed != list(overrides)):
            cfg = compose("train", routed, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(Path(output_dir).resolve())
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def train(cfg: DictConfig, callbacks: list | None = None) -> dict:
    """One training run, or a pipeline when the config declares ``stages``. ``callbacks`` join
    the configured ones (of the last training stage of a pipeline: e.g. a sweep's pruning callback)."""
    from pipeline.run import run_stage
    from pipeline.stages import run_pipeline

    register_resolvers()
    return run_pipeline(cfg, callbacks) if cfg.get("stages") else run_stage(cfg, callbacks)


def error_message(err: BaseException) -> str:
    """The one message of a failed run (``core.errors.one_message``): the DatasetError /
    CheckpointError / missing file inside a config instantiation error, unwrapped from a
    DataLoader worker's traceback."""
    from core.checkpoints import CheckpointError
    from core.errors import one_message
    from datamodules.medmnist_files import DatasetError

    return one_message(err, (DatasetError, CheckpointError, FileNotFoundError))


SUMMARY_METRICS = ("acc", "auc", "bal_acc", "f1_macro")


def data_summary(cfg: DictConfig, metrics: dict) -> list[str]:
    """The console lines naming the data: a warning line first for synthetic data (of any stage),
    then the source of each (stage's) data identity."""
    from core.data_identity import SYNTHETIC_NOTE, describe, is_synthetic

    identities = {k.removesuffix("data_identity").rstrip("/"): v for k, v in metrics.items()
                  if k.endswith("data_identity") and v}
    if "" in identities:  # a pipeline repeats its last stage's identity without a prefix
        identities = {"": identities[""]} if len(identities) == 1 else {k: v for k, v in identities.items() if k}
    synthetic = [k or "run" for k, v in identities.items() if is_synthetic(v)]
    if not synthetic and ((cfg.get("data") or {}).get("synthetic")):
        synthetic = ["run"]
    lines = [f"SYNTHETIC DATA ({SYNTHETIC_NOTE}): the numbers below were measured on the synthetic generator's "
             f"images{'' if synthetic == ['run'] else ' in ' + ', '.join(synthetic)}"] if synthetic else []
    return lines + [f"data{f' ({k})' if k else ''}: {describe(v)}" for k, v in identities.items()]


def run_summary(cfg: DictConfig, metrics: dict) -> str:
    """The last console lines of a run: a synthetic-data warning first (when so), its data, its
    folder, the tested checkpoint, the monitor's best value, the headline test metrics and the
    report (the per-class tables are in report.md)."""
    out = Path(cfg.paths.output_dir)
    monitor = cfg.get("monitor") or {}
    lines = [*data_summary(cfg, metrics), f"run folder: {out}"]
    ckpt = metrics.get("test_checkpoint") or metrics.get("best_checkpoint")
    if ckpt:
        lines.append(f"checkpoint: {ckpt}")
    objective = metrics.get("objective")
    if monitor.get("metric") and isinstance(objective, float) and objective == objective:  # a number, not NaN
        lines.append(f"best {monitor.metric} ({monitor.get('mode', 'max')}): {metrics['objective']:.4f}")
    tested = [f"{k} {metrics[f'test/{k}']:.4f}" for k in SUMMARY_METRICS if f"test/{k}" in metrics]
    if tested:
        lines.append("test: " + ", ".join(tested))
    report = out / "report.md"
    if report.is_file():
        lines.append(f"report: {report}")
    return "\n".join(lines)


def log_traceback(err: BaseException) -> None:
    """Write ``err``'s traceback to the run's log files (``train.log``) only: the console
    keeps its one-line message."""
    import logging

    record = logging.getLogger("train").makeRecord("train", logging.ERROR, __file__, 0, "the run failed", (),
                                                   (type(err), err, err.__traceback__))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


CONFIG_TREE_GROUPS = ("data", "model", "trainer", "callbacks", "logger", "stages")


def print_config_tree(cfg: DictConfig) -> None:
    """The composed config as a rich tree on the console, a branch per top-level group
    (unresolved values as written: the resolved config is saved as config.yaml); a pipeline's:
    its stage list, the overrides carried to its stages and its run folder."""
    import rich
    import rich.syntax
    import rich.tree
    from omegaconf import OmegaConf

    tree = rich.tree.Tree("config", guide_style="dim")
    groups = [k for k in CONFIG_TREE_GROUPS if cfg.get(k) is not None]
    keys = [*groups, *[k for k in cfg if k not in groups and k != "hydra"]]
    if cfg.get("stages"):  # a pipeline's root: its stage list (each stage's config.yaml holds the rest)
        keys = [k for k in ("stages", CARRIED, "task_name", "paths") if k in cfg]
    for key in keys:
        value = cfg[key]
        text = OmegaConf.to_yaml(value) if OmegaConf.is_config(value) else str(value)
        tree.add(key, style="bold").add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark", word_wrap=True))
    rich.print(tree)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    from callbacks.preemption import Preempted
    from datamodules.medmnist_files import DatasetError
    from pipeline.preemption import exit_preempted

    if cfg.get("print_config"):
        print_config_tree(cfg)
    try:
        metrics = train(cfg)
    except Preempted as err:  # stopped cleanly on a signal: requeue (submitit / SLURM) and exit 75
        exit_preempted(err, f"run the same command again with hydra.run.dir={cfg.paths.output_dir} (a job "
                            "requeued by submitit gets its folder back) and it resumes from its checkpoints/last.ckpt")
    except (DatasetError, InstantiationException, ValueError, FileNotFoundError) as err:
        log_traceback(err)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        # One readable message instead of a deep stack trace; HYDRA_FULL_ERROR=1 shows it, train.log has it.
        print(f"\nerror: {error_message(err)}", file=sys.stderr)
        sys.exit(1)
    except BaseException as err:  # anything else: Hydra prints it; the log file keeps it too
        log_traceback(err)
        raise
    print("\n" + run_summary(cfg, metrics))
    return metrics.get("objective")


def experiments_help() -> str:
    """One line per experiment config: its name and the first line of its header comment."""
    lines = ["Experiments (python train.py experiment=<name>; a pipeline's stages run alone as "
             "experiment=<pipeline>/<stage>):"]
    for path in sorted((CONF_DIR / "experiment").glob("*.yaml")):
        comments = [ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#") and "@package" not in ln]
        lines.append(f"  {path.stem:<24} {comments[0] if comments else ''}")
    return "\n".join(lines) + "\n"


def pipeline_argv(argv: list[str]) -> list[str]:
    """train.py's arguments ``argv`` as Hydra is to see them: for a pipeline, the overrides its
    root has no key for are carried to the stages (``pipeline.command_line``); anything else as given."""
    from hydra._internal.utils import get_args_parser

    try:
        args = get_args_parser().parse_args(argv)
    except SystemExit:  # Hydra reports it
        return argv
    if not args.overrides or args.help or args.hydra_help or args.shell_completion or args.experimental_rerun \
            or args.config_dir or args.config_path:
        return argv
    routed = root_overrides(args.overrides, args.config_name or "train")
    if routed is None or routed == args.overrides:
        return argv
    rest = list(argv)
    for override in args.overrides:
        rest.remove(override)
    return [*rest, *routed]


def train_main() -> None:
    """``train.py`` / ``medmae-train``: ``--help`` lists the experiments, then Hydra's options."""
    if any(arg in ("--help", "-h") for arg in sys.argv[1:]):
        print(experiments_help())  # then Hydra's help, which composes without resolving: no resolvers
    else:
        register_resolvers()  # before Hydra resolves hydra.run.dir
        try:
            sys.argv[1:] = pipeline_argv(sys.argv[1:])  # DDP's processes re-run this argv: routed once
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
    main()
