"""The GPU check's steps, each a subprocess with its own time limit; one JSON + one markdown
table of what each printed. Called by ``run.sh`` (which installs the carried wheels first).

    python benchmarks/gpu/check.py --device cuda --data-root .whl/data --out DIR
    python benchmarks/gpu/check.py --device cpu --quick --out /tmp/gpu_check   # CPU smoke

A step that fails or runs out of time is recorded (return code, the end of its output) and
the check goes on, so one call always brings back every figure that could be measured. The
whole check fits in ``--budget`` seconds (default 480): each step's limit is the smaller of its
own and what is left.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from common import atomic_write_text  # noqa: E402


def steps(args) -> list[tuple[str, list[str], int]]:
    """(name, command, time limit in s) of every step, full size or ``--quick``."""
    py, dev, q = sys.executable, args.device, args.quick
    root = str(args.data_root)
    mlo_run = [py, "train.py", "experiment=mlo_mae_derma", "data=pneumoniamnist", "data.img_size=32",
               f"paths.medmnist_root={root}", "data.download=false", "logger=csv", "~callbacks.rich_progress_bar",
               f"hydra.run.dir={args.out}/mlo_mae_derma_run", "stages.finetune=null",
               f"trainer={'gpu' if dev.startswith('cuda') else 'cpu'}",
               f"++stages.pretrain.trainer.max_time=00:00:{'00:20' if q else '02:00'}",
               "stages.pretrain.trainer.max_epochs=1000"]
    if q:  # the CPU smoke: the small ViT, a few batches
        mlo_run += ["encoder=vit_small", "stages.pretrain.model.masking.net=patch_scorer",
                    "++stages.pretrain.trainer.limit_train_batches=2", "++stages.pretrain.trainer.limit_val_batches=1",
                    "++stages.pretrain.data.batch_size=8", "data.eval_batch_size=16"]
    return [
        ("throughput (MFU) and data path", [py, "benchmarks/throughput.py", "--device", dev, "--data-root", root,
                                            *(["--models", "small", "--repeats", "2", "--warmup", "1",
                                               "--workers", "0"] if q else ["--models", "vit-b", "small"])], 150),
        ("framework overhead", [py, "benchmarks/framework_overhead.py", "--device", dev, "--data-root", root,
                                *(["--epochs", "2", "--repeats", "1"] if q else ["--epochs", "5", "--repeats", "1"])],  # epoch 1 is excluded
         120),
        ("MLO-MAE step cost", [py, "benchmarks/mlo_step_cost.py", "--device", dev,
                               *(["--repeats", "2", "--warmup", "1", "--batch", "8"] if q else
                                 ["--vit-b", "--precision", "bf16-mixed"])], 100),
        ("mlo_mae_derma on PneumoniaMNIST, 32 px", mlo_run, 60 if q else 200),
    ]


def compare_step(args) -> tuple[str, list[str], int]:
    """The comparison ``--compare NAME`` (conf/compare/NAME.yaml) on this device: its units only
    (the report, which needs statsmodels, is rebuilt from the unit JSONs anywhere with
    ``python compare.py action=report compare.out_dir=...``); resumes what a previous call did."""
    trainer = "gpu" if args.device.startswith("cuda") else "cpu"
    return (f"comparison {args.compare}", [sys.executable, "compare.py", f"compare={args.compare}", "action=units",
                                           f"compare.trainer={trainer}", f"compare.out_dir={args.out}/{args.compare}",
                                           f"compare.run_dir={args.out}/{args.compare}/runs"], int(args.budget))


def run_step(name: str, cmd: list[str], limit: float, env: dict | None = None) -> dict:
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=limit, env=env)
        rc, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        rc = "timeout"
        out = (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
    wall = time.time() - start
    print(f"[{name}] rc={rc} in {wall:.0f} s", flush=True)
    return {"name": name, "command": " ".join(cmd), "rc": rc, "wall_s": round(wall, 1), "output_tail": out[-6000:]}


def mlo_run_figures(run_dir: Path) -> list[str]:
    """The time-limited mlo_mae_derma run's epochs, cycles, wall time and validation figures."""
    import csv

    metrics_file = run_dir / "pretrain" / "metrics.json"
    if not metrics_file.is_file():
        return []
    m = json.loads(metrics_file.read_text())
    rows = []
    for log in (run_dir / "pretrain").rglob("metrics.csv"):
        with open(log, newline="") as f:
            rows += list(csv.DictReader(f))
    epochs = {int(r["epoch"]) for r in rows if r.get("epoch")}
    keep = ("val/auc", "val/acc", "val/mask_diversity", "val/mask_context_iou", "val/mask_rho_intensity",
            "val/mask_rho_intensity_shuffled", "val/mask_rho_intensity_within", "val/mask_rho_recon_own_within")
    return ["| figure | value |", "|---|---|",
            f"| wall time (pretraining stage) | {m.get('wall_time_s', float('nan')):.0f} s |",
            f"| epochs reached | {len(epochs)} |",
            *(f"| {k} (last epoch) | {m[k]:.4g} |" for k in keep if isinstance(m.get(k), float))]


