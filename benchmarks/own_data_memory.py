"""Peak memory of the own-data paths for a dataset larger than a process should hold.

Protocol: ``--images`` RGB PNG files of ``--size`` px (smooth random images, a CSV table with
a label and a predefined split 80 / 10 / 10) are read through ``data=image_table`` three ways,
each in a fresh process: ``in memory`` (``data.cache_dir=null``: every image decoded into one
array, the layout every loader used before the memory-mapped cache), ``cache`` (decoded once
into a memory-mapped .npy; the cold run writes it, the warm run reads it) and ``lazy`` (each
file decoded when read). Each process runs ``prepare_data`` + ``setup`` and then one pass over
the training loader (batch 64, no workers). Reported: peak RSS (``ru_maxrss``, which counts
the memory-mapped file's pages that were touched: page cache the kernel may drop and other
processes share), peak anonymous memory (``RssAnon`` sampled every 20 ms: what the process
itself needs) and wall times. The decoded array's size is printed for scale.

    python benchmarks/own_data_memory.py                       # 20,000 images at 224 px
    python benchmarks/own_data_memory.py --images 2000 --size 64   # minutes
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MODES = {"in memory": ["cache_dir=null"], "cache (cold)": [], "cache (warm)": [], "lazy": ["decode=lazy"]}


def write_dataset(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` smooth RGB PNGs (a low-resolution random image, upsampled) and table.csv."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = ["path,label,split"]
    for i in range(n):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR).save(root / "images" / f"{i}.png")
        split = "train" if i % 10 < 8 else ("val" if i % 10 == 8 else "test")
        rows.append(f"images/{i}.png,{'ab'[i % 2]},{split}")
    (root / "table.csv").write_text("\n".join(rows) + "\n")
    return root / "table.csv"


def anon_kib() -> int:
    """The process's current anonymous resident memory (KiB, /proc/self/status RssAnon)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


def child(table: Path, size: int, cache: Path, overrides: list[str]) -> dict:
    """One measured pass (runs in a fresh process)."""
    from datamodules import ImageTableDataModule

    peak = [anon_kib()]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], anon_kib())
            time.sleep(0.02)

    baseline = anon_kib()
    threading.Thread(target=sample, daemon=True).start()
    kwargs = {"table": str(table), "split_column": "split", "channels": 3, "img_size": size,
              "cache_dir": str(cache), "normalization": "half", "batch_size": 64}
    for item in overrides:
        key, value = item.split("=")
        kwargs[key] = None if value == "null" else value
    start = time.perf_counter()
    dm = ImageTableDataModule(**kwargs)
    dm.prepare_data()
    dm.setup()
    prepared = time.perf_counter()
    for _ in dm.train_dataloader():
        pass
    done.set()
    return {"prepare_s": prepared - start, "epoch_s": time.perf_counter() - prepared,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_anon_mib": peak[0] / 1024, "baseline_anon_mib": baseline / 1024,
            "train_images": len(dm.train_set)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary folder)")
    parser.add_argument("--child", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # table, cache folder, overrides...
        print(json.dumps(child(Path(args.child[0]), args.size, Path(args.child[1]), args.child[2:])))
        return
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_own_data_memory_"))
    t = time.perf_counter()
    table = write_dataset(out / "data", args.images, args.size)
    print(f"[data] {args.images} PNGs of {args.size} px in {time.perf_counter() - t:.0f} s ({out / 'data'})",
          flush=True)
    results = {}
    for mode, overrides in MODES.items():
        proc = subprocess.run([sys.executable, __file__, "--size", str(args.size), "--child", str(table),
                               str(out / "cache"), *overrides], capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"[{mode}] {results[mode]}", flush=True)
    array_mib = args.images * args.size * args.size * 3 / 2**20
    print(f"\n{args.images} RGB images at {args.size} px (decoded: {array_mib:.0f} MiB as one uint8 array); one "
          "pass over the training split (80 %), batch 64, no workers, CPU; each row a fresh process:\n")
    print("| path | peak RSS MiB | peak anonymous MiB | prepare + setup s | one training pass s |")
    print("|---|---|---|---|---|")
    for mode, r in results.items():
        print(f"| {mode} | {r['peak_rss_mib']:.0f} | {r['peak_anon_mib']:.0f} | {r['prepare_s']:.1f} | "
              f"{r['epoch_s']:.1f} |")
    print(f"\n(anonymous memory of the interpreter with torch imported, before any data: about "
          f"{results['lazy']['baseline_anon_mib']:.0f} MiB)")


if __name__ == "__main__":
    main()
