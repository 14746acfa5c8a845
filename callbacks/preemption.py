"""Stop a training cleanly when the scheduler announces its end (SLURM's signal before the time
limit, a preemption's SIGTERM, ``kill``), so that it resumes from its own ``checkpoints/last.ckpt``
when started again in the same folder (``pipeline.run`` resumes an unfinished run by itself).

``preemption_signals()`` installs the handlers for the length of a run and records the first
signal; ``StopOnSignal`` ends the fit at the next batch boundary by raising ``Preempted``
(every DDP rank at the same batch: the flag is reduced over the ranks). Nothing is saved at the
signal: the run goes back to its last epoch-end checkpoint, which keeps a resumed run identical
to an uninterrupted one (``docs/training.md``); the work since then is done again.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import lightning as L

log = logging.getLogger(__name__)

PREEMPTION_SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGTERM")  # Lightning's SLURM default, submitit's, preemption / kill
PREEMPTED_EXIT = 75  # sysexits' EX_TEMPFAIL: a temporary failure, run again to continue


@dataclass
class SignalFlag:
    """The first preemption signal received (``name``), and the handler each signal had before
    (``previous``: e.g. submitit's requeue of USR2, called after the clean stop)."""

    name: str | None = None
    previous: dict[str, object] = field(default_factory=dict)

    def handle(self, signum: int, frame) -> None:
        if self.name is None:
            self.name = signal.Signals(signum).name
            log.warning("%s received: training stops at the next batch and resumes from checkpoints/last.ckpt "
                        "when the run is started again in its folder", self.name)

    def __getstate__(self) -> dict:  # a spawned process gets the flag, not this process's handlers
        return {"name": self.name, "previous": {}}

    def previous_handler(self):
        """The handler the received signal had before ours, when it is a Python callable (else None)."""
        handler = self.previous.get(self.name)
        return handler if callable(handler) else None


class Preempted(BaseException):
    """Training stopped on a preemption signal (a BaseException, like KeyboardInterrupt: no
    ``except Exception`` of a trial or a stage takes it for a failure of the run itself)."""

    def __init__(self, flag: SignalFlag) -> None:
        super().__init__(f"stopped on {flag.name}")
        self.flag = flag


@contextmanager
def preemption_signals(names: tuple[str, ...] = PREEMPTION_SIGNALS) -> Iterator[SignalFlag]:
    """Handle ``names`` with a ``SignalFlag`` while the block runs (main thread only; elsewhere
    the flag never rises), then restore the previous handlers."""
    flag = SignalFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    for name in names:
        signum = getattr(signal, name)
        flag.previous[name] = signal.signal(signum, flag.handle)
    try:
        yield flag
    finally:
        for name, handler in flag.previous.items():
            signal.signal(getattr(signal, name), handler if handler is not None else signal.SIG_DFL)


class StopOnSignal(L.Callback):
    """Raises ``Preempted`` at the end of the first training batch after ``flag`` rose on any rank
    (or, in a single process, of the first validation batch of a fit)."""

    def __init__(self, flag: SignalFlag) -> None:
        self.flag = flag

    def _check(self, trainer: L.Trainer) -> None:
        raised = self.flag.name is not None
        if trainer.world_size > 1:  # every rank stops at the same batch
            raised = trainer.strategy.reduce_boolean_decision(raised, all=False)
        if raised:
            if self.flag.name is None:
                self.flag.name = "a signal on another rank"
            raise Preempted(self.flag)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        self._check(trainer)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        # one process only: DDP ranks may hold different numbers of validation batches (unpadded), so a
        # reduction per validation batch could wait forever; under DDP the next training batch stops them
        if trainer.state.fn == "fit" and not trainer.sanity_checking and trainer.world_size == 1:
            self._check(trainer)
