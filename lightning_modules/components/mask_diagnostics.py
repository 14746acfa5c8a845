"""Mask diagnostics that tell a learned masking network from noise (plain torch).

Mask diversity near 1 is what random masks give, so it shows only that masks did not
collapse. These measure what a learned mask should have and a random one cannot:

- ``context_iou``: an image's kept set across random batch contexts (a batch-standardised
  masking input makes an image's mask depend on its neighbours); 1 = the same kept set
  whatever the batch, ``expected_random_iou`` = no more stable than random masks.
- ``rank_correlation`` of an image's masking probabilities with per-patch content
  (``patch_intensity``, ``patch_edge_energy``) or with the patch's reconstruction error
  under random masks ("does it mask the hard patches?"); about 0 for random masks.
- ``level3_after_step``: the level-III loss after one virtual level-I step with given masks;
  learned minus random masks at the same ratio on the same batch is what MLO-MAE optimises.
- ``weight_ess``: effective sample size of the level-I patch weights over the masked
  patches, as a fraction of their number (1 = equal weights, 1/k = all weight on one).

Masks are (B, L) with 1 = masked; patches are in row-major order (MAE's ``patchify``).
"""

from __future__ import annotations

from collections.abc import Callable
from math import comb

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_modules.components.patches import masking_from_scores
from lightning_modules.components.vit import pool


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
                generator: torch.Generator | None = None) -> Tensor:
    """Mean kept-set IoU of each of ``images`` (B, C, H, W) over pairs of ``contexts`` batches,
    each ``images`` followed by B images drawn at random from ``pool`` (N, C, H, W).

    ``mask_fn``: a batch (2B, C, H, W) -> masks (2B, L), 1 = masked.
    """
    if contexts < 2:
        raise ValueError(f"contexts={contexts}: need at least 2 batch contexts to compare")
    b = len(images)
    masks = []
    for _ in range(contexts):
        others = pool[torch.randint(len(pool), (b,), generator=generator)]
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


def rank_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Spearman correlation (B,) of each row of ``a`` with the same row of ``b`` (B, L), over
    the entries where both are finite (average ranks for ties); NaN for a constant row."""
    from scipy.stats import rankdata

    a, b = a.detach().double().cpu().numpy(), b.detach().double().cpu().numpy()
    out = np.full(len(a), np.nan)
    for i, (x, y) in enumerate(zip(a, b)):
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() < 3:
            continue
        rx, ry = rankdata(x[ok]), rankdata(y[ok])
        if rx.std() > 0 and ry.std() > 0:
            out[i] = np.corrcoef(rx, ry)[0, 1]
    return torch.from_numpy(out)


def weight_ess(weights: Tensor, mask: Tensor) -> Tensor:
    """Effective sample size (B,) of the weights (B, L) over each image's masked patches,
    divided by their number: (sum w)^2 / (k sum w^2), in (0, 1]."""
    w = weights.double() * mask.double()
    k = mask.double().sum(1).clamp(min=1)
    return w.sum(1) ** 2 / (k * (w**2).sum(1).clamp(min=1e-300))


def level3_after_step(mae, head: Callable[[Tensor], Tensor], x1: Tensor, masking: tuple, weights: Tensor | None,
                      x3: Tensor, y3: Tensor, step: float, pooling: str = "cls") -> Tensor:
    """Level-III loss (cross-entropy of ``head`` on the pooled encoder features of ``x3``) after
    one virtual SGD step of size ``step`` on the level-I loss of ``x1`` with ``masking`` and
    ``weights``. The MAE's weights are restored exactly afterwards. Needs autograd enabled."""
    params = [p for p in mae.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    try:
        loss = mae(x1, masking, patch_weights=weights).loss
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(params, grads):
                if g is not None:
                    p.sub_(step * g)
            return F.cross_entropy(head(pool(mae.encoder(x3), pooling)).float(), y3)
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


def masking_diagnostics(mae, draw_fn: Callable, x: Tensor, y: Tensor | None = None, head: Callable | None = None,
                        pooling: str = "cls", step: float | None = None, weights_fn: Callable | None = None,
                        random_masks: int = 4) -> dict[str, float]:
    """Every diagnostic above for one masking, on images x (B, C, H, W) (labels y (B,) for the gain).

    ``draw_fn``: images -> a ``MaskDraw`` (masking and scores (B, L)). context_iou (beside
    context_iou_random, its value for random masks): kept-set stability across 4 random batch
    contexts; rho_intensity / rho_edges / rho_recon: mean per-image rank correlation of the scores
    with patch intensity, edge energy and the patch's reconstruction error under
    ``random_masks`` random masks; ess (with ``weights_fn(scores, mask)``): the patch weights'
    effective sample size / masked patches; level3_gain (with ``head`` and ``step``): the loss of
    ``head`` on pooled features of the second half of x after one virtual reconstruction step
    (SGD, ``step``) on the first half with random masks minus with the drawn ones (> 0: the
    drawn masks help that objective), uniform patch weights for both.
    """
    enc, n, ratio = mae.encoder, mae.encoder.num_patches, mae.mask_ratio
    draw = draw_fn(x)
    masking, scores, mask = draw.masking, draw.scores, draw.mask
    half = len(x) // 2
    g = torch.Generator().manual_seed(0)
    errors = torch.zeros_like(scores, dtype=torch.float64)
    counts = torch.zeros_like(errors)
    with torch.no_grad():
        for _ in range(random_masks):
            rnd = masking_from_scores(torch.rand(len(x), n, generator=g).to(x.device), ratio)
            errors += mae.patch_errors(x, rnd).double() * rnd[1]
            counts += rnd[1].double()
    recon = torch.where(counts > 0, errors / counts.clamp(min=1), torch.full_like(errors, float("nan")))
    out = {
        "context_iou": context_iou(lambda b: draw_fn(b).mask, x[:half], x, generator=g).item(),
        "context_iou_random": expected_random_iou(n, n - int(mask[0].sum())),
        "rho_intensity": rank_correlation(scores, patch_intensity(x, enc.patch_size)).nanmean().item(),
        "rho_edges": rank_correlation(scores, patch_edge_energy(x, enc.patch_size)).nanmean().item(),
        "rho_recon": rank_correlation(scores, recon).nanmean().item(),
    }
    if weights_fn is not None:
        out["ess"] = weight_ess(weights_fn(scores, mask), mask).mean().item()
    if half >= 2 and step is not None and head is not None and y is not None:
        randoms = [masking_from_scores(torch.rand(half, n, generator=g).to(x.device), ratio) for _ in range(random_masks)]
        drawn = tuple(t[:half] for t in masking)
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
            x1, x3, y3 = x[:half].float().clone(), x[half:].float().clone(), y[half:].clone()
            after = [level3_after_step(mae, head, x1, tuple(t.clone() for t in m), None, x3, y3, step, pooling).item()
                     for m in (drawn, *randoms)]
        out["level3_gain"] = sum(after[1:]) / len(randoms) - after[0]
    return out
