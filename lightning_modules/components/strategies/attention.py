"""The last block's attention of a ``ViTEncoder``, the map AttMask and AutoMAE mask by.

Recomputed from the last block's ``qkv`` (timm's fused attention never materialises the
probabilities); a test checks it equals timm's own. Shapes: images (B, C, H, W); L patches.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

QUERIES = ("cls", "mean")


@torch.no_grad()
def last_block_attention_maps(encoder: nn.Module, images: Tensor) -> Tensor:
    """Softmax attention (B, heads, 1 + L, 1 + L) of the last block on the whole image, [CLS] first."""
    tokens = encoder.embed(images)
    x = torch.cat([encoder.cls_token.expand(len(images), -1, -1), tokens], dim=1)
    for block in encoder.blocks[:-1]:
        x = block(x)
    attn = encoder.blocks[-1].attn
    h = encoder.blocks[-1].norm1(x)
    b, n, _ = h.shape
    qkv = attn.qkv(h).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
    return ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)


def last_block_attention(encoder: nn.Module, images: Tensor, query: str = "cls") -> Tensor:
    """Attention (B, L) each patch receives in the last block, averaged over heads: from the
    [CLS] query (``cls``: AttMask's map; rows sum to at most 1, the rest goes to [CLS] itself)
    or averaged over the patch queries (``mean``)."""
    if query not in QUERIES:
        raise ValueError(f"model.masking.query={query!r} is invalid; allowed: {list(QUERIES)}")
    maps = last_block_attention_maps(encoder, images)
    if query == "cls":
        return maps[:, :, 0, 1:].mean(1)
    return maps[:, :, 1:, 1:].mean((1, 2))
