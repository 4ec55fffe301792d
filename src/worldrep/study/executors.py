"""Running a study's steps: what is missing, in dependency order, on some executor.

The scheduler (`run_study`) is the same for every executor: it finds the steps whose inputs are
done, groups them into units (`executable_units`: one step per unit, or with `pack: auto`
compatible training runs as one packed unit, see worldrep.packplan), and hands units to a
backend:

- `InProcess`: one after the other in this process;
- `ProcessPool`: `--jobs N` worker processes;
- `Submitit`: one job per unit through submitit. On a Slurm cluster every step is submitted at
  once with `--dependency=afterok:<its inputs' jobs>`; with submitit's local or debug executor
  (no Slurm) units are submitted as their inputs finish.

A failing step records its error beside its artifact directory and does not stop the steps
that do not need it; the steps that do are skipped and reported. Every unit runs `run_unit`,
which is all a worker (a process, a Slurm job) needs to know.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import artifacts
from ..errors import WorldrepError
from . import cache
from .load import Resources, Study, import_plugins
from .runner import Outcome, StepJob, run_unit


@dataclass
class RunReport:
    ran: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # name -> error
    skipped: dict[str, str] = field(default_factory=dict)  # name -> the failed input
    waiting: dict[str, str] = field(default_factory=dict)  # name -> why it could not start
    already_done: int = 0

    @property
    def ok(self) -> bool:
        return not (self.failed or self.skipped or self.waiting)

    def summary(self) -> str:
        parts = [f"{len(self.ran)} ran", f"{self.already_done} already done"]
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped")
        if self.waiting:
            parts.append(f"{len(self.waiting)} not started")
        lines = [", ".join(parts)]
        lines += [f"  failed   {n}: {e}" for n, e in self.failed.items()]
        lines += [f"  skipped  {n}: needs '{d}'" for n, d in self.skipped.items()]
        lines += [f"  waiting  {n}: {w}" for n, w in self.waiting.items()]
        return "\n".join(lines)


def executable_units(ready: list[StepJob], study: Study | None = None) -> list[list[StepJob]]:
    """Which ready steps run together: with the study's `pack: auto`, compatible training
    runs form one packed unit (worldrep.packplan); every other step is its own unit."""
    if study is None or study.pack != "auto":
        return [[job] for job in ready]
    from .units import group_jobs

    return group_jobs(ready, study)


# -- backends ---------------------------------------------------------------------------------
class InProcess:
    capacity = 1
    graph = False

    def __init__(self):
        self.results: dict[int, list[Outcome]] = {}

    def submit(self, unit: list[StepJob], after: list[Any] | None = None) -> int:
        handle = len(self.results)
        self.results[handle] = run_unit(unit)
        return handle

    def wait(self, handles: list[int]) -> list[tuple[int, list[Outcome]]]:
        return [(h, self.results.pop(h)) for h in handles]

    def close(self) -> None:
        pass


def _worker_init(threads: int, plugins: list[str]) -> None:
    # torch reads these when a stage first imports it; importing torch here would cost every
    # worker seconds even for steps that never touch a model.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    import_plugins(plugins)


class ProcessPool:
    """N worker processes (spawned: torch and fork do not mix), threads split between them."""

    graph = False

    def __init__(self, jobs: int, plugins: list[str] | None = None):
        self.capacity = jobs
        threads = max(1, (os.cpu_count() or 1) // jobs)
        self.pool = cf.ProcessPoolExecutor(
            max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init, initargs=(threads, plugins or []))
        self.units: dict[cf.Future, list[StepJob]] = {}

    def submit(self, unit, after=None):
        future = self.pool.submit(run_unit, unit)
        self.units[future] = unit
        return future

    def wait(self, handles):
        done, _ = cf.wait(handles, return_when=cf.FIRST_COMPLETED)
        return [(f, _unit_result(f, self.units.pop(f))) for f in done]

    def close(self):
        self.pool.shutdown(cancel_futures=True)


def _unit_result(future, unit: list[StepJob]) -> list[Outcome]:
    """A worker that died (killed, out of memory) fails its steps instead of the runner."""
    try:
        return future.result()
    except Exception as err:  # noqa: BLE001
        outcomes = []
        for job in unit:
            if artifacts.is_complete(job.out):
                outcomes.append(Outcome(job.name, True))
                continue
            record = cache.record_failure(Path(job.out), err)
            outcomes.append(Outcome(job.name, False, f"worker died: {record['error']}"))
        return outcomes


def slurm_parameters(res: Resources, name: str, dependency: list[str] | None = None,
                     cluster: str = "slurm") -> dict[str, Any]:
    """submitit AutoExecutor parameters for one job (generic ones plus slurm_* ones)."""
    params: dict[str, Any] = {"name": f"wr-{name}", "timeout_min": res.time_min,
                              "gpus_per_node": res.gpus, "cpus_per_task": res.cpus,
                              "mem_gb": int(math.ceil(res.mem_gb)), "tasks_per_node": 1,
                              "nodes": 1}
    if cluster != "slurm":
        return params
    extra: dict[str, Any] = {}
    if dependency:
        # Dependents of a failed job are cancelled instead of waiting forever.
        params["slurm_dependency"] = "afterok:" + ":".join(dependency)
        extra["kill-on-invalid-dep"] = "yes"
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(res, key):
            params[f"slurm_{key}"] = getattr(res, key)
    if res.setup:
        params["slurm_setup"] = list(res.setup)
    if extra:
        params["slurm_additional_parameters"] = extra
    return params


class Submitit:
    """One submitit job per unit. `executor` is any submitit executor (tests pass a local one)."""

    def __init__(self, executor, resources: dict[str, Resources], poll_s: float = 1.0,
                 max_jobs: int | None = None):
        self.executor = executor
        self.cluster = getattr(executor, "cluster", None) or _cluster_name(executor)
        self.graph = self.cluster == "slurm"  # Slurm honours dependencies; others run now
        self.capacity = max_jobs or (10_000 if self.graph else (os.cpu_count() or 1))
        self.resources = resources
        self.poll_s = poll_s
        self.units: dict[Any, list[StepJob]] = {}

    def resources_for(self, kind: str) -> Resources:
        base = self.resources.get("default", Resources())
        own = self.resources.get(kind)
        if own is None:
            return base
        return base.model_copy(update=own.model_dump(exclude_unset=True))

    def submit(self, unit, after=None):
        res = self.resources_for(unit[0].kind)
        deps = [str(job.job_id) for job in (after or [])]
        params = slurm_parameters(res, unit[0].name, deps, self.cluster)
        if self.cluster in ("local", "debug"):
            params = {k: v for k, v in params.items() if k in ("name", "timeout_min")}
        self.executor.update_parameters(**params)
        job = self.executor.submit(run_unit, unit)
        self.units[job] = unit
        if self.graph:
            for step in unit:
                cache.mark_queued(Path(step.out), job.job_id)
        return job

    def wait(self, handles):
        while True:
            done = [h for h in handles if h.done()]
            if done:
                return [(h, _unit_result(_JobFuture(h), self.units.pop(h))) for h in done]
            time.sleep(self.poll_s)

    def close(self):
        pass


class _JobFuture:
    def __init__(self, job):
        self.job = job

    def result(self):
        return self.job.result()


def _cluster_name(executor) -> str:
    name = type(executor).__name__.lower()
    for cluster in ("slurm", "local", "debug"):
        if cluster in name:
            return cluster
    return "local"


def make_backend(executor: str, study: Study, out: Path, jobs: int = 1,
                 resources: dict[str, Resources] | None = None, cluster: str | None = None):
    if executor == "local":
        return InProcess() if jobs <= 1 else ProcessPool(jobs, study.plugins)
    if executor == "slurm":
        import submitit

        folder = Path(out) / "slurm" / "%j"
        sub = submitit.AutoExecutor(folder=folder, cluster=cluster)
        return Submitit(sub, resources if resources is not None else study.resources,
                        poll_s=2.0 if sub.cluster == "slurm" else 0.5,
                        max_jobs=None if sub.cluster == "slurm" else max(1, jobs))
    raise WorldrepError(f"unknown executor '{executor}'; allowed: local, slurm")


# -- the scheduler ----------------------------------------------------------------------------
def step_jobs(study: Study, out: Path) -> dict[str, StepJob]:
    return {s.name: StepJob(name=s.name, kind=s.kind, spec=s.spec,
                            inputs={d: str(study.step_dir(out, d)) for d in s.deps},
                            out=str(study.step_dir(out, s)), plugins=study.plugins)
            for s in study.steps.values()}


def run_study(study: Study, out: Path, backend=None, log: Callable[[str], None] = print,
              only: list[str] | None = None) -> RunReport:
    """Run every step that is not done (or only `only` and what they need)."""
    out = Path(out)
    backend = backend or InProcess()
    jobs = step_jobs(study, out)
    states = cache.study_states(study, out)
    wanted = _needed(study, only) if only else list(study.steps)
    report = RunReport()
    done = {n for n in wanted if states[n].state == "done"}
    report.already_done = len(done)
    for name in wanted:
        if states[name].state == "running":
            report.waiting[name] = f"running elsewhere (pid {states[name].info.get('pid')})"
    todo = [n for n in wanted if n not in done and n not in report.waiting]
    progress = _Progress(study, report, log, len(todo))
    backend.priority = descendant_counts(study)
    active: dict[Any, list[StepJob]] = {}
    submitted: dict[str, Any] = {}
    try:
        while True:
            todo = _skip_blocked(study, todo, submitted, report)
            while _submit_ready(study, jobs, todo, done, submitted, active, backend, log):
                pass  # with Slurm dependencies, a whole chain is submitted at once
            if not active:
                break
            for handle, outcomes in backend.wait(list(active)):
                active.pop(handle)
                for o in outcomes:
                    if o.name in todo:
                        todo.remove(o.name)
                    progress.record(o, done, Path(jobs[o.name].out))
    finally:
        backend.close()
    for name in todo:
        report.waiting.setdefault(name, "its inputs did not finish")
    return report


def descendant_counts(study: Study) -> dict[str, int]:
    """How many steps depend on each step, directly or not (bitsets: fast for big studies)."""
    index = {name: i for i, name in enumerate(study.steps)}
    below = dict.fromkeys(study.steps, 0)
    for step in reversed(list(study.steps.values())):
        for dep in step.deps:
            below[dep] |= below[step.name] | (1 << index[step.name])
    return {name: bits.bit_count() for name, bits in below.items()}


def _submit_ready(study, jobs, todo, done, submitted, active, backend, log) -> bool:
    ready = [n for n in todo if n not in submitted and _can_start(
        study.steps[n].deps, done, submitted, backend.graph)]
    # Steps that unblock the most work go first (the main model before side runs).
    ready.sort(key=lambda n: -backend.priority.get(n, 0))
    free = max(0, backend.capacity - len(active))
    units = executable_units([jobs[n] for n in ready], study)[:free]
    for unit in units:
        after = _handles(submitted, (d for j in unit for d in study.steps[j.name].deps
                                     if d not in done))
        handle = backend.submit(unit, after)
        active[handle] = unit
        for job in unit:
            submitted[job.name] = handle
            if not isinstance(backend, InProcess):
                log(f"started  {job.kind:<8} {job.name}")
    return bool(units) and backend.graph


def _handles(submitted: dict[str, Any], names) -> list[Any]:
    out: list[Any] = []
    for name in names:
        handle = submitted.get(name)
        if handle is not None and all(handle is not h for h in out):
            out.append(handle)
    return out


def _can_start(deps: list[str], done: set[str], submitted: dict, graph: bool) -> bool:
    return all(d in done or (graph and d in submitted) for d in deps)


class _Progress:
    def __init__(self, study: Study, report: RunReport, log, total: int):
        self.study, self.report, self.log, self.total = study, report, log, total
        self.count = 0

    def record(self, o: Outcome, done: set[str], out: Path) -> None:
        step = self.study.steps[o.name]
        self.count += 1
        head = f"[{self.count}/{self.total}]"
        if o.ok:
            done.add(o.name)
            self.report.ran.append(o.name)
            self.log(f"{head} done     {step.kind:<8} {o.name} ({o.seconds:.1f}s)")
            return
        bad = self.blocking_input(step.deps)
        if bad:  # a dependent job cancelled by the scheduler (Slurm afterok), not a failure
            cache.clear_failure(out)
            cache.clear_marker(out)
            self.report.skipped[o.name] = bad
            self.log(f"{head} skipped  {step.kind:<8} {o.name}: needs '{bad}'")
            return
        self.report.failed[o.name] = o.error or "failed"
        self.log(f"{head} FAILED   {step.kind:<8} {o.name}: {o.error}")

    def blocking_input(self, deps: list[str]) -> str | None:
        r = self.report
        return next((d for d in deps if d in r.failed or d in r.skipped or d in r.waiting), None)


def _skip_blocked(study: Study, todo: list[str], submitted: dict, report: RunReport) -> list[str]:
    """Steps not yet submitted whose inputs failed are skipped (and their dependents later)."""
    keep = []
    for name in todo:
        bad = next((d for d in study.steps[name].deps
                    if d in report.failed or d in report.skipped or d in report.waiting), None)
        if bad is None or name in submitted:
            keep.append(name)
        elif bad in report.waiting:
            report.waiting[name] = f"needs '{bad}', which is not done"
        else:
            report.skipped[name] = bad
    return keep


def _needed(study: Study, names: list[str]) -> list[str]:
    unknown = [n for n in names if n not in study.steps]
    if unknown:
        raise WorldrepError(f"no step named {', '.join(unknown)} in study {study.name}")
    need = set(names)
    for step in reversed(list(study.steps.values())):
        if step.name in need:
            need.update(step.deps)
    return [n for n in study.steps if n in need]


def resource_overrides(base: dict[str, Resources], items: list[str]) -> dict[str, Resources]:
    """Apply command-line settings `KEY=VALUE` (every kind) or `KIND.KEY=VALUE` (one kind)."""
    out = dict(base)
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise WorldrepError(f"--resources '{item}': expected KEY=VALUE or KIND.KEY=VALUE "
                                f"(keys: {', '.join(Resources.model_fields)})")
        kind, _, key = key.rpartition(".")
        kind = kind or "default"
        if key not in Resources.model_fields:
            raise WorldrepError(f"--resources '{item}': unknown key '{key}'; allowed: "
                                f"{', '.join(Resources.model_fields)}")
        current = out.get(kind, Resources()).model_dump(exclude_unset=True)
        parsed: Any = value.split(";") if key == "setup" else value
        try:
            out[kind] = Resources.model_validate({**current, key: parsed})
        except Exception as err:  # noqa: BLE001 - pydantic's message, one line
            raise WorldrepError(f"--resources '{item}': {err}".splitlines()[0]) from None
    return out
