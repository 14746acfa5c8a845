"""Patch utilities and random masking for masked autoencoders (any channel count)."""

from __future__ import annotations

import torch


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C) with L = (H/p)*(W/p); row-major patches, channel last."""
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {p}")
    x = images.reshape(b, c, h // p, p, w // p, p)
    x = torch.einsum("bchpwq->bhwpqc", x)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int) -> torch.Tensor:
    """(B, L, p*p*C) -> (B, C, H, W), the inverse of ``patchify`` for square images."""
    b, n, d = patches.shape
    p = patch_size
    side = int(round(n**0.5))
    if side * side != n or d != p * p * channels:
        raise ValueError(f"cannot unpatchify {tuple(patches.shape)} with patch {p} and {channels} channels")
    x = patches.reshape(b, side, side, p, p, channels)
    x = torch.einsum("bhwpqc->bchpwq", x)
    return x.reshape(b, channels, side * p, side * p)


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Visible patches for a mask ratio: ``round(L * (1 - r))``, at least 1."""
    return max(1, int(round(num_patches * (1 - mask_ratio))))


def masking_from_scores(scores: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the ``num_kept`` patches with the lowest score.

    Args:
        scores: (B, L); lower = more likely kept.
    Returns:
        ids_keep (B, K) in ascending-score order, mask (B, L) with 1 = masked and 0 = visible
        (in the original patch order), ids_restore (B, L) that undoes the sort.
    """
    b, n = scores.shape
    k = num_kept(n, mask_ratio)
    ids_shuffle = torch.argsort(scores, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :k]
    mask = torch.ones(b, n, device=scores.device)
    mask[:, :k] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, mask, ids_restore


def random_masking(
    batch: int, num_patches: int, mask_ratio: float, device=None, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE random masking: argsort of uniform noise. Returns ``masking_from_scores`` outputs."""
    noise = torch.rand(batch, num_patches, device=device, generator=generator)
    return masking_from_scores(noise, mask_ratio)


def gather_tokens(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """tokens (B, L, D), ids (B, K) -> (B, K, D)."""
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
