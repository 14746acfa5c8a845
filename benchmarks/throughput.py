"""Throughput: images/s and step time of every training step the MLO-MAE protocol runs, the
data path alone, MFU, peak memory, and the projected wall time of ``mlo_mae_derma``.

Steps (one model, one batch, median of ``--repeats`` after ``--warmup``, round-robin):
- ``mae``: one MAE pretraining step (random masks, forward + backward + AdamW);
- ``mlo-ours`` / ``mlo-original``: one MLO-MAE cycle at the cadence (2 : 1 : 1), both
  hypergradient schedules; images/s counts the cycle's level-I images;
- ``finetune``: one ViT classifier step on unmasked images (the fine-tuning stage);
- ``eval``: one no-grad classifier forward (validation / test).
FLOPs per step are counted with ``torch.utils.flop_counter``'s per-op formulas (matmuls,
convolutions, attention; forward and backward); MFU = FLOPs / step time / the device's bf16
dense peak (``--peak-tflops``, or the table below for known GPUs). The MLO cycle's
finite-difference passes run in fp32 by design, so its MFU against the bf16 peak is lower.

Data path: images/s delivered by the CPU DataLoader (per-image torchvision transforms,
``--workers`` processes) and by the on-device path (indices, one gather and one batched
augmentation per batch), both with the fine-tuning stage's augmentation of mlo_mae_derma
(crop 4, flip, erasing 0.25, 28 -> 32 px), on a DermaMNIST-sized set (7,007 training images:
the real PneumoniaMNIST resized when ``--data-root`` holds it, else synthetic).

Projection: pretraining epochs x cycles per epoch x the measured cycle + fine-tuning epochs x
steps per epoch x the measured step + every epoch's validation at the measured eval rate,
read from the composed ``mlo_mae_derma`` config (the study's epochs and batch sizes) and
DermaMNIST's split sizes. An upper bound: early stopping and checkpoint I/O are not counted.

    python benchmarks/throughput.py                                  # CPU: small ViT only
    python benchmarks/throughput.py --device cuda --models vit-b small --compile
Framework overhead (the Trainer against a bare loop, per epoch): benchmarks/framework_overhead.py.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from mlo_step_cost import measure, mlo_cycle, peak_memory, sync
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from lightning_modules.components.mae import MaskedAutoencoder
from lightning_modules.components.networks import vit_network
from lightning_modules.components.optim import param_groups
from lightning_modules.components.patches import random_masking
from lightning_modules.components.speed import adamw, compile_networks, uses_sdpa
from lightning_modules.components.vit import ViTEncoder
from lightning_modules.mlo_mae import MLOMAE

REPO = Path(__file__).resolve().parents[1]
# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity), from the vendors' data sheets.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0,
                    "H100 NVL": 835.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0,
                    "RTX 4090": 165.0}
MODELS = {
    "vit-b": dict(img_size=32, patch_size=2, embed_dim=768, depth=12, num_heads=12,
                  decoder=dict(decoder_dim=512, decoder_depth=8, decoder_heads=16)),
    "small": dict(img_size=28, patch_size=4, embed_dim=192, depth=6, num_heads=3,
                  decoder=dict(decoder_dim=128, decoder_depth=2, decoder_heads=4)),
}
DERMA_SPLITS = {"train": 7007, "val": 1003}
CLASSES = 7


def device_peak_tflops(device: str, given: float | None) -> float | None:
    if given:
        return given
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


class FlopCount(TorchDispatchMode):
    """Total FLOPs of the ops run inside, by ``torch.utils.flop_counter``'s per-op formulas
    (``FlopCounterMode`` itself tracks modules with backward hooks, which break on the
    ``autograd.grad`` calls of the MLO-MAE hypergradient)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def count_flops(fn: Callable[[], None]) -> int:
    with FlopCount() as counter:
        fn()
    return counter.total


