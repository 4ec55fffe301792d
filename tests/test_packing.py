"""Packed training: each run of a pack is the run it would be alone (data order, updates,
metrics, artifacts), a killed pack resumes (also after SIGKILL, leaving no partial files),
runs resumed at different steps catch up, a diverging run fails alone, and the study planner
and runner group compatible runs by the trainer's own key."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from worldrep import artifacts
from worldrep.checkpoints import load_checkpoint
from worldrep.data import DatasetSpec, make_dataset
from worldrep.errors import WorldrepError
from worldrep.model import StackedQwen2
from worldrep.train import (
    PackError,
    Run,
    TrainSpec,
    TrainStep,
    models_per_stack,
    train,
    train_packed,
)

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "studies" / "paper.yaml"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def datasets(world, tmp_path_factory) -> dict[str, Path]:
    """Two small datasets of different sizes and row lengths (distance, trianglearea)."""
    top = world.cities.sort_values("population", ascending=False).head(16)["city_id"]
    pool = "ids:" + ",".join(str(i) for i in top)
    base = tmp_path_factory.mktemp("packdata")
    return {
        "dist": make_dataset(world, DatasetSpec(task="distance", n_train=100, n_val=10,
                                                n_test=10, pool=pool, seed=1), base / "dist"),
        "tri": make_dataset(world, DatasetSpec(task="trianglearea", n_train=70, n_val=10,
                                               n_test=10, pool=pool, seed=2), base / "tri"),
    }


NO_EVAL = {"every": None, "rows_per_task": 4, "generate": False}  # losses at 0 and the end


def spec(data: Path, **changes) -> TrainSpec:
    # fp32: the equivalence is exact up to float rounding (bf16 autocast, the default on
    # CPUs with native bf16, would hold it to bf16 rounding only)
    base = dict(data=str(data), model={"preset": "tiny"}, batch_size=16, steps=60,
                precision="fp32", optimizer={"lr": 3e-3, "warmup_steps": 5},
                checkpoints={"every": 20},
                eval={"every": 30, "rows_per_task": 8, "generate": False}, progress=False)
    base.update(changes)
    return TrainSpec(**base)


def three_specs(datasets, **changes) -> list[TrainSpec]:
    """Different data, seeds, learning rates, schedules, clipping and losses."""
    return [spec(datasets["dist"], seed=1, **changes),
            spec(datasets["tri"], seed=2, loss="answer",
                 optimizer={"lr": 1e-3, "warmup_steps": 10, "grad_clip": 0.5,
                            "weight_decay": 0.1}, **changes),
            spec(datasets["dist"], seed=3, optimizer={"lr": 2e-3, "grad_clip": None},
                 **changes)]


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> np.ndarray:
    return np.array([r["loss"] for r in records(run) if "loss" in r])


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).state_dict()


def close_weights(a: Path, b: Path, atol=1e-4) -> bool:
    wa, wb = weights(a), weights(b)
    return all(torch.allclose(wa[k], wb[k], atol=atol, rtol=1e-3) for k in wa)


@pytest.fixture(scope="module")
def packed_60(datasets, tmp_path_factory) -> list[Path]:
    outs = [tmp_path_factory.mktemp("packed") / f"run{i}" for i in range(3)]
    train_packed(three_specs(datasets), outs, stack=3)
    return outs


# -- equivalence with unpacked runs -----------------------------------------------------------
def test_packed_runs_match_unpacked_runs_over_200_steps(datasets, tmp_path):
    specs = three_specs(datasets, steps=200, log_every=1, checkpoints={"every": 100},
                        eval={"every": 100, "rows_per_task": 8, "generate": False})
    singles = [train(s, tmp_path / f"alone{i}") for i, s in enumerate(specs)]
    outs = [tmp_path / f"packed{i}" for i in range(3)]
    finals = train_packed(specs, outs, stack=3)  # one stacked step, as on CUDA
    assert finals == [o / "checkpoints" / "final" for o in outs]
    for i, (single, out) in enumerate(zip(singles, outs, strict=True)):
        alone_dir = single.parent.parent
        want, got = losses(alone_dir), losses(out)
        assert len(want) == len(got) == 200
        assert np.max(np.abs(got - want) / np.abs(want)) < 1e-4, i
        assert close_weights(single, out / "checkpoints" / "final")
        evals = [[r for r in records(d) if r.get("kind") == "eval"] for d in (alone_dir, out)]
        assert [r["step"] for r in evals[0]] == [r["step"] for r in evals[1]] == [0, 100, 200]
        for a, b in zip(*evals, strict=True):
            assert a.keys() == b.keys()
            assert all(np.isclose(a[k], b[k], rtol=1e-4) for k in a if "/" in k)
        # The same artifacts: evaluation, analysis and the report cannot tell them apart.
        # (TensorBoard names its event file by time, host and pid: one each, named its way.)
        def names(d):
            return sorted("events" if p.name.startswith("events.out.tfevents.") else p.name
                          for p in d.iterdir())
        assert names(out) == names(alone_dir) and "events" in names(out)
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == \
            sorted(p.name for p in (alone_dir / "checkpoints").iterdir())
        assert (out / "run.json").read_text() == (alone_dir / "run.json").read_text()
        assert artifacts.read_manifest(out)["hash"] == artifacts.read_manifest(alone_dir)["hash"]
        other = [r for r in records(out) if "loss" in r][-1]
        assert {"lr", "grad_norm", "steps_per_s", "tokens_per_s", "epoch"} <= other.keys()
    # Unpacking a finished pack's run is a no-op: `train` sees its own finished run.
    before = (outs[0] / "metrics.jsonl").read_text()
    assert train(specs[0], outs[0]) == outs[0] / "checkpoints" / "final"
    assert (outs[0] / "metrics.jsonl").read_text() == before


def test_runs_stepped_in_several_stacks_match_too(datasets, packed_60, tmp_path):
    """stack=2: runs 0-1 share a stacked step, run 2 steps in its own (as on a CPU whose
    cache-sized stacks hold fewer runs than the pack)."""
    specs = three_specs(datasets)
    outs = train_packed(specs, [tmp_path / f"run{i}" for i in range(3)], stack=2)
    for i, (s, final) in enumerate(zip(specs, outs, strict=True)):
        alone = train(s, tmp_path / f"alone{i}")
        assert close_weights(alone, final)
        assert close_weights(packed_60[i] / "checkpoints" / "final", final)
        assert np.allclose(losses(alone.parent.parent), losses(final.parent.parent), rtol=1e-4)


def test_runs_stepped_one_at_a_time_on_cpu_match(datasets, tmp_path):
    """The CPU default: a pack steps its runs in turn, each exactly as alone."""
    assert models_per_stack(7, torch.device("cpu")) == 1
    assert models_per_stack(42, torch.device("cuda")) == 42
    specs = three_specs(datasets, steps=12, checkpoints={}, eval=NO_EVAL)
    outs = train_packed(specs, [tmp_path / f"run{i}" for i in range(3)])
    for i, (s, final) in enumerate(zip(specs, outs, strict=True)):
        alone = train(s, tmp_path / f"alone{i}")
        assert close_weights(alone, final, atol=1e-6)


def test_fine_tunes_from_different_checkpoints_pack(datasets, packed_60, tmp_path):
    starts = [p / "checkpoints" / "final" for p in packed_60[:2]]
    specs = [spec(datasets["dist"], model=None, init_from=str(s), optimizer={}, steps=8,
                  checkpoints={}, eval=NO_EVAL, seed=i) for i, s in enumerate(starts)]
    outs = train_packed(specs, [tmp_path / "ft0", tmp_path / "ft1"], stack=2)
    for start, final, s, i in zip(starts, outs, specs, range(2), strict=True):
        first = weights(final.parent / "checkpoint-0")
        assert all(torch.equal(v, weights(start)[k]) for k, v in first.items())
        alone = train(s, tmp_path / f"alone{i}")
        assert close_weights(alone, final, atol=1e-6)
    saved = json.loads((tmp_path / "ft0" / "run.json").read_text())["spec"]
    assert saved["optimizer"]["lr"] == 1e-5


def test_packed_checkpoint_loads_in_plain_transformers(packed_60):
    final = packed_60[1] / "checkpoints" / "final"
    hf = AutoModelForCausalLM.from_pretrained(final).eval()
    ids = torch.tensor([[2, 61, 66, 76, 77, 11, 60, 56, 88, 88, 88, 89]])
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, load_checkpoint(final)(ids[None])[0], atol=1e-4)
    assert (packed_60[1] / "curves.png").read_bytes()[:4] == b"\x89PNG"
    start = records(packed_60[1])[0]
    assert start["kind"] == "start" and start["packed"] == 3


# -- resume -----------------------------------------------------------------------------------
def interrupt_at(monkeypatch, n: int) -> None:
    calls = {"n": 0}
    original = TrainStep.__call__

    def interrupted(self, ids, plen):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return original(self, ids, plen)

    monkeypatch.setattr(TrainStep, "__call__", interrupted)


# A pack in a child process that stops (and waits to be killed) inside run 1's step-40 write:
# in its checkpoint directory, or after its resume state went to the temporary file.
KILLED_CHILD = """
import json, sys, time
from pathlib import Path
import torch
from worldrep import tokenizer
from worldrep.train import TrainSpec, train_packed