def device_info(device: str) -> dict:
    import torch

    info = {"torch": torch.__version__, "python": platform.python_version(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda,
                    memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    return info


def markdown(report: dict) -> str:
    """A summary table, then the markdown tables (and figure lines) each step printed."""
    lines = [f"# GPU check ({report['info'].get('gpu', report['info']['device'])}, torch {report['info']['torch']})",
             "", f"Total {report['total_s']:.0f} s{' (quick smoke)' if report['quick'] else ''}.", "",
             "| step | result | wall s |", "|---|---|---|"]
    lines += [f"| {s['name']} | {'ok' if s['rc'] == 0 else s['rc']} | {s['wall_s']:.0f} |" for s in report["steps"]]
    for s in report["steps"]:
        printed = s.get("figures") or [ln for ln in s["output_tail"].splitlines() if ln.startswith("|")
                                       or "img/s" in ln or "MFU" in ln or "overhead" in ln.lower()]
        lines += ["", f"## {s['name']}", "", f"`{s['command']}`", "", *(printed or ["(no figures printed)"])]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for all steps together")
    parser.add_argument("--compare", default=None, metavar="NAME",
                        help="run only the comparison conf/compare/NAME.yaml's units (e.g. gpu_pneumonia), resumable")
    args = parser.parse_args()
    args.data_root, args.out = args.data_root.resolve(), args.out.resolve()
    if not (args.data_root / "pneumoniamnist.npz").is_file():
        print(f"error: {args.data_root / 'pneumoniamnist.npz'} not found; run benchmarks/gpu/prepare.sh "
              "(it copies the data into .whl/data) or pass --data-root", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    start, results = time.time(), []
    env = {**os.environ, "MEDMNIST_ROOT": str(args.data_root)}  # the comparisons' data root
    for name, cmd, limit in ([compare_step(args)] if args.compare else steps(args)):
        left = args.budget - (time.time() - start)
        if left < 10:
            results.append({"name": name, "command": " ".join(cmd), "rc": "skipped (budget spent)", "wall_s": 0.0,
                            "output_tail": ""})
            continue
        results.append(run_step(name, cmd, min(limit, left), env))
        if name.startswith("mlo_mae_derma"):
            results[-1]["figures"] = mlo_run_figures(args.out / "mlo_mae_derma_run")
    report = {"info": device_info(args.device), "quick": args.quick, "total_s": round(time.time() - start, 1),
              "steps": results}
    atomic_write_text(args.out / "gpu_check.json", json.dumps(report, indent=2))
    atomic_write_text(args.out / "gpu_check.md", markdown(report))
    print(markdown(report))
    return 0 if all(s["rc"] == 0 for s in results) else 1


if __name__ == "__main__":
    sys.exit(main())
