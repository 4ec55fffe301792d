"""Running a study's steps: what is missing, in dependency order, on some executor.

The scheduler (`run_study`) is the same for every executor. It finds the steps that are not
done, hands them to a backend in units (worldrep.study.units) and records what happened:

- `InProcess`: units one after the other in this process;
- `ProcessPool`: `--jobs N` worker processes;
- `Submitit`: one job per unit through submitit. On a Slurm cluster every unit is submitted
  at once with dependencies on the jobs of its inputs (`afterok` on a job of one step; on a
  job of several, `afterany`, and each step refuses to start on an input that did not
  finish); with submitit's local executor units are submitted as their inputs finish.

Steps that another runner holds (their lock, worldrep.study.locks) are waited for, never run
twice. A failing step records its error beside its artifact directory and does not stop the
steps that do not need it; the steps that do are skipped and reported. Every unit runs
`worldrep.study.runner.run_unit`, which is all a worker needs to know.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import math
import multiprocessing
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import WorldrepError
from . import cache, locks
from .load import Resources, Study, import_plugins
from .runner import (
    BLOCKED,
    DONE,
    FAILED,
    LOCKED,
    Outcome,
    StepJob,
    outcomes_on_disk,
    run_unit,
    run_unit_job,
)


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


# -- backends ---------------------------------------------------------------------------------
class InProcess:
    capacity = 1
    graph = False

    def __init__(self):
        self.results: dict[int, list[Outcome]] = {}

    def submit(self, unit: list[StepJob], after: list | None = None) -> int:
        handle = len(self.results)
        self.results[handle] = run_unit(unit)
        return handle

    def wait(self, handles: list[int], timeout: float | None = None):
        return [(h, self.results.pop(h)) for h in handles]

    def close(self) -> None:
        pass


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


class ProcessPool:
    """N worker processes (spawned: torch and fork do not mix), threads split between them."""

    graph = False

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
        main = "train" if "train" in kinds else "eval" if "eval" in kinds else kinds[-1]
        res = self.resources_for([main] + kinds)
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
    if jobs < 1:
        raise WorldrepError(f"--jobs is a number of worker processes >= 1 (got {jobs})")
    if executor == "local":
        return InProcess() if jobs <= 1 else ProcessPool(jobs, study.plugins)
    if executor == "slurm":
        import submitit

        folder = Path(out) / "slurm" / "%j"
        sub = submitit.AutoExecutor(folder=folder, cluster=cluster)
        backend = Submitit(sub, resources if resources is not None else study.resources,
                           poll_s=2.0 if sub.cluster == "slurm" else 0.5,
                           max_jobs=None if sub.cluster == "slurm" else max(1, jobs))
        if sub.cluster == "slurm" and follow_without_accounting():
            backend.note = "no Slurm accounting here (sacct fails): jobs are followed with squeue"
        return backend
    raise WorldrepError(f"unknown executor '{executor}'; allowed: local, slurm")


def follow_without_accounting() -> bool:
    """On a cluster without accounting (`sacct` fails), submitit would call sacct at every
    poll and print its error each time: follow jobs with squeue instead (a job that has left
    the queue is done; its outcome is read from its step directories). True if it did."""
    import subprocess

    import submitit.slurm.slurm as submitit_slurm

    try:
        probe = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True,
                               text=True, timeout=20)
        if probe.returncode == 0:
            return False
    except (OSError, subprocess.TimeoutExpired):
        pass

    class SqueueWatcher(submitit_slurm.SlurmInfoWatcher):
        def _make_command(self):
            ids = sorted({x.split("_")[0] for x in self._registered - self._finished})
            if not ids:
                return None
            # sacct's header, then squeue's rows in the same columns (finished jobs: none)
            return ["sh", "-c", "echo 'JobID|State|NodeList'; squeue -h -o '%i|%T|%N' -j "
                    + ",".join(ids) + " 2>/dev/null || true"]

    old = submitit_slurm.SlurmJob.watcher
    if not isinstance(old, SqueueWatcher):
        submitit_slurm.SlurmJob.watcher = SqueueWatcher(delay_s=getattr(old, "_delay_s", 60))
    return True


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


def run_study(study: Study, out: Path, backend=None, log: Callable[[str], None] = print,
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
        backend.priority = descendant_counts(study)

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
        # Steps that unblock the most work go first (the main model before side runs).
        ready.sort(key=lambda n: -self.backend.priority.get(n, 0))
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
        if not isinstance(self.backend, InProcess):
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
