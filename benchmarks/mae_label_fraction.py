"""From-scratch ViT vs MAE -> fine-tune (and MLO-MAE -> fine-tune) on the real PneumoniaMNIST
at several label fractions.

Protocol (CPU, small ViT of ``encoder=vit_small``: depth 6, width 192, patch 4 at 28 px):
- MAE pretraining (``experiment=mae_small``'s pretrain stage) once per seed on all 4708
  training images, labels unused; the last checkpoint is passed on (no label-based
  selection, so low-label arms see no extra labels). ``--methods ... mlo_mae`` adds
  MLO-MAE pretraining (``experiment=mlo_mae_small``, same epochs); it uses the training
  labels in its levels II / III, so compare it at label fraction 1.
- Fine-tuning (``experiment=vit_small``'s recipe) from that encoder, and the same recipe
  from scratch, on a stratified, seeded ``label_fraction`` of the training labels.
- The checkpoint with the best validation AUC (official validation split, all 524 images)
  is tested once on the official test split.
- Epochs per fraction give a comparable number of optimiser steps (printed).
Prints a mean +- std table over seeds of test ACC and AUC and the wall time of each arm.

    python benchmarks/mae_label_fraction.py --data-root DATA_DIR
    python benchmarks/mae_label_fraction.py --seeds 0 --fractions 0.1 --pretrain-epochs 2   # smoke
    python benchmarks/mae_label_fraction.py --methods scratch mae mlo_mae --fractions 1.0
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import mean_std

REPO = Path(__file__).resolve().parents[1]
DEFAULT_EPOCHS = {0.01: 100, 0.1: 30, 1.0: 10}


def common(data_root: Path, seed: int) -> list[str]:
    return [f"paths.medmnist_root={data_root}", "data=pneumoniamnist", "data.download=false", f"seed={seed}",
            "trainer=cpu", "logger=csv", "~callbacks.rich_progress_bar"]


def pretrain(method: str, data_root: Path, seed: int, epochs: int, out: Path) -> tuple[str, float]:
    from pipeline.cli import compose_config, train

    cfg = compose_config(
        [f"experiment={method}_small", *common(data_root, seed), "stages.finetune=null",
         f"stages.pretrain.trainer.max_epochs={epochs}"],
        out / f"{method}_pretrain_seed{seed}",
    )
    m = train(cfg)
    return m["pretrain/last_checkpoint"], m["pretrain/wall_time_s"]


def finetune(method: str, data_root: Path, seed: int, fraction: float, epochs: int, ckpt: str | None,
             out: Path) -> dict:
    from pipeline.cli import compose_config, train

    name = f"{method}_f{fraction}_seed{seed}"
    overrides = ["experiment=vit_small", *common(data_root, seed), f"data.label_fraction={fraction}",
                 f"trainer.max_epochs={epochs}"]
    if ckpt:
        overrides.append(f"model.net.pretrained_ckpt={ckpt}")
    m = train(compose_config(overrides, out / name))
    return {"acc": m["test/acc"], "auc": m["test/auc"], "wall": m["wall_time_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=["scratch", "mae"], choices=["scratch", "mae", "mlo_mae"])
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.1, 1.0])
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--finetune-epochs", nargs="+", type=int, default=None,
                        help="one per fraction (default: 100 / 30 / 10 for 1%% / 10%% / 100%%)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not (args.data_root / "pneumoniamnist.npz").is_file():
        raise SystemExit(f"pneumoniamnist.npz not found in {args.data_root}; pass --data-root")
    root = args.data_root.resolve()
    epochs = dict(zip(args.fractions, args.finetune_epochs)) if args.finetune_epochs else \
        {f: DEFAULT_EPOCHS.get(f, 10) for f in args.fractions}
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_mae_"))

    start = time.time()
    ckpts, pre_wall = {}, {}
    for method in args.methods:
        if method == "scratch":
            continue
        pre_wall[method] = []
        for seed in args.seeds:
            ckpts[method, seed], wall = pretrain(method, root, seed, args.pretrain_epochs, out)
            pre_wall[method].append(wall)
    results = {}
    for fraction in args.fractions:
        for arm in args.methods:
            results[arm, fraction] = [
                finetune(arm, root, s, fraction, epochs[fraction], ckpts.get((arm, s)), out) for s in args.seeds
            ]
            print(f"[done] {arm} @ {fraction}: AUC {mean_std([r['auc'] for r in results[arm, fraction]])}")

    print(f"\nPneumoniaMNIST 28 px, official split, CPU, ViT depth 6 / width 192 / patch 4; seeds {args.seeds}")
    for method, walls in pre_wall.items():
        print(f"{method} pretraining: {args.pretrain_epochs} epochs on all training images, "
              f"{statistics.mean(walls):.0f} s per seed (not included below)")
    print(f"test metrics of the best-val-AUC checkpoint; run folders: {out}\n")
    print("| label fraction | epochs | arm | test ACC | test AUC | wall s / run |")
    print("|---|---|---|---|---|---|")
    for fraction in args.fractions:
        for arm in args.methods:
            rs = results[arm, fraction]
            print(f"| {fraction:g} | {epochs[fraction]} | {arm} | {mean_std([r['acc'] for r in rs])} | "
                  f"{mean_std([r['auc'] for r in rs])} | {statistics.mean(r['wall'] for r in rs):.0f} |")
    print(f"\ntotal wall time: {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
