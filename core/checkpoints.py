"""Checkpoints, in one place: reading and writing them, the run config and records stored
inside them, references that name them (a file or a W&B model artifact), and rebuilding
what they hold (encoder weights into a network, a trained classifier).

A checkpoint of this project carries ``checkpoint["medmae"]`` (``CHECKPOINT_KEY``): the run's
resolved ``config``, its ``data`` identity, for classifiers the ``preprocessing`` record and,
once tested, the ``decision`` rule tuned on validation (the Lightning callback that stores them
is ``callbacks.run_config``). A checkpoint copied anywhere, or downloaded as an artifact, is
then used without its run folder; for runs saved before configs were stored, the
``config.yaml`` two folders above it (``<run>/checkpoints/x.ckpt``) is read instead.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import Metric

from core.io import atomic_path
from core.tracking import download_model_artifact, is_wandb, wandb_name

CHECKPOINT_KEY = "medmae"  # checkpoint[CHECKPOINT_KEY] = {"config": resolved run config, "data": identity}


class CheckpointError(ValueError):
    """A checkpoint cannot be used as asked (missing, unreadable, another model or dataset)."""


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model it is loaded into."""


UNREADABLE_FIX = ("copy or download it again, or use another checkpoint of the run (its checkpoints/ folder holds "
                  "last.ckpt and the best epoch_*.ckpt)")


def read_checkpoint(ckpt: str | Path) -> dict:
    """The checkpoint's dict (tensors on the CPU), or a CheckpointError naming the file and the fix."""
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise CheckpointError(f"{ckpt}: no such checkpoint file")
    try:
        return torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a checkpoint, or pickled objects weights_only refuses
        raise CheckpointError(f"{ckpt} cannot be read as a checkpoint ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); {UNREADABLE_FIX}") from err


def check_checkpoint_file(ckpt: str | Path, key: str) -> None:
    """A CheckpointError naming the config ``key`` when ``ckpt`` is missing or not a complete
    PyTorch checkpoint (a zip archive whose index, written last, lists its pickle: a truncated
    file has none). Quick: reads the archive's index, not the tensors (Lightning loads them)."""
    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise CheckpointError(f"{key}={ckpt}: no such checkpoint file; give an existing one (or none to start afresh)")
    try:
        with zipfile.ZipFile(ckpt) as archive:
            if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in archive.namelist()):
                raise zipfile.BadZipFile("no data.pkl in the archive")
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"{key}={ckpt} cannot be read as a checkpoint (truncated, or not a PyTorch checkpoint: "
                              f"{err}); {UNREADABLE_FIX}, or start afresh without {key}") from err


def stored_identity(ckpt: str | Path) -> dict | None:
    """``{"config": ..., "data": ..., "preprocessing": ..., "decision": ...}`` stored in the
    checkpoint, or None (an older run)."""
    return read_checkpoint(ckpt).get(CHECKPOINT_KEY)


def store_in_checkpoint(ckpt: str | Path, key: str, value) -> None:
    """Set ``checkpoint["medmae"][key] = value`` in the file, atomically (a crash leaves the old
    file); e.g. the decision rule tuned on validation after the test."""
    checkpoint = read_checkpoint(ckpt)
    checkpoint.setdefault(CHECKPOINT_KEY, {})[key] = value
    with atomic_path(ckpt) as tmp:
        torch.save(checkpoint, tmp)


def run_config(ckpt: str | Path) -> DictConfig:
    """The resolved config of the run that wrote ``ckpt`` (see the module docstring)."""
    stored = stored_identity(ckpt)
    if stored is not None:
        return OmegaConf.create(stored["config"])
    path = Path(ckpt).resolve().parent.parent / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{ckpt} stores no config (saved before medmae stored configs in checkpoints) and "
                              f"there is no config.yaml in {path.parent}; keep the checkpoint in its run folder")
    return OmegaConf.load(path)


# ----- references -------------------------------------------------------------------------
def resolve_checkpoint(ref: str | os.PathLike, run=None) -> Path:
    """The local checkpoint file of ``ref``: a path, or a W&B model artifact
    (``wandb:ENTITY/PROJECT/NAME:VERSION``, as ``logger.wandb.log_model=true`` uploads them)
    downloaded first, once (``core.tracking.download_model_artifact``; with ``run``, an online W&B
    run, fetched through it so that W&B records it as the run's input). The artifact must hold
    exactly one ``.ckpt`` file."""
    text = str(ref)
    if not is_wandb(text):
        return Path(text)
    try:
        name = wandb_name(text)
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    try:
        folder = download_model_artifact(name, run)
    except Exception as err:  # network, credentials, unknown artifact: one message naming the fix
        raise CheckpointError(f"{text}: the W&B artifact could not be downloaded ({type(err).__name__}: {err}); "
                              "check the name, `wandb login` and the network, or pass the .ckpt file") from err
    ckpts = sorted(folder.rglob("*.ckpt"))
    if len(ckpts) != 1:
        raise CheckpointError(f"{text}: the artifact holds {len(ckpts)} .ckpt files in {folder}, expected one")
    return ckpts[0]


# ----- what a checkpoint holds ---------------------------------------------------------------
ENCODER_PREFIXES = ("mae.encoder.", "net.encoder.", "encoder.")


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


def load_classifier(ckpt: str | Path, num_classes: int):
    """The Classifier of ``ckpt`` in eval mode; its class count must equal ``num_classes``.

    A distilled student loads as a plain Classifier (its teacher is not needed to predict).
    """
    cfg = run_config(ckpt)
    target = str(cfg.model.get("_target_", ""))
    if target.endswith("Distillation"):
        cfg.model._target_ = "lightning_modules.classifier.Classifier"
        for key in ("teacher_ckpt", "alpha", "temperature"):
            cfg.model.pop(key, None)
    elif not target.endswith("Classifier"):
        raise CheckpointError(f"{ckpt} is not a classifier checkpoint ({cfg.model.get('_target_')})")
    if cfg.model.num_classes != num_classes:
        raise CheckpointError(
            f"{ckpt} predicts {cfg.model.num_classes} classes but the dataset has {num_classes}; "
            "evaluate it on the dataset it was trained for"
        )
    optimizer = cfg.model.get("optimizer") or {}
    for key in ("lr", "weight_decay"):  # runs saved before model.lr / model.weight_decay existed
        if key in optimizer:
            cfg.model[key] = cfg.model.get(key, optimizer.pop(key))
    net = cfg.model.get("net", {})
    # the full weights come from the checkpoint below: never re-fetch or re-read initial weights
    for key, off in (("pretrained_ckpt", None), ("pretrained", False), ("pretrained_file", None)):
        if key in net:
            net[key] = off
    model = instantiate(cfg.model, _convert_="all")
    missing, unexpected = model.load_state_dict(read_checkpoint(ckpt)["state_dict"], strict=False)
    metric_states = tuple(f"{name}." for name, m in model.named_modules() if isinstance(m, Metric))
    missing = [k for k in missing if not k.startswith(metric_states)]  # e.g. best-so-far trackers
    if missing or unexpected:
        raise CheckpointError(f"{ckpt} does not fit its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()
