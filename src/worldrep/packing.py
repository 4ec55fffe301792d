"""Packed training: K independent runs trained together, one stacked step at a time.

One 1.6M-parameter model leaves a GPU almost idle, so `train_packed(specs, outs)` trains K runs
of one architecture and one length in a single `StackedQwen2` (parameters stacked over a
leading model dimension). Each run keeps everything that makes it itself: its data and data
order (`PackBatcher`), its init or init_from checkpoint, its optimizer state, learning rate,
schedule, weight decay and clipping (rows of one `AdamW`), its loss (full or answer), its
evaluations, checkpoints, resume state and metrics. Every OUT ends exactly as `train(spec, OUT)`
would write it (same run.json, checkpoints, resume/state.pt, metrics.jsonl, manifest), so a
run can be started packed and resumed alone, or the reverse.

Why padding does not change a run: each model's batch is right-padded to the pack's longest
row in that step (and short end-of-epoch batches get empty rows). Pads sit after every real
token, so causal attention never lets a real position see one, and pad targets are masked out
of the loss, which each model averages over its own counted tokens. Only float rounding of the
larger shapes differs: on CPU in fp32 a packed run's losses match its unpacked run's to ~1e-6.

Stacks: on CUDA all runs of a pack share one stacked step (one compiled CUDA graph). On CPU,
where a stacked step is slower per model than single runs, a pack steps its runs in turn
(`models_per_stack`); `stack=N` stacks up to N runs per step on any device.

Resume: every run resumes from its own `resume/state.pt`. If their steps differ (a pack killed
while writing checkpoints, or a run that was trained alone for a while), the runs that are
behind are trained first, in a pack of their own, until they reach the next run's step; then
the packs merge. No run ever repeats or skips a step, so it ends as it would have without the
interruption (bit for bit when it resumes in the same stacks, else to float rounding). A run that diverges stops with the same error as when alone
(its last good checkpoint is kept) and the others go on without it; `PackError` reports it at
the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import artifacts
from .errors import WorldrepError
from .model import StackedQwen2, describe
from .train import (
    CURVES_EVERY_S,
    CURVES_FILE,
    METRICS_FILE,
    RUN_FILE,
    AdamW,
    Batcher,
    Evaluator,
    MetricsLog,
    Plan,
    Rows,
    Runtime,
    Stepper,
    TrainSpec,
    _check_out,
    _data_hash,
    _load_resume,
    _Loop,
    _progress,
    _train_rows,
    build_model,
    load_rows,
    plot_curves,
    resolve,
)


class PackError(WorldrepError):
    """Some runs of a pack failed; the others finished. `errors` maps OUT -> message."""

    def __init__(self, errors: dict[str, str], total: int):
        self.errors = errors
        shown = "; ".join(f"{out}: {msg}" for out, msg in errors.items())
        super().__init__(f"{len(errors)} of {total} packed runs failed: {shown}")


# -- batches of a pack ---------------------------------------------------------------------------
class PackBatcher:
    """Batch `step` of every run of a pack as one [K, B, T] tensor.

    Run k's rows are exactly those `Batcher(rows[k], B, seeds[k], pad_multiple)` gives at that
    step (its own epoch length and permutation); its own padded width is computed as there,
    and T is the widest of them. All runs' rows live in one table (runs on the same `Rows`
    share it) plus an empty row that fills short batches, so a step is one gather whatever K.
    """

    def __init__(self, rows: list[Rows], batch_size: int, seeds: list[int],
                 pad_multiple: int = 1):
        tables: list[Rows] = []
        for r in rows:
            if all(r is not t for t in tables):
                tables.append(r)
        width = max(t.ids.shape[1] for t in tables)
        device = tables[0].ids.device
        starts = np.cumsum([0] + [len(t) for t in tables])
        self.table = torch.cat([F.pad(t.ids, (0, width - t.ids.shape[1])) for t in tables]
                               + [torch.zeros(1, width, dtype=torch.uint8, device=device)])
        self.prompt = torch.cat([torch.from_numpy(t.prompt_len) for t in tables]
                                + [torch.zeros(1, dtype=torch.int64)]).to(device)
        self.empty = int(starts[-1])
        self.offsets = [int(starts[next(i for i, t in enumerate(tables) if t is r)])
                        for r in rows]
        self.batchers = [Batcher(r, batch_size, s, pad_multiple) for r, s in zip(rows, seeds,
                                                                                 strict=True)]
        self.batch_size, self.pad_multiple, self.device = batch_size, pad_multiple, device
        k = len(rows)
        self._epoch: list[int | None] = [None] * k
        self._index: list[torch.Tensor] = [None] * k  # type: ignore[list-item]
        self._widths: list[np.ndarray] = [None] * k  # type: ignore[list-item]
        self._tokens: list[np.ndarray] = [None] * k  # type: ignore[list-item]

    def _load_epoch(self, k: int, epoch: int) -> None:
        b = self.batchers[k]
        perm = b.order(epoch)
        pad = b.per_epoch * self.batch_size - len(perm)
        index = np.concatenate([perm + self.offsets[k], np.full(pad, self.empty)])
        lengths = np.concatenate([b.rows.lengths[perm], np.zeros(pad, np.int64)])
        lengths = lengths.reshape(b.per_epoch, self.batch_size)
        m = self.pad_multiple
        self._widths[k] = np.minimum(-(-lengths.max(axis=1) // m) * m, b.rows.ids.shape[1])
        self._tokens[k] = lengths.sum(axis=1)
        self._index[k] = torch.from_numpy(index.reshape(b.per_epoch, self.batch_size)).to(
            self.device)
        self._epoch[k] = epoch

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(ids [K, B, T] int64, prompt_len [K, B] int64, real tokens per run [K])."""
        picks, widths, tokens = [], [], []
        for k, b in enumerate(self.batchers):
            epoch, i = divmod(step, b.per_epoch)
            if epoch != self._epoch[k]:
                self._load_epoch(k, epoch)
            picks.append(self._index[k][i])
            widths.append(self._widths[k][i])
            tokens.append(self._tokens[k][i])
        index = torch.stack(picks)
        ids = self.table[index, :int(max(widths))].long()
        return ids, self.prompt[index], np.asarray(tokens)


