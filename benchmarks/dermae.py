"""DerMAE on the real PneumoniaMNIST (or any flag): does balancing the classes with a
class-conditioned diffusion model help the metrics that imbalance hurts?

Protocol (official split, 28 px, [-1, 1] inputs; every number is on the official test split,
each run's checkpoint chosen by validation AUC and tested once; balanced accuracy and macro F1
are recomputed with scikit-learn from the saved test predictions, argmax decisions):
1. diffusion: the class-conditioned DDPM of dermae_small (UNet 32-64-64, EMA, CFG dropout 0.1)
   trained once (seed 0) for ``--diffusion-epochs`` on the real training images;
2. synthesis: DDIM ``--steps`` steps, guidance ``--guidance``, every class topped up to the
   majority count; quality report (classifier accuracy per class on the synthetic images,
   FID/KID on that classifier's features, nearest-real distances);
3. three arms of the 4-conv CNN (cnn_derma's recipe: SGD 0.01, batch 100, ``--epochs``) per
   seed: (a) real only, (b) oversampling (data.sampler=oversample), (c) real + synthetic;
4. teacher vs student: a ResNet-18 teacher (Adam 1e-3, ``--teacher-epochs``) and the CNN
   distilled from it (alpha 0.5, T 4), both on real + synthetic; test accuracy, size, CPU
   latency at batch 1 (ONNX Runtime, median of 100) from export.py.

    python benchmarks/dermae.py --data-root ../shared/data                       # CPU budget
    python benchmarks/dermae.py --diffusion-epochs 100 --steps 50 --epochs 30    # a GPU budget
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from common import mean_std, real_data_root
from sklearn.metrics import balanced_accuracy_score, f1_score

REPO = Path(__file__).resolve().parents[1]


def run(overrides: list[str], out: Path) -> dict:
    from pipeline.cli import compose_config, train

    return train(compose_config(overrides, out))


def base(args, seed: int) -> list[str]:
    trainer = "trainer=gpu" if args.gpu else "trainer=cpu"
    return [f"data={args.flag}", f"data.root={args.data_root}", "data.download=false", "data.normalization=half",
            f"seed={seed}", trainer, "logger=csv", "~callbacks.rich_progress_bar"]


def imbalance_metrics(run_dir: Path) -> dict:
    """Balanced accuracy and macro F1 of the saved test predictions (argmax)."""
    preds = np.load(run_dir / "predictions" / "test_predictions.npz")
    y, pred = preds["labels"].reshape(-1), preds["probs"].argmax(1)
    return {"bal_acc": balanced_accuracy_score(y, pred), "f1_macro": f1_score(y, pred, average="macro")}


def classifier(args, seed: int, out: Path, extra: list[str]) -> dict:
    overrides = ["experiment=cnn_derma", *base(args, seed), f"trainer.max_epochs={args.epochs}", *extra]
    m = run(overrides, out)
    return {"acc": m["test/acc"], "auc": m["test/auc"], **imbalance_metrics(out), "ckpt": m["best_checkpoint"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--flag", default="pneumoniamnist")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--diffusion-epochs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every CNN arm and the student")
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--gpu", action="store_true", help="trainer=gpu (bf16, on-device data)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.flag == "pneumoniamnist":
        args.data_root = real_data_root(args.data_root)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_dermae_"))
    from synthesis.quality import quality_report
    from synthesis.synthesize import real_training_arrays, synthesize

    t0 = time.time()
    diffusion_dir = out / "diffusion"
    m = run(["model=diffusion", *base(args, 0), f"trainer.max_epochs={args.diffusion_epochs}",
             "model.unet.block_channels=[32,64,64]", "model.unet.layers_per_block=1", "model.unet.norm_groups=16",
             "model.unet.attention_levels=[false,false,true]", "model.lr=5e-4", "model.ema_decay=0.995",
             f"model.sample_steps={args.steps}", "data.batch_size=128", "~callbacks.evaluation",
             "+callbacks.samples._target_=callbacks.samples.SampleGridCallback",
             f"+callbacks.samples.every_n_epochs={max(1, args.diffusion_epochs // 2)}", "monitor.metric=val/loss",
             "monitor.mode=min", "callbacks.early_stopping=null", "test=false"], diffusion_dir)
    diffusion_s = time.time() - t0
    t0 = time.time()
    synthetic = out / "synthetic" / "synthetic.npz"
    card = synthesize(Path(m["best_checkpoint"]), synthetic, steps=args.steps, guidance=args.guidance, seed=0)
    synthesis_s = time.time() - t0

    arms = {"(a) real only": [], "(b) oversampling": ["data.sampler=oversample"],
            "(c) real + synthetic": [f"data.synthetic_train={synthetic}"]}
    results: dict[str, list[dict]] = {arm: [] for arm in arms}
    for seed in args.seeds:
        for i, (arm, extra) in enumerate(arms.items()):
            results[arm].append(classifier(args, seed, out / f"arm{i}_seed{seed}", extra))

    from hydra.utils import instantiate

    from pipeline.cli import compose_config

    dm = instantiate(compose_config(["experiment=cnn_derma", *base(args, 0)], out / "real").data, _convert_="all")
    dm.setup("fit")
    real_images, real_labels = real_training_arrays(dm)
    quality = quality_report(synthetic, real_images, real_labels, list(dm.class_names), out / "quality",
                             classifier_ckpt=Path(results["(a) real only"][0]["ckpt"]))

    from deploy.export import export_classifier

    mixed = [f"data.synthetic_train={synthetic}"]
    teacher_dir, student_dir = out / "teacher", out / "student"
    teacher = run(["experiment=resnet18_derma", *base(args, 0), f"trainer.max_epochs={args.teacher_epochs}",
                   f"model.scheduler.milestones=[{args.teacher_epochs // 2},{3 * args.teacher_epochs // 4}]",
                   *mixed], teacher_dir)
    student = run(["experiment=cnn_derma", *base(args, 0), f"trainer.max_epochs={args.epochs}", *mixed,
                   "model._target_=lightning_modules.distillation.Distillation",
                   f"+model.teacher_ckpt={teacher['best_checkpoint']}", "+model.alpha=0.5", "+model.temperature=4.0"],
                  student_dir)
    exported = export_classifier(Path(student["best_checkpoint"]), "onnx", out=student_dir / "export",
                                 compare=Path(teacher["best_checkpoint"]))

    print(f"\nDerMAE on {args.flag} (official split, 28 px), seeds {args.seeds}; diffusion {args.diffusion_epochs} "
          f"epochs ({diffusion_s:.0f} s), synthesis of {sum(card['counts'].values())} images {card['counts']} with DDIM "
          f"{args.steps} steps / guidance {args.guidance} ({synthesis_s:.0f} s); CNN arms {args.epochs} epochs.\n")
    print("| arm | test balanced acc | test macro F1 | test ACC | test AUC |\n|---|---|---|---|---|")
    for arm, rows in results.items():
        cols = [mean_std([r[k] for r in rows]) for k in ("bal_acc", "f1_macro", "acc", "auc")]
        print(f"| {arm} | {' | '.join(cols)} |")
    print("\nSynthetic-set quality (judge: arm (a), seed 0; FID/KID per class and class-matched, on its CNN "
          "features, not Inception):")
    keys = sorted(k for k in quality if isinstance(quality[k], float) and not k.startswith("nn/real"))
    for k in keys:
        print(f"  {k}: {quality[k]:.4f}")
    print(f"  report: {quality.get('report')}")
    t, s = exported["compare"], exported["export"]
    teacher_m, student_m = imbalance_metrics(teacher_dir), imbalance_metrics(student_dir)
    print("\n| model | test ACC | test bal. acc | params | ONNX MB | CPU latency, batch 1 (ms) |\n|---|---|---|---|---|---|")
    print(f"| teacher ResNet-18 ({args.teacher_epochs} ep) | {teacher['test/acc']:.3f} | {teacher_m['bal_acc']:.3f} | "
          f"{t['params']:,} | {t['size_mb']:.2f} | {t['latency_ms']:.3f} |")
    print(f"| student CNN, distilled ({args.epochs} ep) | {student['test/acc']:.3f} | {student_m['bal_acc']:.3f} | "
          f"{s['params']:,} | {s['size_mb']:.2f} | {s['latency_ms']:.3f} |")
    (out / "dermae_results.json").write_text(json.dumps({"arms": results, "quality": quality, "export": exported,
                                                         "card": card}, indent=2, default=str))
    print(f"\nrun folders and dermae_results.json: {out}")


if __name__ == "__main__":
    main()
