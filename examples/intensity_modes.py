"""Draw docs/figures/intensity_modes.png: one 12-bit X-ray (in a 16-bit PNG) under each
``data.intensity`` mode, beside the old divide-by-257 decoding.

    python examples/intensity_modes.py [--npz ../shared/data/pneumoniamnist.npz]

The 12-bit image is made from a real PneumoniaMNIST test image (8-bit, upsampled to 128 px)
spread over detector-like values 300..3300 of 4095, saved as a 16-bit PNG and decoded by the
project's own ``decode_image``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from datamodules.image_cache import decode_image  # noqa: E402
from datamodules.intensity import IntensityConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODES = {
    "auto (default)": IntensityConfig(),
    "minmax": IntensityConfig(mode="minmax"),
    "percentile 1-99": IntensityConfig(mode="percentile", low=1, high=99),
    "window c=2200 w=1600": IntensityConfig(mode="window", center=2200, width=1600),
    "fixed 0-4095": IntensityConfig(mode="fixed", min=0, max=4095),
}


def twelve_bit_image(npz: Path) -> np.ndarray:
    with np.load(npz) as f:
        eight = f["test_images"][0]
    big = np.asarray(Image.fromarray(eight).resize((128, 128), Image.Resampling.BICUBIC), float)
    return np.rint(300 + big / 255 * 3000).astype(np.uint16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", type=Path, default=REPO.parent / "shared" / "data" / "pneumoniamnist.npz")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "figures" / "intensity_modes.png")
    args = parser.parse_args()
    raw = twelve_bit_image(args.npz)
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "xray12.png"
        Image.fromarray(raw).save(png)
        panels = {"value / 257 (before)": np.rint(raw / 257.0).astype(np.uint8)}
        panels.update({name: decode_image(png, 128, 1, cfg)[0] for name, cfg in MODES.items()})
    fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels), 3.0))
    for ax, (name, img) in zip(axes, panels.items()):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{name}\n{len(np.unique(img))} grey levels", fontsize=8)
        ax.axis("off")
    fig.suptitle("One 12-bit image (values 300-3300 in a 16-bit PNG), shown as the 8-bit pixels the model gets",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
