"""Quality report of a synthetic training set (``synthesize.py``'s ``.npz`` + JSON card).

    from synthesis.quality import quality_report
    figures = quality_report(Path("synthetic.npz"), real_images, real_labels, class_names, Path("quality/"),
                             classifier_ckpt=Path("RUN/checkpoints/epoch_009.ckpt"))

Writes ``report.md`` and PNG figures into ``out_dir``:

1. classifier check: per-class accuracy of a classifier trained on real data, on the synthetic
   images (the class each was generated for) and on as many real training images;
2. FID / KID between real and synthetic images (torchmetrics), like with like: per class
   (synthetic class c against real class c) and pooled over a real subsample with the synthetic
   set's class mix, on Inception features when a local torch-fidelity weights file is given
   (keys ``fid_inception``, ``fid_inception/<class>``, ``kid_inception_mean`` ...), else on the
   classifier's penultimate features (``fid_judge`` ...);
3. memorisation: pixel-space L2 distance of each synthetic image to its nearest real training
   image, against the real images' own leave-one-out nearest-neighbour distances;
4. sample grids of synthetic and real images per class.

Each set is subsampled (seeded) to ``max_images``; the real reference subsample has as many
images as the synthetic one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from datamodules.generated_set import GeneratedSet, load_generated_set  # noqa: E402
from datamodules.transforms import ArrayDataset  # noqa: E402
from evaluation.predict import predict_probs  # noqa: E402
from lightning_modules.components.networks import penultimate_features  # noqa: E402

GRID_PER_CLASS = 8
CLOSEST_PAIRS = 8
COPY_PERCENTILE = 1.0  # synthetic images at or below this percentile of real-real distances are flagged
BATCH = 256
KID_SUBSET = 1000


# ----- input -----------------------------------------------------------------------------
def image_geometry(images: np.ndarray) -> tuple[int, int]:
    """(size, channels) of uint8 images (N, H, W) or (N, H, W, 3); ValueError for other layouts."""
    square = images.ndim in (3, 4) and images.shape[1] == images.shape[2]
    if not square or (images.ndim == 4 and images.shape[3] != 3):
        raise ValueError(f"images of shape {images.shape}: expected (N, H, H) or (N, H, H, 3)")
    return int(images.shape[1]), 1 if images.ndim == 3 else 3


def load_judged_set(path: Path, real_images: np.ndarray, class_names: list[str]) -> GeneratedSet:
    """The synthetic set ``path`` (``datamodules.generated_set.load_generated_set``), its card
    checked against the real data's classes and geometry; labels flattened to (N,)."""
    size, channels = image_geometry(real_images)
    expected = {"num_classes": len(class_names), "image_size": size, "channels": channels,
                "class_names": list(class_names)}
    data = load_generated_set(path, expected, key="synthetic set",
                          fix="judge a set made by synthesize.py for these real images")
    return replace(data, labels=data.labels.reshape(-1))


