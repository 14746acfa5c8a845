"""Why the MLO-MAE masking network collapses, and what prevents it: short MLO-MAE
pretraining runs on the real PneumoniaMNIST, one per variant, with the mask statistics
after each epoch.

Protocol: ``experiment=mlo_mae_small`` pretraining stage only (ViT depth 6 / width 192 /
patch 4 at 28 px, cadence 2:1:1, AdamW, lr 1e-3 for every level unless the variant says
otherwise), ``--epochs`` epochs of ``--steps`` cycles of batch ``--batch`` on the official
training split, seed 0. The statistics are those of the first 512 official validation images
(``val/mask_*``; see ``components/masking.py``): diversity (0 = one mask for all images, 1 = as
diverse as random masks), saturated (fraction of probabilities within 0.01 of 0 or 1),
level1_scale (mean weight over masked patches; plain MAE = 1).

``--study-size`` runs the model of the "MLO-MAE on DermaMNIST" report (2025) instead (ViT-B
patch 2 at 32 px, the ~100M-parameter mlp masking net of MLO-MAE, Guo et al., TMLR 2024), a
few cycles of a small batch each, on the same images resized to 32 px.

    python benchmarks/mask_collapse.py --data-root DATA_DIR
    python benchmarks/mask_collapse.py --study-size --steps 3 --epochs 1 --batch 8
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from common import real_data_root

REPO = Path(__file__).resolve().parents[1]
P = "stages.pretrain.model."
VARIANTS = {
    "mlp (paper)": [f"{P}masking.net=mlp"],
    "mlp, lr_mask 1e-5": [f"{P}masking.net=mlp", f"{P}levels.lr_mask=1e-5"],
    "mlp, temperature 100": [f"{P}masking.net=mlp", f"{P}masking.temperature=100"],
    "mlp, token-normalised input": [f"{P}masking.net=mlp", f"{P}masking.input_norm=token"],
    "mlp, batch-standardised input": [f"{P}masking.net=mlp", f"{P}masking.input_norm=batch"],
    "mlp, batch-standardised input, normalized weights": [f"{P}masking.net=mlp", f"{P}masking.input_norm=batch",
                                                         f"{P}masking.patch_weighting=normalized"],
    "mlp, batch-standardised input, lr_mask 1e-5": [f"{P}masking.net=mlp", f"{P}masking.input_norm=batch",
                                                   f"{P}levels.lr_mask=1e-5"],
    "mlp, batch-standardised input, normalized weights, lr_mask 1e-5": [
        f"{P}masking.net=mlp", f"{P}masking.input_norm=batch", f"{P}masking.patch_weighting=normalized", f"{P}levels.lr_mask=1e-5"],
    "mlp, normalized weights": [f"{P}masking.net=mlp", f"{P}masking.patch_weighting=normalized"],
    "mlp, normalized weights, lr_mask 1e-5": [f"{P}masking.net=mlp", f"{P}masking.patch_weighting=normalized",
                                             f"{P}levels.lr_mask=1e-5"],
    "mlp, official input (gradient into the encoder)": [f"{P}masking.net=mlp", f"{P}masking.input_grad=true"],
    "patch_scorer": [f"{P}masking.net=patch_scorer"],
    "patch_scorer, normalized weights": [f"{P}masking.net=patch_scorer", f"{P}masking.patch_weighting=normalized"],
    "patch_scorer, batch-standardised input, normalized weights": [
        f"{P}masking.net=patch_scorer", f"{P}masking.input_norm=batch", f"{P}masking.patch_weighting=normalized"],
}
STATS = ("diversity", "mean_prob", "saturated", "level1_scale", "entropy")


def init_statistics(cfg) -> dict:
    """Mask statistics of the untrained masking net on the same 512 validation images, with
    the model built as ``pipeline.run_stage`` builds it (same seed, same order)."""
    import lightning as L
    from hydra.utils import instantiate

    from lightning_modules.components.masking import mask_statistics
    from pipeline.stage_config import compose_stage

    stage = compose_stage(cfg, "pretrain", Path(cfg.paths.output_dir) / "pretrain")
    L.seed_everything(stage.seed)
    dm = instantiate(stage.data, _convert_="all")
    dm.prepare_data()
    model = instantiate(stage.model, _convert_="all")
    dm.setup("fit")
    images = next(iter(dm.val_dataloader()))[0]
    probs, mask = model.mask_maps(images)
    stats = mask_statistics(probs, mask, model.weights(probs, mask))
    return {k: v.item() for k, v in stats.items()} | {"epoch": "init"}


def run(name: str, overrides: list[str], args, out: Path) -> list[dict]:
    from pipeline.cli import compose_config, train

    base = [f"experiment={'mlo_mae_derma' if args.study_size else 'mlo_mae_small'}",
            "data=pneumoniamnist", f"paths.medmnist_root={args.data_root}", "data.download=false", "seed=0",
            "trainer=cpu", "logger=csv", "~callbacks.rich_progress_bar", "stages.finetune=null",
            f"stages.pretrain.trainer.max_epochs={args.epochs}", f"trainer.limit_train_batches={args.steps}",
            "trainer.limit_val_batches=1", "data.eval_batch_size=512",
            f"++stages.pretrain.data.batch_size={args.batch}", "stages.pretrain.callbacks.mask_maps.every_n_epochs=1"]
    run_dir = out / name.replace(" ", "_").replace(",", "")
    start = time.time()
    cfg = compose_config(base + overrides, run_dir)
    at_init = init_statistics(cfg)
    train(cfg)
    rows = list(csv.DictReader((run_dir / "pretrain" / "csv" / "metrics.csv").open()))
    per_epoch = [{k: float(r[f"val/mask_{k}"]) for k in STATS} | {"epoch": int(r["epoch"])}
                 for r in rows if r.get("val/mask_diversity")]
    for r in rows:
        if r.get("train/level1_loss_epoch"):
            per_epoch[min(int(r["epoch"]), len(per_epoch) - 1)]["level1_loss"] = float(r["train/level1_loss_epoch"])
    print(f"[done] {name}: {time.time() - start:.0f} s, mask maps in {run_dir / 'pretrain' / 'mask_maps'}", flush=True)
    return [at_init, *per_epoch]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--study-size", action="store_true")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.data_root = real_data_root(args.data_root)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_collapse_"))
    results = {name: run(name, VARIANTS[name], args, out) for name in args.variants}
    size = "mlo_mae_derma's model (ViT-B patch 2 at 32 px)" if args.study_size else "mlo_mae_small"
    print(f"\nPneumoniaMNIST, {size}; {args.epochs} epochs x {args.steps} cycles of batch {args.batch}, seed 0; "
          f"mask statistics of 512 validation images at initialisation and after each epoch; runs in {out}\n")
    print("| variant | epoch | diversity | mean prob | saturated | level-I scale | entropy (nats) | level-I loss |")
    print("|---|---|---|---|---|---|---|---|")
    for name, epochs in results.items():
        for e in epochs:
            print(f"| {name} | {e['epoch']} | {e['diversity']:.3f} | {e['mean_prob']:.3g} | {e['saturated']:.3f} | "
                  f"{e['level1_scale']:.3g} | {e['entropy']:.3g} | {e.get('level1_loss', float('nan')):.3g} |")


if __name__ == "__main__":
    main()
