"""The study engine with fake step kinds: cache hits, invalidation, failure isolation,
SIGKILL-and-rerun, worker processes and submitit's local executor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from study_fakes import read_value
from worldrep import artifacts
from worldrep.study import cache
from worldrep.study.backends import (
    InProcess,
    ProcessPool,
    Submitit,
    resource_overrides,
    slurm_parameters,
)
from worldrep.study.executors import run_study
from worldrep.study.load import Resources, load_study

TESTS = Path(__file__).parent

FAKES = {
    "name": "fakes",
    "plugins": ["study_fakes"],
    "lists": {"xs": [1, 2, 3]},
    "steps": [
        {"name": "a-{x}", "kind": "fake", "grid": {"x": "xs"}, "value": "{x}"},
        {"name": "b-{x}-{y}", "kind": "fake", "grid": {"x": "xs", "y": "xs"}, "where": "x != y",
         "inputs": ["a-{x}", "a-{y}"], "value": 10, "atomic": False},
        {"name": "c", "kind": "fake", "inputs": ["b-1-2", "b-2-1"]},
    ],
}


def write_study(tmp_path: Path, data: dict, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def values(study, out) -> dict[str, int]:
    return {n: read_value(study.step_dir(out, n)) for n in study.steps
            if artifacts.is_complete(study.step_dir(out, n))}


def expected_values() -> dict[str, int]:
    a = {f"a-{x}": x for x in (1, 2, 3)}
    b = {f"b-{x}-{y}": 10 + x + y for x in (1, 2, 3) for y in (1, 2, 3) if x != y}
    return {**a, **b, "c": b["b-1-2"] + b["b-2-1"]}




def started(log: Path) -> list[str]:
    return [line.rsplit("-", 1)[0] for line in log.read_text().split()] if log.exists() else []


def test_runs_in_dependency_order_then_hits_the_cache(tmp_path, fake_log):
    study = load_study(write_study(tmp_path, FAKES))
    out = tmp_path / "out"
    report = run_study(study, out, log=lambda _: None)
    assert report.ok and len(report.ran) == 10
    assert values(study, out) == expected_values()
    order = started(fake_log)
    assert order.index("c") > max(order.index("b-1-2"), order.index("b-2-1"))
    again = run_study(load_study(write_study(tmp_path, FAKES)), out, log=lambda _: None)
    assert again.ran == [] and again.already_done == 10
    assert len(started(fake_log)) == 10


def test_steps_that_unblock_more_work_run_first(tmp_path, fake_log):
    study = load_study(write_study(tmp_path, FAKES))
    run_study(study, tmp_path / "out", log=lambda _: None)
    order = started(fake_log)
    # Among the b steps only b-1-2 and b-2-1 are needed by c: they run before the others.
    assert set(order[3:5]) == {"b-1-2", "b-2-1"}


def test_changing_one_setting_reruns_it_and_its_dependents_only(tmp_path, fake_log):
    out = tmp_path / "out"
    run_study(load_study(write_study(tmp_path, FAKES)), out, log=lambda _: None)
    fake_log.unlink()
    changed = yaml.safe_load(yaml.safe_dump(FAKES))
    changed["steps"].insert(0, {"name": "a-1", "kind": "fake", "value": 100})
    changed["steps"][1]["grid"] = {"x": [2, 3]}
    study = load_study(write_study(tmp_path, changed))
    report = run_study(study, out, log=lambda _: None)
    assert sorted(report.ran) == ["a-1", "b-1-2", "b-1-3", "b-2-1", "b-3-1", "c"]
    assert sorted(started(fake_log)) == sorted(report.ran)
    assert values(study, out)["c"] == (10 + 100 + 2) * 2


def test_a_failure_skips_its_dependents_only_and_is_reported(tmp_path, fake_log):
    failing = yaml.safe_load(yaml.safe_dump(FAKES))
    failing["steps"].insert(0, {"name": "a-2", "kind": "fake", "value": 2, "fail": True})
    failing["steps"][1]["grid"] = {"x": [1, 3]}
    study = load_study(write_study(tmp_path, failing))
    out = tmp_path / "out"
    report = run_study(study, out, log=lambda _: None)
    assert list(report.failed) == ["a-2"] and "asked to fail" in report.failed["a-2"]
    assert set(report.skipped) == {"b-1-2", "b-2-1", "b-2-3", "b-3-2", "c"}
    assert set(report.ran) == {"a-1", "a-3", "b-1-3", "b-3-1"}
    states = cache.study_states(study, out)
    assert states["a-2"].state == "failed" and "ValueError: asked to fail" in states["a-2"].why
    assert states["c"].state == "blocked" and states["b-1-2"].state == "blocked"
    text = cache.format_status(study, out, states)
    assert "failed   fake     a-2" in text and "asked to fail" in text
    # Fixed: the failed step and the skipped ones run; nothing else is redone.
    fixed = load_study(write_study(tmp_path, FAKES))
    fake_log.unlink()
    again = run_study(fixed, out, log=lambda _: None)
    assert again.ok and set(again.ran) == {"a-2", "b-1-2", "b-2-1", "b-2-3", "b-3-2", "c"}
    assert values(fixed, out) == expected_values()
    assert not cache.failure_file(fixed.step_dir(out, "a-2")).exists()


def test_worker_processes_give_the_same_results(tmp_path, fake_log):
    study = load_study(write_study(tmp_path, FAKES))
    out = tmp_path / "out"
    report = run_study(study, out, ProcessPool(2, study.plugins), log=lambda _: None)
    assert report.ok and values(study, out) == expected_values()


def test_submitit_local_executor_runs_one_job_per_step(tmp_path, fake_log):
    import submitit

    small = yaml.safe_load(yaml.safe_dump(FAKES))
    small["lists"]["xs"] = [1, 2]
    small["steps"][2]["inputs"] = ["b-1-2"]
    study = load_study(write_study(tmp_path, small))
    out = tmp_path / "out"
    executor = submitit.AutoExecutor(folder=tmp_path / "jobs" / "%j", cluster="local")
    backend = Submitit(executor, {"default": Resources(time_min=5)}, poll_s=0.2, max_jobs=2)
    report = run_study(study, out, backend, log=lambda _: None)
    assert report.ok and len(report.ran) == 5
    assert values(study, out)["c"] == 13
    job_dirs = [p for p in (tmp_path / "jobs").iterdir() if p.name.isdigit()]
    assert len(job_dirs) == 5  # one submitit job (a process of its own) per step


class _FakeSlurmJob:
    def __init__(self, job_id, result):
        self.job_id, self._result = job_id, result

    def done(self):
        return True

    def result(self):
        return self._result


class _FakeSlurm:
    """Records what a Slurm submission would ask; runs each job at submission (in
    dependency order, as Slurm's afterok would)."""

    cluster = "slurm"

    def __init__(self):
        self.params, self.submitted = {}, []

    def update_parameters(self, **kw):
        self.params = kw

    def submit(self, fn, unit):
        job = _FakeSlurmJob(str(100 + len(self.submitted)), fn(unit))
        self.submitted.append((unit[0].name, dict(self.params)))
        return job


def test_slurm_submits_every_step_at_once_with_afterok_dependencies(tmp_path, fake_log):
    study = load_study(write_study(tmp_path, FAKES))
    res = {"default": Resources(partition="cpu", time_min=30),
           "fake": Resources(gpus=1, mem_gb=16)}
    fake = _FakeSlurm()
    report = run_study(study, tmp_path / "out", Submitit(fake, res), log=lambda _: None)
    assert report.ok
    jobs = {name: str(100 + i) for i, (name, _) in enumerate(fake.submitted)}
    params = dict(fake.submitted)
    assert "slurm_dependency" not in params["a-1"]
    assert params["b-1-2"]["slurm_dependency"] == f"afterok:{jobs['a-1']}:{jobs['a-2']}"
    assert params["c"]["slurm_dependency"] == f"afterok:{jobs['b-1-2']}:{jobs['b-2-1']}"
    assert params["c"]["gpus_per_node"] == 1 and params["c"]["mem_gb"] == 16
    assert params["c"]["slurm_partition"] == "cpu" and params["c"]["timeout_min"] == 30


def test_resource_settings_from_the_command_line():
    res = resource_overrides({"train": Resources(gpus=1)},
                             ["partition=gpu", "train.time_min=600", "eval.mem_gb=4"])
    assert res["default"].partition == "gpu"
    assert res["train"].gpus == 1 and res["train"].time_min == 600
    assert res["eval"].mem_gb == 4
    params = slurm_parameters(res["train"], "pt1-1", ["7", "8"])
    assert params["slurm_dependency"] == "afterok:7:8" and params["gpus_per_node"] == 1
    with pytest.raises(Exception, match="unknown key 'gpu'"):
        resource_overrides({}, ["gpu=1"])


def _run_cli(study_path, out, **popen):
    return subprocess.Popen([sys.executable, "-m", "worldrep.cli", "run", str(study_path),
                             "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, **popen)


def test_sigkill_at_any_moment_then_rerun_completes_without_redoing(tmp_path, fake_log):
    slow = yaml.safe_load(yaml.safe_dump(FAKES))
    for decl in slow["steps"]:
        decl.update(files=3, sleep=0.08)
    path = write_study(tmp_path, slow)
    study = load_study(path)
    out = tmp_path / "out"
    finished_before: set[str] = set()
    # Kill while steps are being written: after the attempt's first or second step started,
    # at varying offsets into its 0.24 s of work (or into the next step).
    for attempt, pause in enumerate((0.0, 0.05, 0.13, 0.2, 0.29, 0.11)):
        proc = _run_cli(path, out)
        deadline = time.time() + 60
        while (len(started(fake_log)) < 1 + attempt % 2 and proc.poll() is None
               and time.time() < deadline):
            time.sleep(0.005)
        time.sleep(pause)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        states = cache.study_states(study, out)
        # Nothing half-written is taken as finished: a done step has all its files.
        for name, st in states.items():
            d = study.step_dir(out, name)
            if st.state == "done":
                assert (d / "value.json").exists() and (d / "part2.txt").exists()
            assert st.state in ("done", "pending")  # a killed runner leaves no 'running'
        assert not finished_before & set(started(fake_log))  # nothing finished was redone
        finished_before = {n for n, st in states.items() if st.state == "done"}
        fake_log.write_text("")
    assert _run_cli(path, out).wait() == 0
    assert not finished_before & set(started(fake_log))
    assert values(study, out) == expected_values()
    assert not list(out.rglob(".*.tmp-*"))


def test_in_process_backend_is_the_default(tmp_path, fake_log):
    study = load_study(write_study(tmp_path, FAKES))
    report = run_study(study, tmp_path / "o", InProcess(), log=lambda _: None, only=["b-1-2"])
    assert sorted(report.ran) == ["a-1", "a-2", "b-1-2"]


def test_the_output_directory_remembers_its_study_and_scale(tmp_path, fake_log):
    from typer.testing import CliRunner

    from worldrep.cli import app

    path = write_study(tmp_path, FAKES)
    out = tmp_path / "out"
    runner = CliRunner()
    ran = runner.invoke(app, ["run", str(path), "--out", str(out), "--scale", "10"])
    assert ran.exit_code == 0, ran.output
    status = runner.invoke(app, ["status", "--out", str(out)])  # neither study nor scale
    assert status.exit_code == 0 and "10 done" in status.output and "pending" not in status.output
    named = runner.invoke(app, ["status", str(path), "--out", str(out)])
    assert named.exit_code == 0 and "10 done" in named.output
    report = runner.invoke(app, ["report", "--out", str(out)])
    assert report.exit_code == 0 and (out / "report.html").is_file()
    assert (out / "findings.json").is_file()
    wrong = runner.invoke(app, ["status", str(path), "--out", str(out), "--scale", "5"])
    assert wrong.exit_code == 2
    assert f"holds the study {path.resolve()} at scale 10, not {path.resolve()} at scale 5" \
        in wrong.output.replace("\n", " ")
    other = write_study(tmp_path, {**FAKES, "name": "other"}, name="other.yaml")
    mismatch = runner.invoke(app, ["run", str(other), "--out", str(out), "--scale", "10"])
    assert mismatch.exit_code == 2 and "other.yaml" in mismatch.output
    again = runner.invoke(app, ["run", "--out", str(out)])  # the recorded scale, nothing to do
    assert again.exit_code == 0 and "0 ran, 10 already done" in again.output


def test_status_watch_table_counts_kinds_names_the_running_and_gives_an_eta(tmp_path, fake_log):
    """The live table: counts by kind and state, each running step with its holder and how
    long it has held it, and an ETA from the durations measured in this output directory."""
    from rich.console import Console

    from worldrep.study import locks
    from worldrep.study.watch import eta_seconds, status_table

    study = load_study(write_study(tmp_path, FAKES))
    out = tmp_path / "out"
    run_study(study, out, only=["a-1", "a-2", "a-3"], log=lambda _: None)
    before = Console(record=True, width=120)
    before.print(status_table(study, out))
    text = before.export_text()
    assert "fake" in text and "held by" not in text  # nothing runs: no running table
    assert "7 steps to go; ETA" in text  # 3 done, 6 b's and c pending
    held = study.step_dir(out, "b-1-2")
    holder = {**locks.me(), "started": time.time() - 42}
    assert locks.acquire(held, holder) is None
    try:
        now = Console(record=True, width=160)
        now.print(status_table(study, out))
        text = now.export_text()
        assert "b-1-2" in text and f"pid {os.getpid()}" in text and ", 42s" in text
        states = cache.study_states(study, out)
        assert states["b-1-2"].state == "running"
        # Every step took 2 s: 6 pending + half of the running one, over one runner.
        took = {"fake": [2.0, 2.0, 2.0]}
        assert eta_seconds(study, states, took) == pytest.approx(6 * 2.0 + 1.0)
    finally:
        locks.release(held)
    assert eta_seconds(study, cache.study_states(study, out), {}) is None  # nothing measured
