"""Following Slurm jobs with squeue where sacct fails (worldrep.study.squeue): what the watcher
asks, that submitit reads its answer, that it replaces submitit's shared watcher once and only
without accounting, and that the installed submitit still has the private parts it uses."""

from __future__ import annotations

import os
import subprocess

import pytest
import submitit.slurm.slurm as submitit_slurm

from worldrep.study import squeue


@pytest.fixture
def shared_watcher():
    """submitit's class-wide watcher, put back after the test."""
    before = submitit_slurm.SlurmJob.watcher
    yield before
    submitit_slurm.SlurmJob.watcher = before


def test_submitit_still_has_what_the_watcher_leans_on():
    watcher = submitit_slurm.SlurmInfoWatcher(delay_s=5)
    assert callable(submitit_slurm.SlurmInfoWatcher._make_command)
    assert {"_registered", "_finished", "_delay_s"} <= set(vars(watcher))
    assert isinstance(submitit_slurm.SlurmJob.watcher, submitit_slurm.SlurmInfoWatcher)


def test_the_watcher_asks_squeue_in_sacct_columns_and_submitit_reads_the_answer(tmp_path):
    watcher = squeue.SqueueWatcher(delay_s=5)
    assert watcher._make_command() is None  # no job to follow: no call at all
    for job in ("12", "7_3"):
        watcher.register_job(job)
    command = watcher._make_command()
    assert command[:2] == ["sh", "-c"] and "squeue -h -o '%i|%T|%N' -j 12,7 " in command[2]
    fake = tmp_path / "squeue"  # a queue that still holds job 12 only
    fake.write_text("#!/bin/sh\necho '12|RUNNING|node1'\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    answer = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
    info = watcher.read_info(answer)
    assert info["12"]["State"] == "RUNNING" and "7" not in info


def test_squeue_replaces_the_watcher_once_and_only_without_accounting(monkeypatch,
                                                                      shared_watcher):
    monkeypatch.setattr(squeue, "has_accounting", lambda: True)
    assert squeue.follow_with_squeue() is False
    assert submitit_slurm.SlurmJob.watcher is shared_watcher
    monkeypatch.setattr(squeue, "has_accounting", lambda: False)
    assert squeue.follow_with_squeue() is True
    installed = submitit_slurm.SlurmJob.watcher
    assert isinstance(installed, squeue.SqueueWatcher)
    assert installed._delay_s == shared_watcher._delay_s
    assert squeue.follow_with_squeue() is True and submitit_slurm.SlurmJob.watcher is installed