# -- one slot of a pack, seen as a single run ------------------------------------------------------
def slot_view(model: StackedQwen2, k: int) -> StackedQwen2:
    """Slot k of a stacked model as a K=1 model sharing its storage (updates show through)."""
    view = StackedQwen2(model.spec, k=1)
    for dst, src in zip(view.parameters(), model.parameters(), strict=True):
        dst.data = src.data[k:k + 1]
    view.inv_freq = model.inv_freq
    return view


class SlotOptimizer:
    """Row k of a packed AdamW with the interface of a K=1 one (for checkpoints and resume):
    its state dict is what the same run trained alone would save."""

    NAMES = ("flat", "m", "v", "step")

    def __init__(self, opt: AdamW, k: int):
        self.opt, self.k = opt, k

    @property
    def flat(self) -> torch.Tensor:
        return self.opt.flat[self.k:self.k + 1]

    def state_dict(self) -> dict:
        rows = {n: getattr(self.opt, n)[self.k:self.k + 1].detach().to("cpu", copy=True)
                for n in self.NAMES}
        return {**rows, "sizes": self.opt.sizes}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if state["sizes"] != self.opt.sizes or state["flat"].shape[1] != self.opt.flat.shape[1]:
            raise WorldrepError("the resume state does not fit this model")
        for n in self.NAMES:
            getattr(self.opt, n)[self.k:self.k + 1].copy_(state[n])


# -- the runs of a pack ----------------------------------------------------------------------------
@dataclass
class _Member:
    """One run of a pack: its plan, its run directory's pieces and its place in the loop."""

    out: Path
    plan: Plan
    digest: str
    rows: Rows
    rt: Runtime
    loop: _Loop | None = None
    home: dict | None = None  # optimizer rows (weights, moments, step) between packs
    step: int = 0
    begun: bool = False  # the start record, evaluation and checkpoint of step 0 are written
    finished: bool = False
    error: str | None = None
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0])  # loss, grad norm
    count: int = 0
    tokens: int = 0
    tick: float = 0.0

    @property
    def spec(self) -> TrainSpec:
        return self.plan.spec

    def key(self) -> tuple:
        """What runs of one pack must share (the model function, the step, the device)."""
        s, rt = self.spec, self.rt
        device = (str(rt.device), str(rt.autocast), rt.compile, rt.graphs, rt.pad_multiple)
        return (tuple(sorted(s.model.arch().items())), self.plan.total, s.batch_size, device,
                s.threads, tuple(s.optimizer.betas), s.optimizer.eps)


