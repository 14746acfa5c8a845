"""The class-conditioned diffusion model's options (``conf/model/diffusion.yaml``) in typed,
frozen groups, each checked when built. The config keys stay flat (``model.cond_dropout``,
``model.sample_steps``, as checkpoints store them); ``DiffusionOptions.from_keys`` gathers
them into groups, and every error names the key as it is typed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from core.options import field_names, refuse_unknown, take

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "laplace", "sigmoid")  # diffusers' DDPMScheduler names


def _check(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ValueError(f"model.{key}={value!r} is invalid; allowed: {allowed}")


@dataclass(frozen=True)
class OptimOptions:
    """lr, weight_decay: the UNet's rates (one parameter group); ema_decay: decay of the
    weights' EMA (validation and sampling use it), reached after a warmup (``ema_decay_at``)."""

    lr: float = 2e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        _check(self.lr > 0, "lr", self.lr, "> 0")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        _check(0 < self.ema_decay < 1, "ema_decay", self.ema_decay, "(0, 1)")


@dataclass(frozen=True)
class NoiseOptions:
    """The DDPM schedule (num_train_timesteps, beta_schedule: Ho et al.'s linear betas over
    1000 steps by default) and cond_dropout, the probability of training a sample
    unconditionally (classifier-free guidance)."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    cond_dropout: float = 0.1

    def __post_init__(self) -> None:
        _check(self.num_train_timesteps >= 2, "num_train_timesteps", self.num_train_timesteps, "an integer >= 2")
        _check(self.beta_schedule in BETA_SCHEDULES, "beta_schedule", self.beta_schedule, str(list(BETA_SCHEDULES)))
        _check(0 <= self.cond_dropout < 1, "cond_dropout", self.cond_dropout, "[0, 1)")


@dataclass(frozen=True)
class PerceptualOptions:
    """The optional perceptual term on the predicted x0, weighted by alpha_bar_t:
    perceptual_weight (0: MSE only) and perceptual_net (``lpips`` or the path of a classifier
    checkpoint of this project trained with ``normalization: half``)."""

    perceptual_weight: float = 0.0
    perceptual_net: str | None = None

    def __post_init__(self) -> None:
        _check(self.perceptual_weight >= 0, "perceptual_weight", self.perceptual_weight, ">= 0 (0: MSE only)")
        if self.perceptual_weight > 0 and not self.perceptual_net:
            raise ValueError("model.perceptual_weight > 0 needs model.perceptual_net (lpips or a classifier ckpt)")

    @property
    def on(self) -> bool:
        return self.perceptual_weight > 0


@dataclass(frozen=True)
class SamplingOptions:
    """sample_steps: DDIM steps, guidance_scale: classifier-free guidance of the sample grids
    (``synthesize.py`` has its own, defaulting to these)."""

    sample_steps: int = 50
    guidance_scale: float = 2.0

    def __post_init__(self) -> None:
        _check(self.sample_steps >= 1, "sample_steps", self.sample_steps, "an integer >= 1")
        _check(self.guidance_scale >= 0, "guidance_scale", self.guidance_scale, ">= 0 (1: conditional only)")


@dataclass(frozen=True)
class DiffusionOptions:
    """Every option of ``ClassConditionedDiffusion`` beyond the data, the UNet and the
    optimiser partials; latent_autoencoder: None (pixel space) or an AutoencoderKL folder /
    hub id; compile: ``torch.compile`` the UNet (true, or a dict of its options)."""

    optim: OptimOptions = field(default_factory=OptimOptions)
    noise: NoiseOptions = field(default_factory=NoiseOptions)
    perceptual: PerceptualOptions = field(default_factory=PerceptualOptions)
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    latent_autoencoder: str | None = None
    compile: bool | Mapping = False

    GROUPS = {"optim": OptimOptions, "noise": NoiseOptions, "perceptual": PerceptualOptions,
              "sampling": SamplingOptions}

    @classmethod
    def from_keys(cls, keys: Mapping, own: tuple[str, ...] = ()) -> DiffusionOptions:
        """The groups of the flat ``model.*`` keys; a key none takes is one error listing them all."""
        refuse_unknown(keys, [*field_names(*cls.GROUPS.values()), "latent_autoencoder", "compile", *own],
                       "ClassConditionedDiffusion", "model")
        groups = {}
        for name, kind in cls.GROUPS.items():
            groups[name], keys = take(kind, keys)
        return cls(**groups, **keys)
