"""Checks shared by the manually optimised modules (MAE pretraining, MLO-MAE)."""

from __future__ import annotations

import lightning as L


def check_manual_optimization_trainer(trainer: L.Trainer) -> None:
    """Manual optimisation steps and clips by hand: Trainer-level clipping or accumulation
    would be ignored or rejected mid-run, so refuse them before training starts."""
    if trainer.gradient_clip_val:
        raise ValueError(
            f"trainer.gradient_clip_val={trainer.gradient_clip_val} cannot be used with manual optimisation; "
            "set trainer.gradient_clip_val=null and model.grad_clip instead"
        )
    if trainer.accumulate_grad_batches != 1:
        raise ValueError(
            f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches} cannot be used with manual "
            "optimisation; set it to 1 and raise data.batch_size instead"
        )