def step_arms(name: str, args, dev: str, autocast) -> dict[str, tuple[Callable[[], Callable[[], None]], int]]:
    """Factories of each step of model ``name`` and the images one call processes."""
    arch = dict(MODELS[name])
    dec, size, b = arch.pop("decoder"), arch["img_size"], args.batch
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(b, 3, size, size, generator=g).to(dev) for _ in range(3)]
    y = [torch.randint(0, CLASSES, (b,), generator=g).to(dev) for _ in range(3)]
    x_eval = torch.randn(args.eval_batch, 3, size, size, generator=g).to(dev)
    n1, n2, n3 = 2, 1, 1
    compile_opts = {} if args.compile else None

    def make_mae():
        torch.manual_seed(0)
        mae = MaskedAutoencoder(ViTEncoder(in_chans=3, **arch), 0.75, **dec).to(dev)
        compile_networks([mae.encoder, mae.decoder], compile_opts)
        opt = adamw(param_groups(mae, 1.5e-4, 0.05), lr=1.5e-4, betas=(0.9, 0.95))

        def step():
            with autocast():
                loss = mae(x[0], random_masking(b, mae.encoder.num_patches, 0.75, dev)).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    def make_mlo(schedule: str):
        def make():
            torch.manual_seed(0)
            mae = MaskedAutoencoder(ViTEncoder(in_chans=3, **arch), 0.75, **dec)
            module = MLOMAE(mae, num_classes=CLASSES, task="multi-class", hypergradient={"schedule": schedule},
                            compile=args.compile).to(dev)
            module.configure_model()
            module.manual_backward = lambda loss: loss.backward()
            return mlo_cycle(module, x, y, (n1, n2, n3), schedule, autocast, optimizer=adamw)
        return make

    def classifier():
        torch.manual_seed(0)
        net = vit_network(CLASSES, 3, size, arch["patch_size"], arch["embed_dim"], arch["depth"], arch["num_heads"],
                          drop_path_rate=0.1).to(dev)
        compile_networks([net], compile_opts)
        return net

    def make_finetune():
        net = classifier()
        opt = adamw(param_groups(net, 1e-4, 5e-5), lr=1e-4)

        def step():
            with autocast():
                loss = torch.nn.functional.cross_entropy(net(x[0]).float(), y[0])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step

    def make_eval():
        net = classifier().eval()

        @torch.no_grad()
        def step():
            with autocast():
                net(x_eval).float().softmax(-1)
        return step

    return {"mae": (make_mae, b), "mlo-original": (make_mlo("original"), n1 * b), "mlo-ours": (make_mlo("ours"), n1 * b),
            "finetune": (make_finetune, b), "eval": (make_eval, args.eval_batch)}


def flash_check(dev: str) -> str:
    """Whether SDPA runs the flash kernel for a bf16 ViT-B-shaped attention on this device."""
    if not dev.startswith("cuda"):
        return "n/a on CPU (SDPA dispatches to its CPU kernels)"
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(8, 12, 257, 64, device=dev, dtype=torch.bfloat16)
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            torch.nn.functional.scaled_dot_product_attention(q, q, q)
        return "flash attention kernel available and selected for bf16 (forced-flash SDPA call succeeded)"
    except RuntimeError as err:
        return f"flash attention NOT usable: {err}".splitlines()[0]


def derma_sized_images(data_root: Path | None) -> tuple[np.ndarray, np.ndarray, str]:
    """7,007 uint8 (N, 28, 28) grayscale training images and binary labels (read as RGB)."""
    n = DERMA_SPLITS["train"]
    path = data_root / "pneumoniamnist.npz" if data_root else None
    if path is not None and path.is_file():
        with np.load(path) as f:
            gray, labels = f["train_images"], f["train_labels"]
        idx = np.resize(np.arange(len(gray)), n)
        return gray[idx], labels[idx], "real PneumoniaMNIST repeated to RGB"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 2, (n, 1)), "synthetic uint8"


def data_path_rates(args, dev: str) -> dict[str, float]:
    """Images/s of one training epoch from each data path, delivered on ``dev``."""
    import tempfile

    from lightning.fabric.utilities.apply_func import move_data_to_device

    from datamodules import MedMNISTDataModule

    images, labels, what = derma_sized_images(args.data_root)
    root = Path(tempfile.mkdtemp(prefix="bench_data_"))
    small = {k: images[:200] for k in ("val", "test")}
    np.savez(root / "pneumoniamnist.npz", train_images=images, train_labels=labels,
             **{f"{k}_images": v for k, v in small.items()}, **{f"{k}_labels": labels[:200] for k in small})
    augment = {"crop_padding": 4, "hflip": True, "erasing": 0.25}
    rates = {}
    paths = [("CPU DataLoader, 0 workers", False, 0), ("on-device", True, 0)]
    if args.workers > 0:
        paths.insert(1, (f"CPU DataLoader, {args.workers} workers", False, args.workers))
    for label, on_device, workers in paths:
        dm = MedMNISTDataModule(flag="pneumoniamnist", root=str(root), download=False, img_size=32, as_rgb=True,
                                normalization="imagenet", augment=augment, batch_size=64, num_workers=workers,
                                pin_memory=dev.startswith("cuda") and not on_device, on_device=on_device)
        dm.setup("fit")
        for _ in range(2):  # the first epoch warms up (worker start, first move to the device)
            sync()
            start, count = time.perf_counter(), 0
            for batch in dm.train_dataloader():
                x, _ = dm.on_after_batch_transfer(move_data_to_device(batch, dev), 0)
                count += len(x)
            sync()
            seconds = time.perf_counter() - start
        rates[label] = count / seconds
    print(f"\nData path alone ({what}, 7,007 images, 28 -> 32 px, crop 4 + flip + erasing 0.25, batch 64, "
          f"delivered on {dev}; second epoch):\n")
    print("| path | images/s |\n|---|---|")
    for label, rate in rates.items():
        print(f"| {label} | {rate:,.0f} |")
    return rates


