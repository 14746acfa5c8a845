"""AutoMAE (Chen et al., "Improving Masked Autoencoders by Learning Where to Mask", 2023): a mask
generator on a frozen pretrained MAE's attention, trained with the reconstruction loss through a
straight-through estimator and against a discriminator of masks (LSGAN).

Per step, as the AutoMAE code does (``random_masking(..., mask, mask_factor)`` and its training
loop; docs/masking.md lists where our reading is uncertain):

- The source, a frozen MAE encoder from a checkpoint of the same run family
  (``model.masking.source``: a file or ``wandb:ENTITY/PROJECT/NAME:VERSION``), gives its last
  block's [CLS] attention per head, (B, heads, g, g).
- The generator (two 3x3 convolutions over the heads, log-softmax over the L patches) gives
  log-probabilities; a Gumbel-softmax sample ``p`` (tau 1) picks its top K = visible-count
  patches; those get ``mask_factor`` added to uniform noise (straight-through: the value is the
  hard top-K, the gradient that of ``p``), and the L - K highest noise values are hidden.
- The noise also multiplies the visible tokens by 1 with its gradient (``MaskDraw.token_scale``),
  so the reconstruction loss reaches the generator, which descends it.
- A discriminator (spectral-norm convolutions) learns, in a step of its own before each MAE step,
  to tell random rectangles (value 0.5 plus U(0, 0.1) noise, softmax over the patches) from fresh
  generator samples (LSGAN: real -> 1, fake -> 0); the generator is pushed towards D = 1
  (weight ``adversary_weight``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from core.checkpoints import (
    CheckpointError,
    CheckpointMismatchError,
    load_encoder,
    resolve_checkpoint,
)
from lightning_modules.components.patches import masking_from_scores, num_kept
from lightning_modules.components.strategies.attention import last_block_attention_maps
from lightning_modules.components.strategies.base import (
    MaskDraw,
    Masking,
    MaskingStrategy,
    frozen_copy,
    frozen_parameters,
    normalise_rows,
)
from lightning_modules.components.strategies.options import StrategyOptions, option_error


@dataclass(frozen=True)
class AutoMAEOptions(StrategyOptions):
    """``model.masking=automae``.

    source: the pretrained MAE whose last-block attention the generator reads: a checkpoint file
        or a W&B model artifact ``wandb:ENTITY/PROJECT/NAME:VERSION`` (required;
        ``experiment=mae_automae_small`` pretrains one in its ``source`` stage).
    mask_factor: what the generator's top patches add to the uniform noise (AutoMAE: 0.5).
    adversary_weight: weight of the generator's LSGAN term (AutoMAE's ``loss_g_factor``: 0.2).
    tau: Gumbel-softmax temperature (AutoMAE: 1).
    hidden: channels of the generator's hidden layer; None: heads // 2 as AutoMAE (6 for a
        12-head ViT-B), but at least 4, since one or two ReLU channels on [CLS] attention of
        about 1 / L are dead at initialisation in a quarter to a half of the seeds.
    rect_area: the discriminator's real masks: rectangles of [low, high] x L patches (10 / 64 and
        40 / 64 of the grid, the 8 x 8 values of a public AutoMAE port).
    """

    name = "automae"
    source: str | None = None
    mask_factor: float = 0.5
    adversary_weight: float = 0.2
    tau: float = 1.0
    rect_area: tuple[float, float] = (10 / 64, 40 / 64)
    hidden: int | None = None

    def __post_init__(self) -> None:
        if self.source is None or not str(self.source).strip():
            raise option_error("source", self.source, "a checkpoint of a pretrained MAE of the same encoder (a .ckpt "
                               "file or wandb:ENTITY/PROJECT/NAME:VERSION); experiment=mae_automae_small pretrains one "
                               "in its source stage")
        if self.mask_factor < 0:
            raise option_error("mask_factor", self.mask_factor, ">= 0")
        if self.adversary_weight < 0:
            raise option_error("adversary_weight", self.adversary_weight, ">= 0")
        if not self.tau > 0:
            raise option_error("tau", self.tau, "> 0")
        if self.hidden is not None and self.hidden < 1:
            raise option_error("hidden", self.hidden, "a channel count >= 1, or null for max(heads // 2, 4)")
        area = tuple(float(v) for v in self.rect_area)
        if len(area) != 2 or not 0 < area[0] <= area[1] <= 1:
            raise option_error("rect_area", self.rect_area, "[low, high] shares of the grid, 0 < low <= high <= 1")
        object.__setattr__(self, "rect_area", area)


class AttentionScorer(nn.Module):
    """AutoMAE's mask generator head: per-head attention (B, heads, L) on a g x g grid ->
    log-probabilities (B, L) over the patches (Conv 3x3 heads -> hidden, ReLU, Conv 3x3 -> 1).

    The hidden layer's bias starts at 0 (PyTorch's default draws it from +-1 / sqrt(9 heads)):
    attention probabilities are about 1 / L, so a negative initial bias outweighs them and the
    ReLU outputs 0 for every input, a generator that never receives a gradient."""

    def __init__(self, heads: int, grid: int, hidden: int | None = None) -> None:
        super().__init__()
        mid = hidden or max(4, heads // 2)
        self.grid = grid
        self.net = nn.Sequential(nn.Conv2d(heads, mid, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(mid, 1, 3, padding=1), nn.Flatten())
        nn.init.zeros_(self.net[0].bias)

    def forward(self, attention: Tensor) -> Tensor:
        b, h, _ = attention.shape
        return self.net(attention.reshape(b, h, self.grid, self.grid)).log_softmax(-1)


def check_generator_alive(logp: Tensor) -> None:
    """Raise when the generator's log-probabilities (B, L) are equal over the patches for every
    image: its hidden ReLU layer is dead, no gradient reaches it, and the masks would be random
    with a fixed positional bias (torch's top-K of ties), not AutoMAE's."""
    if len(logp) and bool((logp == logp[:, :1]).all()):
        raise RuntimeError("AutoMAE's mask generator is dead: its hidden ReLU layer outputs 0 for every patch of "
                           "this batch, so it receives no gradient and its masks ignore the attention. Widen it "
                           "(model.masking.hidden, e.g. 8) or change the seed, and restart this pretraining.")


class MaskDiscriminator(nn.Module):
    """AutoMAE's discriminator of masks: (B, L) patch distributions on a g x g grid -> scores
    (B, S), spectral-norm convolutions (1 -> 16, stride 1; 16 -> 32, stride 2; 32 -> 1, no
    padding, or padding 1 where the grid is too small for it), LeakyReLU 0.2, no sigmoid."""

    def __init__(self, grid: int) -> None:
        super().__init__()
        self.grid = grid
        after_stride = (grid - 1) // 2 + 1
        self.net = nn.Sequential(
            spectral_norm(nn.Conv2d(1, 16, 3, stride=1, padding=1, bias=False)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(32, 1, 3, padding=0 if after_stride >= 3 else 1, bias=False)), nn.Flatten(),
        )

    def forward(self, masks: Tensor) -> Tensor:
        return self.net(masks.reshape(len(masks), 1, self.grid, self.grid))


def biased_masking(prob: Tensor, uniform: Tensor, mask_ratio: float, mask_factor: float) -> tuple[Masking, Tensor]:
    """AutoMAE's masks from generator probabilities ``prob`` (B, L) and uniform noise (B, L).

    The K = round(L * (1 - mask_ratio)) patches of highest ``prob`` (a straight-through hard
    top-K: its value, the gradient of ``prob``) add ``mask_factor`` to the noise; the K lowest
    noise values are kept, the rest hidden. Returns the masking and the noise with its gradient.
    """
    keep = num_kept(prob.shape[1], mask_ratio)
    hard = torch.zeros_like(prob).scatter_(1, prob.detach().topk(keep, dim=1).indices, 1.0)
    noise = uniform + (hard - prob.detach() + prob) * mask_factor
    return masking_from_scores(noise.detach(), mask_ratio), noise


def rectangle_masks(count: int, grid: int, area: tuple[float, float], rng: np.random.Generator) -> Tensor:
    """The discriminator's real masks (count, L): a rectangle of value 0.5 (area a ~ U{low L ..
    high L}, width l ~ U{2 .. g - 2}, height min(g, ceil(a / l)), a random position) plus
    U(0, 0.1) noise, softmax over the patches."""
    n = grid * grid
    low, high = max(1, round(area[0] * n)), max(1, round(area[1] * n))
    values = rng.uniform(0.0, 0.1, size=(count, grid, grid))
    for m in values:
        a = int(rng.integers(low, high + 1))
        width = int(rng.integers(2, grid - 1))
        height = min(grid, math.ceil(a / width))
        x, y = int(rng.integers(0, grid - width + 1)), int(rng.integers(0, grid - height + 1))
        m[y:y + height, x:x + width] += 0.5
    return torch.from_numpy(values.reshape(count, n)).float().softmax(-1)


def lsgan(scores: Tensor, real: bool) -> Tensor:
    """LSGAN's loss: mean squared distance of the discriminator's scores to 1 (real) or 0 (fake)."""
    return F.mse_loss(scores, torch.full_like(scores, 1.0 if real else 0.0))


class AutoMAEMasking(MaskingStrategy):
    """AutoMAE for the MAE ``mae`` (options: ``AutoMAEOptions``): the frozen ``source`` (loaded
    when built), the generator ``scorer`` (trained with the MAE), the ``discriminator`` (its own
    step). In eval mode the generator's probabilities are used without Gumbel noise."""

    score_label = "generator's probability (scaled per image)"
    teachers = ("source",)
    critics = ("discriminator",)

    def __init__(self, mae: nn.Module, options: AutoMAEOptions) -> None:
        super().__init__(mae.encoder.num_patches, mae.mask_ratio)
        self.options = options
        self.grid = int(round(self.num_patches**0.5))
        if self.grid**2 != self.num_patches or self.grid < 4:
            raise ValueError(f"AutoMAE needs a square patch grid of at least 4 x 4, got {self.num_patches} patches")
        self.source = frozen_copy(mae.encoder)
        try:
            load_encoder(self.source, resolve_checkpoint(options.source))
        except (FileNotFoundError, CheckpointError, CheckpointMismatchError) as err:
            raise ValueError(f"model.masking.source={options.source!r}: {err}") from err
        self.scorer = AttentionScorer(mae.encoder.blocks[-1].attn.num_heads, self.grid, options.hidden)
        self.discriminator = MaskDiscriminator(self.grid)

    def attention(self, images: Tensor) -> Tensor:
        """The source's last-block [CLS] attention per head, (B, heads, L)."""
        return last_block_attention_maps(self.source, images)[:, :, 0, 1:].float()

    def sample(self, attention: Tensor, logp: Tensor | None = None) -> Tensor:
        """Generator probabilities (B, L): a Gumbel-softmax sample in training, else softmax
        (``logp``: the generator's output on ``attention`` where already computed)."""
        logp = self.scorer(attention) if logp is None else logp
        return F.gumbel_softmax(logp, tau=self.options.tau) if self.training else logp.exp()

    def draw(self, images: Tensor, mae: nn.Module, progress: float = 1.0) -> MaskDraw:
        with torch.autocast(images.device.type, enabled=False):
            attention = self.attention(images.float())
            logp = self.scorer(attention)
            if self.training:  # once per step: the critic's fresh sample comes from the same generator
                check_generator_alive(logp)
            prob = self.sample(attention, logp)
            uniform = torch.rand(prob.shape, device=prob.device)
            masking, noise = biased_masking(prob, uniform, self.mask_ratio, self.options.mask_factor)
        scale = (noise - noise.detach()) + 1 if self.training else None  # exactly 1: the straight-through path
        return MaskDraw(masking, normalise_rows(prob.detach()), {"attention": attention, "prob": prob}, scale)

    def auxiliary_loss(self, images: Tensor, mae: nn.Module, draw: MaskDraw, out) -> tuple[Tensor, dict]:
        with frozen_parameters(self.discriminator), torch.autocast(images.device.type, enabled=False):
            adversary = lsgan(self.discriminator(draw.extra["prob"]), real=True)
        return self.options.adversary_weight * adversary, {"train/automae_generator": adversary.detach()}

    def critic_loss(self, images: Tensor, mae: nn.Module, draw: MaskDraw) -> tuple[Tensor, dict]:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))  # reproducible and resumable
        real = rectangle_masks(len(images), self.grid, self.options.rect_area, rng).to(images.device)
        with torch.autocast(images.device.type, enabled=False):  # the discriminator runs in fp32
            with torch.no_grad():
                fake = self.sample(draw.extra["attention"])  # a fresh sample, as AutoMAE's discriminator step
            loss = lsgan(self.discriminator(real), real=True) + lsgan(self.discriminator(fake), real=False)
        return loss, {"train/automae_discriminator": loss.detach()}
