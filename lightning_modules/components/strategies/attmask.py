"""Attention-guided masking (AttMask; Kakogeorgiou et al., "What to Hide from Your Students:
Attention-Guided Masked Image Modeling", ECCV 2022), "high" variant: hide the patches an EMA
teacher of the encoder attends to most, in its last block, from the [CLS] token (or averaged
over the patch tokens, for encoders whose [CLS] is not trained); a ``random_share`` of the hidden
patches is drawn at random instead (1 = plain MAE).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_modules.components.strategies.base import (
    MaskDraw,
    MaskingStrategy,
    check_momentum,
    ema_update,
    frozen_copy,
    mixed_top_k,
    normalise_rows,
)

QUERIES = ("cls", "mean")


@torch.no_grad()
def last_block_attention(encoder: nn.Module, images: Tensor, query: str = "cls") -> Tensor:
    """Attention (B, L) each patch receives in the last block of a ``ViTEncoder``, averaged over
    heads: from the [CLS] query (``cls``) or averaged over the patch queries (``mean``). Rows sum
    to at most 1 (``cls``: the rest goes to [CLS] itself)."""
    if query not in QUERIES:
        raise ValueError(f"model.masking_args.query={query!r} is invalid; allowed: {list(QUERIES)}")
    tokens = encoder.embed(images)
    x = torch.cat([encoder.cls_token.expand(len(images), -1, -1), tokens], dim=1)
    for block in encoder.blocks[:-1]:
        x = block(x)
    attn_module = encoder.blocks[-1].attn
    h = encoder.blocks[-1].norm1(x)
    b, n, _ = h.shape
    qkv = attn_module.qkv(h).reshape(b, n, 3, attn_module.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k = attn_module.q_norm(qkv[0]), attn_module.k_norm(qkv[1])
    attn = ((q * attn_module.scale) @ k.transpose(-2, -1)).softmax(-1)  # (B, heads, 1 + L, 1 + L)
    if query == "cls":
        return attn[:, :, 0, 1:].mean(1)
    return attn[:, :, 1:, 1:].mean((1, 2))


class AttentionMasking(MaskingStrategy):
    """Args:
        num_patches, mask_ratio: the MAE's.
        encoder: the MAE's encoder (the teacher starts as its copy).
        random_share: share of the hidden patches drawn at random (the rest: most attended).
        query: ``cls`` or ``mean`` (see ``last_block_attention``).
        ema_momentum: teacher update per step (AttMask's teacher: DINO's / iBOT's EMA, 0.996 -> 1;
            0.99 suits runs of a few hundred steps).
    """

    score_label = "teacher's attention (scaled per image)"
    teachers = ("teacher",)

    def __init__(self, num_patches: int, mask_ratio: float, encoder: nn.Module, random_share: float = 0.5,
                 query: str = "cls", ema_momentum: float = 0.99) -> None:
        super().__init__(num_patches, mask_ratio)
        if not 0 <= random_share <= 1:
            raise ValueError(f"model.masking_args.random_share={random_share} is invalid; allowed: [0, 1]")
        if query not in QUERIES:
            raise ValueError(f"model.masking_args.query={query!r} is invalid; allowed: {list(QUERIES)}")
        self.random_share, self.query = random_share, query
        self.ema_momentum = check_momentum(ema_momentum)
        self.teacher = frozen_copy(encoder)

    def draw(self, images: Tensor, mae: nn.Module, progress: float = 1.0) -> MaskDraw:
        attention = last_block_attention(self.teacher, images, self.query)
        return MaskDraw(mixed_top_k(attention, self.mask_ratio, 1 - self.random_share), normalise_rows(attention))

    def start(self, mae: nn.Module) -> None:
        self.teacher.load_state_dict(mae.encoder.state_dict())

    def after_step(self, mae: nn.Module) -> None:
        ema_update(self.teacher, mae.encoder, self.ema_momentum)
