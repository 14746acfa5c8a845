"""Step cost of MLO-MAE and of every masking strategy vs plain MAE on the same model and batch,
measured side by side.

For each arm: warm-up, then the median wall time of repeated steps in this one process.
- ``mae``: one plain MAE training step (random masks, forward + backward + AdamW).
- ``mae + <strategy>``: one MAEPretrain step with that ``model.masking`` (``block``, ``hpm``,
  ``attmask``, ``automae``, ``adversarial``) at its published defaults: drawing the masks (the
  teachers' and AutoMAE's source's full-image passes included), AutoMAE's discriminator step, the
  MAE and the strategy's own loss in one backward, AdamW, the EMA update. AutoMAE's source is a
  checkpoint of the arm's own initial encoder (its cost does not depend on the weights).
- ``mlo-ours`` / ``mlo-original``: one MLO-MAE cycle at the cadence (default 2 : 1 : 1)
  with the merged schedule or the original implementation's, reported per cycle and
  amortised per level-I step (cycle / n1), the unit the targets below use.
Every arm runs at the same ``--precision``; bf16-mixed enters autocast per step without
the weight cache, as Lightning's bf16-mixed does (a cached cast would keep stale bf16
weights across the optimiser steps inside one cycle). Peak memory (CUDA) is measured per
arm in a separate pass in which only that arm's model and optimisers exist: weights,
optimiser states and activations of the arm alone.

    python benchmarks/mlo_step_cost.py                       # CPU, small ViT (28 px, patch 4)
    python benchmarks/mlo_step_cost.py --device cuda --vit-b # ViT-B patch 2 at 32 px, bf16-mixed
Targets, counted from the passes of one cycle (2 level-I steps, the level-II step and the
hypergradient; see ``lightning_modules/components/hypergradient.py``): ours <= 0.7x the
original schedule; amortised MLO cycle <= 3.2x a plain MAE step.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

from lightning_modules.components.mae import MaskedAutoencoder
from lightning_modules.components.optim import param_groups
from lightning_modules.components.patches import random_masking
from lightning_modules.components.strategies import STRATEGIES, build_strategy
from lightning_modules.components.vit import ViTEncoder
from lightning_modules.mlo_mae import MLOMAE


def build_mae(args) -> MaskedAutoencoder:
    torch.manual_seed(0)
    if args.vit_b:
        arch = dict(img_size=32, patch_size=2, embed_dim=768, depth=12, num_heads=12)
        dec = dict(decoder_dim=512, decoder_depth=8, decoder_heads=16)
    else:
        arch = dict(img_size=28, patch_size=4, embed_dim=192, depth=6, num_heads=3)
        dec = dict(decoder_dim=128, decoder_depth=2, decoder_heads=4)
    return MaskedAutoencoder(ViTEncoder(in_chans=3, **arch), 0.75, **dec)


def build(args, schedule: str) -> MLOMAE:
    module = MLOMAE(build_mae(args), num_classes=7, task="multi-class", masking={"net": args.masking_net},
                    levels={"cadence": tuple(args.cadence)}, hypergradient={"schedule": schedule}).to(args.device)
    module.manual_backward = lambda loss: loss.backward()
    return module


def mlo_cycle(module: MLOMAE, x: list, y: list, cadence, schedule: str, autocast,
              optimizer=torch.optim.AdamW) -> Callable[[], None]:
    """One MLO-MAE cycle (level I n1 times, II n2 times, III n3 times) on fixed batches, with
    the module's three AdamW optimisers (``optimizer`` builds each from parameter groups)."""
    n1, n2, n3 = cadence
    hp, levels = module.hparams, module.levels
    opts = [optimizer(param_groups(m, lr, hp.weight_decay), lr=lr, betas=(0.9, 0.95))
            for m, lr in ((module.mae, hp.lr), (module.head, levels.lr_head), (module.masknet, levels.lr_mask))]

    def cycle():
        with autocast():
            for _ in range(n1):
                _, level1_data = module.level1(x[0], opts[0])
            for i in range(n2):
                _, feats2 = module.level2(x[1], y[1], opts[1], keep_graph=schedule == "ours" and i == n2 - 1)
            for _ in range(n3):
                module.level3(level1_data, x[2], y[2], x[1], y[1], feats2, opts[2], opts)

    return cycle


