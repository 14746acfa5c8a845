"""What a command does after a training stopped on a preemption signal (``callbacks.preemption``):
hand the job back to the scheduler and exit with ``PREEMPTED_EXIT``.

- Under submitit (``hydra/launcher=slurm``), the signal's previous handler is submitit's: it
  requeues the job with the same arguments (``max_num_timeout`` times for time limits, always for
  preemptions) and exits; the requeued job runs in the same folder and resumes.
- Under SLURM without submitit (an ``sbatch`` script with ``--signal=B:USR1@300``), global rank
  zero asks ``scontrol requeue $SLURM_JOB_ID`` (not with ``MEDMAE_REQUEUE=0``).
- Otherwise the message says how to continue: start the same command again in the same folder.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

from callbacks.preemption import PREEMPTED_EXIT, Preempted

log = logging.getLogger("train")


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` takes: ``<array job>_<task>`` for array jobs, else ``SLURM_JOB_ID``."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array is not None and os.environ.get("SLURM_ARRAY_TASK_ID") is not None:
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeue_slurm(job_id: str) -> bool:
    """``scontrol requeue <job_id>``; whether SLURM accepted it."""
    try:
        done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("scontrol requeue %s failed: %s", job_id, err)
        return False
    if done.returncode != 0:
        log.warning("scontrol requeue %s failed: %s", job_id, done.stderr.strip())
    return done.returncode == 0


def exit_preempted(err: Preempted, how_to_resume: str) -> None:
    """Print one line (``how_to_resume``: the command's own words), hand the job to the scheduler
    (see the module docstring), exit ``PREEMPTED_EXIT``."""
    print(f"\npreempted ({err.flag.name}): training stopped cleanly; {how_to_resume}", file=sys.stderr)
    previous = err.flag.previous_handler()
    if previous is not None:  # submitit's requeue (it exits itself)
        previous(getattr(signal, err.flag.name), None)
    elif (job := slurm_job_id()) and os.environ.get("MEDMAE_REQUEUE", "1") != "0" \
            and int(os.environ.get("SLURM_PROCID", 0)) == 0 and requeue_slurm(job):
        print(f"SLURM job {job} requeued", file=sys.stderr)
    sys.exit(PREEMPTED_EXIT)
