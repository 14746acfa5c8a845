"""ViT encoder built from timm's ``PatchEmbed`` and ``Block``, with fixed 2D sin-cos positions.

Shapes: images (B, C, H, W) -> patch tokens (B, L, D) with L = (H/p)^2 -> encoder output
(B, 1 + K, D) where the first token is CLS and K <= L tokens were kept.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import PatchEmbed
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn

from lightning_modules.components.patches import gather_tokens

POOLINGS = ("cls", "mean")


def sincos_pos_embed(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2D sin-cos position embeddings, shape (1, grid*grid, dim)."""
    return build_sincos2d_pos_embed([grid, grid], dim=dim).unsqueeze(0)


def init_vit_weights(module: nn.Module) -> None:
    """MAE-style init: xavier-uniform linears, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def check_patch_geometry(img_size: int, patch_size: int) -> int:
    """Patches per side; a clear error when the image is not divisible by the patch size."""
    if patch_size < 1 or img_size % patch_size:
        raise ValueError(
            f"image size {img_size} is not divisible by patch size {patch_size}; "
            "change data.img_size or the model's patch_size"
        )
    return img_size // patch_size


class ViTEncoder(nn.Module):
    """Vision Transformer encoder for masked-image modelling and classification.

    Args:
        img_size: input height = width in px.
        patch_size: patch side in px (must divide ``img_size``).
        in_chans: image channels (1 or 3).
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: transformer size.
        drop_path_rate: stochastic depth, linearly increasing over the blocks.
    """

    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 2,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        grid = check_patch_geometry(img_size, patch_size)
        if embed_dim % 4 or embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} must be divisible by 4 and by num_heads={num_heads}")
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.embed_dim, self.depth = embed_dim, depth
        self.num_patches = grid * grid
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", sincos_pos_embed(grid, embed_dim), persistent=False)
        norm = partial(nn.LayerNorm, eps=1e-6)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, drop_path=r, norm_layer=norm) for r in rates
        )
        self.norm = norm(embed_dim)
        self.apply(init_vit_weights)
        w = self.patch_embed.proj.weight.data  # init the patch projection like a linear layer
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> position-embedded patch tokens (B, L, D)."""
        if images.shape[1] != self.in_chans:
            raise ValueError(f"encoder expects {self.in_chans} channels, got images with {images.shape[1]}")
        return self.patch_embed(images) + self.pos_embed

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Position-embedded tokens (B, K, D) -> (B, 1 + K, D) after CLS, blocks and norm."""
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, images: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Encode all patches, or only ``ids_keep`` (B, K). Returns (B, 1 + K, D)."""
        tokens = self.embed(images)
        if ids_keep is not None:
            tokens = gather_tokens(tokens, ids_keep)
        return self.encode_tokens(tokens)


def pool(features: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, 1 + K, D) -> (B, D): the CLS token or the mean of the patch tokens."""
    if pooling == "cls":
        return features[:, 0]
    if pooling == "mean":
        return features[:, 1:].mean(dim=1)
    raise ValueError(f"pooling={pooling!r} is invalid; allowed: {list(POOLINGS)}")


class ClassificationHead(nn.Module):
    """LayerNorm -> Dropout -> Linear (the head of the "MLO-MAE on DermaMNIST" report, 2025).
    (B, D) -> (B, K)."""

    def __init__(self, embed_dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.norm(features)))


class ViTClassifier(nn.Module):
    """ViT encoder + pooling + ``ClassificationHead``: images (B, C, H, W) -> logits (B, K).

    Args:
        encoder: a ``ViTEncoder``.
        num_classes: output logits.
        pooling: ``cls`` or ``mean`` (mean of patch tokens).
        head_dropout: dropout before the linear layer.
    """

    def __init__(self, encoder: ViTEncoder, num_classes: int, pooling: str = "cls", head_dropout: float = 0.0):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r} is invalid; allowed: {list(POOLINGS)}")
        self.encoder, self.pooling = encoder, pooling
        self.head = ClassificationHead(encoder.embed_dim, num_classes, head_dropout)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return pool(self.encoder(images), self.pooling)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))
