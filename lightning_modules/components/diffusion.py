"""Class-conditioned diffusion networks and sampling (diffusers), as plain torch code.

Images live in [-1, 1] (``data.normalization=half``). In latent mode a frozen diffusers
``AutoencoderKL`` maps them to latents (scaled by its ``scaling_factor``) and back; the UNet
then works on latents. Classifier-free guidance: class index ``num_classes`` is the "no
class" embedding that label dropout trains.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DModel
from torch import Tensor, nn


def build_unet(
    sample_size: int,
    channels: int,
    num_classes: int,
    block_channels: Sequence[int] = (64, 128, 128),
    layers_per_block: int = 2,
    attention_levels: Sequence[bool] = (False, True, True),
    norm_groups: int = 32,
    dropout: float = 0.0,
) -> UNet2DModel:
    """A UNet2DModel with ``num_classes + 1`` class embeddings (the last is "unconditional").

    ``sample_size`` must be divisible by 2 ** (len(block_channels) - 1) (28 px: 3 levels).
    """
    if len(block_channels) != len(attention_levels):
        raise ValueError(f"model.unet.block_channels {list(block_channels)} and attention_levels "
                         f"{list(attention_levels)} must have the same length")
    factor = 2 ** (len(block_channels) - 1)
    if sample_size % factor:
        raise ValueError(f"image size {sample_size} is not divisible by {factor} (2 ** (levels - 1)); "
                         "use fewer model.unet.block_channels or another data.img_size")
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels))
    return UNet2DModel(sample_size=sample_size, in_channels=channels, out_channels=channels,
                       block_out_channels=tuple(block_channels), layers_per_block=layers_per_block,
                       down_block_types=down, up_block_types=up, num_class_embeds=num_classes + 1,
                       norm_num_groups=norm_groups, dropout=dropout)


def ddpm_scheduler(num_train_timesteps: int = 1000, beta_schedule: str = "linear") -> DDPMScheduler:
    """The DDPM noise schedule (Ho et al. 2020: linear betas 1e-4 -> 0.02 over 1000 steps)."""
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                         prediction_type="epsilon", clip_sample=False)


def load_autoencoder(source: str) -> AutoencoderKL:
    """A frozen AutoencoderKL from a local folder (``save_pretrained`` layout) or a hub id."""
    local = Path(source).expanduser()
    try:
        vae = AutoencoderKL.from_pretrained(str(local) if local.exists() else source)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"model.latent_autoencoder={source!r} could not be loaded ({str(err).splitlines()[0]}). Give a local "
            "folder written by AutoencoderKL.save_pretrained, or a hub id on a machine with network access"
        ) from None
    return vae.eval().requires_grad_(False)


def drop_labels(labels: Tensor, num_classes: int, p: float) -> Tensor:
    """Replace each label by the unconditional class ``num_classes`` with probability ``p``."""
    if p <= 0:
        return labels
    drop = torch.rand(labels.shape, device=labels.device) < p
    return torch.where(drop, torch.full_like(labels, num_classes), labels)


def predicted_x0(scheduler: DDPMScheduler, noisy: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """x0 implied by the noise prediction: (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)."""
    a = scheduler.alphas_cumprod.to(noisy.device)[t].view(-1, 1, 1, 1)
    return (noisy - (1 - a).sqrt() * eps) / a.sqrt()


def guided_noise(unet: nn.Module, x: Tensor, t, labels: Tensor, num_classes: int, guidance: float) -> Tensor:
    """Classifier-free guidance: eps_u + g (eps_c - eps_u); g = 1 is the conditional model alone."""
    if guidance == 1.0:
        return unet(x, t, class_labels=labels).sample
    both = torch.cat([labels, torch.full_like(labels, num_classes)])
    eps_c, eps_u = unet(torch.cat([x, x]), t, class_labels=both).sample.chunk(2)
    return eps_u + guidance * (eps_c - eps_u)


@torch.no_grad()
def ddim_sample(
    unet: nn.Module,
    scheduler: DDPMScheduler,
    labels: Tensor,
    shape: tuple[int, int, int],
    num_classes: int,
    steps: int = 50,
    guidance: float = 1.0,
    generator: torch.Generator | None = None,
    decode: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Deterministic DDIM (eta 0) samples of ``labels`` (B,): (B, C, H, W) images in [-1, 1].

    ``shape`` is the (C, H, W) of what the UNet denoises (latents in latent mode, then
    ``decode`` maps them to images). ``generator`` (on the UNet's device) fixes the noise.
    In pixel space each step's x0 estimate is clipped to [-1, 1] (as in Ho et al.'s sampler);
    latents are not clipped.
    """
    device = labels.device
    ddim = DDIMScheduler.from_config(scheduler.config, clip_sample=decode is None, clip_sample_range=1.0)
    ddim.set_timesteps(steps, device=device)
    x = torch.randn((len(labels), *shape), generator=generator, device=device)
    for t in ddim.timesteps:
        eps = guided_noise(unet, x, t, labels, num_classes, guidance)
        x = ddim.step(eps, t, x, eta=0.0).prev_sample
    if decode is not None:
        x = decode(x)
    return x.clamp(-1, 1)


def diffusion_loss(unet: nn.Module, scheduler: DDPMScheduler, x0: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Noise-prediction MSE at uniform random timesteps; returns (loss, noisy, eps_hat, t)."""
    noise = torch.randn_like(x0)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),), device=x0.device)
    noisy = scheduler.add_noise(x0, noise, t)
    eps = unet(noisy, t, class_labels=labels).sample
    return F.mse_loss(eps.float(), noise.float()), noisy, eps, t
