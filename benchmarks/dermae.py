"""DerMAE on the real PneumoniaMNIST (or any single-label flag): do synthetic minority-class
images help where imbalance hurts, does MAE pretraining gain from them, and does distillation
beat the same student trained without a teacher?

Protocol (official val / test split, 28 px, [-1, 1] inputs; every number is on the official
test split, each run's checkpoint chosen by validation AUC and tested once; balanced accuracy
and macro F1 are recomputed with scikit-learn from the saved test predictions, argmax):

1. Imbalance levels: ``1`` is the data as it is; a level ``r < 1`` keeps ``r`` of the minority
   class's training images (a subset drawn by ``--data-seed``; validation and test untouched),
   written to ``<out>/data/imbalance_<r>/``. Everything below a level sees only its images.
2. Per level: the class-conditioned DDPM of dermae_small (UNet 32-64-64, EMA, CFG dropout 0.1)
   trained once (seed 0) for ``--diffusion-epochs``; DDIM ``--steps`` steps, guidance
   ``--guidance``, every class topped up to the majority count.
3. Per level and seed: the 4-conv CNN (cnn_derma's recipe: SGD 0.01, batch 100, ``--epochs``)
   (a) on real images, (b) with oversampling, (c) on real + synthetic images.
4. Level 1 only: the quality report of the synthetic set (judge: arm (a), seed 0; FID / KID per
   class, on the judge's features); MAE (``experiment=mae_small``, ``--mae-epochs`` of
   pretraining, ``--mae-finetune-epochs`` of fine-tuning on real images) pretrained on real vs
   on real + synthetic images, per seed; a ResNet-18 teacher (seed 0, ``--teacher-epochs``) and
   the CNN student on real + synthetic with the teacher (alpha 0.5, T 4) vs without (same
   seeds, same recipe); student and teacher exported to ONNX (size, CPU latency at batch 1).
5. Statistics over seeds (exploratory: nothing here is a registered primary): mean +- std, and
   each treatment minus its control paired by seed: the 95 % paired t-interval over seeds, the p
   of the test that also counts the test set's noise (``evaluation.statistics.seeds_images_test``)
   and its Holm-adjusted p over every comparison of the table.

Resumable: every unit (a dataset, a diffusion model, a synthetic set, a run) is cached as JSON
under ``<out>/units`` keyed by its settings.

    python benchmarks/dermae.py --data-root ../shared/data                       # CPU budget
    python benchmarks/dermae.py --quick                                          # smoke, minutes
    python benchmarks/dermae.py --diffusion-epochs 100 --steps 50 --epochs 30 --gpu   # a GPU budget
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import Units, atomic_write_text, mean_std, real_data_root
from sklearn.metrics import balanced_accuracy_score, f1_score

REPO = Path(__file__).resolve().parents[1]
ARMS = {"a": ("(a) real only", []), "b": ("(b) oversampling", ["data.sampler=oversample"]),
        "c": ("(c) real + synthetic", None)}  # None: the level's synthetic set


def run(overrides: list[str], out: Path) -> dict:
    from pipeline.cli import compose_config, train

    return train(compose_config(overrides, out))


def base(args, seed: int, root: Path) -> list[str]:
    trainer = "trainer=gpu" if args.gpu else "trainer=cpu"
    return [f"data={args.flag}", f"data.root={root}", f"paths.medmnist_root={root}", "data.download=false",
            "data.normalization=half", f"seed={seed}", trainer, "logger=csv", "~callbacks.rich_progress_bar",
            "++trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false", *args.limit]


def imbalance_metrics(run_dir: Path) -> dict:
    """Balanced accuracy and macro F1 of the saved test predictions (argmax), and the per-image
    outputs (labels, argmax decisions, scores: the positive-class probability for two classes)
    that count the test set's noise in the paired tests."""
    from core.predictions import load_predictions

    preds = load_predictions(run_dir / "predictions", "test")
    y, probs = preds["labels"].reshape(-1), preds["probs"]
    pred = probs.argmax(1)
    scores = probs[:, 1] if probs.shape[1] == 2 else probs
    return {"bal_acc": float(balanced_accuracy_score(y, pred)), "f1_macro": float(f1_score(y, pred, average="macro")),
            "test": {"labels": y.tolist(), "decisions": pred.tolist(), "scores": np.round(scores, 6).tolist()}}