def subsample(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``min(n, k)`` of ``range(n)`` without replacement (all of them if n <= k)."""
    return np.arange(n) if n <= k else np.sort(rng.choice(n, size=k, replace=False))


def channels_first(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) / (N, H, W, 3) -> uint8 tensor (N, C, H, W)."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)


def uint8_batches(images: np.ndarray, rgb: bool, batch: int = BATCH) -> Iterator[torch.Tensor]:
    """uint8 (B, C, H, W) batches of ``images``; grayscale repeated to 3 channels when ``rgb``."""
    for start in range(0, len(images), batch):
        x = channels_first(images[start:start + batch])
        yield x.expand(-1, 3, -1, -1).contiguous() if rgb and x.shape[1] == 1 else x


# ----- the classifier and its features ---------------------------------------------------
@dataclass
class ClassifierView:
    """A trained classifier and its run's eval preprocessing of uint8 arrays."""

    model: nn.Module
    transform: v2.Compose  # float (C, H, W) in [0, 1] -> the network's input
    as_rgb: bool
    name: str  # the network, for labels
    data_source: str


def network_name(net: nn.Module) -> str:
    cfg = getattr(net, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(net).__name__


def load_classifier_view(ckpt: Path, num_classes: int, image_size: int, channels: int) -> ClassifierView:
    """The checkpoint's Classifier plus its eval transform, resizing ``image_size`` px inputs if needed."""
    # imported here: pulls in Hydra and Lightning, which the other checks do not need
    from evaluation.evaluate import checkpoint_data, load_classifier

    model = load_classifier(ckpt, num_classes)
    datamodule, dataset = checkpoint_data(ckpt, "test")
    in_chans = int(datamodule.in_chans)
    if channels == 3 and in_chans == 1:
        raise ValueError(f"{ckpt} takes 1-channel images; the synthetic images are RGB")
    transform = dataset.transform
    img_size = getattr(datamodule, "img_size", image_size)
    if img_size != image_size:  # its own transform resizes only from its run's source size
        transform = v2.Compose([v2.Resize((img_size, img_size), antialias=True), transform])
    source = datamodule.sample_source() if hasattr(datamodule, "sample_source") else "?"
    return ClassifierView(model.eval(), transform, bool(getattr(datamodule, "as_rgb", False)) or in_chans == 3,
                          network_name(model.net), source)


def view_loader(view: ClassifierView, images: np.ndarray, labels: np.ndarray) -> DataLoader:
    """Preprocessed batches ``(x (B, C, H, W) float, y (B,))`` exactly as the classifier's run built them."""
    dataset = ArrayDataset(images, labels.reshape(-1, 1), view.transform, view.as_rgb)
    return DataLoader(dataset, batch_size=BATCH, shuffle=False, num_workers=0)


def predict_classes(view: ClassifierView, images: np.ndarray, device: torch.device) -> np.ndarray:
    """Predicted class (N,) of uint8 images."""
    dataset = ArrayDataset(images, np.zeros((len(images), 1), np.int64), view.transform, view.as_rgb)
    return predict_probs(view.model, dataset, BATCH, device=device)[0].argmax(1)


class NetFeatures(nn.Module):
    """Penultimate features of a classifier for torchmetrics' ``feature`` argument.

    Input: the classifier's preprocessed float images (B, C, H, W); output float (B, F).
    ``num_features`` is set so that torchmetrics does not probe it with a uint8 dummy image.
    """

    def __init__(self, net: nn.Module, input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.net = net.eval()
        self.extract = penultimate_features(net)
        with torch.no_grad():
            probe = torch.zeros(2, *input_shape, device=next(net.parameters()).device)
            self.num_features = int(self.extract(probe).shape[-1])

    def train(self, mode: bool = True) -> NetFeatures:
        return super().train(False)  # BatchNorm / dropout stay in eval mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extract(x).float()


# ----- FID / KID -------------------------------------------------------------------------
@dataclass
class FeatureSpace:
    """How images reach a feature network: ``batches(images)`` yields its inputs."""

    module: nn.Module
    batches: Callable[[np.ndarray], Iterator[torch.Tensor]]
    label: str
    inception: bool


def inception_space(weights: Path, device: torch.device) -> tuple[FeatureSpace, dict]:
    """torch-fidelity's Inception (2048-d pool features) from a local weights file; nothing is downloaded."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if not Path(weights).is_file():
        raise ValueError(f"inception_weights={weights} does not exist")
    fid = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(weights)).to(device)
    space = FeatureSpace(fid.inception, lambda images: uint8_batches(images, rgb=True, batch=64),
                         "Inception-v3 (2048-d pool)", inception=True)
    return space, {"fid": fid}


def classifier_space(view: ClassifierView, image_size: int, channels: int, device: torch.device) -> FeatureSpace:
    view.model.to(device)
    probe = view_loader(view, np.zeros((1, image_size, image_size) + ((3,) if channels == 3 else ()), np.uint8),
                        np.zeros(1, np.int64))
    shape = tuple(next(iter(probe))[0].shape[1:])
    module = NetFeatures(view.model.net, shape)

    def batches(images: np.ndarray) -> Iterator[torch.Tensor]:
        return (x for x, _ in view_loader(view, images, np.zeros(len(images), np.int64)))

    return FeatureSpace(module, batches, f"{view.name} features (not Inception: not comparable to published FIDs)",
                        inception=False)


class Reuse(nn.Module):
    """``inner``'s features for KID, reusing what FID's call on the very same batch just computed."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None
        inner.register_forward_hook(self._remember)

    def _remember(self, _module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self._last = (args[0], output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._last is not None and self._last[0] is x:
            return self._last[1]
        return self.inner(x)


@torch.no_grad()
def fid_kid(space: FeatureSpace, real: np.ndarray, fake: np.ndarray, device: torch.device, seed: int,
            metrics: dict | None = None) -> dict[str, float]:
    """FID and KID (mean, std over subsets) between uint8 image sets of at least 2 images each."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    fid = (metrics or {}).get("fid") or FrechetInceptionDistance(feature=space.module).to(device)
    fid.reset()  # a reused metric (Inception's, loaded once) starts empty for every pair of sets
    subset = min(KID_SUBSET, len(real), len(fake))
    # this torchmetrics' KID takes no weights path: it gets the FID's network, fed FID's features
    kid = KernelInceptionDistance(feature=Reuse(fid.inception), subset_size=subset).to(device)
    for images, real_flag in ((real, True), (fake, False)):
        for x in space.batches(images):
            x = x.to(device)
            fid.update(x, real=real_flag)
            kid.update(x, real=real_flag)
    with torch.random.fork_rng(devices=[]):  # KID draws its subsets from the global generator
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std),
            "kid_subset_size": subset}


# ----- memorisation ----------------------------------------------------------------------
def _unit_rows(images: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(images.reshape(len(images), -1)).to(device).float().div_(255.0)


@torch.no_grad()
def nearest_real(queries: np.ndarray, reference: np.ndarray, device: torch.device, exclude: np.ndarray | None = None,
                 chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """L2 distance (pixels in [0, 1], flattened) of each query to its nearest reference image, and its index.

    ``exclude[i]`` is a reference index query i may not match (leave-one-out), or None.
    torch.cdist (matmul form, float32) finds the neighbour; the distance to it is then recomputed
    exactly, so an exact copy reads 0.
    """
    best = torch.full((len(queries),), math.inf, device=device)
    index = torch.zeros(len(queries), dtype=torch.long, device=device)
    for r0 in range(0, len(reference), chunk):
        ref = _unit_rows(reference[r0:r0 + chunk], device)
        for q0 in range(0, len(queries), chunk):
            d = torch.cdist(_unit_rows(queries[q0:q0 + chunk], device), ref)
            if exclude is not None:
                own = torch.from_numpy(exclude[q0:q0 + chunk]).to(device) - r0
                rows = ((own >= 0) & (own < len(ref))).nonzero().flatten()
                d[rows, own[rows]] = math.inf
            low, arg = d.min(1)
            better = low < best[q0:q0 + chunk]
            best[q0:q0 + chunk] = torch.where(better, low, best[q0:q0 + chunk])
            index[q0:q0 + chunk] = torch.where(better, arg + r0, index[q0:q0 + chunk])
    index = index.cpu().numpy()
    exact = np.empty(len(queries))
    for q0 in range(0, len(queries), chunk):
        q = queries[q0:q0 + chunk].reshape(-1, reference[0].size).astype(np.float64)
        exact[q0:q0 + chunk] = np.linalg.norm((q - reference[index[q0:q0 + chunk]].reshape(len(q), -1)) / 255.0, axis=1)
    return exact, index


def percentiles(values: np.ndarray) -> tuple[float, float]:
    """(median, 5th percentile), NaN for an empty array."""
    if len(values) == 0:
        return math.nan, math.nan
    return float(np.median(values)), float(np.percentile(values, 5))


# ----- figures ---------------------------------------------------------------------------
def _tile_rows(images: np.ndarray, labels: np.ndarray, k: int, per_row: int, pad: int = 2) -> np.ndarray:
    """Mosaic (rows = classes, up to ``per_row`` images each) as float RGB (H, W, 3) in [0, 1]; gaps white."""
    size = images.shape[1]
    step = size + pad
    mosaic = np.ones((k * step + pad, per_row * step + pad, 3))
    for c in range(k):
        for j, img in enumerate(images[labels == c][:per_row]):
            tile = img.astype(np.float64) / 255.0
            mosaic[pad + c * step:pad + c * step + size, pad + j * step:pad + j * step + size] = (
                tile[..., None] if tile.ndim == 2 else tile)
    return mosaic


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else name[:width - 1] + "\u2026"


def save_sample_grids(path: Path, synthetic: np.ndarray, syn_labels: np.ndarray, real: np.ndarray,
                      real_labels: np.ndarray, class_names: list[str]) -> None:
    """Two panels, synthetic | real, rows = classes, up to GRID_PER_CLASS images each."""
    k, size = len(class_names), synthetic.shape[1] if len(synthetic) else real.shape[1]
    fig, axes = plt.subplots(1, 2, figsize=(2 * (2.5 + 0.6 * GRID_PER_CLASS), 1.0 + 0.75 * k), squeeze=False)
    for ax, (title, images, labels) in zip(axes[0], (("synthetic", synthetic, syn_labels),
                                                     ("real (training split)", real, real_labels))):
        ax.imshow(_tile_rows(images, labels, k, GRID_PER_CLASS), interpolation="nearest")
        counts = np.bincount(labels, minlength=k)
        ax.set_yticks([2 + c * (size + 2) + size / 2 for c in range(k)])
        ax.set_yticklabels([f"{_short(n)} ({counts[c]})" for c, n in enumerate(class_names)], fontsize=8)
        ax.set_xticks([])
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def save_closest_pairs(path: Path, synthetic: np.ndarray, real: np.ndarray, dist: np.ndarray, index: np.ndarray,
                       syn_labels: np.ndarray, class_names: list[str]) -> None:
    """The CLOSEST_PAIRS synthetic images nearest to a real one (top row) above that real image."""
    order = np.argsort(dist, kind="stable")[:CLOSEST_PAIRS]
    n = max(len(order), 1)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.8), squeeze=False)
    gray = synthetic.ndim == 3
    for j, i in enumerate(order):
        for row, img in enumerate((synthetic[i], real[index[i]])):
            axes[row, j].imshow(img, cmap="gray" if gray else None, vmin=0, vmax=255, interpolation="nearest")
        axes[0, j].set_title(f"{_short(class_names[syn_labels[i]], 18)}\nd={dist[i]:.2f}", fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("synthetic", fontsize=8)
    axes[1, 0].set_ylabel("nearest real", fontsize=8)
    fig.suptitle("closest synthetic / real training pairs (L2, pixels in [0, 1])", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def save_distance_histogram(path: Path, syn_dist: np.ndarray, real_dist: np.ndarray, threshold: float) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    top = max(syn_dist.max(initial=0), real_dist.max(initial=0)) or 1.0
    bins = np.linspace(0, top, 50)
    ax.hist(real_dist, bins=bins, alpha=0.6, label="real vs other real (leave-one-out)")
    ax.hist(syn_dist, bins=bins, alpha=0.6, label="synthetic vs real")
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"copy threshold {threshold:.2f} (real p{COPY_PERCENTILE:g})")
    ax.set_xlabel("distance to the nearest real training image (L2, pixels in [0, 1])")
    ax.set_ylabel("images")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


# ----- report ----------------------------------------------------------------------------
def _fmt(x: float | int | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return str(x) if isinstance(x, int) else f"{x:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in lines)


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, k: int) -> list[float]:
    """Fraction of each class's images predicted as that class; NaN for a class without images."""
    return [float((pred[labels == c] == c).mean()) if (labels == c).any() else math.nan for c in range(k)]


def classifier_section(view: ClassifierView | None, syn: np.ndarray, syn_y: np.ndarray, real: np.ndarray,
                       real_y: np.ndarray, class_names: list[str], data_source: str,
                       device: torch.device) -> tuple[str, dict]:
    k = len(class_names)
    if view is None:
        return "No classifier checkpoint given: skipped.", {}
    acc_syn = per_class_accuracy(predict_classes(view, syn, device), syn_y, k) if len(syn) else [math.nan] * k
    acc_real = per_class_accuracy(predict_classes(view, real, device), real_y, k)
    n_syn, n_real = np.bincount(syn_y, minlength=k), np.bincount(real_y, minlength=k)
    rows = [[name, str(n_syn[c]), _fmt(acc_syn[c]), str(n_real[c]), _fmt(acc_real[c])]
            for c, name in enumerate(class_names)]
    figures = {f"classifier/acc_synthetic/{n}": a for n, a in zip(class_names, acc_syn)}
    figures |= {f"classifier/acc_real/{n}": a for n, a in zip(class_names, acc_real)}
    note = "" if view.data_source == data_source else (
        f"\n\nNote: the classifier was trained on {view.data_source}, the synthetic set was made for {data_source}.")
    text = (f"Classifier: {view.name} ({view.data_source}).\n\n"
            + _table(["class", "synthetic images", "accuracy (synthetic)", "real images", "accuracy (real)"], rows)
            + "\n\nProtocol: fraction of each class's images the classifier assigns to that class (for synthetic "
            "images, the class they were generated for), with its run's eval preprocessing; real = a seeded "
            "subsample of the training split as large as the synthetic one (images the classifier was trained on, "
            "so an optimistic reference)." + note)
    return text, figures


def class_matched(real_labels: np.ndarray, syn_labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of real images with the synthetic set's class mix: per class, as many real images
    of that class as synthetic ones (all of them when the class has fewer), sorted."""
    picked = [rng.choice(pool, size=min(len(pool), int((syn_labels == c).sum())), replace=False)
              for c in np.unique(syn_labels) for pool in [np.flatnonzero(real_labels == c)]]
    return np.sort(np.concatenate(picked)) if picked else np.array([], dtype=np.int64)


def fid_section(space: FeatureSpace | None, metrics: dict, real_images: np.ndarray, real_labels: np.ndarray,
                syn: np.ndarray, syn_y: np.ndarray, class_names: list[str], device: torch.device,
                seed: int) -> tuple[str, dict]:
    """FID / KID per class and pooled over class-matched real images, keyed by feature space."""
    if space is None:
        return "Neither Inception weights nor a classifier checkpoint given: FID / KID skipped.", {}
    key = "inception" if space.inception else "judge"
    matched = class_matched(real_labels, syn_y, np.random.default_rng([seed, 2]))
    real_m, real_my = real_images[matched], real_labels[matched]
    groups = [("all (class-matched)", "", real_m, syn)]
    groups += [(name, f"/{name}", real_m[real_my == c], syn[syn_y == c]) for c, name in enumerate(class_names)]
    figures: dict = {}
    rows, subsets = [], set()
    for name, suffix, real_x, syn_x in groups:
        if len(real_x) < 2 or len(syn_x) < 2:
            rows.append([name, str(len(real_x)), str(len(syn_x)), "-", "-"])
            continue
        r = fid_kid(space, real_x, syn_x, device, seed, metrics)
        subsets.add(r["kid_subset_size"])
        figures[f"fid_{key}{suffix}"] = r["fid"]
        figures[f"kid_{key}{suffix}" + ("_mean" if not suffix else "")] = r["kid_mean"]
        if not suffix:
            figures[f"kid_{key}_std"] = r["kid_std"]
        rows.append([name, str(len(real_x)), str(len(syn_x)), f"{r['fid']:.4g}",
                     f"{r['kid_mean']:.4g} ± {r['kid_std']:.2g}"])
    if not figures:
        return (f"FID / KID need at least 2 images per set and class ({len(syn)} synthetic, {len(real_m)} "
                "class-matched real): skipped."), {}
    text = (f"### FID/KID on {space.label} (keys `fid_{key}`, `fid_{key}/<class>`)\n\n"
            + _table(["classes", "real", "synthetic", "FID", "KID (mean ± std over subsets)"], rows)
            + "\n\nProtocol: synthetic images of class c against real training images of class c (a seeded "
            "subsample as large as the synthetic class); the first row pools the classes, so the real set has the "
            "synthetic set's class mix (an FID against the whole training split would mostly measure the class "
            "mix). "
            + ("torchmetrics on torch-fidelity's Inception-v3 (grayscale repeated to RGB, resized to 299 px inside); "
               if space.inception else "torchmetrics on the classifier's penultimate features (its eval "
               "preprocessing); ")
            + f"KID: 100 subsets of {'/'.join(map(str, sorted(subsets, reverse=True)))}, polynomial kernel, "
            f"seed {seed}. Lower is closer. FID is biased upwards the fewer images a set has, so compare "
            "per-class FIDs only between sets of the same size; KID is unbiased.")
    return text, figures


def memorisation_section(syn: np.ndarray, syn_y: np.ndarray, real_q: np.ndarray, real_q_y: np.ndarray,
                         real_q_idx: np.ndarray, real_all: np.ndarray, class_names: list[str], out_dir: Path,
                         device: torch.device) -> tuple[str, dict]:
    real_d, _ = nearest_real(real_q, real_all, device, exclude=real_q_idx)
    threshold = float(np.percentile(real_d, COPY_PERCENTILE)) if len(real_d) else math.nan
    threshold = threshold if math.isfinite(threshold) else math.nan  # a single real image has no neighbour
    figures: dict = {"nn/copy_threshold": threshold}
    rows = []
    syn_d, syn_i = nearest_real(syn, real_all, device) if len(syn) else (np.empty(0), np.empty(0, int))
    for c, name in enumerate(class_names):
        s_med, s_p5 = percentiles(syn_d[syn_y == c])
        r_med, r_p5 = percentiles(real_d[real_q_y == c])
        rows.append([name, str(int((syn_y == c).sum())), _fmt(s_med), _fmt(s_p5), _fmt(r_med), _fmt(r_p5),
                     str(int((syn_d[syn_y == c] <= threshold).sum()))])
        figures |= {f"nn/synthetic_median/{name}": s_med, f"nn/synthetic_p5/{name}": s_p5,
                    f"nn/real_median/{name}": r_med, f"nn/real_p5/{name}": r_p5}
    copies = int((syn_d <= threshold).sum())
    figures |= {"nn/copies": copies, "nn/copy_fraction": copies / len(syn) if len(syn) else math.nan}
    text = _table(["class", "synthetic images", "synthetic→real median", "synthetic→real p5",
                   "real→real median", "real→real p5", "possible copies"], rows)
    text += ("\n\nProtocol: L2 distance (pixels in [0, 1], flattened) to the nearest image of the whole real training "
             f"split; reference: {len(real_q)} real training images (seeded subsample) against the other real ones "
             "(leave-one-out). A median well below the reference suggests memorisation.")
    text += (f"\n\nPossible copies (synthetic images at or below percentile {COPY_PERCENTILE:g} of the real→real "
             f"distances, {_fmt(threshold)}): **{copies} of {len(syn)} "
             f"({_fmt(figures['nn/copy_fraction'] * 100, 1)} %)**.")
    save_distance_histogram(out_dir / "nn_distances.png", syn_d, real_d, threshold)
    text += "\n\n![nearest-neighbour distances](nn_distances.png)"
    if len(syn):
        save_closest_pairs(out_dir / "closest_pairs.png", syn, real_all, syn_d, syn_i, syn_y, class_names)
        text += f"\n\n![the {CLOSEST_PAIRS} closest synthetic / real pairs](closest_pairs.png)"
    return text, figures


def card_section(data: GeneratedSet, class_names: list[str], n_syn: int, n_real: int) -> str:
    card = data.card
    counts = ", ".join(f"{n}: {int(card['counts'].get(str(c), 0))}" for c, n in enumerate(class_names))
    rows = [["file", f"`{data.path}`"], ["data source", card.get("data_source", "?")],
            ["diffusion checkpoint", f"`{card.get('checkpoint', '?')}`"], ["seed", card.get("seed", "?")],
            ["sampling steps", card.get("steps", "?")], ["guidance scale", card.get("guidance_scale", "?")],
            ["counts", counts], ["images evaluated", f"{n_syn} synthetic, {n_real} real"]]
    return _table(["setting", "value"], rows)


def quality_report(synthetic: Path, real_images: np.ndarray, real_labels: np.ndarray, class_names: list[str],
                   out_dir: Path, classifier_ckpt: Path | None = None, inception_weights: Path | None = None,
                   max_images: int = 2000, seed: int = 0) -> dict:
    """Judge the synthetic set ``synthetic`` (.npz + card) against the real training split.

    ``real_images`` uint8 (N, H, W) or (N, H, W, 3), ``real_labels`` (N, 1) or (N,). Writes
    ``out_dir/report.md`` with ``samples.png``, ``nn_distances.png`` and ``closest_pairs.png``;
    returns the figures as a flat dict (NaN where a class has no images; FID / KID keys only when
    computed). ValueError if the set or its card does not fit the real data.
    """
    real_labels = np.asarray(real_labels).reshape(-1).astype(np.int64)
    if len(real_labels) != len(real_images):
        raise ValueError(f"{len(real_images)} real images but {len(real_labels)} real labels")
    data = load_judged_set(Path(synthetic), real_images, class_names)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size, channels = data.card["image_size"], data.card["channels"]

    syn_idx = subsample(len(data.images), max_images, np.random.default_rng([seed, 0]))
    real_idx = subsample(len(real_images), len(syn_idx) or max_images, np.random.default_rng([seed, 1]))
    syn, syn_y = data.images[syn_idx], data.labels[syn_idx]
    real, real_y = real_images[real_idx], real_labels[real_idx]

    view = None
    if classifier_ckpt is not None:
        view = load_classifier_view(Path(classifier_ckpt), len(class_names), size, channels)
    space, metrics = None, {}
    if inception_weights is not None:
        space, metrics = inception_space(Path(inception_weights), device)
    elif view is not None:
        space = classifier_space(view, size, channels, device)

    figures: dict = {"n_synthetic": len(syn), "n_real": len(real)}
    sections = []
    text, part = classifier_section(view, syn, syn_y, real, real_y, class_names, data.card.get("data_source"), device)
    sections.append(("1. Classifier check", text))
    figures |= part
    text, part = fid_section(space, metrics, real_images, real_labels, syn, syn_y, class_names, device, seed)
    sections.append(("2. FID / KID", text))
    figures |= part
    text, part = memorisation_section(syn, syn_y, real, real_y, real_idx, real_images, class_names, out_dir, device)
    sections.append(("3. Memorisation", text))
    figures |= part
    save_sample_grids(out_dir / "samples.png", syn, syn_y, real, real_y, class_names)
    sections.append(("4. Samples", f"![synthetic and real images per class](samples.png)\n\nUp to {GRID_PER_CLASS} "
                                   "images per class, the first of each seeded subsample."))

    body = [f"# Synthetic data quality: {data.path.name}", card_section(data, class_names, len(syn), len(real))]
    body += [f"## {title}\n\n{text}" for title, text in sections]
    (out_dir / "report.md").write_text("\n\n".join(body) + "\n")
    figures["report"] = str(out_dir / "report.md")
    return figures