KEY_NAMES = ("architecture", "total steps", "batch size", "device settings", "threads",
             "AdamW betas", "AdamW eps")


def _prepare(spec: TrainSpec, out: Path, rows_cache: dict) -> _Member | Path:
    """What `train` checks before writing anything; a finished OUT returns its final dir."""
    rt = Runtime.of(spec)
    plan = resolve(spec, _train_rows(spec.data), _data_hash(spec.data))
    identity = plan.identity()
    finished = _check_out(out, identity)
    if finished is not None:
        return finished
    spec = plan.spec
    where = (spec.data, spec.model.max_positions, str(rt.device))
    if where not in rows_cache:  # runs on the same data share its rows
        rows_cache[where] = load_rows(spec.data, "train", spec.model.max_positions, rt.device)
    return _Member(out, plan, artifacts.spec_hash(identity), rows_cache[where], rt)


def _open(m: _Member) -> None:
    """Create or reopen the run directory and load the run's state (as `train` does)."""
    spec = m.spec
    m.out.mkdir(parents=True, exist_ok=True)
    artifacts.write_json_atomic(m.out / RUN_FILE, {"hash": m.digest, **m.plan.identity()})
    artifacts.write_spec(m.out, spec.model_dump(mode="json"))
    model = build_model(m.plan, None)  # on the CPU: a pack gathers it onto the device
    opt = _optimizer(model, [m])
    m.step = _load_resume(m.out, opt, m.digest)
    m.begun = m.step > 0
    m.home = opt.state_dict()
    # Lines after the resumed checkpoint are redone; a fresh start redoes everything.
    log = MetricsLog(m.out / METRICS_FILE, keep_through=m.step if m.step else -1)
    m.loop = _Loop(m.plan, m.rt, m.out, model, opt, Evaluator(spec, m.rt), log, m.digest)


def _optimizer(model: StackedQwen2, members: list[_Member]) -> AdamW:
    o = [m.spec.optimizer for m in members]
    return AdamW(model, [x.lr for x in o], [m.plan.total for m in members],
                 [x.warmup_steps for x in o], [x.weight_decay for x in o], o[0].betas,
                 o[0].eps, [x.grad_clip for x in o])


def _mismatch(a: _Member, b: _Member) -> str:
    diffs = [f"{name} {x!r} vs {y!r}" for name, x, y in zip(KEY_NAMES, b.key(), a.key(),
                                                             strict=True) if x != y]
    return "; ".join(diffs)


# -- the packed loop ---------------------------------------------------------------------------------
def models_per_stack(k: int, device: torch.device) -> int:
    """How many of a pack's K runs share one stacked step: all of them on CUDA, where one
    tiny model leaves the device idle and the pack is one compiled CUDA graph. On CPU one:
    there a stacked step was measured slower per model than single runs (by 0-10% for tiny
    models, ~20% for the reference model at batch 128: each op's tensors outgrow the caches,
    and above 32 MB glibc maps fresh pages for every allocation), so a CPU pack steps its runs
    in turn, exactly as fast as running them one after another, in one process."""
    return k if device.type != "cpu" else 1


