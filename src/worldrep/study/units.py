"""Which training steps of a study train together as one pack (`pack: auto`), and why.

With `pack: auto` in a study file, the runner hands compatible training steps that are ready
at the same time to `worldrep.train.train_packed` as one unit. Runs are compatible when their
`worldrep.train.pack_key`s are equal (the trainer checks the same key; `worldrep plan` prints
its rule): learning rate, schedule, clipping, weight decay, seed, data, loss and init_from may
differ. At most `pack_limit` runs share a pack; a larger group is split into near-equal packs.

`worldrep plan` shows the packs it expects: compatible runs at the same depth of the step
graph (the runner, which packs whatever is ready together, runs them that way in process).
Training-row counts come from the finished data when it exists, else from the data steps'
specs (`kinds.split_rows`), so the plan needs nothing built.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import WorldrepError


def describe_key(key) -> str:
    a = dict(key.architecture)
    arch = (f"hidden {a['hidden']}, {a['layers']} layers, {a['heads']} heads, "
            f"MLP {a['intermediate']}")
    if isinstance(key.total_steps, int):
        length = f"{key.total_steps:,} steps"
    else:
        length = f"{key.total_steps[1]} epochs of {key.total_steps[2]} (size unknown)"
    from ..train import DEVICE_FIELDS

    device = dict(zip(DEVICE_FIELDS, key.device_settings, strict=True))
    shown = ", ".join(f"{k} {v}" for k, v in device.items()
                      if v is not None and v != "auto") or "device auto"
    return f"{arch}; {length}; batch {key.batch_size}; {shown}"


def _model(study, name: str) -> dict | None:
    """The model of a train step: its own, or that of the run it starts from (init_from)."""
    spec = study.steps[name].spec
    if spec.get("model") or not spec.get("init_from"):
        return spec.get("model")
    return _model(study, spec["init_from"])


def pack_key(study, name: str, built: dict[str, str] | None = None):
    """The `worldrep.train.pack_key` of a train step: runs with equal keys may share a pack."""
    from ..train import TrainSpec, pack_key
    from .kinds import split_rows

    spec = study.steps[name].spec
    fields = {k: v for k, v in spec.items() if k in TrainSpec.model_fields}
    train = TrainSpec.model_validate({**fields, "model": _model(study, name), "init_from": None})
    if train.steps:
        total: int | tuple = train.steps
    else:
        rows = (split_rows(study.steps, spec["data"], built) or {}).get("train")
        total = (math.ceil(rows / train.batch_size) * train.epochs if rows
                 else ("epochs", train.epochs, spec["data"]))
    return pack_key(train, total)


def run_steps(study, name: str, built: dict[str, str] | None = None) -> int | None:
    """A train step's total steps (`steps`, or epochs x ceil(rows / batch)); None if unknown."""
    total = pack_key(study, name, built).total_steps
    return total if isinstance(total, int) else None


def split_evenly(items: list, limit: int) -> list[list]:
    """At most `limit` per part, parts as equal as possible (42 by 20: 14, 14, 14)."""
    parts = max(1, math.ceil(len(items) / limit))
    size = math.ceil(len(items) / parts)
    return [items[i:i + size] for i in range(0, len(items), size)]


def group_jobs(ready: Sequence, study) -> list[list]:
    """The runner's units: ready train jobs grouped by key (in order of their first job),
    every other job alone."""
    units: list[list] = []
    by_key: dict[tuple, list] = {}
    for job in ready:
        if job.kind != "train":
            units.append([job])
            continue
        key = pack_key(study, job.name, job.inputs)
        if key not in by_key:
            by_key[key] = []
            units.append(by_key[key])
        by_key[key].append(job)
    out: list[list] = []
    for unit in units:
        out.extend(split_evenly(unit, study.pack_limit) if len(unit) > 1 else [unit])
    return out


def _depths(study) -> dict[str, int]:
    depth: dict[str, int] = {}
    for step in study.steps.values():  # in dependency order
        depth[step.name] = 1 + max((depth[d] for d in step.deps), default=-1)
    return depth


def plan_packs(study, out: Path | None = None) -> list[tuple]:
    """The packs `worldrep run` is expected to form, in study order: (key, step names)."""
    built = ({s.name: str(study.step_dir(out, s)) for s in study.steps.values()}
             if out is not None else None)
    depth = _depths(study)
    groups: dict[tuple, tuple] = {}
    for step in study.steps.values():
        if step.kind == "train":
            key = pack_key(study, step.name, built)
            groups.setdefault((depth[step.name], key), (key, []))[1].append(step.name)
    return [(key, part) for key, names in groups.values()
            for part in split_evenly(names, study.pack_limit)]


