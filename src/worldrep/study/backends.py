"""Where a study's units run: the backends the scheduler (worldrep.study.executors) hands them
to, each a `Backend`.

- `InProcess`: units one after the other in this process;
- `ProcessPool`: `--jobs N` worker processes;
- `Submitit`: one job per unit through submitit. On a Slurm cluster every unit is submitted
  at once with dependencies on the jobs of its inputs (`afterok` on a job of one step; on a
  job of several, `afterany`, and each step refuses to start on an input that did not
  finish); with submitit's local executor units are submitted as their inputs finish.

Every unit runs `worldrep.study.runner.run_unit`, which is all a worker needs to know.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import math
import multiprocessing
import os
import time
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from ..errors import WorldrepError
from . import locks
from .kinds import leading_kind
from .load import Resources, Study, import_plugins
from .runner import Outcome, StepJob, outcomes_on_disk, run_unit, run_unit_job


class Backend(ABC):
    """What the scheduler needs of a backend: `submit` a unit (a list of steps run together),
    after the units it needs (`after`: their handles, each with whether its unit is one
    step), getting a handle; `wait` for some of the handles to finish (at most `timeout`
    seconds), getting each finished one with its steps' outcomes; `close` at the end."""

    capacity: int = 1  # the most units in flight at once
    graph: bool = False  # takes every unit at once, each waiting on its inputs' units (Slurm)
    announces: bool = True  # the scheduler says when a unit starts (not: it runs at `submit`)
    note: str | None = None  # a line for the user before the run starts

    @abstractmethod
    def submit(self, unit: list[StepJob], after: list[tuple[Any, bool]] | None = None) -> Any:
        ...

    @abstractmethod
    def wait(self, handles: list, timeout: float | None = None
             ) -> list[tuple[Any, list[Outcome]]]:
        ...

    def close(self) -> None:  # noqa: B027 - most backends have nothing to stop
        """Stop what is left."""


class InProcess(Backend):
    """Units one after the other in this process, each run when it is submitted."""

    announces = False

    def __init__(self):
        self.results: dict[int, list[Outcome]] = {}

    def submit(self, unit: list[StepJob], after: list | None = None) -> int:
        handle = len(self.results)
        self.results[handle] = run_unit(unit)
        return handle

    def wait(self, handles: list[int], timeout: float | None = None):
        return [(h, self.results.pop(h)) for h in handles]


def _worker_init(threads: int, plugins: list[str], runner: int | None = None) -> None:
    # torch reads these when a stage first imports it; importing torch here would cost every
    # worker seconds even for steps that never touch a model.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    die_with(runner if runner is not None else os.getppid())
    import_plugins(plugins)


def die_with(parent: int, every_s: float = 1.0) -> None:
    """End this worker when its runner ends, however it ends (a SIGKILL included): the kernel
    sends SIGKILL on the parent's death (Linux), and a watchdog thread exits once this
    process has been handed to another parent (everywhere). A worker left behind would
    finish its step and then wait forever on a pipe nobody reads."""
    import ctypes
    import signal
    import threading

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the runner died before the signal was set
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(every_s)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="worldrep-watchdog", daemon=True).start()


