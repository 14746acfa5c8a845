"""Load pretrained encoder weights from a training checkpoint, strictly."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

ENCODER_PREFIXES = ("mae.encoder.", "net.encoder.", "encoder.")


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model it is loaded into."""


def encoder_state_from_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Encoder weights from a Lightning checkpoint (or a plain state dict), prefix stripped.

    The first prefix of ``ENCODER_PREFIXES`` found in the keys is used (MAE pretraining,
    MLO-MAE and fine-tuned classifiers all name their encoder one of these ways).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("state_dict", ckpt)
    for prefix in ENCODER_PREFIXES:
        found = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if found:
            return found
    raise CheckpointMismatchError(
        f"{path} holds no encoder weights (no key starts with any of {list(ENCODER_PREFIXES)}); "
        f"first keys: {list(state)[:5]}"
    )


def load_encoder(encoder: nn.Module, path: str | os.PathLike) -> None:
    """Copy encoder weights from ``path`` into ``encoder``; every key and shape must match.

    Raises ``CheckpointMismatchError`` listing missing, unexpected and mis-shaped keys
    (a channel mismatch is reported as such).
    """
    state = encoder_state_from_checkpoint(path)
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        lines = [f"checkpoint {path} does not match the encoder (another architecture?):"]
        if "patch_embed.proj.weight" in shapes:
            got, want = state["patch_embed.proj.weight"].shape[1], own["patch_embed.proj.weight"].shape[1]
            lines.append(f"  input channels: checkpoint {got}, data {want} (set data.as_rgb to match)")
        if missing:
            lines.append(f"  missing keys: {missing}")
        if unexpected:
            lines.append(f"  unexpected keys: {unexpected}")
        for k in shapes:
            lines.append(f"  shape of {k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}")
        raise CheckpointMismatchError("\n".join(lines))
    encoder.load_state_dict(state, strict=True)