def measure(arms: dict[str, Callable[[], None]], warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds per call of each arm, timed round-robin so that load drift hits all
    arms alike."""
    for fn in arms.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in arms}
    for _ in range(repeats):
        for name, fn in arms.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory(make_arm: Callable[[], Callable[[], None]], calls: int = 2) -> float | None:
    """Peak CUDA memory (GiB) of one arm built and run alone, above what existed before."""
    if not torch.cuda.is_available():
        return None
    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn = make_arm()
    for _ in range(calls):
        fn()
    sync()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    del fn
    gc.collect()
    torch.cuda.empty_cache()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--vit-b", action="store_true", help="ViT-B patch 2 at 32 px (the 'MLO-MAE on DermaMNIST' report's model)"
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--cadence", nargs=3, type=int, default=[2, 1, 1])
    parser.add_argument("--masking-net", default="mlp", choices=["mlp", "patch_scorer"])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--precision", default=None, choices=["bf16-mixed", "32-true"],
                        help="default: bf16-mixed on CUDA, 32-true on CPU")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*self.log.*")  # modules used without a Trainer
    dev, b = args.device, args.batch
    precision = args.precision or ("bf16-mixed" if dev.startswith("cuda") else "32-true")

    def autocast():  # as Lightning's bf16-mixed: a fresh context per step, no weight cache
        return torch.autocast(dev.split(":")[0], dtype=torch.bfloat16, enabled=precision == "bf16-mixed",
                              cache_enabled=False)

    size = 32 if args.vit_b else 28
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(b, 3, size, size, generator=g).to(dev) for _ in range(3)]
    y = [torch.randint(0, 7, (b,), generator=g).to(dev) for _ in range(3)]
    n1, n2, n3 = args.cadence

    def make_mae() -> Callable[[], None]:
        mae = build_mae(args).to(dev)
        opt = torch.optim.AdamW(param_groups(mae, 1e-4, 0.05), betas=(0.9, 0.95))

        def mae_step():
            with autocast():
                masking = random_masking(b, mae.encoder.num_patches, 0.75, dev)
                loss = mae(x[0], masking).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return mae_step

    def make_strategy(name: str) -> Callable[[], None]:
        """One step of MAEPretrain's training loop with ``model.masking=name`` (no probe)."""
        mae = build_mae(args).to(dev)
        options = {}
        if name == "automae":
            options["source"] = f"{tempfile.mkdtemp()}/source.ckpt"
            torch.save({"state_dict": {f"mae.encoder.{k}": v for k, v in mae.encoder.state_dict().items()}},
                       options["source"])
        strategy = build_strategy(name, mae, **options).to(dev)
        strategy.start(mae)
        critics = nn.ModuleList(getattr(strategy, c) for c in strategy.critics)
        own = nn.ModuleDict({n: m for n, m in strategy.named_children() if n not in strategy.critics})
        opt = torch.optim.AdamW(param_groups(nn.ModuleDict({"mae": mae, "masking": own}), 1e-4, 0.05),
                                betas=(0.9, 0.95))
        critic_opt = torch.optim.AdamW(critics.parameters(), 1e-4, betas=(0.9, 0.95), weight_decay=0.0) \
            if strategy.critics else None

        def strategy_step():
            with autocast():
                draw = strategy.draw(x[0], mae, 1.0)
                critic, _ = strategy.critic_loss(x[0], mae, draw)
            if critic is not None:
                critic_opt.zero_grad(set_to_none=True)
                critic.backward()
                critic_opt.step()
            with autocast():
                out = mae(x[0], draw.masking, token_scale=draw.token_scale)
                extra, _ = strategy.auxiliary_loss(x[0], mae, draw, out)
                loss = out.loss if extra is None else out.loss + extra
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            strategy.after_step(mae)

        return strategy_step

    def make_mlo(schedule: str) -> Callable[[], None]:
        return mlo_cycle(build(args, schedule), x, y, args.cadence, schedule, autocast)

    makers = {"mae step": make_mae, "mlo-original cycle": lambda: make_mlo("original"),
              "mlo-ours cycle": lambda: make_mlo("ours")}
    makers |= {f"mae + {name} step": (lambda n=name: make_strategy(n)) for name in STRATEGIES if name != "random"}
    arms = {name: make() for name, make in makers.items()}
    times = measure(arms, args.warmup, args.repeats)
    del arms
    peaks = {name: peak_memory(make) for name, make in makers.items()}
    results = {name: (times[name], peaks[name]) for name in makers}

    mae_t = results["mae step"][0]
    model = "ViT-B/2 @32px" if args.vit_b else "ViT depth 6 / width 192 / patch 4 @28px"
    print(f"\ndevice {dev}, {precision}, {model}, batch {b}, cadence {n1}:{n2}:{n3}, masking net {args.masking_net}, "
          f"median of {args.repeats} after {args.warmup} warm-up\n")
    print("| arm | s / call | per level-I step vs MAE step | peak GiB (arm alone) |")
    print("|---|---|---|---|")
    for name, (t, peak) in results.items():
        per_step = t / n1 if name.startswith("mlo") else t
        mem = f"{peak:.2f}" if peak is not None else "n/a (CPU)"
        print(f"| {name} | {t:.4f} | {per_step / mae_t:.2f}x | {mem} |")
    ratio = results["mlo-ours cycle"][0] / results["mlo-original cycle"][0]
    print(f"\nours / original cycle time: {ratio:.2f} (target <= 0.70)")
    print(f"ours amortised per level-I step: {results['mlo-ours cycle'][0] / n1 / mae_t:.2f}x MAE (target <= 3.2)")


if __name__ == "__main__":
    main()
