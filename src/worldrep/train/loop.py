"""The training loop: the runs of one pack key, stepped together, each into its own directory.

`train_pack` is the whole loop, top to bottom. Its pieces: a `Run` for each run's directory,
a `Progress` record for how far each run is, and stacks (`Stack`) of runs that share one model:
their optimizer (`AdamW`), their step (`TrainStep`) and their batches (`Batcher`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..errors import WorldrepError
from ..model import StackedQwen2, describe, load_hf_state_dict, select
from .batches import Batcher, Rows, load_rows
from .evaluator import Evaluator
from .optim import AdamW, logged_lr
from .run import Run
from .runtime import Runtime, models_per_stack
from .spec import PACK_RULE, PackKey, TrainSpec, pack_key
from .step import NO_STATS, Stats, TrainStep


@dataclass
class Progress:
    """How far one run is: the loop's one record of it (the run's directory is its `Run`, its
    weights a row of its stack's optimizer)."""

    step: int  # updates taken
    tokens: int = 0  # real tokens trained on since the last report
    stats: Stats = NO_STATS  # what the steps since the last report added up
    error: str | None = None  # why the run stopped early (it diverged)
    clock: float = field(default_factory=time.perf_counter)  # when the last report was made


@dataclass
class Member:
    """One run of a stack: its directory, its row `k` of the stack's optimizer, its
    evaluator and its progress."""

    run: Run
    opt: AdamW
    k: int
    evaluator: Evaluator
    progress: Progress


class Stack(NamedTuple):
    """Consecutive runs of a pack stacked in one model: its members, optimizer, step and
    batches."""

    members: list[Member]
    opt: AdamW
    step: TrainStep
    batches: Batcher


def train_pack(runs: list[Run], stack: int | None = None) -> dict[str, str]:
    """Train the runs of one pack key to their end; returns the error of each run that failed,
    by its OUT. Each step, every stack steps its runs that are at that step and have not
    failed; the others wait (the active mask), so runs resumed from different steps catch up
    without repeating or skipping one. Then every run that is due reports (its metrics line,
    then evaluation, checkpoint or the end); one that diverges stops alone."""
    from tqdm.auto import tqdm

    rt, total = runs[0].rt, runs[0].total
    if runs[0].spec.threads:
        torch.set_num_threads(runs[0].spec.threads)
    stacks = _stacks(runs, rt, stack or models_per_stack(len(runs), rt.device))
    members = [m for st in stacks for m in st.members]
    for m in members:
        if m.progress.step == 0:
            begin(m, packed=len(runs))
        elif m.progress.step == total:  # killed after its last checkpoint, before the final one
            finish(m)
    step = min(m.progress.step for m in members)
    bar = tqdm(total=total, initial=step, disable=not any(r.spec.progress for r in runs),
               unit="step", dynamic_ncols=True, desc=f"train x{len(runs)}" if runs[1:] else "train")
    while step < total and any(m.progress.error is None and m.progress.step < total
                               for m in members):
        stepped = []
        for st in stacks:
            active = [m.progress.error is None and m.progress.step == step for m in st.members]
            if not any(active):
                continue
            st.opt.set_active(active)
            ids, plen, tokens = st.batches.get(step)
            st.step(ids, plen)
            for m, on, n in zip(st.members, active, tokens, strict=True):
                if on:
                    m.progress.step, m.progress.tokens = step + 1, m.progress.tokens + int(n)
                    stepped.append(m)
        step += 1
        due = [m for m in stepped if m.run.due(step)]
        if not due:
            continue
        for st in stacks:  # one sync: every run's sums since the last flush
            sums = st.step.flush()
            for m in st.members:
                m.progress.stats = m.progress.stats.plus(Stats.of(sums, m.k))
        for m in due:
            try:
                record = report(m, step)
            except WorldrepError as err:  # diverged: this run stops, the others go on
                m.progress.error = str(err)
            else:
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
        bar.update(step - bar.n)
    bar.close()
    for run in runs:  # a run that failed keeps what it logged
        run.close()
    return {str(m.run.out): m.progress.error for m in members if m.progress.error}


# -- what the loop does for one run ------------------------------------------------------------
def begin(m: Member, packed: int) -> None:
    """Step 0 of a fresh run: the start record, the first evaluation and checkpoint."""
    run = m.run
    run.log({"kind": "start", "step": 0, "model": describe(run.spec.model),
             "total_steps": run.total, "rows": run.n_rows, "device": str(run.rt.device),
             "packed": packed})
    measure(m, 0)
    run.checkpoint(0, m.opt, m.k)


def report(m: Member, step: int) -> dict:
    """The metrics line of the steps since the last report, then what is due at `step`:
    the evaluation, the checkpoint, the end. A NaN/inf loss is an error."""
    run, p = m.run, m.progress
    loss, norm = p.stats.means()
    if not (np.isfinite(loss) and np.isfinite(norm)):
        raise run.diverged(step, "the loss")
    elapsed = max(time.perf_counter() - p.clock, 1e-9)
    record = {"step": step, "epoch": round(step / run.per_epoch, 4), "loss": float(loss),
              "lr": logged_lr(run.spec.optimizer, run.total, step - 1), "grad_norm": float(norm),
              "steps_per_s": round(p.stats.steps / elapsed, 3),
              "tokens_per_s": round(p.tokens / elapsed, 1)}
    run.log(record)
    p.stats, p.tokens = NO_STATS, 0
    if step in run.eval_steps:
        measure(m, step)
    if step in run.checkpoint_steps:
        run.checkpoint(step, m.opt, m.k)
        run.redraw_curves()
    if step == run.total:
        finish(m)
    p.clock = time.perf_counter()
    return record


