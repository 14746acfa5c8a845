"""Mask diagnostics that an untrained or image-independent masker cannot satisfy (plain torch).

A masker turns images (N, C, H, W) into a ``MaskDraw``: scores (N, L), higher = hidden first,
and the mask actually drawn (N, L), 1 = masked, with whatever randomness the strategy has.
Patches are in row-major order (MAE's ``patchify``). Content features of each patch (N, L):
``patch_intensity``, ``patch_edge_energy`` and the reconstruction difficulty
(``reconstruction_difficulty``: the patch's error under random masks). Difficulty is scored by
ONE reference MAE for every arm (key ``recon``); scored by the arm's own MAE, which learned
the very patches its masker hides, the key is ``recon_own``.

Correlations of a draw with each feature f (``correlations``; ``_mask``: on the drawn binary
masks instead of the scores):

- ``rho_f``: the mean over images of the per-image Spearman correlation across patches. It
  mixes position and image: a fixed map that ranks the centre first scores high wherever the
  centre is brighter on average (the training images' mean-intensity map reaches +0.80 on 128
  PneumoniaMNIST validation images; docs/masking.md).
- ``rho_f_shuffled`` (``masking_diagnostics``): the same scores paired with the content of
  another image (a derangement): the position-only part. For any image-independent masker it
  equals ``rho_f`` in expectation; ``rho_f`` above it is the image-dependent part.
- ``rho_f_within``: the within-position correlation (``within_position_correlation``): per-image
  ranks of the scores and of f, each centred per patch position over the evaluation images,
  correlated over all (image, patch) pairs. Only how an image's ranking departs from the
  masker's average ranking enters: exactly 0 for any image-independent masker (fixed maps,
  one mask for every image), about 0 for random scores, 1 for a masker that ranks each image
  by f itself.

``context_iou``: an image's kept set across batch contexts, with the masker's own randomness
held fixed, so it is below 1 only for a masker whose masks depend on the batch (and then is
compared with the untrained masker's value); ``expected_random_iou`` is the value if the batch
decided everything. ``weight_ess``: effective sample size of MLO-MAE's level-I patch weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from math import comb

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch import Tensor, nn

from lightning_modules.components.patches import masking_from_scores, num_kept
from lightning_modules.components.strategies import MaskDraw

ZERO = 1e-9  # rank departures below this are rounding: ranks sit on a grid of 1 / (2 (L - 1)) / N


@dataclass
class DiagnosedMasker:
    """What the diagnostics need of a module's masking.

    mae: the arm's ``MaskedAutoencoder``; draw: images (N, C, H, W) -> ``MaskDraw``; learned: the
    module holding the masker's trained state (swapped for its untrained state to diagnose the
    untrained masker; None when nothing is trained); weights_fn: (scores, mask) -> level-I patch
    weights (MLO-MAE) or None; batch_dependent: an image's mask depends on its batch neighbours.
    """

    mae: nn.Module
    draw: Callable[[Tensor], MaskDraw]
    learned: nn.Module | None = None
    weights_fn: Callable[[Tensor, Tensor], Tensor] | None = None
    batch_dependent: bool = False


def expected_random_iou(num_patches: int, num_kept: int) -> float:
    """E[|A n B| / |A u B|] for two independent uniformly random ``num_kept``-subsets of
    ``num_patches`` patches (their overlap is hypergeometric)."""
    n, k = num_patches, num_kept
    if not 0 < k <= n:
        raise ValueError(f"need 0 < num_kept <= num_patches, got {k} of {n}")
    total = comb(n, k)
    return sum(comb(k, i) * comb(n - k, k - i) / total * i / (2 * k - i) for i in range(max(0, 2 * k - n), k + 1))


def kept_iou(mask_a: Tensor, mask_b: Tensor) -> Tensor:
    """IoU (B,) of the kept (0 = visible) patches of two masks (B, L) of the same images."""
    a, b = mask_a == 0, mask_b == 0
    return (a & b).sum(1).double() / (a | b).sum(1).clamp(min=1).double()


def context_iou(mask_fn: Callable[[Tensor], Tensor], images: Tensor, pool: Tensor, contexts: int = 4,
                generator: torch.Generator | None = None, draw_seed: int = 0) -> Tensor:
    """Mean kept-set IoU of each of ``images`` (B, C, H, W) over pairs of ``contexts`` batches,
    each ``images`` followed by B images drawn at random from ``pool`` (N, C, H, W).

    ``mask_fn``: a batch (2B, C, H, W) -> masks (2B, L), 1 = masked. The global random state is
    reset to ``draw_seed`` before every context (and restored afterwards), so the masker's own
    random draws are the same in every context: 1 exactly for any masker that treats images one
    at a time, random or not; below 1 only where an image's mask depends on its neighbours.
    """
    if contexts < 2:
        raise ValueError(f"contexts={contexts}: need at least 2 batch contexts to compare")
    b = len(images)
    cuda = images.device.type == "cuda"
    devices = [images.device.index if images.device.index is not None else torch.cuda.current_device()] if cuda else []
    masks = []
    for _ in range(contexts):
        others = pool[torch.randint(len(pool), (b,), generator=generator)]
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            torch.manual_seed(draw_seed)
            masks.append(mask_fn(torch.cat([images, others.to(images.device)]))[:b])
    pairs = [kept_iou(masks[i], masks[j]) for i in range(contexts) for j in range(i + 1, contexts)]
    return torch.stack(pairs).mean()


def patch_intensity(images: Tensor, patch_size: int) -> Tensor:
    """Mean value (B, L) of each patch of ``images`` (B, C, H, W), over its pixels and channels."""
    return F.avg_pool2d(images.float().mean(1, keepdim=True), patch_size).flatten(1)


def patch_edge_energy(images: Tensor, patch_size: int) -> Tensor:
    """Mean squared finite difference (B, L) between neighbouring pixels inside each patch,
    horizontal and vertical pairs together (channel mean); differences across patch borders
    are left out, so every patch has the same number of terms wherever it lies."""
    x = images.float().mean(1)  # (B, H, W)
    b, h, w = x.shape
    p = patch_size
    if p < 2:
        raise ValueError(f"patch_size={p}: edge energy needs patches of at least 2 x 2 px")
    patches = x.reshape(b, h // p, p, w // p, p).permute(0, 1, 3, 2, 4)  # (B, H/p, W/p, p, p)
    dx = patches[..., :, 1:] - patches[..., :, :-1]
    dy = patches[..., 1:, :] - patches[..., :-1, :]
    return ((dx**2).sum((-2, -1)) + (dy**2).sum((-2, -1))).flatten(1) / (2 * p * (p - 1))


@torch.no_grad()
def reconstruction_difficulty(mae, images: Tensor, random_masks: int = 4,
                              generator: torch.Generator | None = None) -> Tensor:
    """Error (N, L) of each patch of ``images`` reconstructed by ``mae`` (its ``patch_errors``),
    averaged over those of ``random_masks`` random maskings that hide it (NaN where none did).
    Random masks, so that no masker's choice enters the difficulty; stratified: each is uniformly
    random, and draw j keeps the j-th block of K kept patches of one random order per image, so the
    kept sets are disjoint and, while ``random_masks`` x K <= L, every patch is hidden at least
    ``random_masks - 1`` times (at MAE's 75 % every patch gets a value from 2 draws on)."""
    n, length = len(images), mae.encoder.num_patches
    kept = num_kept(length, mae.mask_ratio)
    errors = torch.zeros(n, length, dtype=torch.float64, device=images.device)
    counts = torch.zeros_like(errors)
    blocks = length // kept
    for j in range(random_masks):
        if j % blocks == 0:
            order = torch.rand(n, length, generator=generator).argsort(1)
        scores = torch.rand(n, length, generator=generator)
        scores.scatter_(1, order[:, (j % blocks) * kept:(j % blocks + 1) * kept], -1.0)  # this block is kept
        masking = masking_from_scores(scores.to(images.device), mae.mask_ratio)
        errors += mae.patch_errors(images, masking).double() * masking[1]
        counts += masking[1].double()
    return torch.where(counts > 0, errors / counts.clamp(min=1), torch.full_like(errors, float("nan")))


def check_reference(mae, reference) -> None:
    """A reference MAE must cut images into the same patches as the arm's MAE."""
    ours, theirs = mae.encoder, reference.encoder
    got = (theirs.img_size, theirs.patch_size, theirs.in_chans)
    want = (ours.img_size, ours.patch_size, ours.in_chans)
    if got != want:
        raise ValueError(f"the reference MAE cuts {got[0]} px images with {got[2]} channel(s) into {got[1]} px patches, "
                         f"the arm's MAE {want[0]} px / {want[2]} / {want[1]} px; score difficulty with a reference "
                         "trained on the same images and patch grid (e.g. the same seed's plain MAE)")


def content_features(images: Tensor, patch_size: int, recon_mae=None, recon_key: str = "recon",
                     random_masks: int = 4, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Per-patch content (N, L) of ``images``: ``intensity``, ``edges`` and, with ``recon_mae``,
    ``recon_key`` (``reconstruction_difficulty`` under that MAE)."""
    out = {"intensity": patch_intensity(images, patch_size), "edges": patch_edge_energy(images, patch_size)}
    if recon_mae is not None:
        out[recon_key] = reconstruction_difficulty(recon_mae, images, random_masks, generator)
    return out


def _row_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation (N,) of each row of x with the same row of y (N, L); NaN for a constant row."""
    dx, dy = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
    den = np.sqrt((dx**2).sum(1) * (dy**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (dx * dy).sum(1) / np.where(den > 0, den, 1.0), np.nan)


def rank_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Spearman correlation (B,) of each row of ``a`` with the same row of ``b`` (B, L), over
    the entries where both are finite (average ranks for ties); NaN for a constant row."""
    a, b = a.detach().double().cpu().numpy(), b.detach().double().cpu().numpy()
    out = np.full(len(a), np.nan)
    full = (np.isfinite(a) & np.isfinite(b)).all(1)
    if full.any() and a.shape[1] >= 3:  # the common case, vectorised
        out[full] = _row_pearson(rankdata(a[full], axis=1), rankdata(b[full], axis=1))
    for i in np.flatnonzero(~full):
        ok = np.isfinite(a[i]) & np.isfinite(b[i])
        if ok.sum() >= 3:
            out[i] = _row_pearson(rankdata(a[i, ok])[None], rankdata(b[i, ok])[None])[0]
    return torch.from_numpy(out)


def row_ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (N, L) of each row's finite entries, scaled to [0, 1] by (rank - 1) / (n - 1)
    with n the row's finite entries; NaN where not finite and in rows with fewer than 2."""
    out = np.full(values.shape, np.nan)
    finite = np.isfinite(values)
    full = finite.all(1)
    if full.any() and values.shape[1] >= 2:
        out[full] = (rankdata(values[full], axis=1) - 1) / (values.shape[1] - 1)
    for i in np.flatnonzero(~full):
        ok = finite[i]
        if ok.sum() >= 2:
            out[i, ok] = (rankdata(values[i, ok]) - 1) / (ok.sum() - 1)
    return out


def within_position_correlation(a: Tensor, b: Tensor) -> float:
    """Correlation of ``a`` with ``b`` (N, L) within patch positions: each row ranked
    (``row_ranks``), each rank centred on its position's mean over the N rows, then Pearson over
    all (row, position) pairs where both are finite.

    0 when the ranks of ``a`` never depart from their position means (``a`` ignores the row, e.g.
    a fixed map); NaN when those of ``b`` never do, or with fewer than 2 rows."""
    ra, rb = row_ranks(a.detach().double().cpu().numpy()), row_ranks(b.detach().double().cpu().numpy())
    ok = np.isfinite(ra) & np.isfinite(rb)
    if len(ra) < 2:
        return float("nan")
    counts = ok.sum(0)
    centred = []
    for r in (ra, rb):
        r = np.where(ok, r, 0.0)
        d = np.where(ok, r - r.sum(0) / np.maximum(counts, 1), 0.0)
        centred.append(np.where(np.abs(d) < ZERO, 0.0, d))
    da, db = centred
    sa, sb = (da**2).sum(), (db**2).sum()
    if sb == 0:
        return float("nan")
    if sa == 0:
        return 0.0
    return float((da * db).sum() / np.sqrt(sa * sb))


def correlations(draw: MaskDraw, features: dict[str, Tensor]) -> dict[str, float]:
    """For each feature f (N, L): ``rho_f``, ``rho_f_within`` on the draw's scores and
    ``rho_f_mask``, ``rho_f_mask_within`` on its drawn masks (see the module docstring)."""
    out = {}
    for name, feature in features.items():
        for suffix, values in (("", draw.scores), ("_mask", draw.mask)):
            out[f"rho_{name}{suffix}"] = rank_correlation(values, feature).nanmean().item()
            out[f"rho_{name}{suffix}_within"] = within_position_correlation(values, feature)
    return out


def derangement(n: int, generator: torch.Generator | None = None) -> Tensor:
    """A random permutation (n,) of range(n) without fixed points (one cycle through a random order)."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 items, got {n}")
    order = torch.randperm(n, generator=generator)
    perm = torch.empty(n, dtype=torch.long)
    perm[order] = order.roll(-1)
    return perm


def shuffled_correlations(draw: MaskDraw, features: dict[str, Tensor], perm: Tensor) -> dict[str, float]:
    """``rho_f_shuffled`` and ``rho_f_mask_shuffled``: the draw of image i paired with the content
    of image ``perm[i]`` (a derangement): the raw correlations' position-only part."""
    permuted = {k: v[perm.to(v.device)] for k, v in features.items()}
    return {f"{k}_shuffled": v for k, v in correlations(draw, permuted).items() if not k.endswith("_within")}


def weight_ess(weights: Tensor, mask: Tensor) -> Tensor:
    """Effective sample size (B,) of the weights (B, L) over each image's masked patches,
    divided by their number: (sum w)^2 / (k sum w^2), in (0, 1]."""
    w = weights.double() * mask.double()
    k = mask.double().sum(1).clamp(min=1)
    return w.sum(1) ** 2 / (k * (w**2).sum(1).clamp(min=1e-300))


def masker_diagnostics(masker: DiagnosedMasker, images: Tensor, features: dict[str, Tensor],
                       shuffle: Tensor | None = None, draw: MaskDraw | None = None,
                       generator: torch.Generator | None = None) -> dict[str, float]:
    """One masker on ``images`` (N, C, H, W): ``correlations`` of one draw (``draw``, else a new
    one) with ``features``; with ``shuffle`` (a derangement (N,)) the same draw's
    ``shuffled_correlations``; ``ess`` (with a ``weights_fn``); for a ``batch_dependent`` masker
    ``context_iou`` over 4 batch contexts of the first N // 2 images, beside ``context_iou_random``."""
    draw = masker.draw(images) if draw is None else draw
    out = correlations(draw, features)
    if shuffle is not None:
        out |= shuffled_correlations(draw, features, shuffle)
    if masker.weights_fn is not None:
        out["ess"] = weight_ess(masker.weights_fn(draw.scores, draw.mask), draw.mask).mean().item()
    if masker.batch_dependent:
        n = draw.mask.shape[1]
        out["context_iou"] = context_iou(lambda b: masker.draw(b).mask, images[: len(images) // 2], images,
                                         generator=generator).item()
        out["context_iou_random"] = expected_random_iou(n, n - int(draw.mask[0].sum()))
    return out


def diagnostic_features(mae, images: Tensor, reference=None, random_masks: int = 4,
                        generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """``content_features`` of ``images`` on ``mae``'s patch grid, difficulty scored by ``reference``
    (key ``recon``) or, when None, by ``mae`` itself (key ``recon_own``)."""
    if reference is not None:
        check_reference(mae, reference)
    return content_features(images, mae.encoder.patch_size, reference if reference is not None else mae,
                            "recon" if reference is not None else "recon_own", random_masks, generator)


def masking_diagnostics(masker: DiagnosedMasker, x: Tensor, reference=None, random_masks: int = 4,
                        seed: int = 0) -> dict[str, float]:
    """Every diagnostic of one masker on images x (N, C, H, W), N >= 2, with the shuffled-images
    null of its raw correlations (``rho_*_shuffled``).

    ``reference``: the MAE that scores reconstruction difficulty (``rho_recon*``); None = the
    arm's own MAE (``rho_recon_own*``, partly built in: that MAE learned the patches this masker
    hides). Random draws besides the masker's own come from a generator seeded with ``seed``.
    """
    if len(x) < 2:
        raise ValueError(f"mask diagnostics need at least 2 images, got {len(x)}")
    g = torch.Generator().manual_seed(seed)
    features = diagnostic_features(masker.mae, x, reference, random_masks, g)
    return masker_diagnostics(masker, x, features, shuffle=derangement(len(x), g), generator=g)