class _Stack:
    """Consecutive runs of a pack stacked into one model, optimizer, stepper and batcher."""

    def __init__(self, members: list[_Member]):
        self.members = members
        rt = members[0].rt
        self.model = StackedQwen2(members[0].spec.model, k=len(members)).to(rt.device)
        self.opt = _optimizer(self.model, members)
        for k, m in enumerate(members):
            slot = SlotOptimizer(self.opt, k)
            slot.load_state_dict(m.home)
            m.loop.model, m.loop.opt = slot_view(self.model, k), slot
        answer = [m.spec.loss == "answer" for m in members]
        self.stepper = Stepper(self.model, self.opt, rt, answer_only=any(answer))
        # Full-loss runs in a pack with answer-loss runs get prompt length 0: every target
        # counts, exactly the full loss.
        self.answer_rows = (torch.tensor([[a] for a in answer], device=rt.device)
                            if any(answer) and not all(answer) else None)
        self.batcher = PackBatcher([m.rows for m in members], members[0].spec.batch_size,
                                   [m.spec.seed for m in members], rt.pad_multiple)

    def step(self, step: int) -> np.ndarray:
        ids, plen, tokens = self.batcher.get(step)
        if self.answer_rows is not None:
            plen = plen * self.answer_rows
        self.stepper(ids, plen)
        return tokens

    def release(self) -> None:
        """Hand each run's state back (a pack is rebuilt when its runs change)."""
        for k, m in enumerate(self.members):
            m.home = SlotOptimizer(self.opt, k).state_dict()


class _Pack:
    """Some runs of a pack at one common step, in stacks that step together."""

    def __init__(self, members: list[_Member], packed: int, per_stack: int):
        self.members = members
        self.stacks = [_Stack(members[i:i + per_stack])
                       for i in range(0, len(members), per_stack)]
        for m in members:
            if not m.begun:
                _begin(m, packed)

    def run(self, start: int, stop: int, bar) -> None:
        """Steps start..stop; ends early (each run's state kept) when a run diverges."""
        step = start
        for m in self.members:
            m.tick = time.perf_counter()
        for stack in self.stacks:
            stack.model.train()
        while step < stop:
            tokens = np.concatenate([stack.step(step) for stack in self.stacks])
            step += 1
            for m, t in zip(self.members, tokens, strict=True):
                m.tokens += int(t)
            due = [_due(m, step) for m in self.members]
            if not any(due) and step < stop:
                continue
            self._collect(step)
            if bar is not None:
                bar.update(step - bar.n)
            for m, is_due in zip(self.members, due, strict=True):
                if is_due and m.error is None:
                    _report(m, step, bar if m is self.members[0] else None)
            if any(m.error for m in self.members):
                break  # the pack is rebuilt without the diverged run
        for stack in self.stacks:
            stack.release()

    def _collect(self, step: int) -> None:
        """Add the steppers' sums to each run's; a run whose loss is NaN/inf fails."""
        flushed = [stack.stepper.flush() for stack in self.stacks]
        loss = np.concatenate([f[0] for f in flushed])
        norm = np.concatenate([f[1] for f in flushed])
        n = flushed[0][2]
        for m, a, b in zip(self.members, loss, norm, strict=True):
            m.sums[0] += float(a) * n
            m.sums[1] += float(b) * n
            m.count += n
            m.step = step
            if not (np.isfinite(a) and np.isfinite(b)):
                m.error = str(m.loop._diverged(step, "the loss"))


def _due(m: _Member, step: int) -> bool:
    p = m.plan
    return (step % m.spec.log_every == 0 or step in p.eval_steps or step in p.checkpoint_steps
            or step == p.total)


def _begin(m: _Member, packed: int) -> None:
    spec = m.spec
    m.loop.log.write({"kind": "start", "step": 0, "model": describe(spec.model),
                      "total_steps": m.plan.total, "rows": m.plan.n_rows,
                      "device": str(m.rt.device), "packed": packed})
    m.loop.evaluate(0)
    m.loop.checkpoint(0)
    m.begun = True


def _report(m: _Member, step: int, bar) -> None:
    """The metrics line, evaluation and checkpoints of one run at `step` (as `train` does)."""
    now = time.perf_counter()
    elapsed = max(now - m.tick, 1e-9)
    loss, norm = (s / max(1, m.count) for s in m.sums)
    record = {"step": step, "epoch": round(step / m.plan.steps_per_epoch, 4), "loss": loss,
              "lr": m.loop.lr_at(step - 1), "grad_norm": norm,
              "steps_per_s": round(m.count / elapsed, 3),
              "tokens_per_s": round(m.tokens / elapsed, 1)}
    m.loop.log.write(record)
    if bar is not None:
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{record['lr']:.2e}")
    m.sums, m.count, m.tokens = [0.0, 0.0], 0, 0
    try:
        if step in m.plan.eval_steps:
            m.loop.evaluate(step)
        if step in m.plan.checkpoint_steps:
            m.loop.checkpoint(step)
            if time.perf_counter() - m.loop.plotted > CURVES_EVERY_S:
                plot_curves(m.out / METRICS_FILE, m.out / CURVES_FILE)
                m.loop.plotted = time.perf_counter()
        if step == m.plan.total:
            _finish(m, step)
    except WorldrepError as err:  # diverged weights: this run stops, the pack goes on
        m.error = str(err)
    m.tick = time.perf_counter()


