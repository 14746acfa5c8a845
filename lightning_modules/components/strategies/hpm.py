"""Hard-patch mining (HPM; Wang et al., "Hard Patches Mining for Masked Image Modeling", CVPR 2023).

A second decoder (the loss predictor) learns to rank each masked patch's reconstruction
loss (HPM's relative ranking loss); an EMA teacher of the encoder and predictor, run on every
patch of the image, predicts the losses from which the next masks are drawn: the share
``hard_share * progress`` of the hidden patches are the predicted-hardest, the rest random
(HPM's easy-to-hard schedule, 0 -> 0.5 over training).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


def relative_ranking_loss(pred: Tensor, target: Tensor) -> Tensor:
    """HPM's relative loss: for every pair of patches (a, b) of an image whose targets differ,
    binary cross-entropy that ``pred`` orders them as ``target`` does,
    -log sigmoid(pred_hi - pred_lo), averaged over those pairs.

    pred, target: (B, M) predicted and true losses of each image's masked patches.
    """
    diff_pred = pred.unsqueeze(1) - pred.unsqueeze(2)  # [n, a, b] = pred_b - pred_a
    diff_target = target.unsqueeze(1) - target.unsqueeze(2)
    sign = torch.sign(diff_target)  # +1 where b is harder, -1 where a is, 0 for ties (and a = b)
    terms = -F.logsigmoid(sign * diff_pred) * sign.abs()
    return terms.sum() / sign.abs().sum().clamp(min=1)


class HardPatchMining(MaskingStrategy):
    """Args:
        num_patches, mask_ratio: the MAE's.
        encoder, decoder: the MAE's, to size the predictor and copy the teacher from.
        predictor_depth: blocks of the loss predictor (HPM: as many as the decoder; default).
        hard_share: share of the hidden patches chosen by predicted loss at the end of training (HPM: 0.5).
        ema_momentum: teacher update (HPM: 0.999 -> 0.9999 over ImageNet epochs of ~5,000 steps; 0.99
            suits runs of a few hundred steps).
        loss_weight: weight of the ranking loss beside the reconstruction loss (HPM: 1).
    """

    score_label = "teacher's predicted loss (scaled per image)"
    teachers = ("teacher_encoder", "teacher_predictor")
    scheduled = True

    def __init__(self, num_patches: int, mask_ratio: float, encoder: nn.Module, decoder: nn.Module,
                 predictor_depth: int | None = None, hard_share: float = 0.5, ema_momentum: float = 0.99,
                 loss_weight: float = 1.0) -> None:
        from lightning_modules.components.mae import MAEDecoder

        super().__init__(num_patches, mask_ratio)
        if not 0 <= hard_share <= 1:
            raise ValueError(f"model.masking_args.hard_share={hard_share} is invalid; allowed: [0, 1]")
        self.hard_share, self.loss_weight = hard_share, loss_weight
        self.ema_momentum = check_momentum(ema_momentum)
        dim, depth = decoder.embed.out_features, len(decoder.blocks)
        self.predictor = MAEDecoder(num_patches, encoder.embed_dim, 1, dim, predictor_depth or depth,
                                    decoder.blocks[0].attn.num_heads)
        self.teacher_encoder = frozen_copy(encoder)
        self.teacher_predictor = frozen_copy(self.predictor)

    @torch.no_grad()
    def predicted_losses(self, images: Tensor) -> Tensor:
        """The teacher's predicted loss of every patch, (B, L), from the unmasked image."""
        b = len(images)
        every = torch.arange(self.num_patches, device=images.device).expand(b, -1)
        return self.teacher_predictor(self.teacher_encoder(images), every).squeeze(-1)

    def draw(self, images: Tensor, mae: nn.Module, progress: float = 1.0) -> MaskDraw:
        losses = self.predicted_losses(images)
        masking = mixed_top_k(losses, self.mask_ratio, self.hard_share * min(max(progress, 0.0), 1.0))
        return MaskDraw(masking, normalise_rows(losses))

    def auxiliary_loss(self, images: Tensor, mae: nn.Module, draw: MaskDraw, out) -> tuple[Tensor, dict]:
        b = len(images)
        pred = self.predictor(out.latent, draw.masking[2]).squeeze(-1)  # (B, L); its gradient reaches the encoder
        hidden = draw.mask.bool()
        m = int(hidden[0].sum())
        loss = relative_ranking_loss(pred[hidden].reshape(b, m).float(), out.errors.detach()[hidden].reshape(b, m))
        return self.loss_weight * loss, {"train/hpm_rank_loss": loss.detach()}

    def start(self, mae: nn.Module) -> None:
        self.teacher_encoder.load_state_dict(mae.encoder.state_dict())
        self.teacher_predictor.load_state_dict(self.predictor.state_dict())

    def after_step(self, mae: nn.Module) -> None:
        ema_update(self.teacher_encoder, mae.encoder, self.ema_momentum)
        ema_update(self.teacher_predictor, self.predictor, self.ema_momentum)
