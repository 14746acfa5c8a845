"""Several sweep workers on one Optuna study: the storage, an exact trial budget, and
heartbeats that find the trials of a killed worker.

- Storage (``sweep.storage``): ``sqlite`` (``<sweep dir>/optuna.db``: one machine), ``journal``
  (``<sweep dir>/optuna.journal``, Optuna's journal file: a shared filesystem, several nodes)
  or an RDB URL (``postgresql://...``, ``mysql://...``).
- Claims: a worker starts a trial only while complete + pruned + running trials are fewer
  than ``sweep.n_trials``, checked and asked under a lock file in the sweep folder (created
  with O_EXCL, atomic on local and NFS filesystems), so N workers run exactly the budget.
- Heartbeats: a running trial's ``heartbeat`` user attribute is refreshed every
  ``sweep.heartbeat_interval`` seconds by its worker. A RUNNING trial silent for longer than
  ``sweep.grace_period`` (a killed worker) is marked FAILED by the next worker that claims,
  and enqueued again with the same parameters (up to ``sweep.max_retry`` times), as Optuna's
  ``RetryFailedTrialCallback`` does; live trials of other workers are never touched. The retry
  runs in the failed trial's folder and resumes from its ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna

from core.io import file_lock

RUNNING, WAITING = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def make_storage(kind: str | None, sweep_dir: Path) -> tuple[optuna.storages.BaseStorage, str]:
    """(storage, where it is) for ``sweep.storage``, read once: a damaged or unreachable store
    is a ValueError naming it and the fix, not a database traceback."""
    kind = kind or "sqlite"
    where = {"sqlite": sweep_dir / "optuna.db", "journal": sweep_dir / "optuna.journal"}.get(kind, kind)
    if kind not in ("sqlite", "journal") and "://" not in kind:
        raise ValueError(f"sweep.storage={kind!r} is invalid; allowed: sqlite, journal or an RDB URL (postgresql://...)")
    try:
        storage, where = _open_storage(kind, sweep_dir)
        storage.get_all_studies()
    except Exception as err:  # sqlite "file is not a database", a journal that does not parse, a server down
        detail = str(err).splitlines()[0] if str(err) else ""
        raise ValueError(f"{where} cannot be read as an Optuna study storage ({type(err).__name__}: {detail}); move "
                         f"it away to start a new study in {sweep_dir}, or set sweep.dir to another sweep folder") from err
    return storage, where


def _open_storage(kind: str, sweep_dir: Path) -> tuple[optuna.storages.BaseStorage, str]:
    if kind == "sqlite":
        return optuna.storages.RDBStorage(f"sqlite:///{sweep_dir / 'optuna.db'}"), str(sweep_dir / "optuna.db")
    if kind == "journal":
        path = sweep_dir / "optuna.journal"
        backend = optuna.storages.journal.JournalFileBackend(
            str(path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(path)))
        return optuna.storages.journal.JournalStorage(backend), str(path)
    return optuna.storages.RDBStorage(kind), kind


def last_beat(trial: optuna.trial.FrozenTrial) -> float:
    """When the trial's worker last showed life (its heartbeat, else its start), epoch seconds."""
    beat = trial.user_attrs.get("heartbeat")
    if beat is not None:
        return float(beat)
    return trial.datetime_start.timestamp() if trial.datetime_start else 0.0


def fail_stale_trials(study: optuna.Study, storage: optuna.storages.BaseStorage, grace_period: float,
                      max_retry: int, log) -> list[int]:
    """Mark RUNNING trials silent for ``grace_period`` s FAILED and enqueue their retries; call
    under the claim lock. Returns the failed trials' numbers."""
    now, failed = time.time(), []
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(RUNNING,)):
        if now - last_beat(trial) <= grace_period:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason",
                                        f"no heartbeat for {now - last_beat(trial):.0f} s (worker killed?)")
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # its worker finished it meanwhile
        failed.append(trial.number)
        enqueue_retry(study, trial, max_retry, log, "lost its worker")
    return failed


def enqueue_retry(study: optuna.Study, trial, max_retry: int, log, why: str) -> bool:
    """Enqueue a failed ``trial`` (an ``optuna.Trial`` or ``FrozenTrial``) again with its
    parameters, unless it used up ``max_retry``; the retry keeps the trial's run folder
    (user attribute ``run_dir``), where it resumes from the trial's ``checkpoints/last.ckpt``."""
    retries = int(trial.user_attrs.get("retries", 0))
    if retries >= max_retry:
        log.warning("trial %d %s: failed (no retries left)", trial.number, why)
        return False
    attrs = {"retry_of": trial.number, "retries": retries + 1}
    if trial.user_attrs.get("run_dir"):
        attrs["run_dir"] = trial.user_attrs["run_dir"]
    study.enqueue_trial(trial.params, user_attrs=attrs)
    log.warning("trial %d %s: failed and enqueued again (continues in %s)", trial.number, why,
                attrs.get("run_dir", "a new folder"))
    return True


def claim(study: optuna.Study, storage: optuna.storages.BaseStorage, n_trials: int, lock: Path,
          grace_period: float, max_retry: int, log) -> optuna.Trial | None | bool:
    """A new trial of this worker; None when the budget is taken by running trials (wait and
    try again); False when the study is done."""
    with file_lock(lock):
        fail_stale_trials(study, storage, grace_period, max_retry, log)
        finished = len(study.get_trials(deepcopy=False, states=FINISHED))
        if finished >= n_trials:
            return False
        if finished + len(study.get_trials(deepcopy=False, states=(RUNNING,))) >= n_trials:
            return None
        trial = study.ask()  # a waiting (enqueued or retried) trial first
        trial.set_user_attr("heartbeat", time.time())
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        return trial


@contextmanager
def heartbeat(trial: optuna.Trial, interval: float) -> Iterator[None]:
    """Refresh the trial's ``heartbeat`` every ``interval`` seconds while the block runs."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(interval):
            try:
                trial.set_user_attr("heartbeat", time.time())
            except optuna.exceptions.UpdateFinishedTrialError:  # finished meanwhile (e.g. failed as stale)
                return
            except Exception as err:  # a transient storage error ("database is locked"): beat again later
                logging.getLogger("sweep").warning("heartbeat of trial %d not recorded: %s", trial.number, err)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