def subsample_minority(source: Path, dest: Path, ratio: float, seed: int) -> dict:
    """Copy ``source`` (a MedMNIST .npz) to ``dest`` keeping ``ratio`` of the rarest training
    class (at least 2 images); the other classes and the val / test splits are unchanged."""
    with np.load(source) as npz:
        arrays = {k: npz[k] for k in npz.files}
    labels = arrays["train_labels"].reshape(-1)
    counts = np.bincount(labels)
    minority = int(np.argmin(counts))
    members = np.flatnonzero(labels == minority)
    kept = np.random.default_rng(seed).permutation(members)[:max(2, round(ratio * len(members)))]
    keep = np.sort(np.concatenate([np.flatnonzero(labels != minority), kept]))
    arrays["train_images"], arrays["train_labels"] = arrays["train_images"][keep], arrays["train_labels"][keep]
    from core.io import atomic_path

    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return {"root": str(dest.parent), "minority": minority, "minority_count": int(len(kept)),
            "train_counts": np.bincount(arrays["train_labels"].reshape(-1)).tolist()}


def diffusion_and_synthesis(args, root: Path, out: Path) -> dict:
    """Train the DDPM on ``root``'s training images (seed 0) and synthesise a balanced set."""
    from synthesis.synthesize import synthesize

    t0 = time.time()
    m = run(["model=diffusion", *base(args, 0, root), f"trainer.max_epochs={args.diffusion_epochs}",
             "model.unet.block_channels=[32,64,64]", "model.unet.layers_per_block=1", "model.unet.norm_groups=16",
             "model.unet.attention_levels=[false,false,true]", "model.lr=5e-4", "model.ema_decay=0.995",
             f"model.sample_steps={args.steps}", "data.batch_size=128", "~callbacks.evaluation",
             "monitor.metric=val/loss", "monitor.mode=min", "callbacks.early_stopping=null", "test=false"],
            out / "diffusion")
    diffusion_s = time.time() - t0
    t0 = time.time()
    synthetic = out / "synthetic" / "synthetic.npz"
    card = synthesize(Path(m["best_checkpoint"]), synthetic, steps=args.steps, guidance=args.guidance, seed=0,
                      progress=False)
    return {"synthetic": str(synthetic), "counts": card["counts"], "diffusion_s": diffusion_s,
            "synthesis_s": time.time() - t0}


def cnn(args, seed: int, root: Path, out: Path, extra: list[str]) -> dict:
    m = run(["experiment=cnn_derma", *base(args, seed, root), f"trainer.max_epochs={args.epochs}", *extra], out)
    return {"acc": m["test/acc"], "auc": m["test/auc"], **imbalance_metrics(out), "ckpt": m["best_checkpoint"]}


def mae_arm(args, seed: int, root: Path, out: Path, synthetic: str | None) -> dict:
    """MAE pretraining (on real, or real + synthetic images), then fine-tuning on real images."""
    extra = [f"++stages.pretrain.data.synthetic_train={synthetic}"] if synthetic else []
    m = run(["experiment=mae_small", *base(args, seed, root), f"stages.pretrain.trainer.max_epochs={args.mae_epochs}",
             f"stages.finetune.trainer.max_epochs={args.mae_finetune_epochs}", *extra], out)
    return {"acc": m["test/acc"], "auc": m["test/auc"], **imbalance_metrics(out / "finetune")}


