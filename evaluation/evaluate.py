"""Re-evaluate saved classifier checkpoints without training; average several (ensemble).

    python evaluate.py logs/cnn_derma/runs/<time>/checkpoints/epoch_009.ckpt
    python evaluate.py RUN_A/checkpoints/epoch_009.ckpt RUN_B/checkpoints/epoch_007.ckpt --out ensemble/
    python evaluate.py CKPT --split val --root DATA_DIR
    python evaluate.py CKPT --accelerator gpu --precision bf16-mixed --batch-size 1024 --num-workers 8

Each checkpoint is rebuilt from the config stored inside it (else the ``config.yaml`` its run
saved, the folder above ``checkpoints/``) and sees the data through that config (its own size;
``--root`` to read the files from elsewhere, e.g. new images: they are normalised with the
statistics stored in the checkpoint, and other classes are refused); every checkpoint must
cover the same images.
Predictions go through ``evaluation.predict.predict_probs`` (the model's ``predict_step``:
softmax, or per-label sigmoid for multi-label tasks); device, precision, batch size and
workers default to the first run's config.
Writes ``predictions/``, ``eval/``, ``metrics.json`` (with the evaluated data's identity,
``data_identity``) and ``report.md`` into ``--out`` (default: ``<first run>/evaluate_<split>``).
AUROC / AP of a class with no positive or no negative in the split are NaN and left out of the
means (``evaluation.metrics``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from core.checkpoints import (
    CheckpointError,
    load_classifier,
    resolve_checkpoint,
    run_config,
    stored_identity,
)
from core.errors import one_message
from core.predictions import save_predictions
from core.tracking import artifact_job
from datamodules.medmnist_files import DatasetError
from datamodules.resolvers import register_resolvers
from datamodules.transforms import build_transform
from evaluation.predict import predict_probs, resolve_device
from evaluation.report import write_run_report
from evaluation.writer import write_evaluation

register_resolvers()  # configs of runs may hold ${...} resolvers
__all__ = ["CheckpointError", "checkpoint_data", "evaluate", "load_classifier", "run_config"]


def checkpoint_data(ckpt: Path, split: str, root: str | None = None):
    """The datamodule of ``ckpt``'s run (its own preprocessing) and its ``split`` dataset.

    ``root`` replaces the data folder (``data.image_root`` of a table, else ``data.root``): new
    images then go through the preprocessing stored in the checkpoint (``use_stored_preprocessing``).
    Data that cannot be read is a CheckpointError naming the checkpoint, the data and the fix.
    """
    cfg = run_config(ckpt)
    if root is not None:
        cfg.data["image_root" if "table" in cfg.data else "root"] = root
    if "splits_file" in cfg.data:
        cfg.data.splits_file = None  # the run's splits.csv stays as training wrote it
    try:
        datamodule = instantiate(cfg.data, _convert_="all")
        datamodule.prepare_data()
        datamodule.setup("test")
    except (InstantiationException, DatasetError, FileNotFoundError) as err:
        cause = one_message(err, (DatasetError, FileNotFoundError))
        raise CheckpointError(f"{ckpt}: the data of its run cannot be read ({cause}); give the folder that holds "
                              "it now with --root, or predict image files with predict.py, which needs the "
                              "checkpoint alone") from err
    dataset = datamodule.test_set if split == "test" else datamodule.val_set
    stored = (stored_identity(ckpt) or {}).get("preprocessing")
    if stored is not None:
        use_stored_preprocessing(ckpt, datamodule, dataset, stored)
    return datamodule, dataset


def use_stored_preprocessing(ckpt: Path, datamodule, dataset, record: dict) -> None:
    """Feed ``dataset`` as the model was trained: the class names must be the checkpoint's, and
    the normalisation statistics are the stored ones (``normalization=dataset`` on other data
    would compute them from that data's training split)."""
    names = [str(c) for c in datamodule.class_names]
    if names != record["output"]["class_names"]:
        raise CheckpointError(f"{ckpt} was trained on the classes {record['output']['class_names']}, the data "
                              f"holds {names}; evaluate it on data with the same classes in the same order")
    spec = record["input"]
    stats = None if spec["mean"] is None else (spec["mean"], spec["std"])
    if stats != (None if datamodule.input_stats is None else tuple(list(map(float, v)) for v in datamodule.input_stats)):
        dataset.transform = build_transform(datamodule.img_size, datamodule.source_size, stats, None)


def sample_key(datamodule, dataset, split: str) -> tuple:
    """What identifies the evaluated images: the data source, the image ids (paths) and labels."""
    labels = tuple(np.asarray(dataset.labels).reshape(len(dataset), -1).tolist())
    return datamodule.sample_source(), tuple(datamodule.sample_ids(split) or range(len(dataset))), labels


def evaluate(ckpts: list[Path], split: str = "test", out: Path | None = None, root: str | None = None,
             accelerator: str = "auto", precision: str | None = None, batch_size: int | None = None,
             num_workers: int | None = None) -> dict:
    """Average the probabilities of ``ckpts`` on ``split`` and write the evaluation.

    Each checkpoint sees the data through its own run's config (normalisation, size), and
    all of them must have been evaluated on the same images in the same order. ``precision``,
    ``batch_size`` and ``num_workers`` default to the first run's trainer / data config.
    """
    if split not in ("test", "val"):
        raise ValueError(f"split={split!r} is invalid; allowed: test, val")
    data = [checkpoint_data(ckpt, split, root) for ckpt in ckpts]
    keys = [sample_key(dm, ds, split) for dm, ds in data]
    for ckpt, key in zip(ckpts[1:], keys[1:]):
        if key != keys[0]:
            raise CheckpointError(
                f"{ckpt} would be evaluated on a different {split} set than {ckpts[0]} ({key[0]}, "
                f"{len(key[1])} images vs {keys[0][0]}, {len(keys[0][1])} images, or the same in another order); "
                f"ensemble only runs that share the {split} split"
            )
    cfg = run_config(ckpts[0])
    settings = {"accelerator": accelerator, "precision": precision or cfg.trainer.get("precision", "32-true"),
                "batch_size": batch_size or cfg.data.get("eval_batch_size", 256),
                "num_workers": cfg.data.get("num_workers", 0) if num_workers is None else num_workers}
    device = resolve_device(settings.pop("accelerator"))
    runs = [predict_probs(load_classifier(ckpt, dm.num_classes), ds, device=device, **settings)[0]
            for ckpt, (dm, ds) in zip(ckpts, data)]
    datamodule, dataset = data[0]
    probs, ids = np.mean(runs, axis=0), datamodule.sample_ids(split)
    labels = np.asarray(dataset.labels).astype(np.int64)
    if out is None:  # <run dir>/evaluate_<split>, or beside a checkpoint kept outside its run's checkpoints/
        folder = ckpts[0].resolve().parent
        out = (folder.parent if folder.name == "checkpoints" else folder) / f"evaluate_{split}"
    save_predictions(out / "predictions", split, probs, labels, ids)
    result = write_evaluation(probs, labels, datamodule.class_names, datamodule.task, out / "eval", split)
    summary = result["summary"]
    names = {"balanced_acc": "bal_acc"}
    metrics = {f"{split}/{names.get(k, k)}": v for k, v in summary.items() if k != "n"}
    metrics["test_checkpoint"] = ", ".join(str(c) for c in ckpts)
    metrics["data_identity"] = datamodule.source_identity()  # the evaluated data (core.data_identity)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if split == "test":
        write_run_report(out, cfg, metrics, title=f"evaluation of {len(ckpts)} checkpoint(s) on {split}")
    return {"probs": probs, "labels": labels, **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpts", nargs="+", help="checkpoint files, or W&B model artifacts wandb:ENTITY/PROJECT/NAME:VERSION")
    parser.add_argument("--split", default="test", choices=["test", "val"])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--root", default=None,
                        help="data folder: of the MedMNIST files, the image folder, or a table's image_root "
                             "(default: the run's)")
    parser.add_argument("--accelerator", default="auto", help="cpu | gpu | auto (default)")
    parser.add_argument("--precision", default=None, help="32-true | bf16-mixed | ... (default: the run's)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the run's data.eval_batch_size")
    parser.add_argument("--num-workers", type=int, default=None, help="default: the run's data.num_workers")
    args = parser.parse_args(argv)
    try:
        with artifact_job(args.ckpts, "evaluate") as run:  # a W&B run only for wandb: checkpoints (lineage)
            result = evaluate([resolve_checkpoint(c, run) for c in args.ckpts], args.split, args.out, args.root,
                              args.accelerator, args.precision, args.batch_size, args.num_workers)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result["summary"], indent=2))
    return 0
