"""Epoch-level determinism, so that a run resumed from ``last.ckpt`` ends exactly where an
uninterrupted run with the same seed does.

Every training epoch starts from random states derived from (seed, epoch): the shuffled
order (``RandomSampler`` draws from the global generator; our samplers use (seed, epoch)
via ``set_epoch``), augmentation, dropout and masking noise of epoch e never depend on how
the run got there (a sanity check, an extra validation pass or a restart). The torch,
CUDA, numpy and python generator states are also saved in every checkpoint and restored
when training resumes from it.
"""

from __future__ import annotations

import hashlib
import random

import lightning as L
import numpy as np
import torch

RNG_KEY = "rng_states"


def epoch_seed(seed: int, epoch: int) -> int:
    """A 32-bit seed of its own for each (seed, epoch)."""
    return int.from_bytes(hashlib.sha256(f"epoch:{seed}:{epoch}".encode()).digest()[:4], "little")


def rng_states() -> dict:
    """The torch (CPU and every CUDA device), numpy and python generator states, as tensors and
    plain Python values so that ``torch.load(..., weights_only=True)`` still reads the checkpoint."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():  # a resume may see fewer devices than the save
        for device, state in enumerate(states["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, device)


class EpochSeeding(L.Callback):
    """Seeds every training epoch from (seed, epoch, rank) and keeps generator states in checkpoints.

    ``pipeline.run`` adds it to every run; ``seed`` is the run's seed.

    Lightning creates the first epoch's loader iterator when ``fit`` sets up the data, before the
    samplers' ``set_epoch`` and before any epoch hook (with workers, they start fetching then);
    every later epoch's iterator is created after ``on_train_epoch_start``. So when a ``fit``'s
    first epoch runs its epoch-start hooks (epoch 0, or a resume from a checkpoint saved at the
    end of a training epoch, as ``callbacks.last_checkpoint`` does), its iterator is created
    again here, after seeding: every epoch then draws its order and augmentations the same way.
    (A resume from a checkpoint saved at validation end first finishes that epoch; Lightning then
    creates the next epoch's iterator after the seeding by itself.)
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._first_epoch: int | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first_epoch = trainer.current_epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        s = epoch_seed(self.seed, trainer.current_epoch) + trainer.global_rank
        torch.manual_seed(s)  # also seeds every CUDA device
        np.random.seed(s % 2**32)
        random.seed(s)
        if trainer.current_epoch == self._first_epoch:
            self._first_epoch = None
            fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
            if fetcher is None:
                raise RuntimeError("EpochSeeding: this Lightning version has no fit_loop._data_fetcher; "
                                   "the first epoch's data order cannot be made reproducible")
            iter(fetcher)  # a fresh iterator: the samplers' set_epoch has run, the RNG is seeded

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[RNG_KEY] = rng_states()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if RNG_KEY in checkpoint:
            set_rng_states(checkpoint[RNG_KEY])
