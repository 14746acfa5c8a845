"""Learned masking networks for MLO-MAE (Guo et al., TMLR 2024): patch tokens (B, L, D) ->
masking probabilities (B, L).

The ``1 - mask_ratio`` patches with the lowest probability are kept (top-k, no sampling);
``patch_weights`` turns the probabilities into the weights of the reconstruction loss of the
masked patches; ``mask_statistics`` and ``mask_diversity`` describe what the network does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

MASKING_NETS = ("mlp", "patch_scorer")
PATCH_WEIGHTINGS = ("probability", "normalized")
INPUT_NORMS = {"mlp": ("none", "token", "batch"), "patch_scorer": ("none", "batch")}  # the scorer has its own LayerNorm


class MLPMaskingNet(nn.Module):
    """MLO-MAE's masking network: flattened (patch + position) embeddings -> Linear(L*D, hidden)
    -> ReLU -> Linear(hidden, L) -> sigmoid(logits / temperature). About 100M parameters at
    32 px / patch 2 / ViT-B.

    ``input_norm``: ``none`` (MLO-MAE's); ``token`` (LayerNorm without affine on each token);
    ``batch`` (``standardize_over_batch``).
    """

    def __init__(
        self, num_patches: int, embed_dim: int, hidden: int = 512, temperature: float = 1.0, input_norm: str = "none"
    ) -> None:
        super().__init__()
        self.temperature, self.input_norm = temperature, input_norm
        self.token_norm = nn.LayerNorm(embed_dim, elementwise_affine=False) if input_norm == "token" else nn.Identity()
        self.net = nn.Sequential(
            nn.Flatten(1), nn.Linear(num_patches * embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_patches)
        )

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, L, D) -> probabilities (B, L)."""
        if self.input_norm == "batch":
            tokens = standardize_over_batch(tokens)
        return (self.net(self.token_norm(tokens)) / self.temperature).sigmoid()


def standardize_over_batch(tokens: Tensor) -> Tensor:
    """(B, L, D) -> each coordinate (patch, channel) centred and scaled over the B images.

    Removes what all images share (the position embeddings, the mean image), which otherwise
    dominates the masking net's input and makes its masks nearly position-only. The
    statistics are the batch's own (no running estimate), so a mask depends on the other
    images of its batch; a batch of one image maps to zeros (the position prior alone).
    """
    mean = tokens.mean(0, keepdim=True)
    std = tokens.std(0, unbiased=False, keepdim=True)
    return (tokens - mean) / (std + 1e-6)


class PatchScorer(nn.Module):
    """Light alternative whose size does not grow with L: a shared per-patch MLP,
    LayerNorm -> Linear(D, hidden) -> GELU -> Linear(hidden, 1) -> sigmoid(logit / temperature).
    ``input_norm``: ``none`` or ``batch`` (``standardize_over_batch`` first)."""

    def __init__(self, embed_dim: int, hidden: int = 128, temperature: float = 1.0, input_norm: str = "none") -> None:
        super().__init__()
        self.temperature, self.input_norm = temperature, input_norm
        self.net = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def logits(self, tokens: Tensor) -> Tensor:
        """tokens (B, L, D) -> logits (B, L), before the temperature."""
        if self.input_norm == "batch":
            tokens = standardize_over_batch(tokens)
        return self.net(tokens).squeeze(-1)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, L, D) -> probabilities (B, L)."""
        return (self.logits(tokens) / self.temperature).sigmoid()


def build_masking_net(
    kind: str, num_patches: int, embed_dim: int, hidden: int | None = None, temperature: float = 1.0,
    input_norm: str = "none",
) -> nn.Module:
    if kind not in MASKING_NETS:
        raise ValueError(f"model.masking.net={kind!r} is invalid; allowed: {list(MASKING_NETS)}")
    if temperature <= 0:
        raise ValueError(f"model.masking.temperature={temperature} is invalid; allowed: > 0")
    if input_norm not in INPUT_NORMS[kind]:
        raise ValueError(f"model.masking.input_norm={input_norm!r} is invalid for masking.net={kind!r}; "
                         f"allowed: {list(INPUT_NORMS[kind])}")
    if kind == "mlp":
        return MLPMaskingNet(num_patches, embed_dim, hidden or 512, temperature, input_norm)
    return PatchScorer(embed_dim, hidden or 128, temperature, input_norm)


def patch_weights(probs: Tensor, mask: Tensor, weighting: str) -> Tensor:
    """Weights (B, L) of the per-patch reconstruction loss from masking probabilities (B, L).

    ``probability`` (MLO-MAE's): w = p. Driving every p toward 0 then switches level I off.
    ``normalized``: w = p / mean(p over the image's masked patches), so the weights of each
    image's masked patches average exactly 1: the masking net can redistribute the
    reconstruction loss between patches but never scale it down.
    """
    if weighting == "probability":
        return probs
    if weighting == "normalized":
        mean = (probs * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)
        return probs / mean.clamp(min=1e-12)
    raise ValueError(f"model.masking.patch_weighting={weighting!r} is invalid; allowed: {list(PATCH_WEIGHTINGS)}")


def mask_statistics(probs: Tensor, mask: Tensor, weights: Tensor, saturation: float = 0.01) -> dict[str, Tensor]:
    """fp32 scalar statistics of a batch of masking probabilities (B, L) in [0, 1], masks (B, L) with
    1 = masked, and patch weights (B, L):

    mean_prob: mean probability; entropy: mean binary entropy in nats (at most ln 2);
    saturated: fraction of probabilities within ``saturation`` of 0 or 1;
    level1_scale: mean weight over masked patches, the factor by which the weighting scales
        the level-I loss against plain MAE (1 = unchanged, near 0 = level I switched off);
    diversity: ``mask_diversity(mask)``.
    """
    p = probs.double()
    q = p.clamp(1e-12, 1 - 1e-12)
    entropy = -(q * q.log() + (1 - q) * (1 - q).log())
    m = mask.double()
    stats = {
        "mean_prob": p.mean(),
        "entropy": entropy.mean(),
        "saturated": ((p < saturation) | (p > 1 - saturation)).double().mean(),
        "level1_scale": (weights.double() * m).sum() / m.sum().clamp(min=1),
        "diversity": mask_diversity(mask),
    }
    return {k: v.float() for k, v in stats.items()}


def mask_diversity(mask: Tensor) -> Tensor:
    """How different the masks (B, L) of different images are: the mean pairwise Hamming
    distance divided by its expectation under MAE's uniform random masking with the same
    number of masked patches, 2 k (L - k) / L. 0 = one mask for all images, about 1 = as
    diverse as random masks. Undefined (NaN) unless B >= 2 and 0 < k < L."""
    b, n = mask.shape
    m = mask.double()
    k = m[0].sum()
    if b < 2 or k == 0 or k == n:
        return torch.full((), float("nan"), dtype=torch.float64, device=mask.device)
    ones = m.sum(0)  # per patch: number of images in which it is masked
    pair_sum = (2 * ones * (b - ones)).sum()  # sum over ordered pairs i != j of Hamming(i, j)
    mean_hamming = pair_sum / (b * (b - 1))
    return mean_hamming / (2 * k * (n - k) / n)


def mask_warnings(stats: dict[str, float], min_diversity: float = 0.05, max_saturated: float = 0.9,
                  min_level1_scale: float = 0.1, min_rho: float = 0.1) -> list[str]:
    """Readable warnings for a degenerate masking network, from ``mask_statistics`` values and
    the diagnostics (``mask_diagnostics.masking_diagnostics``)."""
    out = []
    if stats.get("diversity", 1.0) < min_diversity:
        out.append(f"all images share (nearly) one mask: mask diversity {stats['diversity']:.3f} < {min_diversity} "
                   "(0 = one mask for all images, 1 = as diverse as random masks); MLO-MAE has degenerated into "
                   "MAE with one fixed, position-only mask")
    if stats.get("saturated", 0.0) > max_saturated:
        out.append(f"masking probabilities are saturated: {stats['saturated']:.0%} lie within 0.01 of 0 or 1, so the "
                   "masking network receives almost no gradient")
    if stats.get("level1_scale", 1.0) < min_level1_scale:
        out.append(f"the patch weighting has switched level I off: mean weight over masked patches "
                   f"{stats['level1_scale']:.3g} < {min_level1_scale} (plain MAE = 1); consider "
                   "model.masking.patch_weighting=normalized")
    return out + position_only_warnings(stats, min_rho)


def position_only_warnings(stats: dict[str, float], min_rho: float = 0.1) -> list[str]:
    """A raw content correlation ``rho_<f>`` of at least ``min_rho`` that the same masks reach on
    other images (``rho_<f>_shuffled`` of the same sign and at least half its size) is mostly the
    masker's position preference, not the image: say so, with the within-position value."""
    out = []
    for key, raw in stats.items():
        shuffled = stats.get(f"{key}_shuffled")
        if not key.startswith("rho_") or key.endswith(("_shuffled", "_within")) or shuffled is None:
            continue
        if abs(raw) >= min_rho and raw * shuffled > 0 and abs(shuffled) >= abs(raw) / 2:
            within = stats.get(f"{key}_within", float("nan"))
            out.append(f"{key} {raw:+.2f} is mostly position: the same masks paired with other images give "
                       f"{shuffled:+.2f}; the part that follows the image is {key}_within {within:+.2f}")
    return out
