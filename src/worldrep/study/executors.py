"""Running a study's steps: what is missing, in dependency order, on some backend.

The scheduler (`run_study`) is the same for every backend (worldrep.study.backends: in
process, worker processes, Slurm through submitit). It finds the steps that are not done,
hands them to the backend in units (worldrep.study.units) and records what happened.

Steps that another runner holds (their lock, worldrep.study.locks) are waited for, never run
twice. A failing step records its error beside its artifact directory and does not stop the
steps that do not need it; the steps that do are skipped and reported.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import WorldrepError
from . import cache, locks
from .backends import Backend, InProcess
from .load import Study
from .runner import BLOCKED, DONE, FAILED, LOCKED, Outcome, StepJob


@dataclass
class RunReport:
    ran: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # name -> error
    skipped: dict[str, str] = field(default_factory=dict)  # name -> the input that stopped it
    waiting: dict[str, str] = field(default_factory=dict)  # name -> why it could not start
    adopted: list[str] = field(default_factory=list)  # --accept-code: kept despite code edits
    already_done: int = 0

    @property
    def ok(self) -> bool:
        return not (self.failed or self.skipped or self.waiting)

    def summary(self) -> str:
        parts = [f"{len(self.ran)} ran", f"{self.already_done} already done"]
        if self.adopted:
            parts.append(f"{len(self.adopted)} kept across code changes")
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped")
        if self.waiting:
            parts.append(f"{len(self.waiting)} not started")
        lines = [", ".join(parts)]
        lines += [f"  failed   {n}: {e}" for n, e in self.failed.items()]
        lines += [f"  skipped  {n}: {why}" for n, why in self.skipped.items()]
        lines += [f"  waiting  {n}: {w}" for n, w in self.waiting.items()]
        return "\n".join(lines)


def executable_units(ready: list[StepJob], study: Study | None = None) -> list[list[StepJob]]:
    """Which ready steps run together in process: with the study's `pack: auto`, compatible
    training runs form one packed unit; every other step is its own unit."""
    if study is None or study.pack != "auto":
        return [[job] for job in ready]
    from .units import group_jobs

    return group_jobs(ready, study)


# -- the scheduler ----------------------------------------------------------------------------
def step_jobs(study: Study, out: Path) -> dict[str, StepJob]:
    return {s.name: StepJob(name=s.name, kind=s.kind, spec=s.spec,
                            inputs={d: str(study.step_dir(out, d)) for d in s.deps},
                            out=str(study.step_dir(out, s)), plugins=study.plugins,
                            record=cache.step_record(s))
            for s in study.steps.values()}


def adopt_across_code_changes(study: Study, out: Path, names: list[str]) -> list[str]:
    """`--accept-code`: a step that is not done but has a finished directory differing from
    it in code only (its own or its inputs') takes that directory over, renamed to the
    current name, instead of being redone. Returns the steps adopted, in dependency order."""
    adopted = []
    versions: dict[str, dict] = {}
    for name in names:
        step = study.steps[name]
        path = study.step_dir(out, step)
        if path.exists() or locks.read(path):
            continue
        if step.kind not in versions:
            versions[step.kind] = cache.finished_versions(out, step.kind)
        old = cache.adoptable(step, versions[step.kind])
        if old is None:
            continue
        source = Path(old["dir"])
        if locks.acquire(source) is not None:
            continue  # someone is using that directory right now
        try:
            os.rename(source, path)
            cache.record_file(source).unlink(missing_ok=True)
            cache.write_record(path, {**cache.step_record(step), "adopted_from": old["hash"]})
        finally:
            locks.release(source)
        adopted.append(name)
    return adopted


def run_study(study: Study, out: Path, backend: Backend | None = None,
              log: Callable[[str], None] = print,
              only: list[str] | None = None, accept_code: bool = False,
              poll_s: float = 2.0) -> RunReport:
    """Run every step that is not done (or only `only` and what they need). With
    `accept_code`, code changes are taken as cosmetic (see `adopt_across_code_changes`)."""
    out = Path(out)
    backend = backend or InProcess()
    wanted = _needed(study, only) if only else list(study.steps)
    report = RunReport()
    if accept_code:
        report.adopted = adopt_across_code_changes(study, out, wanted)
        for name in report.adopted:
            log(f"kept     {study.steps[name].kind:<8} {name} (code change accepted)")
    try:
        _Scheduler(study, out, backend, log, wanted, report, poll_s).run()
    finally:
        backend.close()
    return report


class _Scheduler:
    def __init__(self, study, out, backend, log, wanted, report, poll_s):
        self.study, self.out, self.backend, self.log = study, out, backend, log
        self.report, self.poll_s = report, poll_s
        self.jobs = step_jobs(study, out)
        states = cache.study_states(study, out)
        self.done = {n for n in wanted if states[n].state == "done"}
        report.already_done = len(self.done)
        # Steps another runner (or Slurm job) holds: waited for, never run twice.
        self.elsewhere = {n: states[n].why for n in wanted if states[n].state == "running"}
        self.todo = [n for n in wanted if n not in self.done and n not in self.elsewhere]
        self.count, self.total = 0, len(self.todo)
        self.submitted: dict[str, Any] = {}
        self.active: dict[Any, list[StepJob]] = {}
        self.told: set[str] = set()
        # Steps that unblock the most work go first (the main model before side runs).
        self.priority = descendant_counts(study)

    def run(self) -> None:
        while True:
            self.follow_elsewhere()
            self.skip_blocked()
            if self.backend.graph:
                self.submit_graph()
            else:
                self.submit_ready()
            if not self.active and not self.elsewhere:
                break
            if not self.active:
                self.tell_waiting()
                time.sleep(self.poll_s)
                continue
            timeout = self.poll_s if self.elsewhere else None
            for handle, outcomes in self.backend.wait(list(self.active), timeout):
                self.active.pop(handle)
                for o in outcomes:
                    self.record(o)
        for name in self.todo:
            self.report.waiting.setdefault(name, "its inputs did not finish")

    # -- what others run -------------------------------------------------------------------
    def follow_elsewhere(self) -> None:
        for name in list(self.elsewhere):
            st = cache.step_state(self.study.step_dir(self.out, name))
            if st.state == "running":
                continue
            del self.elsewhere[name]
            if st.state == "done":
                self.done.add(name)
                self.report.already_done += 1
                self.log(f"done     {self.study.steps[name].kind:<8} {name} (by another runner)")
            elif st.state == "failed":
                self.report.failed[name] = f"{st.why} (in another runner)"
            else:  # its holder died without finishing it: ours to run
                self.todo.append(name)
                self.total += 1

    def tell_waiting(self) -> None:
        for name, why in self.elsewhere.items():
            if name not in self.told:
                self.told.add(name)
                self.log(f"waiting  {self.study.steps[name].kind:<8} {name}: running elsewhere"
                         f" ({why})")

    # -- submission ------------------------------------------------------------------------
    def blocking(self, name: str) -> str | None:
        r = self.report
        return next((d for d in self.study.steps[name].deps
                     if d in r.failed or d in r.skipped), None)

    def skip_blocked(self) -> None:
        """Steps not yet submitted whose inputs failed are skipped (and later their
        dependents)."""
        keep = []
        for name in self.todo:
            bad = self.blocking(name)
            if bad is None or name in self.submitted:
                keep.append(name)
            else:
                self.report.skipped[name] = f"needs '{bad}', which " + (
                    "failed" if bad in self.report.failed else "was skipped")
        self.todo = keep

    def ready(self, name: str, graph: bool) -> bool:
        return name not in self.submitted and all(
            d in self.done or (graph and d in self.submitted) for d in self.study.steps[name].deps)

    def submit_ready(self) -> None:
        ready = [n for n in self.todo if self.ready(n, False)]
        ready.sort(key=lambda n: -self.priority.get(n, 0))
        free = max(0, self.backend.capacity - len(self.active))
        for unit in executable_units([self.jobs[n] for n in ready], self.study)[:free]:
            self.submit(unit)

    def submit_graph(self) -> None:
        """Slurm: every unit whose inputs are done or submitted goes out now, waiting on
        its inputs' jobs."""
        from .units import slurm_units

        pending = {n for n in self.todo if n not in self.submitted}
        if not pending:
            return
        for unit in slurm_units(self.study, pending):
            inside = set(unit.steps)
            if all(d in self.done or d in self.submitted or d in inside
                   for n in unit.steps for d in self.study.steps[n].deps):
                self.submit([self.jobs[n] for n in unit.steps])

    def submit(self, unit: list[StepJob]) -> None:
        names = {j.name for j in unit}
        after: list[tuple[Any, bool]] = []
        for job in unit:
            for d in self.study.steps[job.name].deps:
                handle = self.submitted.get(d)
                if (handle is not None and d not in names and d not in self.done
                        and all(handle is not h for h, _ in after)):
                    after.append((handle, len(self.active.get(handle, [None])) == 1))
        handle = self.backend.submit(unit, after)
        self.active[handle] = unit
        for job in unit:
            self.submitted[job.name] = handle
        if self.backend.announces:
            if len(unit) == 1:
                self.log(f"started  {unit[0].kind:<8} {unit[0].name}")
            else:
                self.log(f"started  {len(unit)} steps: " + ", ".join(j.name for j in unit[:6])
                         + (" ..." if len(unit) > 6 else ""))

    # -- outcomes --------------------------------------------------------------------------
    def record(self, o: Outcome) -> None:
        if o.name in self.todo:
            self.todo.remove(o.name)
        step = self.study.steps[o.name]
        self.count += 1
        head = f"[{self.count}/{self.total}]"
        if o.status == DONE and o.elsewhere:  # finished by another runner meanwhile
            self.count -= 1
            self.total -= 1
            self.done.add(o.name)
            self.report.already_done += 1
            self.log(f"done     {step.kind:<8} {o.name} (by another runner)")
        elif o.status == DONE:
            self.done.add(o.name)
            self.report.ran.append(o.name)
            self.log(f"{head} done     {step.kind:<8} {o.name} ({o.seconds:.1f}s)")
        elif o.status == LOCKED:
            self.count -= 1
            self.submitted.pop(o.name, None)
            self.elsewhere[o.name] = o.error
        elif o.status == BLOCKED or self.blocking(o.name):
            why = o.error if o.status == BLOCKED else f"needs '{self.blocking(o.name)}'"
            self.report.skipped[o.name] = why
            self.log(f"{head} skipped  {step.kind:<8} {o.name}: {why}")
        else:
            assert o.status == FAILED
            self.report.failed[o.name] = o.error or "failed"
            self.log(f"{head} FAILED   {step.kind:<8} {o.name}: {o.error}")


def descendant_counts(study: Study) -> dict[str, int]:
    """How many steps depend on each step, directly or not (bitsets: fast for big studies)."""
    index = {name: i for i, name in enumerate(study.steps)}
    below = dict.fromkeys(study.steps, 0)
    for step in reversed(list(study.steps.values())):
        for dep in step.deps:
            below[dep] |= below[step.name] | (1 << index[step.name])
    return {name: bits.bit_count() for name, bits in below.items()}


def _needed(study: Study, names: list[str]) -> list[str]:
    unknown = [n for n in names if n not in study.steps]
    if unknown:
        raise WorldrepError(f"no step named {', '.join(unknown)} in study {study.name}")
    need = set(names)
    for step in reversed(list(study.steps.values())):
        if step.name in need:
            need.update(step.deps)
    return [n for n in study.steps if n in need]