job, where, marker = json.loads(Path(sys.argv[1]).read_text()), sys.argv[2], Path(sys.argv[3])
victim = Path(job["outs"][1])

def hang(path):
    marker.write_text(str(path))
    time.sleep(600)

if where == "checkpoint":
    save_tokenizer = tokenizer.save_hf_tokenizer
    def save(tmp):
        save_tokenizer(tmp)
        if tmp.name.startswith(".checkpoint-40.tmp-") and tmp.parent.parent == victim:
            hang(tmp)
    tokenizer.save_hf_tokenizer = save
else:
    torch_save = torch.save
    def save(obj, f, *args, **kwargs):
        torch_save(obj, f, *args, **kwargs)
        if Path(f).parent.parent == victim and obj.get("step") == 40:
            hang(f)
    torch.save = save
train_packed([TrainSpec.model_validate(s) for s in job["specs"]], job["outs"], stack=3)
"""


def partial_files(outs: list[Path]) -> list[Path]:
    return [p for o in outs for p in o.rglob(".*.tmp-*")]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["checkpoint", "resume"])
def test_sigkilled_pack_resumes_to_the_uninterrupted_weights_and_leaves_no_partial_files(
        datasets, packed_60, tmp_path, where):
    """SIGKILL mid-write of run 1's step-40 checkpoint: run 0 saved step 40, runs 1 and 2 are
    at step 20. The rerun trains runs 1-2 from 20 while run 0 waits (the active mask), then
    all three, and ends bit for bit where the uninterrupted pack ended."""
    import worldrep

    outs = [tmp_path / f"run{i}" for i in range(3)]
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"specs": [s.model_dump(mode="json") for s in three_specs(datasets)],
                               "outs": [str(o) for o in outs]}))
    marker = tmp_path / "hanging"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(worldrep.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(job), where, str(marker)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    assert marker.exists(), err.decode()[-2000:]
    assert proc.returncode == -signal.SIGKILL
    left = partial_files(outs)
    assert left and all(outs[1] in p.parents for p in left), left  # what the kill left behind
    resumed = [torch.load(o / "resume" / "state.pt", weights_only=True)["step"] for o in outs]
    assert resumed == [40, 20, 20] and not any(artifacts.is_complete(o) for o in outs)

    train_packed(three_specs(datasets), outs, stack=3)
    assert partial_files(outs) == []
    for want, got in zip(packed_60, outs, strict=True):
        a, b = weights(want / "checkpoints" / "final"), weights(got / "checkpoints" / "final")
        assert all(torch.equal(a[k], b[k]) for k in a)
        steps = [r["step"] for r in records(got) if "loss" in r]
        assert steps == sorted(set(steps)) and steps[-1] == 60  # no step twice, none missing
        assert artifacts.read_manifest(got)["hash"] == artifacts.read_manifest(want)["hash"]


def test_pack_killed_while_finishing_finishes_the_rest(datasets, packed_60, tmp_path,
                                                      monkeypatch):
    outs = [tmp_path / f"run{i}" for i in range(3)]
    original = Run.finish

    def dies_at_second(self):
        if self.out == outs[1]:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Run, "finish", dies_at_second)
    with pytest.raises(KeyboardInterrupt):
        train_packed(three_specs(datasets), outs, stack=3)
    monkeypatch.undo()
    assert [artifacts.is_complete(o) for o in outs] == [True, False, False]
    # Run 1 saved its step-60 checkpoint and died finishing; run 2 never got to step 60.
    resumed = [torch.load(o / "resume" / "state.pt", weights_only=True)["step"] for o in outs]
    assert resumed == [60, 60, 40]
    active = []
    original_call = TrainStep.__call__

    def record_active(self, ids, plen):
        active.append(self.opt.active.tolist())
        return original_call(self, ids, plen)

    monkeypatch.setattr(TrainStep, "__call__", record_active)
    train_packed(three_specs(datasets), outs, stack=3)
    # Run 1 finishes from its saved state and waits in its slot while run 2 steps 40 -> 60.
    assert active == [[0.0, 1.0]] * 20 and all(artifacts.is_complete(o) for o in outs)
    a, b = (weights(d / "checkpoints" / "final") for d in (packed_60[1], outs[1]))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert close_weights(packed_60[2] / "checkpoints" / "final", outs[2] / "checkpoints" / "final")


def test_a_run_of_a_killed_pack_resumes_alone(datasets, packed_60, tmp_path, monkeypatch):
    outs = [tmp_path / f"run{i}" for i in range(3)]
    interrupt_at(monkeypatch, 25)
    with pytest.raises(KeyboardInterrupt):
        train_packed(three_specs(datasets), outs, stack=3)
    monkeypatch.undo()
    final = train(three_specs(datasets)[1], outs[1])
    assert close_weights(packed_60[1] / "checkpoints" / "final", final)


# -- failures and incompatible runs -----------------------------------------------------------
def test_a_diverging_run_fails_alone_and_the_others_finish(datasets, tmp_path, monkeypatch):
    original = StackedQwen2.loss
    calls = {"n": 0}

    def poisoned(self, ids, prompt_len=None, first=0):
        calls["n"] += 1
        loss = original(self, ids, prompt_len, first)
        if calls["n"] > 25 and self.k == 3:
            return loss * torch.tensor([1.0, float("nan"), 1.0])
        return loss

    monkeypatch.setattr(StackedQwen2, "loss", poisoned)
    outs = [tmp_path / f"run{i}" for i in range(3)]
    with pytest.raises(PackError, match=r"1 of 3 packed runs failed.*run1.*diverged") as err:
        train_packed(three_specs(datasets, eval=NO_EVAL), outs, stack=3)
    assert list(err.value.errors) == [str(outs[1])]
    assert artifacts.is_complete(outs[0]) and artifacts.is_complete(outs[2])
    assert not artifacts.is_complete(outs[1])
    assert (outs[1] / "checkpoints" / "checkpoint-20").is_dir()
    assert not (outs[1] / "checkpoints" / "checkpoint-40").exists()


def test_incompatible_runs_are_not_packed(datasets, tmp_path):
    a = spec(datasets["dist"], steps=6, checkpoints={}, eval=NO_EVAL)
    longer = spec(datasets["dist"], steps=8, checkpoints={}, eval=NO_EVAL)
    wider = spec(datasets["dist"], steps=6, model={"preset": "tiny", "hidden": 128},
                 checkpoints={}, eval=NO_EVAL)
    with pytest.raises(WorldrepError, match="differs from .* in total steps 8 vs 6; runs pack "
                                            "together when they share architecture"):
        train_packed([a, longer], [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(WorldrepError, match=r"in architecture .*'hidden', 128"):
        train_packed([a, wider], [tmp_path / "a", tmp_path / "c"])
    assert not (tmp_path / "a").exists()  # nothing written before the check
    with pytest.raises(WorldrepError, match="distinct output directories"):
        train_packed([a, a], [tmp_path / "a", tmp_path / "a"])
    # regroup: incompatible runs are trained as separate packs.
    finals = train_packed([a, longer, wider], [tmp_path / n for n in "abc"], regroup=True)
    assert all(artifacts.is_complete(f.parent.parent) for f in finals)
    assert records(tmp_path / "b")[-1]["step"] == 8


def test_study_yaml_round_trip_of_run_spec(datasets, tmp_path):
    """A packed run's spec.yaml is the resolved single-run spec (readable by load_spec)."""
    from worldrep.train import load_spec

    out = tmp_path / "run"
    s = spec(datasets["dist"], steps=4, checkpoints={}, eval=NO_EVAL)
    train_packed([s], [out])
    again = load_spec(out / "spec.yaml")
    assert again.model.preset == "tiny" and again.steps == 4
    assert yaml.safe_load((out / "spec.yaml").read_text())["optimizer"]["lr"] == 3e-3