def paired_cells(results: list[dict], control: list[dict], key: str, n_boot: int = 1000):
    """The paired t over seeds and the seeds x test-images test of ``key`` (treatment minus control)."""
    from evaluation.statistics import paired_t, seeds_images_test
    from evaluation.test_set_noise import image_variance

    a, b = [r[key] for r in results], [r[key] for r in control]
    which = "scores" if key == "auc" else "decisions"
    metric = "auc" if key == "auc" else "bal_acc"
    var = image_variance(metric, [r["test"][which] for r in results], [r["test"][which] for r in control],
                         results[0]["test"]["labels"], n_boot=n_boot)
    return paired_t(a, b), seeds_images_test(a, b, var.of_mean, var.per_seed)


def comparison_table(rows: list[tuple[str, str, list[dict], list[dict] | None]], keys=("bal_acc", "f1_macro", "auc")
                     ) -> str:
    """Markdown rows ``(group, arm, per-seed results, per-seed control or None)``: mean +- std of
    ``keys``; balanced accuracy and AUC minus the control paired by seed, with the 95 % paired
    t-interval over seeds, the p of the seeds x test-images test and its Holm-adjusted p over every
    comparison of the table. Exploratory: no comparison here was registered as a primary."""
    from evaluation.statistics import adjust

    cells, tests = [], []
    for group, arm, results, control in rows:
        row = [mean_std([r[k] for r in results]) for k in keys]
        for k in ("bal_acc", "auc"):
            tests.append(paired_cells(results, control, k) if control is not None and len(results) > 1 else None)
        cells.append((group, arm, row))
    holm = iter(adjust([t[1].p if t else np.nan for t in tests], "holm"))
    lines = [f"| setting | arm | {' | '.join(f'test {k}' for k in keys)} | bal_acc vs control [95 % t] | p / Holm | "
             "AUC vs control [95 % t] | p / Holm |", "|---" * (len(keys) + 6) + "|"]
    tests = iter(tests)
    for group, arm, row in cells:
        for _k in ("bal_acc", "auc"):
            t = next(tests)
            h = next(holm)
            row += (["-", "-"] if t is None else
                    [f"{t[0].mean:+.3f} [{t[0].interval.low:+.3f}, {t[0].interval.high:+.3f}]", f"{t[1].p:.3f} / {h:.3f}"])
        lines.append(f"| {group} | {arm} | {' | '.join(row)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--flag", default="pneumoniamnist")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--imbalance", nargs="+", type=float, default=[1.0, 0.25, 0.1, 0.03],
                        help="share of the minority class's training images kept (1 = the data as it is)")
    parser.add_argument("--data-seed", type=int, default=0, help="draws the kept minority images")
    parser.add_argument("--diffusion-epochs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every CNN arm and student")
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--mae-epochs", type=int, default=10, help="MAE pretraining epochs (both MAE arms)")
    parser.add_argument("--mae-finetune-epochs", type=int, default=10)
    parser.add_argument("--gpu", action="store_true", help="trainer=gpu (bf16, on-device data)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke: 2 seeds, levels 1 and 0.1, 1 epoch of 2 batches everywhere; proves nothing")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "dermae")
    args = parser.parse_args()
    if args.flag == "pneumoniamnist":
        args.data_root = real_data_root(args.data_root)
    args.limit = []
    if args.quick:
        args.seeds, args.imbalance = args.seeds[:2], [1.0, 0.1]
        args.diffusion_epochs = args.epochs = args.teacher_epochs = args.mae_epochs = args.mae_finetune_epochs = 1
        args.steps, args.out = 2, args.out.with_name(args.out.name + "_quick")
        args.limit = ["++trainer.limit_train_batches=2", "++trainer.limit_val_batches=2"]
    out, units = args.out, Units(args.out / "units")
    start = time.time()
    source = args.data_root / f"{args.flag}.npz"
    common = {"flag": args.flag, "data": str(source), "limit": args.limit, "gpu": args.gpu}
    diffusion_key = common | {"diffusion_epochs": args.diffusion_epochs, "steps": args.steps,
                              "guidance": args.guidance}
    cnn_key = common | {"epochs": args.epochs}

    levels: dict[float, dict] = {}
    arms: dict[tuple[float, str], list[dict]] = {}
    for ratio in args.imbalance:
        key = {"ratio": ratio, "data_seed": args.data_seed}
        name = f"imbalance_{ratio:g}"
        if ratio == 1.0:
            data = {"root": str(args.data_root), "train_counts": None}
        else:
            data = units.get(f"data_{name}", common | key, lambda stem, r=ratio: subsample_minority(
                source, out / "data" / stem / f"{args.flag}.npz", r, args.data_seed))
        root = Path(data["root"])
        synth = units.get(f"synthetic_{name}", diffusion_key | key, lambda stem, r=root: diffusion_and_synthesis(
            args, r, out / "runs" / stem))
        levels[ratio] = {"data": data, "synth": synth}
        for arm, (_label, extra) in ARMS.items():
            extra = extra if extra is not None else [f"data.synthetic_train={synth['synthetic']}"]
            arm_key = cnn_key | key | (diffusion_key if arm == "c" else {}) | {"arm": arm}  # (c) trains on the synthesis
            arms[ratio, arm] = [units.get(f"cnn_{name}_{arm}_seed{seed}", arm_key | {"seed": seed},
                                          lambda stem, s=seed, r=root, e=extra: cnn(args, s, r, out / "runs" / stem, e))
                                for seed in args.seeds]

    # Level 1 only: quality report, MAE real vs real + synthetic, distillation vs no teacher.
    real, synthetic = args.data_root, levels[1.0]["synth"]["synthetic"] if 1.0 in levels else None
    if synthetic is None:
        raise SystemExit("--imbalance must include 1 (the MAE, distillation and quality arms use the data as it is)")
    quality = units.get("quality", diffusion_key | cnn_key | {"seed": args.seeds[0]}, lambda stem: quality_of(args, synthetic, arms[1.0, "a"][0],
                                                                                    out / "runs" / stem))
    mae_key = common | {"mae_epochs": args.mae_epochs, "finetune_epochs": args.mae_finetune_epochs}
    mae = {which: [units.get(f"mae_{which}_seed{seed}", mae_key | (diffusion_key if which == "synthetic" else {}) | {"seed": seed},
                             lambda stem, s=seed, w=which: mae_arm(args, s, real, out / "runs" / stem,
                                                                   synthetic if w == "synthetic" else None))
                   for seed in args.seeds] for which in ("real", "synthetic")}
    mixed = [f"data.synthetic_train={synthetic}"]
    teacher = units.get("teacher", diffusion_key | {"teacher_epochs": args.teacher_epochs}, lambda stem: run(
        ["experiment=resnet18_derma", *base(args, 0, real), f"trainer.max_epochs={args.teacher_epochs}",
         f"model.scheduler.milestones=[{args.teacher_epochs // 2},{3 * args.teacher_epochs // 4}]", *mixed],
        out / "runs" / stem) | imbalance_metrics(out / "runs" / stem))
    distilled = ["model._target_=lightning_modules.distillation.Distillation",
                 f"+model.teacher_ckpt={teacher['best_checkpoint']}", "+model.alpha=0.5", "+model.temperature=4.0"]
    students = {which: [units.get(f"student_{which}_seed{seed}", cnn_key | diffusion_key | {"seed": seed,
                                  "teacher_epochs": args.teacher_epochs * (which == "distilled")},
                                  lambda stem, s=seed, w=which: cnn(args, s, real, out / "runs" / stem,
                                                                    mixed + (distilled if w == "distilled" else [])))
                        for seed in args.seeds] for which in ("no_teacher", "distilled")}
    exported = units.get("export", diffusion_key | cnn_key | {"teacher_epochs": args.teacher_epochs,
                                                              "seed": args.seeds[0]}, lambda stem:
                         export_pair(students["distilled"][0]["ckpt"], teacher["best_checkpoint"], out / "runs" / stem))

    rows = []
    for ratio in args.imbalance:
        counts = levels[ratio]["data"]["train_counts"]
        setting = f"minority {ratio:.0%}" + (f" (train counts {counts})" if counts else " (as released)")
        for arm, (label, _extra) in ARMS.items():
            rows.append((setting, label, arms[ratio, arm], None if arm == "a" else arms[ratio, "a"]))
    rows += [("MAE, fine-tuned on real", "pretrained on real", mae["real"], None),
             ("MAE, fine-tuned on real", "pretrained on real + synthetic", mae["synthetic"], mae["real"]),
             ("CNN student on real + synthetic", "no teacher", students["no_teacher"], None),
             ("CNN student on real + synthetic", "distilled from ResNet-18", students["distilled"],
              students["no_teacher"])]
    synth1 = levels[1.0]["synth"]
    t, s = exported["compare"], exported["export"]
    text = "\n\n".join([
        f"DerMAE on {args.flag} (official val / test split, 28 px), seeds {args.seeds}"
        f"{'; QUICK SMOKE (not evidence)' if args.quick else ''}; protocol: benchmarks/dermae.py's docstring. "
        f"Diffusion {args.diffusion_epochs} epochs per level ({synth1['diffusion_s']:.0f} s at level 1), DDIM "
        f"{args.steps} steps / guidance {args.guidance}; CNN arms and students {args.epochs} epochs; MAE "
        f"{args.mae_epochs} + {args.mae_finetune_epochs} epochs; synthetic counts at level 1: {synth1['counts']}.",
        "Test metrics (mean +- std over seeds); each treatment minus its control, paired by seed: mean "
        "[95 % paired t-interval over seeds], the p of the seeds x test-images test and its Holm-adjusted p "
        "over the table. Exploratory: no comparison here was registered as a primary.",
        comparison_table(rows),
        "Synthetic-set quality at level 1 (judge: arm (a), seed 0; FID / KID per class on the judge's features):\n"
        + "\n".join(f"- {k}: {v:.4f}" for k, v in sorted(quality.items()) if isinstance(v, float)),
        "| model | test ACC | test bal. acc | params | ONNX MB | CPU latency, batch 1 (ms) |\n|---|---|---|---|---|---|\n"
        f"| teacher ResNet-18 ({args.teacher_epochs} ep, seed 0) | {teacher['test/acc']:.3f} | {teacher['bal_acc']:.3f} "
        f"| {t['params']:,} | {t['size_mb']:.2f} | {t['latency_ms']:.3f} |\n"
        f"| student CNN, distilled (seed {args.seeds[0]}) | {students['distilled'][0]['acc']:.3f} | "
        f"{students['distilled'][0]['bal_acc']:.3f} | {s['params']:,} | {s['size_mb']:.2f} | {s['latency_ms']:.3f} |"])
    atomic_write_text(out / "dermae.md", text + "\n")
    print("\n" + text + f"\n\nresults: {out / 'dermae.md'}; total wall time {time.time() - start:.0f} s")


def quality_of(args, synthetic: str, judge: dict, out: Path) -> dict:
    """The quality report of ``synthetic`` against the real training images, judged by ``judge``."""
    from hydra.utils import instantiate

    from pipeline.cli import compose_config
    from synthesis.quality import quality_report
    from synthesis.synthesize import real_training_arrays

    dm = instantiate(compose_config(["experiment=cnn_derma", *base(args, 0, args.data_root)], out).data,
                     _convert_="all")
    dm.setup("fit")
    images, labels = real_training_arrays(dm)
    report = quality_report(Path(synthetic), images, labels, list(dm.class_names), out / "quality",
                            classifier_ckpt=Path(judge["ckpt"]))
    return json.loads(json.dumps(report, default=str))


def export_pair(student_ckpt: str, teacher_ckpt: str, out: Path) -> dict:
    from deploy.export import export_classifier

    result = export_classifier(Path(student_ckpt), "onnx", out=out, compare=Path(teacher_ckpt))
    return json.loads(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
