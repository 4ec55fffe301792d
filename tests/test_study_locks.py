"""One step, one runner; a failure stops what depends on it; nothing runs on an unfinished
input."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from worldrep import artifacts
from worldrep.cli import app
from worldrep.study import cache, load_study, locks
from worldrep.study.executors import run_study, step_jobs
from worldrep.study.runner import BLOCKED, LOCKED, UnitFailed, run_step, run_unit_job

TESTS = Path(__file__).parent

SLOW = {
    "name": "slow", "plugins": ["study_fakes"], "lists": {"xs": [1, 2, 3]},
    "steps": [
        {"name": "a-{x}", "kind": "fake", "grid": {"x": "xs"}, "value": "{x}", "files": 4,
         "sleep": 0.1},
        {"name": "b", "kind": "fake", "inputs": ["a-1", "a-2", "a-3"], "files": 4, "sleep": 0.1},
        {"name": "c", "kind": "fake", "inputs": ["b"], "value": 1},
    ],
}




def started(log: Path) -> list[str]:
    return [line.rsplit("-", 1)[0] for line in log.read_text().split()] if log.exists() else []


def write(tmp_path, data, name="study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# -- the lock itself -------------------------------------------------------------------------------
def test_a_lock_has_one_holder_and_a_dead_holder_is_broken(tmp_path):
    step = tmp_path / "train" / "x-123"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from worldrep.study import locks; "
        f"assert locks.acquire(Path({str(step)!r})) is None; print('held', flush=True); "
        "time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    info = locks.acquire(step)
    assert info is not None and info["pid"] == holder.pid  # a live holder keeps it
    assert "pid" in locks.describe(info) and socket.gethostname() in locks.describe(info)
    holder.kill()
    holder.wait()
    assert locks.acquire(step) is None  # its holder died: broken, now ours
    assert locks.read(step)["pid"] == os.getpid()
    locks.release(step)
    assert locks.read(step) is None


def test_a_reused_pid_does_not_keep_a_lock(tmp_path):
    step = tmp_path / "x-1"
    # A holder whose pid is alive (ours) but started at another time is another process.
    stale = {**locks.me(), "pid": os.getppid(), "pid_start": "0"}
    locks.lock_file(step).write_text(json.dumps(stale))
    assert locks.acquire(step) is None


def test_unlock_clears_what_cannot_be_vouched_for(tmp_path, fake_log):
    study = load_study(write(tmp_path, SLOW))
    out = tmp_path / "out"
    foreign = {"pid": 1, "host": "another-host", "started": time.time()}
    locks.lock_file(study.step_dir(out, "a-1")).parent.mkdir(parents=True)
    locks.lock_file(study.step_dir(out, "a-1")).write_text(json.dumps(foreign))
    assert locks.acquire(study.step_dir(out, "a-2")) is None  # held by this live process
    states = cache.study_states(study, out)
    assert states["a-1"].state == "running" and "another-host" in states["a-1"].why
    status = CliRunner().invoke(app, ["status", str(write(tmp_path, SLOW)), "--out", str(out)])
    assert "pid 1 on another-host" in status.output
    result = CliRunner().invoke(app, ["unlock", str(write(tmp_path, SLOW)), "--out", str(out)])
    assert result.exit_code == 0 and "cleared 1 lock(s): a-1" in result.output
    assert locks.read(study.step_dir(out, "a-2")) is not None  # a live local holder stays
    forced = CliRunner().invoke(app, ["unlock", str(write(tmp_path, SLOW)), "--out", str(out),
                                      "--force"])
    assert "a-2" in forced.output and locks.read(study.step_dir(out, "a-2")) is None


def test_two_runners_never_run_the_same_step(tmp_path, fake_log):
    path = write(tmp_path, SLOW)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "worldrep.cli", "run", str(path), "--out", str(out)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(0.3)
    second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = [p.communicate(timeout=120)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    assert sorted(started(fake_log)) == ["a-1", "a-2", "a-3", "b", "c"]  # each exactly once
    assert any("running elsewhere" in text or "by another runner" in text for text in outputs)
    study = load_study(path)
    assert {s.state for s in cache.study_states(study, out).values()} == {"done"}
    assert not list(out.rglob("*.lock"))


def test_a_locked_step_is_not_run(tmp_path, fake_log):
    study = load_study(write(tmp_path, SLOW))
    out = tmp_path / "out"
    job = step_jobs(study, out)["a-1"]
    locks.lock_file(Path(job.out)).parent.mkdir(parents=True)
    locks.lock_file(Path(job.out)).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    outcome = run_step(job)
    assert outcome.status == LOCKED and "pid 1 on elsewhere" in outcome.error
    assert started(fake_log) == []


# -- inputs and failures ------------------------------------------------------------------------
def test_a_step_refuses_an_input_that_is_missing_unfinished_or_failed(tmp_path, fake_log):
    study = load_study(write(tmp_path, SLOW))
    out = tmp_path / "out"
    job = step_jobs(study, out)["b"]
    a1 = study.step_dir(out, "a-1")
    outcome = run_step(job)
    assert outcome.status == BLOCKED and "input 'a-1' is not done: it does not exist" in outcome.error
    a1.mkdir(parents=True)  # a killed writer's half directory: no manifest
    (a1 / "value.json").write_text('{"value": 1}')
    outcome = run_step(job)
    assert "input 'a-1' is not done: it is not finished" in outcome.error
    cache.record_failure(a1, ValueError("boom"))
    outcome = run_step(job)
    assert "input 'a-1' is not done: it failed (ValueError: boom)" in outcome.error
    b = Path(job.out)
    assert not b.exists() and cache.failure(b) is None  # a refusal records nothing
    assert started(fake_log) == []


def test_a_slurm_job_fails_when_a_step_of_its_unit_did_not_finish(tmp_path, fake_log):
    failing = yaml.safe_load(yaml.safe_dump(SLOW))
    failing["steps"].insert(0, {"name": "a-1", "kind": "fake", "fail": True})
    failing["steps"][1]["grid"] = {"x": [2, 3]}
    study = load_study(write(tmp_path, failing))
    out = tmp_path / "out"
    jobs = step_jobs(study, out)
    with pytest.raises(UnitFailed, match="a-1: failed"):
        run_unit_job([jobs["a-1"]])
    assert run_unit_job([jobs["a-2"]])[0].ok  # a job whose steps finish succeeds
    with pytest.raises(UnitFailed, match="b: blocked"):
        run_unit_job([jobs["b"]])


def test_after_a_fix_a_rerun_redoes_exactly_the_failed_steps_and_their_dependents(
        tmp_path, fake_log):
    failing = yaml.safe_load(yaml.safe_dump(SLOW))
    failing["steps"].insert(0, {"name": "a-2", "kind": "fake", "value": 2, "fail": True})
    failing["steps"][1]["grid"] = {"x": [1, 3]}
    path = write(tmp_path, failing)
    out = tmp_path / "out"
    report = run_study(load_study(path), out, log=lambda _: None)
    assert list(report.failed) == ["a-2"] and set(report.skipped) == {"b", "c"}
    assert not artifacts.is_complete(load_study(path).step_dir(out, "b"))
    fake_log.write_text("")
    again = run_study(load_study(write(tmp_path, SLOW)), out, log=lambda _: None)
    assert again.ok and sorted(again.ran) == ["a-2", "b", "c"]
    assert sorted(started(fake_log)) == ["a-2", "b", "c"]


def test_a_killed_runner_leaves_no_lock_that_stops_the_next(tmp_path, fake_log):
    path = write(tmp_path, SLOW)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "worldrep.cli", "run", str(path), "--out",
                             str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 60
    while not started(fake_log) and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.15)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(out.rglob("*.lock"))  # the killed runner's lock is still there
    report = run_study(load_study(path), out, log=lambda _: None)
    assert report.ok
    assert {s.state for s in cache.study_states(load_study(path), out).values()} == {"done"}
