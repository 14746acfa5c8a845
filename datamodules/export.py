"""Export a MedMNIST ``.npz`` file as image files plus a table, the layout ``data=image_table``
and ``data=image_folder`` read (used by the tests and ``benchmarks/own_data.py``).

    python -m datamodules.export DATA_DIR/pneumoniamnist.npz /tmp/pneumonia_png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.medmnist_files import SPLITS


def export_npz(npz: str | Path, out_dir: str | Path, max_per_split: int | None = None, group_size: int = 3,
               class_names: list[str] | None = None) -> Path:
    """Write ``out_dir/images/<split>/<class>/<split>_<i>.png`` and ``out_dir/table.csv``.

    The table has columns path (relative to ``out_dir``), label (class name), split and
    group: a made-up patient id shared by ``group_size`` consecutive images of one split.
    ``class_names`` defaults to the class indices; they must sort in index order.
    Returns the table path.
    """
    out_dir = Path(out_dir)
    with np.load(npz) as data:
        arrays = {s: (data[f"{s}_images"], data[f"{s}_labels"].reshape(-1)) for s in SPLITS}
    k = int(max(labels.max() for _, labels in arrays.values())) + 1
    names = class_names or [str(i) for i in range(k)]
    if sorted(names) != names and sorted(names, key=lambda n: int(n) if n.isdigit() else n) != names:
        raise ValueError(f"class_names {names} must sort in index order")
    rows = []
    for split, (images, labels) in arrays.items():
        n = len(labels) if max_per_split is None else min(max_per_split, len(labels))
        for i in range(n):
            rel = Path("images") / split / names[labels[i]] / f"{split}_{i:05d}.png"
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(out_dir / rel)
            rows.append([rel.as_posix(), names[labels[i]], split, f"{split}_patient_{i // group_size:05d}"])
    table = out_dir / "table.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split", "group"])
        writer.writerows(rows)
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("npz", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--max-per-split", type=int, default=None)
    args = parser.parse_args(argv)
    print(export_npz(args.npz, args.out_dir, args.max_per_split))


if __name__ == "__main__":
    main()