class ProcessPool(Backend):
    """N worker processes (spawned: torch and fork do not mix), threads split between them."""

    def __init__(self, jobs: int, plugins: list[str] | None = None):
        self.capacity = jobs
        threads = max(1, (os.cpu_count() or 1) // jobs)
        self.pool = cf.ProcessPoolExecutor(
            max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init, initargs=(threads, plugins or [], os.getpid()))
        self.units: dict[cf.Future, list[StepJob]] = {}

    def submit(self, unit, after=None):
        future = self.pool.submit(run_unit, unit)
        self.units[future] = unit
        return future

    def wait(self, handles, timeout=None):
        done, _ = cf.wait(handles, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return [(f, _unit_result(f, self.units.pop(f))) for f in done]

    def close(self):
        self.pool.shutdown(cancel_futures=True)


def _unit_result(future, unit: list[StepJob]) -> list[Outcome]:
    """A worker that died (killed, out of memory, a failed Slurm job) leaves its steps'
    states on disk: they are read back instead of failing the runner."""
    try:
        return future.result()
    except Exception as err:  # noqa: BLE001
        return outcomes_on_disk(unit, f"{type(err).__name__}: {str(err).strip()[-300:]}")


def slurm_parameters(res: Resources, name: str, dependency: list[str] | None = None,
                     cluster: str = "slurm") -> dict[str, Any]:
    """submitit AutoExecutor parameters for one job (generic ones plus slurm_* ones).
    `dependency` items are job ids (afterok) or 'afterany:ID' for jobs of several steps."""
    params: dict[str, Any] = {"name": f"wr-{name}", "timeout_min": res.time_min,
                              "gpus_per_node": res.gpus, "cpus_per_task": res.cpus,
                              "mem_gb": int(math.ceil(res.mem_gb)), "tasks_per_node": 1,
                              "nodes": 1}
    if cluster != "slurm":
        return params
    extra: dict[str, Any] = {}
    if dependency:
        ok = [d for d in dependency if ":" not in d]
        anys = [d.split(":", 1)[1] for d in dependency if d.startswith("afterany:")]
        parts = (["afterok:" + ":".join(ok)] if ok else []) + (
            ["afterany:" + ":".join(anys)] if anys else [])
        params["slurm_dependency"] = ",".join(parts)  # ',' = all of them
        # Dependents of a failed job are cancelled instead of waiting forever.
        extra["kill-on-invalid-dep"] = "yes"
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(res, key):
            params[f"slurm_{key}"] = getattr(res, key)
    if res.setup:
        params["slurm_setup"] = list(res.setup)
    if extra:
        params["slurm_additional_parameters"] = extra
    return params


class Submitit(Backend):
    """One submitit job per unit. `executor` is any submitit executor (tests pass a local one)."""

    def __init__(self, executor, resources: dict[str, Resources], poll_s: float = 1.0,
                 max_jobs: int | None = None, note: str | None = None):
        self.executor, self.note = executor, note
        self.cluster = getattr(executor, "cluster", None) or _cluster_name(executor)
        self.graph = self.cluster == "slurm"  # Slurm honours dependencies; others run now
        self.capacity = max_jobs or (10_000 if self.graph else (os.cpu_count() or 1))
        self.resources = resources
        self.poll_s = poll_s
        self.units: dict[Any, list[StepJob]] = {}

    def resources_for(self, kinds: list[str]) -> Resources:
        """The default resources, overridden by each kind's (a unit asks for the most any
        of its kinds asks for)."""
        base = self.resources.get("default", Resources())
        merged = base
        for kind in dict.fromkeys(kinds):
            own = self.resources.get(kind)
            if own is None:
                continue
            mine = base.model_copy(update=own.model_dump(exclude_unset=True))
            if merged is base:
                merged = mine
                continue
            merged = merged.model_copy(update={
                k: max(getattr(merged, k), getattr(mine, k))
                for k in ("time_min", "gpus", "cpus", "mem_gb")})
        return merged

    def submit(self, unit, after=None):
        kinds = [j.kind for j in unit]
        res = self.resources_for([leading_kind(kinds)] + kinds)
        deps = [str(job.job_id) if single else f"afterany:{job.job_id}"
                for job, single in (after or [])]
        name = unit[0].name if len(unit) == 1 else f"{unit[0].name}+{len(unit) - 1}"
        params = slurm_parameters(res, name, deps, self.cluster)
        if self.cluster in ("local", "debug"):
            params = {k: v for k, v in params.items() if k in ("name", "timeout_min")}
        self.executor.update_parameters(**params)
        if self.graph:
            # Held for the job from now on: a second runner sees it queued and waits. The
            # job is handed the token, so the lock passes to it even if it starts at once.
            token = uuid.uuid4().hex
            unit = [dataclasses.replace(step, lock_token=token) for step in unit]
            for step in unit:
                locks.acquire(Path(step.out), locks.me(step=step.name, token=token))
        try:
            # On Slurm a job whose steps did not all finish fails (afterok needs that).
            job = self.executor.submit(run_unit_job if self.graph else run_unit, unit)
        except BaseException:
            for step in unit:
                locks.release(Path(step.out))
            raise
        self.units[job] = unit
        if self.graph:
            for step in unit:
                info = locks.read(Path(step.out))
                if locks.mine(info):  # not yet taken over by the job itself
                    locks.replace(Path(step.out), {"slurm_job_id": str(job.job_id),
                                                   "queued": time.time(), "step": step.name,
                                                   "token": step.lock_token})
        return job

    def outcomes(self, job) -> list[Outcome] | None:
        """A finished job's outcomes; None while it runs. A job that left the Slurm queue
        without a result (cancelled because an input's job failed, timed out, killed) is
        read back from its steps' directories: submitit would wait for it forever where
        there is no accounting to say it ended."""
        unit = self.units[job]
        if job.done():
            return _unit_result(_JobFuture(job), unit)
        if self.graph and not locks.slurm_job_alive(str(job.job_id)):
            return outcomes_on_disk(unit, "its Slurm job ended without a result (cancelled, "
                                          "timed out or killed)")
        return None

    def wait(self, handles, timeout=None):
        deadline = None if timeout is None else time.time() + timeout
        while True:
            finished = [(h, out) for h in handles if (out := self.outcomes(h)) is not None]
            if finished or (deadline is not None and time.time() >= deadline):
                for h, _ in finished:
                    self.units.pop(h)
                return finished
            time.sleep(self.poll_s)


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
                 resources: dict[str, Resources] | None = None,
                 cluster: str | None = None) -> Backend:
    if jobs < 1:
        raise WorldrepError(f"--jobs is a number of worker processes >= 1 (got {jobs})")
    if executor == "local":
        return InProcess() if jobs <= 1 else ProcessPool(jobs, study.plugins)
    if executor == "slurm":
        import submitit

        folder = Path(out) / "slurm" / "%j"
        sub = submitit.AutoExecutor(folder=folder, cluster=cluster)
        note = None
        if sub.cluster == "slurm":
            from .squeue import follow_with_squeue

            if follow_with_squeue():
                note = "no Slurm accounting here (sacct fails): jobs are followed with squeue"
        return Submitit(sub, resources if resources is not None else study.resources,
                        poll_s=2.0 if sub.cluster == "slurm" else 0.5,
                        max_jobs=None if sub.cluster == "slurm" else max(1, jobs), note=note)
    raise WorldrepError(f"unknown executor '{executor}'; allowed: local, slurm")


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
