"""Never lose a researcher's data (issue 17): every case of the fault report, as a test.

Output directories are replaced only if worldrep wrote them; every writer takes the step lock;
workers die with their runner; a bad input or environment is one `error:` line and exit 2,
with nothing half-written; manifests record their files' digests and a stage refuses a
tampered input. The cases use tiny worlds, datasets and models; real processes only for the
runner kill and the orphan worker.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from worldrep import artifacts
from worldrep.cli import app
from worldrep.data import DatasetSpec, make_dataset
from worldrep.errors import WorldrepError
from worldrep.pools import select
from worldrep.study import cache, load_study, locks
from worldrep.study.executors import run_study
from worldrep.study.runner import DONE, StepJob, run_step
from worldrep.world import World, WorldConfig, build_world

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()

TINY_MODEL = {"preset": None, "hidden": 8, "layers": 1, "heads": 2, "intermediate": 16}


def cli(*args) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def refused(code: int, output: str, *words: str) -> None:
    """Exit 2 with one `error:` line (no traceback) that says each of `words`."""
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines[-1].startswith("error: "), output
    assert "Traceback" not in output, output
    for word in words:
        assert word in lines[-1], (word, output)


def leftovers(directory: Path) -> list[str]:
    """Temporaries of writers (`.x.tmp-PID`, `.x.old-PID`) left anywhere below."""
    return [str(p) for p in directory.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def small_data(world, tmp_path_factory) -> Path:
    """60 distance rows among 16 big cities."""
    top = world.cities.sort_values("population", ascending=False).head(16)["city_id"]
    spec = DatasetSpec(task="distance", n_train=60, n_val=8, n_test=8, seed=1,
                       pool="ids:" + ",".join(str(i) for i in top))
    return make_dataset(world, spec, tmp_path_factory.mktemp("data") / "dist12")


@pytest.fixture(scope="module")
def train_yaml(tmp_path_factory) -> Path:
    return write_yaml(tmp_path_factory.mktemp("spec") / "t.yaml", {
        "model": TINY_MODEL, "batch_size": 16, "steps": 4, "progress": False, "track": [],
        "checkpoints": {"every": 2}, "eval": {"every": None, "generate": False}})


def copy_dataset(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# -- 1. --out never deletes what worldrep did not write ------------------------------------------
def test_an_existing_foreign_directory_is_refused_and_kept(tmp_path):
    p = tmp_path / "p"
    p.mkdir()
    (p / "t.txt").write_text("t")
    refused(*cli("world", "build", "--out", p), str(p), "not a worldrep artifact")
    assert (p / "t.txt").read_text() == "t" and not leftovers(tmp_path)


def test_dot_dot_never_reaches_a_parent(tmp_path):
    s = tmp_path / "s"
    (s / "a").mkdir(parents=True)
    (s / "b").mkdir()
    (s / "b" / "keep").write_text("x")
    refused(*cli("world", "build", "--out", f"{s}/a/.."), str(s))
    assert (s / "b" / "keep").read_text() == "x" and (s / "a").is_dir()
    assert not leftovers(tmp_path)


def test_out_that_is_a_file_is_refused_and_leaves_no_temporary(tmp_path, world_dir):
    f = tmp_path / "afile"
    f.write_text("mine")
    refused(*cli("world", "build", "--out", f), "is a file")
    refused(*cli("data", "make", "distance", "--world", world_dir, "--out", f,
                 "--n-train", 10), "is a file")
    assert f.read_text() == "mine" and not leftovers(tmp_path)


def test_an_artifact_of_another_kind_is_refused(tmp_path, world_dir, small_data):
    ds = copy_dataset(small_data, tmp_path / "ds")
    refused(*cli("world", "build", "--out", ds), "a dataset artifact, not a world")
    refused(*cli("data", "make", "distance", "--world", world_dir, "--out", world_dir,
                 "--n-train", 10), "is the world")
    assert artifacts.verify_problem(ds) is None and artifacts.verify_problem(world_dir) is None


def test_no_command_writes_into_its_own_input(tmp_path, small_data):
    ds = copy_dataset(small_data, tmp_path / "ds")
    before = (ds / "train.parquet").read_bytes()
    refused(*cli("data", "mix", "--out", ds, "--source", f"{ds}:10"), "source")
    refused(*cli("data", "mix", "--out", ds / "sub", "--source", f"{ds}:10"), "inside")
    refused(*cli("data", "mix", "--out", tmp_path, "--source", f"{ds}:10"))
    assert (ds / "train.parquet").read_bytes() == before
    assert artifacts.verify_problem(ds) is None and not (ds / "sub").exists()


def test_an_artifact_of_the_same_kind_is_replaced_whole_or_not_at_all(tmp_path):
    out = tmp_path / "a"
    with artifacts.artifact_dir(out, "probe") as tmp:
        (tmp / "x.txt").write_text("old")
        artifacts.write_manifest(tmp, "probe", {"v": 1})
    with pytest.raises(RuntimeError), artifacts.artifact_dir(out, "probe") as tmp:
        (tmp / "x.txt").write_text("half")
        raise RuntimeError("the stage failed")
    assert (out / "x.txt").read_text() == "old" and artifacts.verify_problem(out) is None
    with artifacts.artifact_dir(out, "probe") as tmp:
        (tmp / "x.txt").write_text("new")
        artifacts.write_manifest(tmp, "probe", {"v": 2})
    assert (out / "x.txt").read_text() == "new" and not leftovers(tmp_path)
    with pytest.raises(WorldrepError, match="a probe artifact, not a world"):
        with artifacts.artifact_dir(out, "world"):
            pass


def test_eval_and_analyses_refuse_a_foreign_out_before_any_work(tmp_path, small_data):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "n.txt").write_text("n")
    refused(*cli("eval", tmp_path / "no-run", "--data", small_data, "--out", foreign),
            "not an evaluation")
    refused(*cli("analyze", "probe", tmp_path / "no-reps", "--out", foreign),
            "not a worldrep artifact")
    assert [p.name for p in foreign.iterdir()] == ["n.txt"]
    run = tmp_path / "run"
    refused(*cli("eval", run, "--data", small_data, "--out", run), "never into the run")
    refused(*cli("eval", run, "--data", small_data, "--out", run / "checkpoints"),
            "never into the run")


# -- 2. one lock for every writer ------------------------------------------------------------------
def hold_for_live_process(path: Path) -> dict:
    """A lock on `path` whose holder is alive (this test's parent process)."""
    holder = {**locks.me(), "pid": os.getppid(),
              "pid_start": locks._process_start(os.getppid())}
    path.parent.mkdir(parents=True, exist_ok=True)
    locks.lock_file(path).write_text(json.dumps(holder))
    return holder


def test_every_writer_waits_for_the_lock(tmp_path, world_dir, small_data, train_yaml):
    out = tmp_path / "x"
    hold_for_live_process(out)
    commands = [
        ("world", "build", "--out", out),
        ("data", "make", "distance", "--world", world_dir, "--out", out, "--n-train", 10),
        ("data", "mix", "--out", out, "--source", f"{small_data}:10"),
        ("train", train_yaml, "--data", small_data, "--out", out),
        ("analyze", "probe", tmp_path / "no-reps", "--out", out),
    ]
    for command in commands:
        refused(*cli(*command), "being written by another process", f"unlock {out}")
    assert not out.exists() and not leftovers(tmp_path)


def test_a_second_train_on_one_out_is_refused_while_the_first_runs(tmp_path, small_data,
                                                                   train_yaml):
    """Two `worldrep train ... --out X`: the second stops at once; X holds one run's records."""
    spec = yaml.safe_load(train_yaml.read_text())
    long = write_yaml(tmp_path / "long.yaml", {**spec, "steps": 20_000, "compile": False,
                                               "checkpoints": {"every": 10}})
    out = tmp_path / "x"
    first = subprocess.Popen([sys.executable, "-m", "worldrep.cli", "train", str(long),
                              "--data", str(small_data), "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoints" / "checkpoint-0").is_dir() and time.time() < deadline:
            time.sleep(0.05)  # its start record is written before its first checkpoint
        assert locks.read(out)["pid"] == first.pid
        refused(*cli("train", long, "--data", small_data, "--out", out),
                f"pid {first.pid}", "being written")
    finally:
        first.kill()
        first.wait()
    starts = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
              if '"start"' in line]
    assert len(starts) == 1


def test_unlock_shows_and_clears_a_directory_lock(tmp_path):
    out = tmp_path / "run"
    hold_for_live_process(out)
    code, output = cli("unlock", out)
    assert code == 0 and "alive" in output and "kept" in output
    assert locks.read(out) is not None
    locks.lock_file(out).write_text(json.dumps({**locks.me(), "pid": 2 ** 22 + 7}))
    code, output = cli("unlock", out)
    assert code == 0 and "gone" in output and "cleared 1 lock" in output
    assert locks.read(out) is None


def fake_study(tmp_path: Path, **extra) -> Path:
    return write_yaml(tmp_path / "study.yaml", {
        "name": "f", "plugins": ["study_fakes"],
        "steps": [{"name": "a", "kind": "fake", "value": 1, **extra},
                  {"name": "b", "kind": "fake", "inputs": ["a"], "value": 2}]})


def test_a_step_found_done_once_locked_is_not_run_again(tmp_path, fake_log, monkeypatch):
    """Two runners: the second read the step as pending, the first finished it meanwhile;
    the second takes the lock, sees it done, and neither runs nor reports it as run."""
    study = load_study(fake_study(tmp_path))
    out = tmp_path / "out"
    before = cache.study_states(study, out)  # what the second runner saw when it started
    first = run_study(study, out, log=lambda _: None)
    assert first.ran == ["a", "b"]
    monkeypatch.setattr(cache, "study_states", lambda *_: before)
    lines: list[str] = []
    second = run_study(study, out, log=lines.append)
    assert second.ran == [] and second.already_done == 2 and second.ok
    assert sum("by another runner" in line for line in lines) == 2
    assert fake_log.read_text().split() == [study.steps["a"].dirname, study.steps["b"].dirname]
    job = StepJob(name="a", kind="fake", spec=study.steps["a"].spec, inputs={},
                  out=str(study.step_dir(out, "a")))
    outcome = run_step(job)
    assert outcome.status == DONE and outcome.elsewhere and len(fake_log.read_text().split()) == 2


# -- 3. no orphans; a killed runner leaves a truthful state -----------------------------------------
def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"  # a zombie has ended; only its exit status is left


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_workers_die_with_a_killed_runner(tmp_path, fake_log):
    path = write_yaml(tmp_path / "study.yaml", {
        "name": "slow", "plugins": ["study_fakes"], "lists": {"xs": [1, 2]},
        "steps": [{"name": "a-{x}", "kind": "fake", "grid": {"x": "xs"}, "files": 400,
                   "sleep": 0.5}]})  # far longer than the wait below: they must be killed
    proc = subprocess.Popen([sys.executable, "-m", "worldrep.cli", "run", str(path), "--out",
                             str(tmp_path / "out"), "--jobs", "2", "--no-report"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.time() + 120
        while not fake_log.exists() and time.time() < deadline:
            time.sleep(0.1)
        assert fake_log.exists(), "no step started"
        workers = [c for c in children(proc.pid) if "spawn_main" in
                   Path(f"/proc/{c}/cmdline").read_text(errors="replace")]
        assert workers
        proc.kill()  # the runner alone: nobody else signals its workers
        proc.wait()
        deadline = time.time() + 60
        while not all(gone(w) for w in workers) and time.time() < deadline:
            time.sleep(0.2)
        assert all(gone(w) for w in workers), workers
    finally:
        proc.kill()
        for w in workers:
            if not gone(w):
                os.kill(w, signal.SIGKILL)
    study = load_study(path)
    states = cache.study_states(study, tmp_path / "out")
    assert {s.state for s in states.values()} == {"pending"}  # dead holders: nobody runs them


TRAIN_STUDY = {
    "name": "t", "world": {"min_population": 5_000_000},
    "datasets": [{"name": "d", "task": "distance", "n_train": 64, "n_val": 8, "n_test": 8}],
    "runs": [{"name": "r", "data": "d", "model": TINY_MODEL, "steps": 40, "progress": False,
              "track": [], "eval": {"every": None, "generate": False}}],
}


def test_status_says_when_a_resume_state_is_damaged(tmp_path):
    path = write_yaml(tmp_path / "study.yaml", TRAIN_STUDY)
    out = tmp_path / "out"
    run = load_study(path).step_dir(out, "r")
    (run / "checkpoints" / "checkpoint-20").mkdir(parents=True)
    (run / "resume").mkdir()
    (run / "resume" / "state.pt").write_bytes(os.urandom(64))
    code, output = cli("status", path, "--out", out)
    line = next(line for line in output.splitlines() if " r " in f"{line} ")
    assert code == 0 and "pending" in line and "state.pt cannot be read" in line, output


def test_a_runner_killed_mid_training_leaves_a_state_status_tells_truthfully(tmp_path):
    long_run = {**TRAIN_STUDY, "runs": [{**TRAIN_STUDY["runs"][0], "steps": 5000,
                                         "compile": False, "checkpoints": {"every": 10}}]}
    path = write_yaml(tmp_path / "study.yaml", long_run)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "worldrep.cli", "run", str(path), "--out",
                             str(out), "--no-report"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    run = load_study(path).step_dir(out, "r")
    try:
        deadline = time.time() + 180
        while not (run / "checkpoints" / "checkpoint-20").is_dir() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)  # mid-training, wherever it is now
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (run / "checkpoints" / "checkpoint-20").is_dir() and not artifacts.is_complete(run)
    code, output = cli("status", "--out", out)
    line = next(line for line in output.splitlines() if " r " in f"{line} ")
    assert code == 0 and "pending" in line and "new" not in line, output
    resumes = int(line.split("resumes at step ")[1].split()[0])
    import torch

    state = torch.load(run / "resume" / "state.pt", weights_only=True)
    assert resumes == state["step"] >= 20


# -- 4. every bad input is one line and exit 2 --------------------------------------------------------
def study_with(tmp_path: Path, **steps) -> Path:
    """A study of fake steps (`steps`: name -> body)."""
    return write_yaml(tmp_path / "study.yaml", {
        "name": "f", "plugins": ["study_fakes"],
        "steps": [{"name": name, "kind": "fake", **body} for name, body in steps.items()]})


@pytest.mark.parametrize("body, words", [
    ({"grid": {"x": [1, 2]}, "where": "x[0] == 1"}, ["indexes 1 with 0"]),
    ({"grid": {"x": [1, 2]}, "where": "x % 0 == 1"}, ["divides by zero"]),
    ({"grid": {"x": ["a", "b"]}, "where": "'%999999999d' % x == 1"}, ["for numbers only"]),
    ({"grid": {"x": {"range": [0, 5, 0]}}}, ["step must not be 0"]),
    ({"grid": {"x": {"range": [0, 300_000_000]}}}, ["300,000,000 or more", "max_steps"]),
    ({"grid": {"x": {"permutations": {"range": [0, 40]}, "k": 12}}}, ["max_steps"]),
    ({"grid": {"x": {"range": [0, 1000]}, "y": {"range": [0, 1000]}}}, ["max_steps"]),
])
def test_bad_grids_and_where_are_refused_at_load(tmp_path, body, words):
    path = study_with(tmp_path, **{"s-{x}": body})
    refused(*cli("plan", path), *words)


def test_for_lists_cannot_multiply_without_bound(tmp_path, monkeypatch):
    from worldrep.study import grid
    from worldrep.study import load as load_module

    monkeypatch.setattr(grid, "MAX_RENDERED", 5_000)  # 10,000,000 by default
    monkeypatch.setattr(load_module, "MAX_RENDERED", 5_000)
    inner = {"for": {"j": {"range": [0, 100]}}, "item": "{j}"}
    body = {"grid": {"x": {"range": [0, 10]}},  # 10 steps x 100 x 100 values
            "inputs": [{"for": {"i": {"range": [0, 100]}}, "item": [inner]}]}
    refused(*cli("plan", study_with(tmp_path, **{"s-{x}": body})), "5,000 values")


def test_max_steps_is_configurable(tmp_path):
    path = study_with(tmp_path, **{"s-{x}": {"grid": {"x": {"range": [0, 30]}}}})
    assert cli("plan", path)[0] == 0
    refused(*cli("plan", path, "--set", "max_steps=20"), "max_steps 20")


def test_a_too_long_step_name_is_refused(tmp_path):
    refused(*cli("plan", study_with(tmp_path, **{"x" * 240: {}})), "at most 120 characters")


@pytest.mark.parametrize("text, words", ids=["binary", "empty", "duplicate-keys", "deep",
                                               "aliases"], argvalues=[
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary", ["not a text file"]),
    (b"", ["declares no steps"]),
    (b"name: a\nname: b\nsteps: []\n", ["given twice", "'name'"]),
    (b"lists: {x: " + b"[" * 5000 + b"]" * 5000 + b"}\n", ["nested more than"]),
    (b"a: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
     b"c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
     b"e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n",
     ["aliases are expanded"]),
])
def test_bad_study_files_are_refused(tmp_path, text, words):
    path = tmp_path / "study.yaml"
    path.write_bytes(text)
    refused(*cli("plan", path), *words)


def test_settings_known_at_load_are_checked_at_load(tmp_path):
    bad_lr = {**TRAIN_STUDY, "runs": [{**TRAIN_STUDY["runs"][0], "optimizer": {"lr": ".inf"}}]}
    text = yaml.safe_dump(bad_lr).replace("'.inf'", ".inf")
    (tmp_path / "lr.yaml").write_text(text)
    refused(*cli("plan", tmp_path / "lr.yaml"), "optimizer.lr", "finite")
    deep = {**TRAIN_STUDY, "runs": [{**TRAIN_STUDY["runs"][0],
                                     "reps": {"task": "distance", "layers": [3]}}],
            "analyses": [{"name": "p", "kind": "probe", "reps": ["r.reps"], "layers": [0]}]}
    refused(*cli("plan", write_yaml(tmp_path / "deep.yaml", deep)), "[3]", "1 layers")
    deep["runs"][0]["reps"]["layers"] = [1]
    refused(*cli("plan", write_yaml(tmp_path / "probe.yaml", deep)), "[0]", "r.reps")
    # More cities than the reps read (those of 'world' with ids >= 1000): refused at load, not
    # after the model has trained.
    deep["analyses"][0].update(layers=[1], cities="world", n_train=60, n_test=30)
    world = World(build_world(WorldConfig(min_population=5_000_000)))
    have = int((world.ids[select(world, "world")] >= 1000).sum())
    assert have < 90
    refused(*cli("plan", write_yaml(tmp_path / "cities.yaml", deep)), "60 train + 30 test",
            "'r.reps'", f"reads only {have} cities", f"allowed: n_train + n_test <= {have}")
    deep["analyses"][0].update(n_train=have - 10, n_test=10)
    assert cli("plan", write_yaml(tmp_path / "fits.yaml", deep))[0] == 0
    pool = {**TRAIN_STUDY, "datasets": [{**TRAIN_STUDY["datasets"][0], "pool": "ids:abc"}]}
    refused(*cli("plan", write_yaml(tmp_path / "pool.yaml", pool)), "ids:abc")


def test_bad_command_line_values(tmp_path, world_dir, small_data):
    path = study_with(tmp_path, a={})
    out = tmp_path / "out"
    refused(*cli("run", path, "--out", out, "--jobs", "0"), "--jobs")
    refused(*cli("run", path, "--out", out, "--jobs", "-3"), "--jobs")
    refused(*cli("run", path, "--out", out, "--scale", "inf"), "--scale")
    refused(*cli("status", path, "--out", out, "--watch", "-1"), "--watch")
    refused(*cli("eval", tmp_path, "--data", small_data, "--batch-size", "0"), "--batch-size")
    refused(*cli("data", "make", "distance", "--world", world_dir, "--out", tmp_path / "d",
                 "--pool", "ids:abc"), "ids:abc")
    assert not out.exists() and not (tmp_path / "d").exists()


def test_a_garbage_empty_or_wrong_schema_train_split_is_refused(tmp_path, small_data,
                                                                train_yaml):
    for name, damage in [("garbage", lambda f: f.write_bytes(b"not parquet at all")),
                         ("empty", lambda f: f.write_bytes(b"")),
                         ("test", lambda f: f.write_bytes(f.with_name("test.parquet")
                                                          .read_bytes()))]:
        ds = copy_dataset(small_data, tmp_path / name)
        damage(ds / "train.parquet")
        refused(*cli("train", train_yaml, "--data", ds, "--out", tmp_path / f"r-{name}"),
                str(ds / "train.parquet"))
        assert not (tmp_path / f"r-{name}").exists()
    # a wrong schema under a consistent manifest: the columns are named
    ds = copy_dataset(small_data, tmp_path / "schema")
    pd.DataFrame({"foo": [1, 2]}).to_parquet(ds / "train.parquet")
    manifest = artifacts.read_manifest(ds)
    manifest["files"] = artifacts.file_digests(ds)
    (ds / "manifest.json").write_text(json.dumps(manifest))
    refused(*cli("train", train_yaml, "--data", ds, "--out", tmp_path / "r-schema"),
            "lacks the columns")


def test_train_on_a_world_directory_is_refused(tmp_path, world_dir, train_yaml):
    refused(*cli("train", train_yaml, "--data", world_dir, "--out", tmp_path / "r"),
            "a world artifact, not a dataset")


def test_a_damaged_resume_state_names_the_checkpoints(tmp_path, small_data, train_yaml):
    out = tmp_path / "r"
    assert cli("train", train_yaml, "--data", small_data, "--out", out)[0] == 0
    (out / "manifest.json").unlink()  # as if killed before its end
    for damage in (b"", os.urandom(300)):
        (out / "resume" / "state.pt").write_bytes(damage)
        refused(*cli("train", train_yaml, "--data", small_data, "--out", out),
                "resume/state.pt", "checkpoint-2", "to restart")


def test_a_full_disk_is_one_line_and_leaves_no_temporary(tmp_path, monkeypatch, fake_log):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    refused(*cli("world", "build", "--out", tmp_path / "w"), "No space left on device")
    assert not (tmp_path / "w").exists() and not leftovers(tmp_path)
    # a step that fails on a full disk whose failure record cannot be written either
    study = load_study(study_with(tmp_path, a={"fail": True}))
    write_text = Path.write_text

    def full_for_failures(self, text, *args, **kwargs):
        if ".failed.json" not in self.name:
            return write_text(self, text, *args, **kwargs)
        write_text(self, text[:3])  # the disk fills up halfway
        full()

    monkeypatch.setattr(Path, "write_text", full_for_failures)
    report = run_study(study, tmp_path / "out", log=lambda _: None)
    assert "could not be written" in report.failed["a"]
    assert not leftovers(tmp_path / "out")


def test_a_write_that_fails_midway_leaves_no_temporary(tmp_path):
    from worldrep.artifacts import write_atomic

    target = tmp_path / "resume" / "state.pt"
    target.parent.mkdir()
    target.write_bytes(b"old state")

    def half_then_full(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        write_atomic(target, half_then_full)  # how resume/state.pt is written
    assert target.read_bytes() == b"old state" and not leftovers(tmp_path)


def test_a_finished_study_runs_in_a_directory_it_cannot_write(tmp_path, fake_log, monkeypatch):
    path = study_with(tmp_path, a={})
    out = tmp_path / "out"
    assert cli("run", path, "--out", out)[0] == 0

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(artifacts, "write_json_atomic", read_only)
    monkeypatch.setattr(Path, "write_text", read_only)
    code, output = cli("run", path, "--out", out)
    assert code == 0 and "1 already done" in output, output


# -- 5. manifests record content ------------------------------------------------------------------------
def test_a_manifest_lists_its_files_with_size_and_digest(small_data):
    files = artifacts.read_manifest(small_data)["files"]
    assert set(files) >= {"train.parquet", "test.parquet", "meta.json", "spec.yaml"}
    train = files["train.parquet"]
    assert train["size"] == (small_data / "train.parquet").stat().st_size
    assert train["blake2b"] == artifacts.file_digest(small_data / "train.parquet")


def test_verify_checks_a_whole_study(tmp_path, fake_log):
    path = study_with(tmp_path, a={"files": 3}, b={"inputs": ["a"]})
    out = tmp_path / "out"
    assert cli("run", path, "--out", out)[0] == 0
    code, output = cli("verify", out)
    assert code == 0 and "2 of 2 artifacts verified" in output, output
    study = load_study(path)
    part = study.step_dir(out, "a") / "part1.txt"
    part.write_text("tampered")
    refused(*cli("verify", out), "1 artifact(s)")
    assert str(part) in cli("verify", out)[1]
    # the runner refuses to read it
    (study.step_dir(out, "b") / "manifest.json").unlink()
    report = run_study(study, out, log=lambda _: None)
    assert "part1.txt" in report.skipped["b"]


def test_a_failed_input_makes_its_dependents_not_done(tmp_path, fake_log):
    path = study_with(tmp_path, a={}, b={"inputs": ["a"]})
    study = load_study(path)
    out = tmp_path / "out"
    assert run_study(study, out, log=lambda _: None).ok
    a = study.step_dir(out, "a")
    (a / "manifest.json").unlink()
    cache.record_failure(a, WorldrepError("diverged"))
    states = cache.study_states(study, out)
    assert states["a"].state == "failed" and states["b"].state == "blocked"
    assert "'a'" in states["b"].why


def test_run_refuses_a_directory_that_is_not_a_studys_output(tmp_path, fake_log):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("x")
    refused(*cli("run", study_with(tmp_path, a={}), "--out", mine), "not a study's output")
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]
