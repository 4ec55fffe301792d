"""Studies on a real Slurm cluster (`scripts/slurm-test-cluster.sh` starts one; CI does).

Every test runs `worldrep run --executor slurm` as a user would, against slurmctld/slurmd on
this machine (no accounting: no sacct), and reads back what ran from the step directories
and from Slurm itself. Skipped when no cluster answers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from worldrep import artifacts
from worldrep.study import cache, load_study
from worldrep.study.units import slurm_units

TESTS = Path(__file__).parent


def _cluster_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(s in out.stdout for s in ("idle", "mixed", "alloc"))


pytestmark = [pytest.mark.slurm, pytest.mark.skipif(
    not _cluster_up(), reason="no Slurm cluster (start one with scripts/slurm-test-cluster.sh)")]

FAKES = {
    "name": "slurm-fakes", "plugins": ["study_fakes"], "lists": {"xs": [1, 2]},
    "steps": [
        {"name": "a-{x}", "kind": "fake", "grid": {"x": "xs"}, "value": "{x}"},
        {"name": "b", "kind": "fake", "inputs": ["a-1", "a-2"], "value": 10},
        {"name": "c", "kind": "fake", "inputs": ["b"], "value": 100},
        {"name": "d", "kind": "fake", "inputs": ["a-2"], "value": 1000},
    ],
}


@pytest.fixture
def env(tmp_path):
    log = tmp_path / "starts.log"
    src = Path(__import__("worldrep").__file__).parents[1]
    return {**os.environ, "WORLDREP_FAKE_LOG": str(log),
            "PYTHONPATH": os.pathsep.join([str(TESTS), str(src), os.environ.get("PYTHONPATH", "")])}


def started(env) -> list[str]:
    log = Path(env["WORLDREP_FAKE_LOG"])
    return sorted(line.rsplit("-", 1)[0] for line in log.read_text().split()) if log.exists() else []


def write(tmp_path, data) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run(path, out, env, *extra, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worldrep.cli", "run", str(path), "--out",
                           str(out), "--executor", "slurm", *extra], env=env, text=True,
                          capture_output=True, timeout=timeout)


def jobs_in(out: Path) -> set[str]:
    folder = out / "slurm"
    return {p.name for p in folder.iterdir() if p.name.isdigit()} if folder.is_dir() else set()


def job_state(job_id: str, settle_s: float = 30.0) -> str:
    """The job's state once Slurm has settled it: a job whose work is done can still show
    RUNNING or COMPLETING for a moment (its step ending, slurmd cleaning up; seen on a
    loaded machine), so those are waited out for up to `settle_s`."""
    deadline = time.monotonic() + settle_s
    while True:
        out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True)
        state = next((w.split("=", 1)[1] for w in out.stdout.split()
                      if w.startswith("JobState=")), "UNKNOWN")
        if state not in ("RUNNING", "COMPLETING") or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def test_a_study_runs_on_slurm_and_a_rerun_submits_nothing(tmp_path, env):
    path, out = write(tmp_path, FAKES), tmp_path / "out"
    result = run(path, out, env)
    assert result.returncode == 0, result.stdout + result.stderr
    study = load_study(path)
    assert {s.state for s in cache.study_states(study, out).values()} == {"done"}
    assert started(env) == ["a-1", "a-2", "b", "c", "d"]
    assert len(jobs_in(out)) == len(slurm_units(study))
    states = {j: job_state(j) for j in jobs_in(out)}
    assert set(states.values()) == {"COMPLETED"}, states
    # No accounting here: submitit's sacct warnings are said once, not at every poll.
    assert (result.stdout + result.stderr).count("sacct") <= 1
    before = jobs_in(out)
    again = run(path, out, env)
    assert again.returncode == 0 and "0 ran, 5 already done" in again.stdout
    assert jobs_in(out) == before  # nothing submitted
    assert not list(out.rglob("*.lock"))


def test_a_failed_step_fails_its_job_and_its_dependents_never_start(tmp_path, env):
    failing = yaml.safe_load(yaml.safe_dump(FAKES))
    failing["steps"].insert(0, {"name": "a-1", "kind": "fake", "fail": True})
    failing["steps"][1]["grid"] = {"x": [2]}
    path, out = write(tmp_path, failing), tmp_path / "out"
    result = run(path, out, env)
    assert result.returncode == 1
    assert "FAILED   fake     a-1" in result.stdout and "asked to fail" in result.stdout
    assert started(env) == ["a-1", "a-2", "d"]  # b and c never started
    study = load_study(path)
    states = cache.study_states(study, out)
    assert states["a-1"].state == "failed" and states["d"].state == "done"
    assert states["b"].state == "blocked" and states["c"].state == "blocked"
    assert not artifacts.is_complete(study.step_dir(out, "b"))
    failed_jobs = [j for j in jobs_in(out) if job_state(j) == "FAILED"]
    assert len(failed_jobs) == 1  # the job of the failed step failed...
    assert all(job_state(j) in ("COMPLETED", "CANCELLED", "FAILED") for j in jobs_in(out))
    # ... and after the fix a rerun redoes exactly the failed step and its dependents.
    Path(env["WORLDREP_FAKE_LOG"]).write_text("")
    fixed = run(write(tmp_path, FAKES), out, env)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert started(env) == ["a-1", "b", "c"]


def test_a_runner_killed_mid_study_then_rerun_runs_every_step_once(tmp_path, env):
    slow = yaml.safe_load(yaml.safe_dump(FAKES))
    for decl in slow["steps"]:
        decl.update(files=4, sleep=0.5)
    path, out = write(tmp_path, slow), tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "worldrep.cli", "run", str(path), "--out",
                             str(out), "--executor", "slurm"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not started(env) and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner dies; its jobs live on in Slurm
    proc.wait()
    result = run(path, out, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert started(env) == ["a-1", "a-2", "b", "c", "d"]  # each step ran once
    study = load_study(path)
    assert {s.state for s in cache.study_states(study, out).values()} == {"done"}


TRAIN = {
    "name": "slurm-train", "seed": 42, "pack": "auto",
    "world": {"min_population": 5000000},
    "defaults": {"train": {
        "model": {"preset": None, "hidden": 16, "layers": 1, "heads": 2, "intermediate": 32},
        "batch_size": 16, "steps": 30, "progress": False, "threads": 1,
        "eval": {"every": 0.5, "rows_per_task": 8, "generate": False},
        "checkpoints": {"every": 0.5}}},
    "datasets": [{"name": "d", "task": "distance", "n_train": 400, "n_val": 16,
                  "n_test": 20}],
    "runs": [
        {"name": "good", "data": "d", "evals": ["d"], "reps": {"task": "distance",
                                                              "layers": [1]}},
        # An absurd learning rate without clipping: this run diverges; it trains in the
        # same pack (same architecture, length, batch) as the good one.
        {"name": "bad", "data": "d", "evals": ["d"], "reps": {"task": "distance", "layers": [1]},
         "optimizer": {"lr": 1.0e+4, "grad_clip": None, "warmup_steps": 0}},
    ],
    "analyses": [{"name": "probe-good", "kind": "probe", "reps": ["good.reps"], "n_train": 20,
                  "n_test": 10, "method": "ridge"},
                 {"name": "probe-bad", "kind": "probe", "reps": ["bad.reps"], "n_train": 20,
                  "n_test": 10, "method": "ridge"}],
}


def test_a_pack_on_slurm_runs_the_dependents_of_its_good_runs_only(tmp_path, env):
    path, out = write(tmp_path, TRAIN), tmp_path / "out"
    study = load_study(path)
    units = slurm_units(study)
    assert ["good", "bad"] in [u.steps for u in units]  # one job trains both
    assert ["good.eval.d", "good.reps"] in [u.steps for u in units]  # one job after the run
    result = run(path, out, env, timeout=600)
    assert result.returncode == 1
    assert "FAILED   train    bad" in result.stdout and "diverged" in result.stdout
    states = cache.study_states(study, out)
    assert {n: states[n].state for n in ("good", "good.eval.d", "good.reps", "probe-good")} \
        == dict.fromkeys(("good", "good.eval.d", "good.reps", "probe-good"), "done")
    for name in ("bad.eval.d", "bad.reps", "probe-bad"):
        assert states[name].state == "blocked", (name, states[name])
        assert not study.step_dir(out, name).exists()  # nothing cached on top of a failure
    # The diverged run kept its last good checkpoint.
    assert (study.step_dir(out, "bad") / "checkpoints" / "checkpoint-0").is_dir()
