"""Adversarial masking, ADIOS-style (Shi et al., "Adversarial Masking for Self-Supervised
Learning", ICML 2022): a mask generator is trained to raise the MAE's reconstruction loss, while
the MAE learns to lower it. Not AutoMAE (``automae.py``): this generator reads the current MAE's
patch embeddings and *maximises* the hidden-patch error, with a prior on the ratio.

The generator (``masking.PatchScorer`` on the MAE's detached patch + position embeddings, as
MLO-MAE's masking input) gives each patch a logit; Gumbel noise is added and the top-k hidden
(Gumbel top-k: sampling without replacement in proportion to the softmax of the logits). Its
gradient comes through a relaxation of that top-k, sigmoid((perturbed score - threshold) / tau)
with the threshold midway between the last hidden and the first visible score: the generator
maximises the relaxed mean of the standardised per-patch reconstruction errors over the hidden
patches (errors detached, so the MAE's own gradient is untouched). The centring makes the
objective a redistribution (lifting every logit gains nothing); the prior keeps the ratio and the
spread: each image's mean masking probability sigmoid(logit) and each position's mean over the
batch stay near the mask ratio (a squared penalty), so the generator neither saturates nor
collapses onto a few fixed positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_modules.components.masking import PatchScorer
from lightning_modules.components.patches import masking_from_scores
from lightning_modules.components.strategies.base import MaskDraw, MaskingStrategy
from lightning_modules.components.strategies.options import StrategyOptions, option_error


def gumbel_noise(shape: torch.Size, device) -> Tensor:
    """Standard Gumbel samples, -log(-log U)."""
    u = torch.rand(shape, device=device).clamp(1e-9, 1 - 1e-9)
    return -torch.log(-torch.log(u))


def relaxed_top_k(perturbed: Tensor, mask: Tensor, tau: float) -> Tensor:
    """Soft membership (B, L) of the hidden set: sigmoid((score - threshold) / tau), the threshold
    (detached) midway between each image's lowest hidden and highest visible score."""
    hidden = mask.bool()
    low_hidden = perturbed.detach().masked_fill(~hidden, float("inf")).amin(1, keepdim=True)
    high_visible = perturbed.detach().masked_fill(hidden, float("-inf")).amax(1, keepdim=True)
    return ((perturbed - (low_hidden + high_visible) / 2) / tau).sigmoid()


def adversarial_objective(errors: Tensor, soft: Tensor, mask: Tensor) -> Tensor:
    """The generator's loss (to minimise): minus the relaxed mean over each image's hidden patches
    of its per-patch errors (B, L), standardised over those patches (detached)."""
    hidden = mask.bool()
    e = errors.detach().double()
    count = hidden.sum(1, keepdim=True).clamp(min=1)
    mean = (e * hidden).sum(1, keepdim=True) / count
    std = (((e - mean) ** 2 * hidden).sum(1, keepdim=True) / count).sqrt()
    z = ((e - mean) / (std + 1e-8) * hidden).to(soft.dtype)
    return -(z * soft).sum(1).div(count.squeeze(1).to(soft.dtype)).mean()


def ratio_prior(probs: Tensor, mask_ratio: float) -> Tensor:
    """Squared deviation from the mask ratio of each image's mean probability and of each
    position's mean over the batch, (B, L) -> scalar."""
    return ((probs.mean(1) - mask_ratio) ** 2).mean() + ((probs.mean(0) - mask_ratio) ** 2).mean()


@dataclass(frozen=True)
class AdversarialOptions(StrategyOptions):
    """``model.masking=adversarial``.

    hidden: the generator's hidden width; tau: temperature of the relaxed top-k;
    adversary_weight, prior_weight: weights of the generator's two terms (maximise the hidden
    error; keep the ratio and spread).
    """

    name = "adversarial"
    hidden: int = 128
    tau: float = 0.5
    adversary_weight: float = 1.0
    prior_weight: float = 1.0

    def __post_init__(self) -> None:
        if not (int(self.hidden) == self.hidden >= 1):
            raise option_error("hidden", self.hidden, "an integer >= 1")
        if not self.tau > 0:
            raise option_error("tau", self.tau, "> 0")
        for key in ("adversary_weight", "prior_weight"):
            if getattr(self, key) < 0:
                raise option_error(key, getattr(self, key), ">= 0")


class AdversarialMasking(MaskingStrategy):
    """The adversary for the MAE ``mae`` (options: ``AdversarialOptions``). Masks are sampled
    (Gumbel noise) in training; in eval mode the top-k of the logits."""

    score_label = "masking probability"

    def __init__(self, mae: nn.Module, options: AdversarialOptions | None = None) -> None:
        super().__init__(mae.encoder.num_patches, mae.mask_ratio)
        self.options = options = options or AdversarialOptions()
        self.tau, self.adversary_weight, self.prior_weight = options.tau, options.adversary_weight, options.prior_weight
        self.generator = PatchScorer(mae.encoder.embed_dim, options.hidden)

    def draw(self, images: Tensor, mae: nn.Module, progress: float = 1.0) -> MaskDraw:
        with torch.autocast(images.device.type, enabled=False):
            tokens = mae.encoder.embed(images.float()).detach()
            logits = self.generator.logits(tokens)
        perturbed = logits + gumbel_noise(logits.shape, logits.device) if self.training else logits
        masking = masking_from_scores(perturbed.detach(), self.mask_ratio)
        return MaskDraw(masking, logits.detach().sigmoid(), {"logits": logits, "perturbed": perturbed})

    def auxiliary_loss(self, images: Tensor, mae: nn.Module, draw: MaskDraw, out) -> tuple[Tensor, dict]:
        soft = relaxed_top_k(draw.extra["perturbed"], draw.mask, self.tau)
        adversary = adversarial_objective(out.errors, soft, draw.mask)
        prior = ratio_prior(draw.extra["logits"].sigmoid(), self.mask_ratio)
        loss = self.adversary_weight * adversary + self.prior_weight * prior
        return loss, {"train/adversary": adversary.detach(), "train/mask_prior": prior.detach()}
