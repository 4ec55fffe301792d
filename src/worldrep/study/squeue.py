"""Following Slurm jobs with squeue on a cluster that keeps no accounting (`sacct` fails).

submitit follows its Slurm jobs with `sacct` only. The command is fixed in one watcher object
that every `SlurmJob` shares (the class attribute `SlurmJob.watcher`, a `SlurmInfoWatcher`);
neither `AutoExecutor` nor `SlurmExecutor` takes another, and submitit's maintainers hold
that sacct is required (facebookincubator/submitit#1720: "sacct is required to know the status
of the job"). Without accounting every poll runs sacct, fails, and prints its error.

So on such a cluster `follow_with_squeue` replaces that shared watcher, for this process, with
one that asks squeue for the same columns. A job that has left the queue has no row: it is
done, and the runner reads its outcome from its steps' directories
(worldrep.study.backends.Submitit.outcomes). This leans on private parts of submitit 1.5
(`_make_command`, `_registered`, `_finished`, `_delay_s`); tests/test_squeue.py checks that
the installed submitit still has them.
"""

from __future__ import annotations

import subprocess

import submitit.slurm.slurm as submitit_slurm


class SqueueWatcher(submitit_slurm.SlurmInfoWatcher):
    """submitit's Slurm watcher, asking squeue instead of sacct (finished jobs: no row)."""

    def _make_command(self) -> list[str] | None:
        ids = sorted({x.split("_")[0] for x in self._registered - self._finished})
        if not ids:
            return None
        # sacct's header, then squeue's rows in the same columns
        return ["sh", "-c", "echo 'JobID|State|NodeList'; squeue -h -o '%i|%T|%N' -j "
                + ",".join(ids) + " 2>/dev/null || true"]


def has_accounting() -> bool:
    """Whether `sacct` answers here."""
    try:
        probe = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True,
                               text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def follow_with_squeue() -> bool:
    """Where the cluster keeps no accounting, make every submitit Slurm job of this process
    follow its state with squeue (once). True if it does."""
    if has_accounting():
        return False
    old = submitit_slurm.SlurmJob.watcher
    if not isinstance(old, SqueueWatcher):
        submitit_slurm.SlurmJob.watcher = SqueueWatcher(delay_s=getattr(old, "_delay_s", 60))
    return True
