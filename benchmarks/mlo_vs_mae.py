"""Do learned masks help? Scratch vs MAE vs MLO-MAE (Guo et al., TMLR 2024; its mlp masking
net) vs the recommended MLO-MAE variant, fine-tuned with one recipe, on the real PneumoniaMNIST.

Protocol (CPU-sized; the small ViT of ``encoder=vit_small``: depth 6, width 192, patch 4
at 28 px):
- Pretraining, identical epochs for every pretrained arm, on the official training split:
  ``mae``: ``experiment=mae_small``'s pretrain stage (random masks, labels unused);
  ``mlo_mae``: ``experiment=mlo_mae_small`` with ``masking.net=mlp`` and everything else
  as in the "MLO-MAE on DermaMNIST" report (2025) (probability weighting, official
  hypergradient, lr_mask 1e-3);
  ``mlo_mae_variant``: ``mlo_mae_small`` with the recommended variant in ``VARIANT`` (see
  docs/mlo-mae.md and ``benchmarks/mask_collapse.py`` for why). The MLO arms use the training labels in levels II / III.
  The last pretraining checkpoint is passed on (no selection on validation labels).
- Fine-tuning: ``experiment=vit_small``'s recipe from that encoder (``scratch``: from random
  weights), ``--finetune-epochs`` epochs; the checkpoint with the best validation AUC
  (official validation split) is tested once on the official test split.
- ``--seeds`` (default 0 1 2) set model init, data order and masks.
Prints a table of test ACC / AUC (mean +- std over seeds), the pretraining's final mask
diversity on 512 validation images (1 = as diverse as random masks, 0 = one mask for all
images) and the wall time per arm (pretraining + fine-tuning).

    python benchmarks/mlo_vs_mae.py --data-root DATA_DIR
    python benchmarks/mlo_vs_mae.py --seeds 0 --pretrain-epochs 1 --finetune-epochs 1 --limit 5  # smoke
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import mean_std, real_data_root

REPO = Path(__file__).resolve().parents[1]
P = "stages.pretrain.model."
ARMS = {
    "scratch": None,
    "mae": ("mae_small", []),
    "mlo_mae": ("mlo_mae_small", [f"{P}masking.net=mlp"]),
    "mlo_mae_variant": ("mlo_mae_small", [f"{P}masking.net=patch_scorer", f"{P}masking.input_norm=batch",
                                          f"{P}masking.patch_weighting=normalized"]),
}
VARIANT = "patch_scorer, batch-standardised input, normalized weights (as experiment=mlo_mae_derma_diverse)"


def common(args, seed: int) -> list[str]:
    out = [f"paths.medmnist_root={args.data_root}", "data=pneumoniamnist", "data.download=false", f"seed={seed}",
           "trainer=cpu", "logger=csv", "~callbacks.rich_progress_bar"]
    return out + ([f"trainer.limit_train_batches={args.limit}"] if args.limit else [])


def pretrain(arm: str, args, seed: int, out: Path) -> tuple[str, float, float | None]:
    from pipeline.cli import compose_config, train

    experiment, extra = ARMS[arm]
    cfg = compose_config([f"experiment={experiment}", *common(args, seed), "stages.finetune=null",
                          f"stages.pretrain.trainer.max_epochs={args.pretrain_epochs}",
                          "data.eval_batch_size=512", *extra], out / f"{arm}_pretrain_seed{seed}")
    m = train(cfg)
    return m["pretrain/last_checkpoint"], m["pretrain/wall_time_s"], m.get("pretrain/val/mask_diversity")


def finetune(arm: str, args, seed: int, ckpt: str | None, out: Path) -> dict:
    from pipeline.cli import compose_config, train

    overrides = ["experiment=vit_small", *common(args, seed), f"trainer.max_epochs={args.finetune_epochs}"]
    if ckpt:
        overrides.append(f"model.net.pretrained_ckpt={ckpt}")
    m = train(compose_config(overrides, out / f"{arm}_finetune_seed{seed}"))
    return {"acc": m["test/acc"], "auc": m["test/auc"], "wall": m["wall_time_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--limit", type=int, default=None, help="training batches per epoch (smoke tests)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.data_root = real_data_root(args.data_root)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_mlo_vs_mae_"))

    start = time.time()
    rows = {}
    for arm in args.arms:
        runs = []
        for seed in args.seeds:
            ckpt, pre_wall, diversity = pretrain(arm, args, seed, out) if ARMS[arm] else (None, 0.0, None)
            result = finetune(arm, args, seed, ckpt, out)
            runs.append(result | {"wall": result["wall"] + pre_wall, "diversity": diversity})
            print(f"[done] {arm} seed {seed}: test ACC {result['acc']:.3f} AUC {result['auc']:.3f}", flush=True)
        rows[arm] = runs

    print(f"\nPneumoniaMNIST 28 px, official split, CPU, ViT depth 6 / width 192 / patch 4; seeds {args.seeds}; "
          f"pretraining {args.pretrain_epochs} epochs, fine-tuning {args.finetune_epochs} epochs "
          f"(vit_small recipe), test metrics of the best-validation-AUC checkpoint; variant: {VARIANT}; "
          f"runs in {out}\n")
    print("| arm | test ACC | test AUC | mask diversity (end of pretraining) | wall s / seed |")
    print("|---|---|---|---|---|")
    for arm, runs in rows.items():
        div = [r["diversity"] for r in runs if r["diversity"] is not None]
        print(f"| {arm} | {mean_std([r['acc'] for r in runs])} | {mean_std([r['auc'] for r in runs])} | "
              f"{mean_std(div) if div else '-'} | {statistics.mean(r['wall'] for r in runs):.0f} |")
    print(f"\ntotal wall time: {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