def format_packs(study, out: Path | None = None) -> str:
    from ..train import PACK_RULE

    packs = plan_packs(study, out)
    if not packs:
        return "packing: no training steps"
    runs = sum(len(n) for _, n in packs)
    many = [p for p in packs if len(p[1]) > 1]
    lines = [f"packing (pack: auto, at most {study.pack_limit} runs a pack): {runs} training "
             f"steps as {len(many)} packs and {len(packs) - len(many)} single runs",
             *textwrap.wrap(f"rule: {PACK_RULE}, and their inputs are done at the same time "
                            "(here: the same depth of the step graph)",
                            width=100, initial_indent="  ", subsequent_indent="    ")]
    for key, names in packs:
        head = f"  pack of {len(names)}:" if len(names) > 1 else "  alone:"
        lines.append(f"{head} {describe_key(key)}")
        lines += textwrap.wrap(", ".join(names), width=100, initial_indent="      ",
                               subsequent_indent="      ")
    return "\n".join(lines)


# -- Slurm jobs: fewer, bigger ---------------------------------------------------------------
@dataclass
class Unit:
    """Steps that one Slurm job runs, in order, and the units it waits for."""

    steps: list[str]
    kind: str  # whose resources the job asks for
    after: list[int]  # indices of the units this one needs

    @property
    def name(self) -> str:
        more = f"+{len(self.steps) - 1}" if len(self.steps) > 1 else ""
        return f"{self.steps[0]}{more}"


DATA_KINDS = ("world", "dataset", "mixture")
AFTER_TRAIN = ("eval", "reps")


def slurm_units(study, include: set[str] | None = None) -> list[Unit]:
    """The jobs a Slurm run submits for the steps in `include` (default: all), in an order
    where every job comes after those it needs:

    - each training run alone, or with `pack: auto` each pack (`plan_packs`), with the
      mixtures only it reads (a run's inline `mix:`) run first in the same job;
    - each run's evaluations and representation extractions, one job after the run;
    - the datasets of one depth of the graph in one job, the other mixtures likewise;
    - every other step (the world, analyses) alone.
    """
    include = set(study.steps) if include is None else include
    depth = _depths(study)
    groups: list[list[str]] = []
    owner: dict[str, int] = {}

    def add(names: list[str]) -> None:
        for n in names:
            owner[n] = len(groups)
        groups.append(names)

    if study.pack == "auto":
        for _, names in plan_packs(study):
            if kept := [n for n in names if n in include]:
                add(kept)
    for step in study.steps.values():
        if step.kind == "train" and step.name in include and step.name not in owner:
            add([step.name])
    readers: dict[str, set[str]] = {}
    for step in study.steps.values():
        for d in step.deps:
            readers.setdefault(d, set()).add(step.name)
    for step in study.steps.values():  # mixtures that only one job's runs read join it
        if step.kind == "mixture" and step.name in include:
            jobs = {owner.get(r) for r in readers.get(step.name, ())}
            if len(jobs) == 1 and None not in jobs and study.steps[
                    next(iter(readers[step.name]))].kind == "train":
                unit = jobs.pop()
                groups[unit].insert(0, step.name)
                owner[step.name] = unit
    after_run: dict[str, list[str]] = {}
    by_depth: dict[tuple[str, int], list[str]] = {}
    for step in study.steps.values():
        if step.name not in include or step.name in owner:
            continue
        runs = [d for d in step.deps if study.steps[d].kind == "train"]
        others = [d for d in step.deps if study.steps[d].kind not in DATA_KINDS + ("train",)]
        if step.kind in AFTER_TRAIN and len(runs) == 1 and not others:
            after_run.setdefault(runs[0], []).append(step.name)
        elif step.kind in ("dataset", "mixture"):
            by_depth.setdefault((step.kind, depth[step.name]), []).append(step.name)
        else:
            add([step.name])
    for names in [*after_run.values(), *by_depth.values()]:
        add(names)
    return _ordered(study, groups, owner)


def _ordered(study, groups: list[list[str]], owner: dict[str, int]) -> list[Unit]:
    """Units in dependency order (ties: the study's order), each naming those it needs."""
    index = {name: i for i, name in enumerate(study.steps)}
    needs = []
    for g, names in enumerate(groups):
        names.sort(key=index.get)
        needs.append({owner[d] for n in names for d in study.steps[n].deps
                      if d in owner and owner[d] != g})
    order: list[int] = []
    placed: set[int] = set()
    pending = sorted(range(len(groups)), key=lambda g: index[groups[g][0]])
    while pending:
        ready = [g for g in pending if needs[g] <= placed]
        if not ready:
            raise WorldrepError("the Slurm jobs of this study would wait on each other in a "
                                "circle; report this study file as a worldrep bug")
        order += ready
        placed |= set(ready)
        pending = [g for g in pending if g not in placed]
    position = {g: i for i, g in enumerate(order)}
    units = []
    for g in order:
        steps = groups[g]
        kinds = [study.steps[n].kind for n in steps]
        main = ("train" if "train" in kinds else "eval" if "eval" in kinds else kinds[-1])
        units.append(Unit(steps, main, sorted(position[n] for n in needs[g])))
    return units
