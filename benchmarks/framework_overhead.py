"""Framework overhead: the project's ``train(cfg)`` against a bare PyTorch loop doing the same
math on the same data, measured side by side in one process.

Both arms: cnn_derma's network, optimiser, batch, epochs and data (the datamodule of the same
config, so the same splits, transforms and loaders); validation every epoch (loss + AUROC);
the best-validation-AUC weights tested once. Per-epoch time = training + validation of that
epoch (the Trainer's from a callback, the bare loop's from its own clock). Whole-run time =
``train(cfg)`` (building data, model and Trainer, fit, test, eval/ folder, report) against the
bare loop from the datamodule's construction to its test metrics. The arms alternate order
over ``--repeats`` so that warm caches favour neither.

    python benchmarks/framework_overhead.py --data-root DATA_DIR             # real PneumoniaMNIST
    python benchmarks/framework_overhead.py --data-root DATA_DIR --epochs 3 --repeats 1
    python benchmarks/framework_overhead.py --device cuda     # trainer=gpu: on-device data, bf16

On a GPU both arms use the on-device data path (the bare loop calls the datamodule's
``on_after_batch_transfer`` after moving each batch, as the Trainer does) and bf16 autocast.

Target (GPU speed issue): the project's run <= 1.10x the bare loop, per epoch, on CPU and GPU.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]


class EpochClock(L.Callback):
    """Wall time of every training epoch plus its validation, in seconds."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.seconds.append(time.perf_counter() - self._start)


def overrides(data_root: Path, epochs: int, seed: int, lean: bool, device: str = "cpu") -> list[str]:
    trainer = "trainer=gpu" if device.startswith("cuda") else "trainer=cpu"
    common = ["experiment=cnn_derma", "data=pneumoniamnist", f"data.root={data_root}", "data.download=false",
              trainer, "logger=csv", f"trainer.max_epochs={epochs}", f"seed={seed}",
              "~callbacks.rich_progress_bar"]
    # lean: only what the bare loop also does (no eval/ folder, thresholds, lr monitor, CSV log)
    return common + (["~callbacks.evaluation", "~callbacks.lr_monitor", "~logger"] if lean else [])


def project_run(data_root: Path, out: Path, epochs: int, seed: int, lean: bool, device: str = "cpu") -> dict:
    from pipeline.cli import compose_config, train

    clock = EpochClock()
    cfg = compose_config(overrides(data_root, epochs, seed, lean, device), out)
    start = time.perf_counter()
    metrics = train(cfg, callbacks=[clock])
    return {"total": time.perf_counter() - start, "epochs": clock.seconds, "test_auc": metrics["test/auc"]}


def bare_run(data_root: Path, out: Path, epochs: int, seed: int, device: str = "cpu") -> dict:
    """The same math without Lightning: a plain loop over the datamodule's loaders."""
    from hydra.utils import instantiate
    from lightning.fabric.utilities.apply_func import move_data_to_device
    from torchmetrics.classification import MulticlassAUROC

    from pipeline.cli import compose_config

    start = time.perf_counter()
    cfg = compose_config(overrides(data_root, epochs, seed, lean=True, device=device), out)
    L.seed_everything(seed, workers=True)
    torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    net = instantiate(cfg.model.net).to(device)
    if cfg.model.channels_last:
        net = net.to(memory_format=torch.channels_last)
    fused = {"fused": True} if device.startswith("cuda") else {}
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg.model.lr, **fused)  # cnn_derma: SGD, no weight decay
    loss_fn = torch.nn.CrossEntropyLoss()
    k = cfg.data.num_classes
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=device.startswith("cuda"))

    def batches(loader):
        for batch in loader:
            x, y = dm.on_after_batch_transfer(move_data_to_device(batch, device), 0)
            yield (x.contiguous(memory_format=torch.channels_last) if cfg.model.channels_last else x), y

    def evaluate(loader) -> float:
        net.eval()
        auroc = MulticlassAUROC(num_classes=k).to(device)
        with torch.no_grad(), autocast:
            for x, y in batches(loader):
                logits = net(x).float()
                loss_fn(logits, y)
                auroc.update(logits.softmax(-1), y)
        return float(auroc.compute())

    best_auc, best_state, epoch_seconds = -1.0, None, []
    train_loader, val_loader = dm.train_dataloader(), dm.val_dataloader()
    for _ in range(epochs):
        t0 = time.perf_counter()
        net.train()
        for x, y in batches(train_loader):
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = loss_fn(net(x).float(), y)
            loss.backward()
            optimizer.step()
        auc = evaluate(val_loader)
        epoch_seconds.append(time.perf_counter() - t0)
        if auc > best_auc:
            best_auc, best_state = auc, copy.deepcopy(net.state_dict())
    net.load_state_dict(best_state)
    dm.setup("test")
    test_auc = evaluate(dm.test_dataloader())
    return {"total": time.perf_counter() - start, "epochs": epoch_seconds, "test_auc": test_auc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (trainer=gpu)")
    args = parser.parse_args()
    if not (args.data_root / "pneumoniamnist.npz").is_file():
        raise SystemExit(f"pneumoniamnist.npz not found in {args.data_root}; pass --data-root")
    torch.set_num_threads(torch.get_num_threads())
    out = Path(tempfile.mkdtemp(prefix="bench_overhead_"))
    arms = {"bare": [], "project": [], "project_lean": []}
    for r in range(args.repeats):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        for arm in order:
            run_dir = out / f"{arm}_{r}"
            if arm == "bare":
                arms[arm].append(bare_run(args.data_root, run_dir, args.epochs, 0, args.device))
            else:
                arms[arm].append(project_run(args.data_root, run_dir, args.epochs, 0, arm == "project_lean", args.device))

    def per_epoch(runs: list[dict]) -> float:  # median epoch, first epoch (warm-up) excluded
        return statistics.median(s for run in runs for s in run["epochs"][1:])

    bare_epoch, bare_total = per_epoch(arms["bare"]), statistics.median(r["total"] for r in arms["bare"])
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"cnn_derma on PneumoniaMNIST, {args.epochs} epochs, {where}, "
          f"{args.repeats} repeat(s), alternating order")
    print("| arm | median epoch (s) | ratio | whole run (s) | ratio | test AUC |\n|---|---|---|---|---|---|")
    for arm, runs in arms.items():
        epoch, total = per_epoch(runs), statistics.median(r["total"] for r in runs)
        aucs = ", ".join(f"{r['test_auc']:.4f}" for r in runs)
        print(f"| {arm} | {epoch:.3f} | {epoch / bare_epoch:.2f}x | {total:.1f} | {total / bare_total:.2f}x | {aucs} |")
    print("Target: project <= 1.10x bare per epoch. 'project_lean' drops the callbacks and logger that the "
          "bare loop does not have (eval/ folder, threshold tuning, lr monitor, CSV log).")


if __name__ == "__main__":
    main()