# -- the study runner -------------------------------------------------------------------------
def stack_all(monkeypatch) -> None:
    """Packs step as one stacked model on CPU too (as on CUDA)."""
    from worldrep.train import loop as training

    monkeypatch.setattr(training, "models_per_stack", lambda k, device: k)


def paper_with_packing(tmp_path: Path, limit: int = 42):
    from worldrep.study import load_study

    data = yaml.safe_load(PAPER.read_text())
    data.update(pack="auto", pack_limit=limit)
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_study(path)


def test_planner_packs_the_paper_grids_by_architecture_and_length(tmp_path):
    from worldrep.study.units import format_packs, plan_packs
    from worldrep.train import PACK_RULE

    study = paper_with_packing(tmp_path)
    packs = {names[0]: (key, names) for key, names in plan_packs(study)}
    key, pt1 = packs["pt1-1-s42"]  # 7 tasks x 3 seeds and inside's 5 extra seeds
    assert sorted(pt1) == sorted([f"pt1-{x}-s{s}" for x in range(1, 8) for s in (42, 1, 2)]
                                 + [f"pt1-5-s{s}" for s in (3, 4, 5, 6, 7)])
    assert key.total_steps == 328_146
    two = [n for k, n in plan_packs(study) if k.total_steps == 328_125]
    assert sorted(len(n) for n in two) == [22, 23]  # 24 cyclic + 21 exhaustive, limit 42
    three = [n for k, n in plan_packs(study) if k.total_steps == 328_132]
    assert sorted(len(n) for n in three) == [29, 30]
    assert packs["pt7-s42"][1] == ["pt7-s42", "pt7-s1", "pt7-s2", "pt7-s3",
                                   "pt7-withatlantis-s42", "pt7-scattered-s42"]
    for width in ("narrow", "wide", "wider"):  # other architectures and lengths: alone
        assert packs[f"pt7-{width}-s42"][1] == [f"pt7-{width}-s42"]
        assert packs[f"ftwb1-1-{width}-s42"][1] == [f"ftwb1-{x}-{width}-s42" for x in range(1, 8)]
    pft = packs["pft1-2"]  # fine-tunes of seven different checkpoints, one architecture
    assert len(pft[1]) == 42 and dict(pft[0].architecture)["hidden"] == 128
    assert pft[0].total_steps == 30 * 938  # 120k rows / 128 per step, 30 epochs
    ftwb2 = [n for _, n in plan_packs(study)
             if any(m.startswith(("ftwb2-", "scattered-ftwb2-")) and m.count("-") == 2 for m in n)]
    assert [len(n) for n in ftwb2] == [35, 35, 35]  # 84 + 21 scattered, limit 42
    text = format_packs(study)
    assert " ".join(text.split()).count(PACK_RULE) == 1  # the trainer's own rule
    assert "pack of 42: hidden 128, 6 layers, 4 heads, MLP 512; 28,140 steps; batch 128" in text
    assert "alone: hidden 64, 6 layers, 2 heads, MLP 256" in text
    small = paper_with_packing(tmp_path, limit=20)
    assert [len(n) for _, n in plan_packs(small) if n[0].startswith("pft")] == [14, 14, 14]