def measure(m: Member, step: int) -> None:
    """The evaluation at `step`: validation losses and generation metrics."""
    metrics = m.evaluator(select(m.opt.model, m.k))
    if metrics:
        m.run.log({"kind": "eval", "step": step, **metrics})


def finish(m: Member) -> None:
    """The final checkpoint, then the run's last writes (curves, manifest)."""
    m.run.checkpoint(m.run.total, m.opt, m.k, "final")
    m.run.finish()


# -- building the stacks -----------------------------------------------------------------------
def _stacks(runs: list[Run], rt: Runtime, per: int) -> list[Stack]:
    """The runs opened and resumed, `per` to a stack, in order."""
    rows: dict[str, Rows] = {}  # runs on the same data share its rows
    for run in runs:
        if run.spec.data not in rows:
            rows[run.spec.data] = load_rows(run.spec.data, "train",
                                            runs[0].spec.model.max_positions, rt.device)
    return [_stack(runs[i:i + per], rt, rows) for i in range(0, len(runs), per)]


def _stack(runs: list[Run], rt: Runtime, rows: dict[str, Rows]) -> Stack:
    model = StackedQwen2(runs[0].spec.model, k=len(runs))
    for k, run in enumerate(runs):
        load_hf_state_dict(model, run.initial_weights(), k)
    model = model.to(rt.device)
    o = [run.spec.optimizer for run in runs]
    opt = AdamW(model, [x.lr for x in o], [run.total for run in runs],
                [x.warmup_steps for x in o], [x.weight_decay for x in o], o[0].betas, o[0].eps,
                [x.grad_clip for x in o])
    members = [_member(run, opt, k) for k, run in enumerate(runs)]
    return Stack(members, opt, TrainStep(model, opt, rt, [r.spec.loss == "answer" for r in runs]),
                 Batcher([rows[r.spec.data] for r in runs], runs[0].spec.batch_size,
                         [r.spec.seed for r in runs], rt.pad_multiple))


def _member(run: Run, opt: AdamW, k: int) -> Member:
    """Open a run's directory and resume it into row k of `opt` (from its newest checkpoint)."""
    state = run.open()
    if state is not None:
        opt.load_state_dict(state["optimizer"], k)
    step = int(state["step"]) if state is not None else 0
    return Member(run, opt, k, Evaluator(run.spec, run.rt), Progress(step))


# -- the entry points --------------------------------------------------------------------------
class PackError(WorldrepError):
    """Some runs of a pack failed; the others finished. `errors` maps OUT -> message."""

    def __init__(self, errors: dict[str, str], total: int):
        self.errors = errors
        shown = "; ".join(f"{out}: {msg}" for out, msg in errors.items())
        super().__init__(f"{len(errors)} of {total} packed runs failed: {shown}")


def train_packed(specs: list[TrainSpec], outs: list[str | Path], regroup: bool = False,
                 stack: int | None = None) -> list[Path]:
    """Train each `specs[i]` into `outs[i]`, together; returns each OUT/checkpoints/final.

    Finished OUTs are left as they are and unfinished ones resume, each from its own newest
    checkpoint. The runs must share a `pack_key`; otherwise this is an error, or with `regroup`
    the runs are split into compatible packs trained one after another (and a run whose spec is
    invalid fails alone). A run that diverges stops alone; one `PackError` reports the failed
    runs after the others have finished. `stack` is at most how many runs share one stacked
    step (default `models_per_stack`); it changes speed and float rounding, nothing else.
    """
    outs = [Path(o) for o in outs]
    if len(specs) != len(outs) or not specs:
        raise WorldrepError(f"train_packed needs one output directory per spec; got "
                            f"{len(specs)} specs and {len(outs)} outs")
    resolved = [o.resolve() for o in outs]
    if dupes := sorted({str(o) for o in resolved if resolved.count(o) > 1}):
        raise WorldrepError(f"packed runs need distinct output directories; repeated: "
                            f"{', '.join(dupes)}")
    errors: dict[str, str] = {}
    packs: dict[PackKey, list[Run]] = {}
    for spec, out in zip(specs, outs, strict=True):
        try:
            run = Run(spec, out)
            if not run.finished():
                packs.setdefault(pack_key(run.spec, run.total), []).append(run)
        except WorldrepError as err:
            if not regroup:
                raise
            errors[str(out)] = str(err)
    keys = list(packs)
    if len(keys) > 1 and not regroup:
        first, other = packs[keys[0]][0], packs[keys[1]][0]
        raise WorldrepError(f"runs cannot be packed together: {other.out} differs from "
                            f"{first.out} in {keys[0].mismatch(keys[1])}; {PACK_RULE}")
    for runs in packs.values():
        errors.update(train_pack(runs, stack))
    if errors:
        raise PackError(errors, len(specs))
    return [o / "checkpoints" / "final" for o in outs]


def train(spec: TrainSpec, out: str | Path) -> Path:
    """Train one model as `spec` says into OUT (a pack of one); returns OUT/checkpoints/final.

    A finished OUT of the same spec is returned as is; an unfinished one is resumed from its
    newest checkpoint and ends with the same weights as an uninterrupted run.
    """
    try:
        return train_packed([spec], [out])[0]
    except PackError as err:
        raise WorldrepError(*err.errors.values()) from None