def projection(times: dict[str, float], args) -> None:
    """Projected mlo_mae_derma wall time from the measured ViT-B step times."""
    from pipeline.cli import compose_config

    pre, fin = (compose_config([f"experiment=mlo_mae_derma/{stage}"], Path(".")) for stage in ("pretrain", "finetune"))
    n1 = pre.data.mlo.cadence[0]
    pre_batch, fin_batch = pre.data.batch_size, fin.data.batch_size
    pre_epochs, fin_epochs = pre.trainer.max_epochs, fin.trainer.max_epochs
    # Per step the batch is scaled to the benchmark's: time per image is what carries over.
    per_cycle = times["mlo-ours"] * (pre_batch / args.batch)
    per_step = times["finetune"] * (fin_batch / args.batch)
    per_eval_image = times["eval"] / args.eval_batch
    cycles = -(-DERMA_SPLITS["train"] // (pre_batch * n1))
    steps = -(-DERMA_SPLITS["train"] // fin_batch)
    val = DERMA_SPLITS["val"] * per_eval_image
    pretrain_h = pre_epochs * (cycles * per_cycle + val) / 3600
    finetune_h = fin_epochs * (steps * per_step + val) / 3600
    print(f"\nProjected mlo_mae_derma on this device (ViT-B/2 @32px, study settings: pretraining {pre_epochs} "
          f"epochs x {cycles} cycles of batch {pre_batch} x cadence {list(pre.data.mlo.cadence)}; fine-tuning "
          f"{fin_epochs} epochs x {steps} steps of batch {fin_batch}; validation on {DERMA_SPLITS['val']} images "
          f"every epoch; step times scaled linearly from batch {args.batch}):")
    print(f"  pretraining {pretrain_h:.2f} h + fine-tuning {finetune_h:.2f} h = {pretrain_h + finetune_h:.2f} h "
          f"(target <= 2 h on one H100; the study reports ~8 h on H200s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=None, choices=list(MODELS),
                        help="default: vit-b and small on CUDA, small on CPU")
    parser.add_argument("--batch", type=int, default=None, help="default 64 on CUDA, 16 on CPU")
    parser.add_argument("--eval-batch", type=int, default=None, help="default 512 on CUDA, 64 on CPU")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--precision", default=None, choices=["bf16-mixed", "32-true"],
                        help="default: bf16-mixed on CUDA, 32-true on CPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (model.compile=true)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak for the MFU")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers of the CPU data path")
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--skip-data", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*self.log.*")  # modules used without a Trainer
    dev = args.device
    cuda = dev.startswith("cuda")
    args.models = args.models or (["vit-b", "small"] if cuda else ["small"])
    args.batch = args.batch or (64 if cuda else 16)
    args.eval_batch = args.eval_batch or (512 if cuda else 64)
    precision = args.precision or ("bf16-mixed" if cuda else "32-true")
    if cuda:
        torch.set_float32_matmul_precision("high")  # as trainer=gpu (TF32 outside the finite differences)

    def autocast():  # as Lightning's bf16-mixed: a fresh context per step, no weight cache
        return torch.autocast(dev.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16-mixed",
                              cache_enabled=False)

    peak = device_peak_tflops(dev, args.peak_tflops)
    where = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {where}; {precision}; compile={args.compile}; batch {args.batch} (eval {args.eval_batch}); "
          f"median of {args.repeats} after {args.warmup} warm-up; bf16 peak "
          f"{f'{peak:.0f} TFLOP/s' if peak else 'unknown (MFU n/a)'}")
    print(f"attention: SDPA in every ViT block = {uses_sdpa(ViTEncoder(32, 2, 3, 64, 2, 2))}; {flash_check(dev)}")
    vit_b_times = None
    for name in args.models:
        arms = step_arms(name, args, dev, autocast)
        fns = {arm: make() for arm, (make, _) in arms.items()}
        times = measure(fns, args.warmup, args.repeats)
        flops = {arm: count_flops(fn) for arm, fn in fns.items()}
        del fns
        peaks = {arm: peak_memory(make) for arm, (make, _) in arms.items()}
        arch = MODELS[name]
        print(f"\n{name}: ViT depth {arch['depth']} / width {arch['embed_dim']} / patch {arch['patch_size']} "
              f"@{arch['img_size']}px\n")
        print("| step | s / step | images/s | GFLOP / step | achieved TFLOP/s | MFU (bf16 peak) | peak GiB |")
        print("|---|---|---|---|---|---|---|")
        for arm, (_, images) in arms.items():
            t, tflops = times[arm], flops[arm] / times[arm] / 1e12
            mfu = f"{100 * tflops / peak:.1f}%" if peak else "n/a"
            mem = f"{peaks[arm]:.2f}" if peaks[arm] is not None else "n/a (CPU)"
            print(f"| {arm} | {t:.4f} | {images / t:,.1f} | {flops[arm] / 1e9:,.1f} | {tflops:.2f} | {mfu} | {mem} |")
        print(f"\nmlo-ours / mlo-original cycle: {times['mlo-ours'] / times['mlo-original']:.2f}; "
              f"mlo-ours per level-I step: {times['mlo-ours'] / 2 / times['mae']:.2f}x an MAE step")
        if name == "vit-b":
            vit_b_times = times
    if vit_b_times is not None:
        projection(vit_b_times, args)
    else:
        print("\n(projection of mlo_mae_derma needs the vit-b model: --models vit-b)")
    if not args.skip_data:
        data_path_rates(args, dev)


if __name__ == "__main__":
    main()