def test_plan_output_shows_the_packs(tmp_path):
    from typer.testing import CliRunner

    from worldrep.cli import app

    paper_with_packing(tmp_path)
    result = CliRunner().invoke(app, ["plan", str(tmp_path / "paper.yaml"), "--scale", "1000"])
    assert result.exit_code == 0, result.output
    assert "packing (pack: auto, at most 42 runs a pack)" in result.output
    assert "pft1-2, pft1-3" in result.output
    data = yaml.safe_load(PAPER.read_text())
    data.pop("pack", None)
    data.pop("pack_limit", None)
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    plain = CliRunner().invoke(app, ["plan", str(tmp_path / "plain.yaml"), "--scale", "1000"])
    assert plain.exit_code == 0, plain.output
    assert "packing" not in plain.output  # pack: off is the default


RUNNER_STUDY = {
    "name": "packs",
    "pack": "auto",
    "world": {"min_population": 2_000_000},
    "datasets": [
        {"name": "dist", "task": "distance", "n_train": 120, "n_val": 8, "n_test": 8},
        {"name": "tri", "task": "trianglearea", "n_train": 90, "n_val": 8, "n_test": 8},
    ],
    "defaults": {"train": {
        "model": {"preset": "tiny"}, "batch_size": 16, "steps": 30, "progress": False,
        "precision": "fp32",
        "optimizer": {"lr": 3e-3, "warmup_steps": 5}, "checkpoints": {"every": 10},
        "eval": {"every": None, "rows_per_task": 4, "generate": False}}},
    "runs": [
        {"name": "a-{s}", "grid": {"s": [1, 2]}, "data": "dist", "seed": "{s}"},
        {"name": "b", "data": "tri", "loss": "answer", "optimizer": {"lr": 1e-3}},
        {"name": "longer", "data": "dist", "steps": 40},
    ],
}


