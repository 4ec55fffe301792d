"""The training loop, for a single run (a pack of one): it learns, resumes bit-identically,
writes HF checkpoints, names no path in its identity, validates its spec. Its pieces (AdamW and
its active mask, the step, the batcher) are checked against references here too."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from worldrep import artifacts
from worldrep.checkpoints import load_checkpoint
from worldrep.data import DatasetSpec, load_split, make_dataset
from worldrep.errors import WorldrepError
from worldrep.model import ModelSpec, StackedQwen2, init_model
from worldrep.train import (
    AdamW,
    Batcher,
    Cadence,
    Rows,
    Runtime,
    TrainSpec,
    TrainStep,
    load_rows,
    load_spec,
    train,
)

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "configs" / "train" / "tiny.yaml"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_data(world, tmp_path_factory) -> Path:
    """100 distance rows among 16 big cities: small enough to memorise in seconds."""
    top = world.cities.sort_values("population", ascending=False).head(16)["city_id"]
    pool = "ids:" + ",".join(str(i) for i in top)
    spec = DatasetSpec(task="distance", n_train=100, n_val=10, n_test=10, pool=pool, seed=1)
    return make_dataset(world, spec, tmp_path_factory.mktemp("data") / "dist16")


def quick_spec(data: Path, **changes) -> TrainSpec:
    base = dict(data=str(data), model={"preset": "tiny"}, batch_size=16, steps=60,
                optimizer={"lr": 3e-3, "warmup_steps": 5}, checkpoints={"every": 20},
                eval={"every": 30, "rows_per_task": 8}, progress=False)
    base.update(changes)
    return TrainSpec(**base)


@pytest.fixture(scope="module")
def tri_data(world, tmp_path_factory) -> Path:
    top = world.cities.sort_values("population", ascending=False).head(16)["city_id"]
    spec = DatasetSpec(task="trianglearea", n_train=70, n_val=10, n_test=10, seed=2,
                       pool="ids:" + ",".join(str(i) for i in top))
    return make_dataset(world, spec, tmp_path_factory.mktemp("data") / "tri16")


@pytest.fixture(scope="module")
def finished_run(small_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "full"
    train(quick_spec(small_data), out)
    return out


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).state_dict()


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# -- the optimizer and the step ---------------------------------------------------------------
def test_adamw_matches_torch_adamw_clipping_and_linear_schedule():
    spec = ModelSpec(preset="tiny")
    ours, ref = init_model(spec, 1), init_model(spec, 1)
    opt = AdamW(ours, lr=1e-2, total_steps=8, warmup_steps=3, weight_decay=0.1, grad_clip=0.5)
    decay = [p for p in ref.parameters() if p.dim() >= 3]
    rest = [p for p in ref.parameters() if p.dim() < 3]
    torch_opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": rest, "weight_decay": 0.0}], lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(
        torch_opt, lambda s: s / 3 if s < 3 else max(0.0, (8 - s) / 5))
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        ids = torch.randint(4, 98, (1, 8, 12), generator=g)
        ref.loss(ids).sum().backward()
        norm = opt.update([p.grad.clone() for p in ref.parameters()])  # the same gradients
        assert torch.allclose(norm, torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5))
        torch_opt.step()
        sched.step()
        torch_opt.zero_grad()
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_stacked_step_keeps_per_model_lr_schedule_and_clipping():
    spec = ModelSpec(preset="tiny")
    settings = [dict(lr=1e-3, warmup_steps=0, grad_clip=None, weight_decay=0.0),
                dict(lr=5e-3, warmup_steps=2, grad_clip=0.1, weight_decay=0.05)]
    stacked = init_model(spec, [1, 2])
    opt = AdamW(stacked, total_steps=[5, 9], **{k: [s[k] for s in settings] for k in settings[0]})
    rt = Runtime.of(TrainSpec(data="-", device="cpu"))
    step = TrainStep(stacked, opt, rt, answer=[True, True])
    singles = [init_model(spec, seed) for seed in (1, 2)]
    single_steps = [TrainStep(m, AdamW(m, total_steps=t, **s), rt, answer=[True])
                    for m, t, s in zip(singles, [5, 9], settings, strict=True)]
    g = torch.Generator().manual_seed(3)
    for _ in range(4):
        ids = torch.randint(4, 98, (2, 6, 10), generator=g)
        plen = torch.full((2, 6), 5)
        step(ids, plen)
        for k, s in enumerate(single_steps):
            s(ids[k:k + 1], plen[k:k + 1])
    sums = step.flush()
    assert sums[2].tolist() == [4, 4]  # steps counted per model
    for k, (m, s) in enumerate(zip(singles, single_steps, strict=True)):
        one = s.flush()
        assert np.allclose(sums[0, k], one[0, 0], atol=1e-5)
        assert np.allclose(sums[1, k], one[1, 0], rtol=1e-5)
        for a, b in zip(stacked.parameters(), m.parameters(), strict=True):
            assert torch.allclose(a[k], b[0], atol=1e-6)


def test_inactive_models_keep_their_state_exactly_and_the_others_do_not_notice():
    """The active mask: a model that waits (or failed, here with NaN gradients) keeps its
    weights, moments and step bit for bit; the active ones update exactly as with all active."""
    spec = ModelSpec(preset="tiny")
    masked, full = init_model(spec, [1, 2, 3]), init_model(spec, [1, 2, 3])
    opts = [AdamW(m, lr=1e-2, total_steps=10, warmup_steps=1) for m in (masked, full)]
    g = torch.Generator().manual_seed(0)
    for _ in range(2):  # all active: the moments are no longer zero
        grads = [torch.randn(p.shape, generator=g) for p in masked.parameters()]
        for opt in opts:
            opt.update(grads)
    before = [t.clone() for t in opts[0].state_tensors()]
    opts[0].set_active([True, False, True])
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=g) for p in masked.parameters()]
        for grad in grads:
            grad[1] = float("nan")  # model 1 sees poison; it must not reach its state
        opts[0].update(grads)
        opts[1].update(grads)
    for name, was, now, ref in zip(opts[0].STATE, before, opts[0].state_tensors(),
                                   opts[1].state_tensors(), strict=True):
        assert torch.equal(now[1], was[1]), name
        assert torch.equal(now[[0, 2]], ref[[0, 2]]), name
    assert opts[0].updates.tolist() == [5, 2, 5]


def test_static_shape_replay_path_matches_eager(monkeypatch):
    """The CUDA-graph path's logic on CPU: a stand-in recorder runs the warm-ups for real and
    'replays' by calling the step, so static buffers, padded batches and the undoing of
    warm-up steps are checked here; the capture itself needs a GPU (benchmarks/gpu_check.py)."""

    def fake_record(self, step_fn):
        for _ in range(3):
            step_fn()  # warm-ups change the state, as on the GPU; _capture must undo them
        return step_fn

    monkeypatch.setattr(TrainStep, "_record", fake_record)
    texts = [f"dist(c_{i:04d},c_{i * 7 % 9999:04d})={i * 37 % 5000}" for i in range(40)]
    rows = Rows.from_texts(texts, [20] * 40)
    spec = ModelSpec(preset="tiny")
    results = []
    for graphs in (False, True):
        model = init_model(spec, [0, 1])
        opt = AdamW(model, lr=1e-3, total_steps=6, warmup_steps=1)
        rt = Runtime(torch.device("cpu"), None, compile=False, graphs=graphs,
                     pad_multiple=8 if graphs else 1)
        step = TrainStep(model, opt, rt, answer=[True, False])
        batcher = Batcher([rows, rows], batch_size=16, seeds=[1, 2],
                          pad_multiple=rt.pad_multiple)
        for s in range(6):  # crosses an epoch end: a short (padded) batch
            opt.set_active([True, s != 4])
            step(*batcher.get(s)[:2])
        results.append((opt.flat.clone(), step.flush(), len(step.graphs)))
    (eager, eager_log, _), (static, static_log, n_shapes) = results
    assert n_shapes >= 1 and static_log[2].tolist() == eager_log[2].tolist() == [6, 5]
    assert np.allclose(static_log[0], eager_log[0], atol=1e-5)
    assert torch.allclose(static, eager, atol=1e-5)


@pytest.mark.skipif(Runtime.of(TrainSpec(data="-", compile="auto"), 10**6).compile is False,
                    reason="torch.compile on CPU needs a C++ compiler")
def test_a_compiled_cpu_step_on_two_threads_gives_the_same_bytes_every_time():
    """Inductor adds the embedding's gradient rows with atomic adds across threads; without
    deterministic algorithms in the step two runs differed by an ulp within 20 steps (and the
    quickstart's map by 0.05 of R² after 2,500). Two fresh compiled stacks, one seed, the same
    batches, both cores: bit-identical weights."""
    texts = [f"dist(c_{i:04d},c_{i * 7 % 9999:04d})={i * 37 % 5000}" for i in range(512)]
    rows = Rows.from_texts(texts, [20] * 512)
    spec = ModelSpec(preset=None, hidden=64, layers=2, heads=4, intermediate=256)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        flats = []
        for _ in range(2):
            model = init_model(spec, [0])
            opt = AdamW(model, lr=2e-3, total_steps=100, warmup_steps=5)
            rt = Runtime(torch.device("cpu"), None, compile=True, graphs=False, pad_multiple=1)
            step = TrainStep(model, opt, rt, answer=[True])
            batcher = Batcher([rows], batch_size=128, seeds=[1])
            for s in range(20):
                step(*batcher.get(s)[:2])
            flats.append(opt.flat.clone())
            assert not torch.are_deterministic_algorithms_enabled()  # restored after a step
    finally:
        torch.set_num_threads(before)
    assert torch.equal(flats[0], flats[1])


def test_answer_only_loss_counts_answer_tokens():
    model = init_model(ModelSpec(preset="tiny"), 0)
    rows = Rows.from_texts(["dist(c_0001,c_0002)=15", "dist(c_0003,c_0004)=2"], [21, 21])
    ids = rows.ids.long()[None]
    ce, keep = model.token_loss(ids, torch.from_numpy(rows.prompt_len)[None])
    # targets after '=': "15<eos>" and "2<eos>"
    assert keep.sum().item() == 5
    full_ce, full_keep = model.token_loss(ids)
    assert full_keep.sum().item() == int(rows.lengths.sum()) - 2
    assert torch.allclose(model.loss(ids, torch.tensor([[21, 21]])),
                          (ce * keep).sum() / keep.sum())


def test_batcher_visits_every_row_once_per_epoch_in_seeded_order():
    texts = [f"dist(c_{i:04d},c_0001)={i % 997}" for i in range(50)]
    rows = Rows.from_texts(texts, [20] * 50)
    batcher = Batcher([rows], batch_size=16, seeds=[5])
    assert batcher.per_epoch == [4]
    seen = []
    for step in range(4):
        ids, plen, tokens = batcher.get(step)
        assert ids.shape[:2] == (1, 16) and ids.dtype == torch.int64
        assert ids.shape[2] == int((ids != 0).sum(2).max())  # padded to its longest row
        assert tokens[0] == int((ids != 0).sum())
        seen.append(ids[0])
    assert [int((b != 0).any(1).sum()) for b in seen] == [16, 16, 16, 2]  # short, not dropped
    assert (seen[3][2:] == 0).all()  # empty rows fill the short batch
    visited = sorted(tuple(r[r != 0].tolist()) for b in seen for r in b if (r != 0).any())
    assert visited == sorted(tuple(r[r != 0].tolist()) for r in rows.ids.long())
    again = Batcher([rows], batch_size=16, seeds=[5])
    assert torch.equal(again.get(5)[0], batcher.get(5)[0])  # same order, even out of sequence
    assert not np.array_equal(batcher.order(0, 0), batcher.order(0, 1))
    assert Batcher([rows], batch_size=16, seeds=[5], pad_multiple=8).get(3)[0].shape == (1, 16, 24)


def test_pack_batcher_gives_each_run_its_own_batches(small_data, tri_data):
    a = load_rows(small_data, "train", 256, "cpu")
    b = load_rows(tri_data, "train", 256, "cpu")
    rows, seeds = [a, b, a], [1, 2, 3]
    for multiple in (1, 8):
        pack = Batcher(rows, 16, seeds, pad_multiple=multiple)
        alone = [Batcher([r], 16, [s], pad_multiple=multiple) for r, s in zip(rows, seeds,
                                                                              strict=True)]
        for step in range(12):  # crosses the epoch ends of both data sets (7 and 5 steps)
            ids, plen, tokens = pack.get(step)
            assert ids.shape[:2] == (3, 16)
            for k, batcher in enumerate(alone):
                want, want_plen, want_tokens = (x[0] for x in batcher.get(step))
                width = want.shape[1]
                assert torch.equal(ids[k, :, :width], want) and (ids[k, :, width:] == 0).all()
                assert torch.equal(plen[k], want_plen) and tokens[k] == want_tokens
            assert ids.shape[2] == max(b.get(step)[0].shape[2] for b in alone)
    assert len(pack.table) == len(a) + len(b) + 1  # runs on the same data share its rows


def test_cadence_fractions_round_up_like_hf():
    assert min(Cadence(every=0.025).steps(328_146, "checkpoints")) == 8204
    assert min(Cadence(every=0.005).steps(328_146, "eval")) == 1641
    assert Cadence(every=20, at=[5]).steps(60, "c") == {5, 20, 40, 60}
    with pytest.raises(WorldrepError, match="outside this run"):
        Cadence(at=[100]).steps(60, "checkpoints")


# -- whole runs -------------------------------------------------------------------------------
def test_tiny_model_learns_small_distance_dataset(small_data, tmp_path):
    spec = load_spec(TINY_YAML, data=str(small_data), steps=150, batch_size=32,
                     progress=False)
    spec.checkpoints.every = None
    final = train(spec, tmp_path / "run")
    losses = [r["loss"] for r in records(tmp_path / "run") if "loss" in r]
    assert losses[-1] < 0.3 * losses[0]
    # Greedy answers are exact iff every answer token is the argmax given the true prefix.
    frame = load_split(small_data, "train")
    rows = Rows.from_texts(frame["text"].to_numpy(), frame["prompt_len"].to_numpy())
    ids = rows.ids.long()
    with torch.no_grad():
        pred = load_checkpoint(final).eval()(ids[None])[0].argmax(-1)
    pos = torch.arange(1, ids.shape[1])
    answer = (pos >= torch.from_numpy(rows.prompt_len)[:, None]) & (ids[:, 1:] != 0)
    right = (pred[:, :-1] == ids[:, 1:]) | ~answer
    exact = right.all(1).float().mean().item()
    # Chance: the most common token at each answer position.
    targets = ids[:, 1:][answer]
    offset = (pos.expand_as(answer) - torch.from_numpy(rows.prompt_len)[:, None])[answer]
    chance = sum(torch.bincount(targets[offset == j]).max().item()
                 for j in offset.unique()) / len(targets)
    token_acc = (pred[:, :-1] == ids[:, 1:])[answer].float().mean().item()
    assert token_acc > chance + 0.3 and exact > 0.6, (token_acc, chance, exact)


def test_interrupted_run_resumes_to_identical_weights(small_data, finished_run, tmp_path,
                                                      monkeypatch):
    calls = {"n": 0}
    original = TrainStep.__call__

    def interrupt_at_47(self, ids, plen):
        calls["n"] += 1
        if calls["n"] == 47:
            raise KeyboardInterrupt
        return original(self, ids, plen)

    out = tmp_path / "run"
    monkeypatch.setattr(TrainStep, "__call__", interrupt_at_47)
    with pytest.raises(KeyboardInterrupt):
        train(quick_spec(small_data), out)
    monkeypatch.setattr(TrainStep, "__call__", original)
    assert not artifacts.is_complete(out) and not (out / "checkpoints" / "final").exists()
    assert torch.load(out / "resume" / "state.pt", weights_only=True)["step"] == 40
    final = train(quick_spec(small_data), out)
    want, got = weights(finished_run / "checkpoints" / "final"), weights(final)
    assert all(torch.equal(want[k], got[k]) for k in want)
    steps = [r["step"] for r in records(out) if "loss" in r]
    assert steps == sorted(set(steps)) and steps[-1] == 60
    assert artifacts.is_complete(out)


@pytest.mark.slow
def test_killed_process_resumes_to_identical_weights(small_data, finished_run, tmp_path):
    out = tmp_path / "run"
    spec = quick_spec(small_data)
    (tmp_path / "spec.yaml").write_text(json.dumps(spec.model_dump(mode="json")))
    proc = subprocess.Popen([sys.executable, "-m", "worldrep.cli", "train",
                             str(tmp_path / "spec.yaml"), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "checkpoint-20").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not artifacts.is_complete(out)
    final = train(spec, out)
    want, got = weights(finished_run / "checkpoints" / "final"), weights(final)
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_run_directory_holds_hf_checkpoints_metrics_and_curves(small_data, finished_run):
    ckpts = sorted(p.name for p in (finished_run / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-0", "checkpoint-20", "checkpoint-40", "checkpoint-60", "final"]
    hf = AutoModelForCausalLM.from_pretrained(finished_run / "checkpoints" / "final").eval()
    compact = load_checkpoint(finished_run / "checkpoints" / "final")
    ids = torch.tensor([[2, 61, 66, 76, 77, 11, 60, 56, 88, 88, 88, 89]])
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, compact(ids[None])[0], atol=1e-4)
    log = records(finished_run)
    evals = [r for r in log if r.get("kind") == "eval"]
    assert [r["step"] for r in evals] == [0, 30, 60]
    assert all("loss/distance" in r and "answer_loss/distance" in r for r in evals)
    train_lines = [r for r in log if "loss" in r]
    assert {"lr", "grad_norm", "steps_per_s", "tokens_per_s"} <= train_lines[-1].keys()
    assert (finished_run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert artifacts.read_manifest(finished_run)["kind"] == "train"
    # Running a finished spec again does nothing.
    before = (finished_run / "metrics.jsonl").read_text()
    train(quick_spec(small_data), finished_run)
    assert (finished_run / "metrics.jsonl").read_text() == before


def test_the_run_identity_names_no_path(small_data, finished_run, tmp_path):
    """The same run from a copy of its data, into another OUT: the same identity and the same
    bytes (the paths are in spec.yaml, for people, not in what is hashed)."""
    import shutil

    data = Path(shutil.copytree(small_data, tmp_path / "elsewhere" / "data"))
    out = tmp_path / "other-out"
    final = train(quick_spec(data), out)
    assert (out / "run.json").read_text() == (finished_run / "run.json").read_text()
    assert str(small_data) not in (out / "run.json").read_text()
    assert artifacts.read_manifest(out)["hash"] == artifacts.read_manifest(finished_run)["hash"]
    for name in ("checkpoint-20", "final"):
        a, b = (sorted((d / "checkpoints" / name).iterdir()) for d in (out, finished_run))
        assert [f.name for f in a] == [f.name for f in b]
        assert "model.safetensors" in [f.name for f in a]
        assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b, strict=True))
    assert final == out / "checkpoints" / "final"


def test_fine_tuning_starts_from_checkpoint(small_data, finished_run, tmp_path):
    start = finished_run / "checkpoints" / "final"
    spec = quick_spec(small_data, model=None, init_from=str(start), optimizer={}, steps=3,
                      checkpoints={}, eval={"every": None})
    final = train(spec, tmp_path / "ft")
    identity = json.loads((tmp_path / "ft" / "run.json").read_text())
    saved = identity["spec"]
    assert saved["optimizer"]["lr"] == 1e-5 and saved["model"]["preset"] is None
    assert "init_from" not in saved and len(identity["init_hash"]) == 16  # by content
    first = weights(tmp_path / "ft" / "checkpoints" / "checkpoint-0")
    assert all(torch.equal(v, weights(start)[k]) for k, v in first.items())
    assert not all(torch.equal(v, weights(final)[k]) for k, v in first.items())
    wrong = quick_spec(small_data, init_from=str(start), model={"preset": "reference"})
    with pytest.raises(WorldrepError, match="does not match the init_from checkpoint.*hidden"):
        train(wrong, tmp_path / "ft2")


def test_nan_loss_stops_with_clear_error_and_keeps_last_checkpoint(small_data, tmp_path,
                                                                  monkeypatch):
    original = StackedQwen2.loss
    calls = {"n": 0}

    def poisoned(self, ids, prompt_len=None, first=0):
        calls["n"] += 1
        loss = original(self, ids, prompt_len, first)
        return loss * math.nan if calls["n"] > 25 else loss

    monkeypatch.setattr(StackedQwen2, "loss", poisoned)
    out = tmp_path / "run"
    with pytest.raises(WorldrepError, match=r"diverged.*NaN/inf.*checkpoint-20"):
        train(quick_spec(small_data, eval={"every": None}), out)
    assert (out / "checkpoints" / "checkpoint-20").is_dir()
    assert torch.isfinite(weights(out / "checkpoints" / "checkpoint-20")["lm_head"]).all()
    assert not (out / "checkpoints" / "final").exists() and not artifacts.is_complete(out)


def test_yaml_spec_and_overrides(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("data: somewhere\noptimizer: {lr: 3e-4}\nepochs: 3\n")
    spec = load_spec(path, steps=7)
    assert spec.optimizer.lr == 3e-4 and spec.steps == 7 and spec.epochs is None
    tiny = load_spec(TINY_YAML, data="d")
    reference = load_spec(REPO / "configs" / "train" / "reference.yaml", data="d")
    assert tiny.model.preset == "tiny" and reference.model.n_params == 1_601_920
    assert (reference.batch_size, reference.epochs, reference.optimizer.warmup_steps) == \
        (128, 42, 50)


@pytest.mark.parametrize("fields, message", [
    ({"epochs": 2, "steps": 5}, "epochs or steps, not both"),
    ({"optimizer": {"lr": -1}}, "optimizer.lr"),
    ({"batch_size": 0}, "batch_size"),
    ({"loss": "prompt"}, "'loss'"),
    ({"lr": 0.1}, "unknown key 'lr'"),
    ({"checkpoints": {"every": 10, "at": [1000]}}, "outside this run"),
    ({"cuda_graphs": True, "device": "cpu"}, "cuda_graphs needs a CUDA device"),
])
def test_spec_errors(small_data, tmp_path, fields, message):
    from worldrep.config import parse_config

    with pytest.raises(WorldrepError, match=message):
        spec = parse_config(TrainSpec, {"data": str(small_data), "progress": False, **fields})
        train(spec, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_data_and_foreign_out_dir(small_data, finished_run, tmp_path):
    with pytest.raises(WorldrepError, match="names no data"):
        load_spec(TINY_YAML)
    other = quick_spec(small_data, seed=3)
    with pytest.raises(WorldrepError, match="finished training run of a different spec"):
        train(other, finished_run)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(WorldrepError, match="not a worldrep training run"):
        train(other, tmp_path / "junk")


def test_cli_train(small_data, tmp_path):
    from typer.testing import CliRunner

    from worldrep.cli import app

    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(TINY_YAML), "--data", str(small_data),
                                 "--out", str(out), "--steps", "4"])
    assert result.exit_code == 0, result.output
    assert "final checkpoint" in result.output and (out / "checkpoints" / "final").is_dir()
    assert json.loads((out / "run.json").read_text())["total_steps"] == 4
    result = runner.invoke(app, ["train", str(TINY_YAML), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "names no data" in result.output


def test_every_run_writes_tensorboard_events_that_tensorboard_reads_back(finished_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(finished_run))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/steps_per_s",
            "eval/loss/distance", "eval/mean_error/distance",
            "eval/valid_rate/distance"} <= tags
    logged = [r for r in records(finished_run) if "loss" in r and r.get("kind") != "eval"]
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == [r["step"] for r in logged]
    assert [e.value for e in events] == pytest.approx([r["loss"] for r in logged], rel=1e-6)
    assert [e.step for e in acc.Scalars("eval/mean_error/distance")] == [0, 30, 60]


def test_a_resumed_run_purges_the_events_after_its_checkpoint(small_data, tmp_path,
                                                               monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from worldrep.train import loop as training

    out = tmp_path / "run"
    real = training.report

    def stop_at_60(self, step):  # step 50 is logged, then the run dies
        if step == 60:
            raise KeyboardInterrupt
        return real(self, step)

    monkeypatch.setattr(training, "report", stop_at_60)
    with pytest.raises(KeyboardInterrupt):
        train(quick_spec(small_data), out)
    monkeypatch.undo()
    first = EventAccumulator(str(out))
    first.Reload()
    assert [e.step for e in first.Scalars("train/loss")][-1] == 50
    train(quick_spec(small_data), out)  # resumes from checkpoint-40
    acc = EventAccumulator(str(out))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 60  # no step twice


def test_wandb_runs_offline_in_the_run_directory(small_data, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    train(quick_spec(small_data, track=["wandb"], steps=20), out)
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    assert not list(out.glob("events.out.tfevents.*"))  # TensorBoard was not asked for


def test_tracking_is_not_identity(small_data):
    from worldrep.train import Run

    a = Run(quick_spec(small_data), "a")
    b = Run(quick_spec(small_data, track=["wandb"], progress=True, log_every=5), "b")
    assert a.digest == b.digest


def test_fp16_loss_scaling_skips_overflowed_updates_and_adapts_the_scale():
    """GradScaler's rule per model: unscale; on overflow skip the update and halve the
    scale; after N clean steps double it. The schedule moves on either way."""
    spec = ModelSpec(preset=None, hidden=8, layers=1, heads=2, intermediate=16)
    model = init_model(spec, [0, 1])
    opt = AdamW(model, 1e-2, total_steps=100, warmup_steps=0)
    opt.scaled, opt.SCALE_GROWTH_INTERVAL = True, 3
    shapes = [p.shape for p in opt.params]
    before = opt.flat.clone()
    grads = [torch.ones(s) * opt.scale[0] for s in shapes]
    grads[0] = grads[0].clone()
    grads[0][1] = math.inf  # model 1 overflows
    opt.update(grads)
    assert not torch.equal(opt.flat[0], before[0]) and torch.equal(opt.flat[1], before[1])
    assert opt.scale.tolist() == [2.0 ** 16, 2.0 ** 15]
    assert opt.updates.tolist() == [1, 1] and opt.taken.tolist() == [1, 0]
    for _ in range(2):  # three clean steps in a row for model 0, two for model 1
        opt.update([torch.ones(s) * opt.scale[:, None].view(-1, *[1] * (len(s) - 1))
                    for s in shapes])
    assert opt.scale.tolist() == [2.0 ** 17, 2.0 ** 15]
    # Unscaled, the update is exactly the unscaled optimizer's.
    ref = AdamW(init_model(spec, [0, 1]), 1e-2, total_steps=100, warmup_steps=0)
    ref.update([torch.ones(s) for s in shapes])
    fresh = AdamW(init_model(spec, [0, 1]), 1e-2, total_steps=100, warmup_steps=0)
    fresh.scaled = True
    fresh.update([torch.ones(s) * 2.0 ** 16 for s in shapes])
    torch.testing.assert_close(fresh.flat, ref.flat, rtol=0, atol=1e-7)


def test_fp16_training_runs_and_learns(small_data, tmp_path):
    out = tmp_path / "fp16"
    train(quick_spec(small_data, precision="fp16"), out)
    losses = [r["loss"] for r in records(out) if "loss" in r and r.get("kind") != "eval"]
    assert losses[-1] < losses[0]
    state = torch.load(out / "resume" / "state.pt", weights_only=True)
    assert state["optimizer"]["scale"].item() >= 1.0  # the scale travels with the resume state


def test_the_validation_curve_beside_the_training_loss_is_the_same_loss(small_data, tmp_path):
    from worldrep.train import loss_lines

    out = tmp_path / "answer"
    train(quick_spec(small_data, loss="answer", steps=30), out)
    lines = loss_lines(records(out), "answer")
    assert [label for label, _, _ in lines] == [
        "train (answer-only loss)", "val distance (answer-only)", "val distance (whole-row)"]
    evals = [r for r in records(out) if r.get("kind") == "eval"]
    assert lines[1][1] == [(r["step"], r["answer_loss/distance"]) for r in evals]
    assert lines[1][2] == "-" and lines[2][2] == ":"  # the other kind is dotted
    assert [label for label, _, _ in loss_lines(records(out), "full")][:2] == [
        "train (whole-row loss)", "val distance (whole-row)"]
    assert (out / "curves.png").stat().st_size > 10_000


def test_compile_auto_compiles_cpu_runs_long_enough_to_repay_it(monkeypatch):
    import worldrep.train.runtime as train_module

    spec = TrainSpec(data="-", device="cpu")
    monkeypatch.setattr(train_module, "_cpu_compiler", lambda: "/usr/bin/g++")
    assert not Runtime.of(spec, train_module.CPU_COMPILE_STEPS - 1).compile
    assert Runtime.of(spec, train_module.CPU_COMPILE_STEPS).compile
    assert not Runtime.of(spec).compile  # a length not known: eager
    assert not Runtime.of(spec.model_copy(update={"compile": False}), 10**6).compile
    assert Runtime.of(spec.model_copy(update={"compile": True}), 1).compile
    monkeypatch.setattr(train_module, "_cpu_compiler", lambda: None)  # no C++ compiler
    assert not Runtime.of(spec, 10**6).compile


def test_the_answer_window_gives_the_loss_of_every_position(small_data):
    """The LM head skips the targets before the batch's first answer: the same loss."""
    from worldrep.model import init_model

    rows = load_rows(small_data, "train", 256, "cpu")
    ids, plen, _ = Batcher([rows], 16, [3]).get(0)
    model = init_model(ModelSpec(preset="tiny"), 7)
    first = int(plen.min()) - 1
    assert first > 5  # the window really skips the prompt
    full, windowed = model.loss(ids, plen), model.loss(ids, plen, first)
    assert torch.allclose(full, windowed, atol=1e-6)