def _finish(m: _Member, step: int) -> None:
    m.loop.finish(step)
    m.finished = True


def _train_members(members: list[_Member], stack: int | None) -> None:
    """Train runs of one key to their end, merging the runs that are behind as they catch up."""
    for m in members:
        _open(m)
    per_stack = stack or models_per_stack(len(members), members[0].rt.device)
    total = members[0].plan.total
    progress = any(m.spec.progress for m in members)
    bar = _progress(total, min(m.step for m in members), progress)
    bar.set_description(f"train x{len(members)}")
    try:
        while True:
            live = [m for m in members if m.error is None and not m.finished]
            if not live:
                break
            start = min(m.step for m in live)
            group = [m for m in live if m.step == start]
            stop = min([m.step for m in live if m.step > start] + [total])
            pack = _Pack(group, len(members), per_stack)
            if start == total:  # killed after its last checkpoint, before the final one
                for m in group:
                    _finish(m, total)
                continue
            pack.run(start, stop, bar if len(group) == len(live) else None)
            del pack
    finally:
        bar.close()


# -- the stage function ----------------------------------------------------------------------------
def train_packed(specs: list[TrainSpec], outs: list[str | Path], regroup: bool = False,
                 stack: int | None = None) -> list[Path]:
    """Train each `specs[i]` into `outs[i]` as one pack; returns each OUT/checkpoints/final.

    Each OUT ends exactly as `train(specs[i], outs[i])` would leave it; finished OUTs are
    left as they are and unfinished ones resume. The runs must share architecture, total
    steps, batch size, device settings and AdamW betas/eps; otherwise this is an error, or
    with `regroup` the runs are split into compatible packs trained one after another (and a
    run whose spec is invalid fails alone). Runs that fail are reported by one `PackError`
    after the others have finished.

    `stack` is at most how many runs share one stacked step (default: `models_per_stack`:
    all on CUDA, one on CPU); it changes speed and float rounding, nothing else.
    """
    outs = [Path(o) for o in outs]
    if len(specs) != len(outs) or not specs:
        raise WorldrepError(f"train_packed needs one output directory per spec; got "
                            f"{len(specs)} specs and {len(outs)} outs")
    resolved = [o.resolve() for o in outs]
    dupes = sorted({str(o) for o in resolved if resolved.count(o) > 1})
    if dupes:
        raise WorldrepError(f"packed runs need distinct output directories; repeated: "
                            f"{', '.join(dupes)}")
    errors: dict[str, str] = {}
    members: list[_Member] = []
    rows_cache: dict = {}
    for spec, out in zip(specs, outs, strict=True):
        try:
            m = _prepare(spec, out, rows_cache)
        except WorldrepError as err:
            if not regroup:
                raise
            errors[str(out)] = str(err)
            continue
        if isinstance(m, _Member):
            members.append(m)
    groups = _split(members)
    if len(groups) > 1 and not regroup:
        first, other = groups[0][0], groups[1][0]
        raise WorldrepError(f"runs cannot be packed together: {other.out} differs from "
                            f"{first.out} in {_mismatch(first, other)}; a pack shares "
                            f"{', '.join(KEY_NAMES)}")
    for group in groups:
        threads = group[0].spec.threads
        if threads:
            torch.set_num_threads(threads)
        _train_members(group, stack)
        errors.update({str(m.out): m.error for m in group if m.error})
    if errors:
        raise PackError(errors, len(specs))
    return [o / "checkpoints" / "final" for o in outs]


def _split(members: list[_Member]) -> list[list[_Member]]:
    groups: dict[tuple, list[_Member]] = {}
    for m in members:
        groups.setdefault(m.key(), []).append(m)
    return list(groups.values())