def test_runner_trains_compatible_runs_as_one_pack_and_resumes_a_killed_one(
        tmp_path, monkeypatch):
    from worldrep.study import cache, load_study, locks
    from worldrep.study.executors import executable_units, run_study, step_jobs

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(RUNNER_STUDY, sort_keys=False))
    study = load_study(path)
    out = tmp_path / "out"
    jobs = step_jobs(study, out)
    units = executable_units([jobs[n] for n in ("a-1", "dist", "longer", "b", "a-2")], study)
    assert [[j.name for j in u] for u in units] == [["a-1", "b", "a-2"], ["dist"], ["longer"]]
    stack_all(monkeypatch)
    interrupt_at(monkeypatch, 25)  # the pack of three dies at step 25
    with pytest.raises(KeyboardInterrupt):
        run_study(study, out, log=lambda _: None)
    monkeypatch.undo()
    stack_all(monkeypatch)
    dirs = {n: study.step_dir(out, n) for n in ("a-1", "a-2", "b", "longer")}
    assert not any(artifacts.is_complete(d) for d in dirs.values())
    assert not any(locks.lock_file(d).exists() for d in dirs.values())
    states = cache.study_states(study, out)
    assert states["a-1"].state == "pending"
    steps = [torch.load(dirs[n] / "resume" / "state.pt", weights_only=True)["step"]
             for n in ("a-1", "a-2", "b")]
    assert steps == [20, 20, 20]
    report = run_study(study, out, log=lambda _: None)
    assert report.ok and sorted(report.ran) == ["a-1", "a-2", "b", "longer"]
    for name in ("a-1", "a-2", "b"):
        log = records(dirs[name])
        assert log[0]["packed"] == 3 and [r["step"] for r in log if "loss" in r][-1] == 30
    assert records(dirs["longer"])[0]["packed"] == 1  # a different length trains alone
    # The same run trained alone ends with the same weights.
    alone = get_train_kind().train_spec(study.steps["b"].spec,
                                        {"tri": study.step_dir(out, "tri")})
    final = train(alone, tmp_path / "b-alone")
    assert close_weights(final, dirs["b"] / "checkpoints" / "final")


def test_a_failed_run_of_a_packed_unit_is_recorded_for_that_step_only(tmp_path, monkeypatch):
    from worldrep.study import cache, load_study
    from worldrep.study.executors import run_study

    data = yaml.safe_load(yaml.safe_dump(RUNNER_STUDY))
    data["runs"] = data["runs"][:1]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    study = load_study(path)
    original = StackedQwen2.loss

    def poisoned(self, ids, prompt_len=None, first=0):
        loss = original(self, ids, prompt_len, first)
        return loss * torch.tensor([1.0, float("nan")]) if self.k == 2 else loss

    monkeypatch.setattr(StackedQwen2, "loss", poisoned)
    stack_all(monkeypatch)
    out = tmp_path / "out"
    report = run_study(study, out, log=lambda _: None)
    assert "a-1" in report.ran
    assert list(report.failed) == ["a-2"] and "diverged" in report.failed["a-2"]
    state = cache.study_states(study, out)["a-2"]
    assert state.state == "failed" and "WorldrepError: training diverged" in state.why


def get_train_kind():
    from worldrep.study.kinds import get_kind

    return get_kind("train")
