"""Where training stands (``TrainingClock``) and the teachers' published momentum schedules."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingClock:
    """Where training stands, for the strategies' schedules.

    epoch: 0-based; step: 0-based index of the current batch, counted over all epochs;
    total_steps: batches in the whole run (None: unknown); progress: share of training done
    after this epoch (or step), in (0, 1].
    """

    epoch: int = 0
    step: int = 0
    total_steps: int | None = None
    progress: float = 1.0

    def step_share(self) -> float:
        """step / total_steps in [0, 1] (per-iteration schedules); needs ``total_steps``."""
        if not self.total_steps:
            raise ValueError("a per-step schedule needs the run's length: set trainer.max_epochs or trainer.max_steps")
        return min(self.step / self.total_steps, 1.0)


def linear_momentum(momentum: tuple[float, float], epoch: int, ramp_epochs: int) -> float:
    """HPM's teacher momentum: ``start + min(epoch, ramp) / ramp * (end - start)`` (its code:
    0.999 -> 0.9999 over the first 100 epochs, set at the start of each epoch)."""
    start, end = momentum
    return start + min(epoch, ramp_epochs) / ramp_epochs * (end - start)


def cosine_momentum(momentum: tuple[float, float], share: float) -> float:
    """DINO's / iBOT's per-iteration teacher momentum: ``end + (start - end) * (1 + cos(pi * share)) / 2``
    at ``share`` = iteration / iterations of the run (AttMask: 0.996 -> 1)."""
    start, end = momentum
    return end + (start - end) * (1 + math.cos(math.pi * share)) / 2
