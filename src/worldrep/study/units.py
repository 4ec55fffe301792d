"""Which steps run together: packs of training runs (`pack: auto`), and Slurm jobs.

With `pack: auto` in a study file, the runner hands steps of a kind that `packs` (training
runs) which are ready at the same time and have equal pack keys to that kind's `run_pack` as
one unit. For training runs the key is `worldrep.train.pack_key` (the trainer checks the same
key; `worldrep plan` prints its rule): learning rate, schedule, clipping, weight decay, seed,
data, loss and init_from may differ. At most `pack_limit` runs share a pack; a larger group is
split into near-equal packs.

`worldrep plan` shows the packs it expects: compatible runs at the same depth of the step
graph (the runner, which packs whatever is ready together, runs them that way in process).
Training-row counts come from the finished data when it exists, else from the data steps'
specs (`kinds.split_rows`), so the plan needs nothing built.

Everything here asks the kinds (`packs`, `data`, `slurm_job`, `rank`); no kind is named.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import WorldrepError
from .kinds import get_kind, leading_kind


def _packs(study, name: str) -> bool:
    return get_kind(study.steps[name].kind).packs


def _pack_key(study, name: str, built: dict[str, str] | None = None):
    """A packing step's key (its kind's): steps with equal keys may share a pack."""
    return get_kind(study.steps[name].kind).pack_key(study.steps, name, built)


def split_evenly(items: list, limit: int) -> list[list]:
    """At most `limit` per part, parts as equal as possible (42 by 20: 14, 14, 14)."""
    parts = max(1, math.ceil(len(items) / limit))
    size = math.ceil(len(items) / parts)
    return [items[i:i + size] for i in range(0, len(items), size)]


def group_jobs(ready: Sequence, study) -> list[list]:
    """The runner's units: ready jobs of a packing kind grouped by kind and key (in order of
    their first job), every other job alone."""
    units: list[list] = []
    by_key: dict[tuple, list] = {}
    for job in ready:
        if not get_kind(job.kind).packs:
            units.append([job])
            continue
        key = (job.kind, _pack_key(study, job.name, job.inputs))
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
        if _packs(study, step.name):
            key = _pack_key(study, step.name, built)
            groups.setdefault((depth[step.name], step.kind, key), (key, []))[1].append(step.name)
    return [(key, part) for key, names in groups.values()
            for part in split_evenly(names, study.pack_limit)]


def format_packs(study, out: Path | None = None) -> str:
    packs = plan_packs(study, out)
    if not packs:
        return "packing: no training steps"
    rule = get_kind(study.steps[packs[0][1][0]].kind).pack_rule()
    runs = sum(len(n) for _, n in packs)
    many = [p for p in packs if len(p[1]) > 1]
    lines = [f"packing (pack: auto, at most {study.pack_limit} runs a pack): {runs} training "
             f"steps as {len(many)} packs and {len(packs) - len(many)} single runs",
             *textwrap.wrap(f"rule: {rule}, and their inputs are done at the same time "
                            "(here: the same depth of the step graph)",
                            width=100, initial_indent="  ", subsequent_indent="    ")]
    for key, names in packs:
        head = f"  pack of {len(names)}:" if len(names) > 1 else "  alone:"
        lines.append(f"{head} {key.describe()}")
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


def slurm_units(study, include: set[str] | None = None) -> list[Unit]:
    """The jobs a Slurm run submits for the steps in `include` (default: all), in an order
    where every job comes after those it needs. Each kind says where its steps go
    (`StepKind.slurm_job`):

    - each step of a packing kind (a training run) alone, or with `pack: auto` each pack
      (`plan_packs`), with the "lead_in" steps only it reads (a run's inline `mix:`) run
      first in the same job;
    - the "follow" steps of each packed step (its evaluations and representations), one job
      after it;
    - the "batch" steps of one kind and depth of the graph in one job (datasets, mixtures);
    - every other step (the world, analyses) alone.
    """
    include = set(study.steps) if include is None else include
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
        if _packs(study, step.name) and step.name in include and step.name not in owner:
            add([step.name])
    _lead_ins(study, include, groups, owner)
    for names in _shared_jobs(study, include, owner, add):
        add(names)
    return _ordered(study, groups, owner)


def _lead_ins(study, include: set[str], groups: list[list[str]], owner: dict[str, int]) -> None:
    """A "lead_in" step that only one job's packed steps read runs first in that job."""
    readers: dict[str, set[str]] = {}
    for step in study.steps.values():
        for d in step.deps:
            readers.setdefault(d, set()).add(step.name)
    for step in study.steps.values():
        if get_kind(step.kind).slurm_job == "lead_in" and step.name in include:
            jobs = {owner.get(r) for r in readers.get(step.name, ())}
            if len(jobs) == 1 and None not in jobs and _packs(
                    study, next(iter(readers[step.name]))):
                unit = jobs.pop()
                groups[unit].insert(0, step.name)
                owner[step.name] = unit


def _shared_jobs(study, include: set[str], owner: dict[str, int], add) -> list[list[str]]:
    """The jobs of the steps not yet placed: "follow" steps after their packed step, "batch"
    (and unplaced "lead_in") steps by kind and depth; any other step gets its own (`add`)."""
    depth = _depths(study)
    after_run: dict[str, list[str]] = {}
    by_depth: dict[tuple[str, int], list[str]] = {}
    for step in study.steps.values():
        if step.name not in include or step.name in owner:
            continue
        job = get_kind(step.kind).slurm_job
        runs = [d for d in step.deps if _packs(study, d)]
        others = [d for d in step.deps
                  if not _packs(study, d) and not get_kind(study.steps[d].kind).data]
        if job == "follow" and len(runs) == 1 and not others:
            after_run.setdefault(runs[0], []).append(step.name)
        elif job in ("batch", "lead_in"):
            by_depth.setdefault((step.kind, depth[step.name]), []).append(step.name)
        else:
            add([step.name])
    return [*after_run.values(), *by_depth.values()]


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
    return [Unit(groups[g], leading_kind([study.steps[n].kind for n in groups[g]]),
                 sorted(position[n] for n in needs[g])) for g in order]
