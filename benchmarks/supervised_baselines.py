"""Supervised baselines on the real PneumoniaMNIST (CPU): cnn_derma and resnet18_derma.

Protocol: official PneumoniaMNIST split (28 px), each experiment's own settings, the
checkpoint with the best validation AUC is tested once. Prints mean +- std over seeds of
test ACC/AUC next to the MedMNIST v2 reference numbers, and the wall time per run.

    python benchmarks/supervised_baselines.py --data-root DATA_DIR
    python benchmarks/supervised_baselines.py --resnet-epochs 10 --seeds 0   # shortened

A shortened ResNet schedule keeps the lr drops at 50% and 75% of the epochs and is
reported as such; only --resnet-epochs 100 is the MedMNIST v2 protocol.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import mean_std

REPO = Path(__file__).resolve().parents[1]
REFERENCE = {  # MedMNIST v2 (Yang et al. 2023), PneumoniaMNIST test ACC / AUC
    "ResNet-18 (28)": (0.854, 0.944),
    "ResNet-50 (224)": (0.884, 0.962),
    "AutoML Vision": (0.946, 0.991),
}


def run_arm(arm: str, seed: int, data_root: Path, out: Path, resnet_epochs: int) -> dict:
    from pipeline.cli import compose_config, train

    overrides = [
        f"experiment={arm}", "data=pneumoniamnist", f"data.root={data_root}", "data.download=false",
        f"seed={seed}", "trainer=cpu", "logger=csv", "~callbacks.rich_progress_bar",
    ]
    if arm == "resnet18_derma":
        e = resnet_epochs
        overrides += [f"trainer.max_epochs={e}", f"model.scheduler.milestones=[{e // 2},{(3 * e) // 4}]"]
    cfg = compose_config(overrides, out / f"{arm}_seed{seed}")
    m = train(cfg)
    return {"acc": m["test/acc"], "auc": m["test/auc"], "val_auc": m["objective"], "wall": m["wall_time_s"],
            "epochs": int(cfg.trainer.max_epochs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--arms", nargs="+", default=["cnn_derma", "resnet18_derma"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--resnet-epochs", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None, help="run folders (default: a temporary folder)")
    args = parser.parse_args()
    if not (args.data_root / "pneumoniamnist.npz").is_file():
        raise SystemExit(f"pneumoniamnist.npz not found in {args.data_root}; pass --data-root")

    out = args.out or Path(tempfile.mkdtemp(prefix="bench_supervised_"))
    rows = []
    for arm in args.arms:
        results = [run_arm(arm, s, args.data_root.resolve(), out, args.resnet_epochs) for s in args.seeds]
        rows.append((arm, results))
        print(f"[done] {arm}: " + ", ".join(f"seed {s}: AUC {r['auc']:.3f}" for s, r in zip(args.seeds, results)))

    print("\nPneumoniaMNIST (28 px, official split), CPU; test metrics of the best-val-AUC checkpoint")
    print(f"seeds: {args.seeds}; run folders: {out}\n")
    print("| arm | epochs | test ACC | test AUC | val AUC (selection) | wall s / run |")
    print("|---|---|---|---|---|---|")
    for arm, results in rows:
        print(f"| {arm} | {results[0]['epochs']} | {mean_std([r['acc'] for r in results])} | "
              f"{mean_std([r['auc'] for r in results])} | {mean_std([r['val_auc'] for r in results])} | "
              f"{statistics.mean(r['wall'] for r in results):.0f} |")
    for name, (acc, auc) in REFERENCE.items():
        print(f"| MedMNIST v2 {name} (reference) | - | {acc:.3f} | {auc:.3f} | - | - |")


if __name__ == "__main__":
    main()
