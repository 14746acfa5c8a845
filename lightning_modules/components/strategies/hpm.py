"""Hard-patch mining (HPM; Wang et al., "Hard Patches Mining for Masked Image Modeling", CVPR 2023),
as its code (Haochen-Wang409/HPM) does it by default.

A loss predictor learns to rank each masked patch's reconstruction loss (HPM's relative ranking
loss). It reads the decoder's input (the decoder's embedding, mask token and position embedding
are shared, its blocks, norm and output are its own; ``predictor=separate``: a second decoder with
its own embedding and mask token). An EMA teacher of the whole model, run on every patch of the
image, predicts the losses from which the next masks are drawn: the share
``hard_share * (epoch + 1) / epochs`` of the hidden patches are the predicted-hardest, the rest
random (HPM's easy-to-hard schedule, 0 -> 0.5). The teacher's momentum rises linearly per epoch
from 0.999 to 0.9999 over the first 100 epochs (HPM's ``model_ema.decay``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from lightning_modules.components.strategies.base import (
    MaskDraw,
    MaskingStrategy,
    ema_update,
    frozen_copy,
    mixed_top_k,
    normalise_rows,
)
from lightning_modules.components.strategies.options import (
    StrategyOptions,
    check_range,
    momentum_pair,
    option_error,
)
from lightning_modules.components.strategies.schedules import TrainingClock, linear_momentum
from lightning_modules.components.vit import init_vit_weights

PREDICTORS = ("shared", "separate")


@dataclass(frozen=True)
class HPMOptions(StrategyOptions):
    """``model.masking=hpm``; the defaults are HPM's code's.

    hard_share: share of the hidden patches chosen by predicted loss in the last epoch (0.5).
    momentum: the teacher's EMA momentum: [start, end] rising linearly per epoch over the first
        ``momentum_epochs`` epochs ([0.999, 0.9999] over 100), or one number (constant; 0.99
        suits runs of a few hundred steps, where 0.999 leaves the teacher near its start).
    predictor: ``shared`` (HPM: the decoder's embedding, mask token and position embedding) or
        ``separate`` (a second decoder with its own).
    predictor_depth: blocks of the loss predictor (None: the decoder's depth, as HPM).
    loss_weight: weight of the ranking loss beside the reconstruction loss (HPM: 1).
    """

    name = "hpm"
    hard_share: float = 0.5
    momentum: float | tuple[float, float] = (0.999, 0.9999)
    momentum_epochs: int = 100
    predictor: str = "shared"
    predictor_depth: int | None = None
    loss_weight: float = 1.0

    def __post_init__(self) -> None:
        check_range("hard_share", self.hard_share, 0.0, 1.0)
        object.__setattr__(self, "momentum", momentum_pair("momentum", self.momentum))
        if not (int(self.momentum_epochs) == self.momentum_epochs >= 1):
            raise option_error("momentum_epochs", self.momentum_epochs, "an integer >= 1")
        if self.predictor not in PREDICTORS:
            raise option_error("predictor", self.predictor, str(list(PREDICTORS)))
        if self.predictor_depth is not None and not (int(self.predictor_depth) == self.predictor_depth >= 1):
            raise option_error("predictor_depth", self.predictor_depth, "an integer >= 1, or null (the decoder's depth)")
        if self.loss_weight < 0:
            raise option_error("loss_weight", self.loss_weight, ">= 0")


class LossPredictor(nn.Module):
    """HPM's loss predictor on the decoder's input: its own blocks, norm and output layer.

    tokens (B, 1 + L, D) from ``MAEDecoder.embed_tokens`` -> predicted loss (B, L): the output
    layer has one value per pixel of a patch (P), averaged, as HPM's ``decoder_pred_losspred``.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, patch_pixels: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth)
        )
        self.norm = norm(dim)
        self.pred = nn.Linear(dim, patch_pixels)
        self.apply(init_vit_weights)

    def forward(self, tokens: Tensor) -> Tensor:
        for block in self.blocks:
            tokens = block(tokens)
        return self.pred(self.norm(tokens))[:, 1:].mean(-1)


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
    """HPM for the MAE ``mae`` (options: ``HPMOptions``); teachers start as copies of the MAE
    (``start``) and follow it by EMA after every step (``after_step``)."""

    score_label = "teacher's predicted loss (scaled per image)"
    scheduled = True

    def __init__(self, mae: nn.Module, options: HPMOptions | None = None) -> None:
        from lightning_modules.components.mae import MAEDecoder

        super().__init__(mae.encoder.num_patches, mae.mask_ratio)
        self.options = options = options or HPMOptions()
        decoder, encoder = mae.decoder, mae.encoder
        dim, heads = decoder.embed.out_features, decoder.blocks[0].attn.num_heads
        depth = options.predictor_depth or len(decoder.blocks)
        if options.predictor == "shared":
            self.predictor = LossPredictor(dim, depth, heads, decoder.pred.out_features)
            self.teacher_decoder = frozen_copy(decoder)  # its embedding and mask token feed the teacher's predictor
            self.teachers = ("teacher_encoder", "teacher_decoder", "teacher_predictor")
        else:
            self.predictor = MAEDecoder(self.num_patches, encoder.embed_dim, 1, dim, depth, heads)
            self.teachers = ("teacher_encoder", "teacher_predictor")
        self.teacher_encoder = frozen_copy(encoder)
        self.teacher_predictor = frozen_copy(self.predictor)

    def predict(self, latent: Tensor, ids_restore: Tensor, decoder: nn.Module, predictor: nn.Module) -> Tensor:
        """Predicted loss (B, L) of every patch from an encoder output (B, 1 + K, D)."""
        if self.options.predictor == "shared":
            return predictor(decoder.embed_tokens(latent, ids_restore))
        return predictor(latent, ids_restore).squeeze(-1)

    @torch.no_grad()
    def predicted_losses(self, images: Tensor) -> Tensor:
        """The teacher's predicted loss of every patch, (B, L), from the unmasked image."""
        every = torch.arange(self.num_patches, device=images.device).expand(len(images), -1)
        decoder = getattr(self, "teacher_decoder", None)
        return self.predict(self.teacher_encoder(images), every, decoder, self.teacher_predictor)

    def draw(self, images: Tensor, mae: nn.Module, progress: float = 1.0) -> MaskDraw:
        losses = self.predicted_losses(images)
        share = self.options.hard_share * min(max(progress, 0.0), 1.0)
        return MaskDraw(mixed_top_k(losses, self.mask_ratio, share), normalise_rows(losses))

    def auxiliary_loss(self, images: Tensor, mae: nn.Module, draw: MaskDraw, out) -> tuple[Tensor, dict]:
        b = len(images)
        pred = self.predict(out.latent, draw.masking[2], mae.decoder, self.predictor)  # gradient reaches the MAE
        hidden = draw.mask.bool()
        m = int(hidden[0].sum())
        loss = relative_ranking_loss(pred[hidden].reshape(b, m).float(), out.errors.detach()[hidden].reshape(b, m))
        return self.options.loss_weight * loss, {"train/hpm_rank_loss": loss.detach()}

    def momentum(self, clock: TrainingClock) -> float:
        return linear_momentum(self.options.momentum, clock.epoch, self.options.momentum_epochs)

    def pairs(self, mae: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
        """(teacher, student) module pairs."""
        pairs = [(self.teacher_encoder, mae.encoder), (self.teacher_predictor, self.predictor)]
        if self.options.predictor == "shared":
            pairs.append((self.teacher_decoder, mae.decoder))
        return pairs

    def start(self, mae: nn.Module) -> None:
        for teacher, student in self.pairs(mae):
            teacher.load_state_dict(student.state_dict())

    def after_step(self, mae: nn.Module, clock: TrainingClock | None = None) -> None:
        m = self.momentum(clock or TrainingClock())
        for teacher, student in self.pairs(mae):
            ema_update(teacher, student, m)
