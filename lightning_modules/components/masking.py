"""Learned masking networks for MLO-MAE: patch tokens (B, L, D) -> masking probabilities (B, L).

The ``1 - mask_ratio`` patches with the lowest probability are kept (top-k, no sampling);
the probabilities weight the reconstruction loss of the masked patches.
"""

from __future__ import annotations

import torch
from torch import nn

MASKING_NETS = ("mlp", "patch_scorer")


class MLPMaskingNet(nn.Module):
    """The paper's masking network: flattened (patch + position) embeddings -> Linear(L*D, hidden)
    -> ReLU -> Linear(hidden, L) -> sigmoid. About 100M parameters at 32 px / patch 2 / ViT-B."""

    def __init__(self, num_patches: int, embed_dim: int, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(1), nn.Linear(num_patches * embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_patches)
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L, D) -> probabilities (B, L)."""
        return self.net(tokens).sigmoid()


class PatchScorer(nn.Module):
    """Light alternative whose size does not grow with L: a shared per-patch MLP,
    LayerNorm -> Linear(D, hidden) -> GELU -> Linear(hidden, 1) -> sigmoid."""

    def __init__(self, embed_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L, D) -> probabilities (B, L)."""
        return self.net(tokens).squeeze(-1).sigmoid()


def build_masking_net(kind: str, num_patches: int, embed_dim: int, hidden: int | None = None) -> nn.Module:
    if kind == "mlp":
        return MLPMaskingNet(num_patches, embed_dim, hidden or 512)
    if kind == "patch_scorer":
        return PatchScorer(embed_dim, hidden or 128)
    raise ValueError(f"model.masking_net={kind!r} is invalid; allowed: {list(MASKING_NETS)}")


def mask_statistics(probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean probability and mean binary entropy (nats) of masking probabilities (B, L)."""
    p = probs.clamp(1e-6, 1 - 1e-6)
    entropy = -(p * p.log() + (1 - p) * (1 - p).log())
    return {"mean_prob": probs.mean(), "entropy": entropy.mean()}
