"""Masked autoencoder: decoder, reconstruction loss and the U-MAE uniformity regulariser.

Shapes: L patches per image, K = round(L * (1 - mask_ratio)) visible, P = p*p*C pixels per patch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from lightning_modules.components.patches import gather_tokens, patchify, random_masking
from lightning_modules.components.vit import ViTEncoder, init_vit_weights, sincos_pos_embed


def check_mask_ratio(mask_ratio: float) -> None:
    if not 0 <= mask_ratio < 1:
        raise ValueError(f"mask_ratio={mask_ratio} is invalid; allowed range is [0, 1)")


class MAEDecoder(nn.Module):
    """Lightweight transformer decoder: visible latents + mask tokens -> pixels per patch.

    Args:
        num_patches: L (a square number).
        encoder_dim: width of the encoder output.
        patch_pixels: P = p*p*C, the prediction size per patch.
        embed_dim, depth, num_heads: decoder size (its own width and depth).
    """

    def __init__(
        self, num_patches: int, encoder_dim: int, patch_pixels: int,
        embed_dim: int = 512, depth: int = 8, num_heads: int = 16, mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        grid = int(round(num_patches**0.5))
        self.embed = nn.Linear(encoder_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", sincos_pos_embed(grid, embed_dim), persistent=False)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth)
        )
        self.norm = norm(embed_dim)
        self.pred = nn.Linear(embed_dim, patch_pixels)
        self.apply(init_vit_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def embed_tokens(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """The blocks' input (B, 1 + L, Dd): latent (B, 1 + K, De) embedded, mask tokens for the
        hidden patches, image order, position embedding ([CLS] first, without one). HPM's loss
        predictor reads the same input."""
        x = self.embed(latent)
        b, n_vis = x.shape[0], x.shape[1] - 1
        masks = self.mask_token.expand(b, ids_restore.shape[1] - n_vis, -1)
        patches = torch.cat([x[:, 1:], masks], dim=1)  # visible first, then mask tokens
        patches = gather_tokens(patches, ids_restore) + self.pos_embed  # back to image order
        return torch.cat([x[:, :1], patches], dim=1)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent (B, 1 + K, De) with CLS first, ids_restore (B, L) -> predictions (B, L, P)."""
        x = self.embed_tokens(latent, ids_restore)
        for block in self.blocks:
            x = block(x)
        return self.pred(self.norm(x))[:, 1:]


def patch_errors(pred: torch.Tensor, target: torch.Tensor, norm_pix: bool = False) -> torch.Tensor:
    """Mean squared error per patch, (B, L, P) x 2 -> (B, L); ``norm_pix`` normalises each
    target patch by its own mean and std first."""
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    return (pred - target).pow(2).mean(dim=-1)


def reconstruction_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    norm_pix: bool = False,
    patch_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error on masked patches only.

    Args:
        pred, target: (B, L, P) predicted and true pixels per patch.
        mask: (B, L), 1 = masked (counted), 0 = visible (ignored).
        norm_pix: normalise each target patch by its own mean and std (MAE's best setting).
        patch_weights: optional (B, L) weight per patch (MLO-MAE: the masking probability).
    Returns:
        scalar: sum(w * m * mse) / sum(m), with w = 1 when no weights are given.
    """
    return masked_mean(patch_errors(pred, target, norm_pix), mask, patch_weights)


def masked_mean(errors: torch.Tensor, mask: torch.Tensor, patch_weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum(w * m * errors) / sum(m) for per-patch errors, mask and optional weights, all (B, L)."""
    weighted = errors * mask if patch_weights is None else errors * mask * patch_weights
    return weighted.sum() / mask.sum().clamp(min=1)


def uniformity_loss(features: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """U-MAE's spectral uniformity regulariser: mean squared cosine similarity / tau.

    features (B, D); under DDP the features of all ranks are gathered (with gradients)
    so the regulariser sees the global batch.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.nn.functional import all_gather

        features = torch.cat(all_gather(features), dim=0)
    z = F.normalize(features, dim=-1)
    return (z @ z.T / tau).pow(2).mean()


@dataclass
class MAEOutput:
    """One MAE forward: loss terms and what callbacks need to draw reconstructions."""

    loss: torch.Tensor  # reconstruction loss (scalar)
    pred: torch.Tensor  # (B, L, P) predicted pixels (normalised-patch space when norm_pix)
    mask: torch.Tensor  # (B, L) 1 = masked
    latent: torch.Tensor  # (B, 1 + K, D) encoder output on visible patches
    errors: torch.Tensor  # (B, L) squared error of every patch (masked and visible), with its graph


class MaskedAutoencoder(nn.Module):
    """Encoder + decoder with random masking.

    Args:
        encoder: a ``ViTEncoder``.
        mask_ratio: fraction of patches hidden, in [0, 1).
        decoder_dim, decoder_depth, decoder_heads: decoder size.
        norm_pix_loss: per-patch normalised pixel target.
    """

    def __init__(
        self,
        encoder: ViTEncoder,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix_loss: bool = False,
    ) -> None:
        super().__init__()
        check_mask_ratio(mask_ratio)
        self.encoder, self.mask_ratio, self.norm_pix_loss = encoder, mask_ratio, norm_pix_loss
        patch_pixels = encoder.patch_size**2 * encoder.in_chans
        self.decoder = MAEDecoder(encoder.num_patches, encoder.embed_dim, patch_pixels,
                                  decoder_dim, decoder_depth, decoder_heads)

    def forward(
        self,
        images: torch.Tensor,
        masking: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        patch_weights: torch.Tensor | None = None,
        token_scale: torch.Tensor | None = None,
    ) -> MAEOutput:
        """images (B, C, H, W); ``masking`` = (ids_keep, mask, ids_restore), random when None;
        ``token_scale`` (B, L): factors on the embedded patch tokens (a masking strategy's
        straight-through gradient path, value 1; ``strategies.MaskDraw``)."""
        if masking is None:
            masking = random_masking(images.shape[0], self.encoder.num_patches, self.mask_ratio, images.device)
        ids_keep, mask, ids_restore = masking
        if token_scale is None:
            latent = self.encoder(images, ids_keep)
        else:
            tokens = self.encoder.embed(images) * token_scale.unsqueeze(-1)
            latent = self.encoder.encode_tokens(gather_tokens(tokens, ids_keep))
        pred = self.decoder(latent, ids_restore)
        target = patchify(images, self.encoder.patch_size)
        errors = patch_errors(pred, target, self.norm_pix_loss)
        loss = masked_mean(errors, mask, patch_weights)
        return MAEOutput(loss=loss, pred=pred, mask=mask, latent=latent, errors=errors)

    def patch_errors(self, images: torch.Tensor, masking: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Per-patch reconstruction error (B, L) for the given masking (masked and visible patches)."""
        ids_keep, _, ids_restore = masking
        pred = self.decoder(self.encoder(images, ids_keep), ids_restore)
        return patch_errors(pred, patchify(images, self.encoder.patch_size), self.norm_pix_loss)

    def pixels(self, images: torch.Tensor, out: MAEOutput) -> torch.Tensor:
        """Predicted patches in image pixel space (B, L, P), undoing norm_pix per patch."""
        if not self.norm_pix_loss:
            return out.pred
        target = patchify(images, self.encoder.patch_size)
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        return out.pred * (var + 1e-6).sqrt() + mean
