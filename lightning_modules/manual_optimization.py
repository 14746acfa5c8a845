"""Checks shared by the manually optimised modules (MAE pretraining, MLO-MAE)."""

from __future__ import annotations


def check_manual_optimization_trainer(gradient_clip_val: float | None, accumulate_grad_batches: int) -> None:
    """Manual optimisation steps and clips by hand: refuse Trainer-level clipping or
    accumulation (given as the Trainer's settings) before the Trainer is even built."""
    if gradient_clip_val:
        raise ValueError(
            f"trainer.gradient_clip_val={gradient_clip_val} cannot be used with manual optimisation; "
            "set trainer.gradient_clip_val=null and model.grad_clip instead"
        )
    if accumulate_grad_batches != 1:
        raise ValueError(
            f"trainer.accumulate_grad_batches={accumulate_grad_batches} cannot be used with manual "
            "optimisation; set it to 1 and raise data.batch_size instead"
        )
