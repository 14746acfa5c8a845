"""Own-data path vs the .npz path on the real PneumoniaMNIST, and the decoded-image cache.

Protocol: the real PneumoniaMNIST (28 px, official split) is exported to PNG files plus a
CSV (path, label, split, made-up group of 3 consecutive images of one split). `cnn_derma`
and `resnet18_derma` are trained through `data=image_table` (split_column=split, so the
same official split) and through `data=pneumoniamnist` with the same seeds and settings;
the checkpoint with the best validation AUC is tested once; the table path runs twice, with
the memory-mapped decoded cache (``data.decode=cache``) and with files decoded per item
(``data.decode=lazy``). Prints test ACC / AUC mean +- std per source and the largest per-seed
difference from the .npz path, then the cache timings: a cold start
(decode every PNG, write the cache) vs a warm one (cache hit), measured as wall time from
data preparation to the end of training epoch 1, and epoch 2 alone.

    python benchmarks/own_data.py --data-root DATA_DIR
    python benchmarks/own_data.py --seeds 0 --resnet-epochs 2      # shortened
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
from common import mean_std, real_data_root

REPO = Path(__file__).resolve().parents[1]
COMMON = ["trainer=cpu", "logger=csv", "~callbacks.rich_progress_bar"]


def table_overrides(table: Path, cache: Path) -> list[str]:
    return ["data=image_table", f"data.table={table}", "data.split_column=split", "data.group_column=group",
            "data.channels=1", "data.img_size=28", f"data.cache_dir={cache}", "data.normalization=half"]


def npz_overrides(data_root: Path) -> list[str]:
    return ["data=pneumoniamnist", f"data.root={data_root}", "data.download=false"]


def run(arm: str, source: list[str], seed: int, out: Path, resnet_epochs: int) -> dict:
    from pipeline.cli import compose_config, train

    overrides = [f"experiment={arm}", *source, f"seed={seed}", *COMMON]
    if arm == "resnet18_derma":
        e = resnet_epochs
        overrides += [f"trainer.max_epochs={e}", f"model.scheduler.milestones=[{e // 2},{(3 * e) // 4}]"]
    m = train(compose_config(overrides, out))
    return {"acc": m["test/acc"], "auc": m["test/auc"], "wall": m["wall_time_s"]}


class EpochClock(L.Callback):
    """Wall-clock time at the end of each training epoch."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.ends.append(time.perf_counter())


def cache_timing(table: Path, cache: Path, out: Path) -> dict:
    """Seconds from data preparation to the end of epoch 1, and of epoch 2 alone (cnn_derma)."""
    from hydra.utils import instantiate

    from pipeline.cli import compose_config

    cfg = compose_config(["experiment=cnn_derma", *table_overrides(table, cache), *COMMON[:2],
                          "trainer.max_epochs=2", "callbacks=none", "test=false"], out)
    start = time.perf_counter()
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    prepared = time.perf_counter()
    clock = EpochClock()
    trainer = instantiate(cfg.trainer, callbacks=[clock], logger=False, enable_checkpointing=False)
    trainer.fit(instantiate(cfg.model, _convert_="all"), datamodule=dm)
    return {"from_cache": dm.from_cache, "prepare": prepared - start, "epoch1": clock.ends[0] - start,
            "epoch2": clock.ends[1] - clock.ends[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--arms", nargs="+", default=["cnn_derma", "resnet18_derma"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--resnet-epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary folder)")
    args = parser.parse_args()
    data_root = real_data_root(args.data_root)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_own_data_"))

    from datamodules.export import export_npz

    t = time.perf_counter()
    table = export_npz(data_root / "pneumoniamnist.npz", out / "export", class_names=["normal", "pneumonia"])
    print(f"[export] {table} ({time.perf_counter() - t:.0f} s)")

    cache = out / "cache"
    timings = [cache_timing(table, cache, out / f"timing_{i}") for i in range(2)]  # cold, then warm
    with np.load(data_root / "pneumoniamnist.npz") as npz:
        cached = np.load(next(cache.glob("*.npy")))
        same = np.array_equal(cached, np.concatenate([npz[f"{s}_images"] for s in ("train", "val", "test")]))

    rows = []
    for arm in args.arms:
        sources = (("image_table, cache", table_overrides(table, cache)),
                   ("image_table, lazy", [*table_overrides(table, cache), "data.decode=lazy"]),
                   (".npz", npz_overrides(data_root)))
        for name, source in sources:
            results = [run(arm, source, s, out / f"{arm}_{name.strip('.').replace(', ', '_')}_{s}", args.resnet_epochs)
                       for s in args.seeds]
            rows.append((arm, name, results))
            print(f"[done] {arm} via {name}: " + ", ".join(f"AUC {r['auc']:.3f}" for r in results))

    print(f"\nPneumoniaMNIST (real, 28 px, official split) on CPU; seeds {args.seeds}; "
          f"resnet18_derma shortened to {args.resnet_epochs} epochs (lr x0.1 at 50% / 75%); work folder {out}")
    print(f"decoded PNGs identical to the .npz arrays: {same}\n")
    print("| arm | data | test ACC | test AUC | wall s / run |")
    print("|---|---|---|---|---|")
    for arm, name, results in rows:
        print(f"| {arm} | {name} | {mean_std([r['acc'] for r in results])} | {mean_std([r['auc'] for r in results])} "
              f"| {statistics.mean(r['wall'] for r in results):.0f} |")
    for i in range(0, len(rows), 3):
        (arm, _, cached), (_, _, lazy), (_, _, npz) = rows[i:i + 3]
        for name, a in (("cache", cached), ("lazy", lazy)):
            diff = max(max(abs(x["acc"] - y["acc"]), abs(x["auc"] - y["auc"])) for x, y in zip(a, npz))
            print(f"{arm}: largest per-seed |difference| (ACC or AUC), table ({name}) vs .npz: {diff:.4f}")

    print("\nDecoded-image cache (cnn_derma, 2 epochs, num_workers=0):")
    print("| start | from cache | data preparation s | prep -> end of epoch 1 s | epoch 2 s |")
    print("|---|---|---|---|---|")
    for label, tm in zip(("cold (decode + write)", "warm (cache hit)"), timings):
        print(f"| {label} | {tm['from_cache']} | {tm['prepare']:.2f} | {tm['epoch1']:.2f} | {tm['epoch2']:.2f} |")


if __name__ == "__main__":
    main()
