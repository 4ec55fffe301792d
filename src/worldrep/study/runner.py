"""The worker side of the engine: run one unit of steps into their artifact directories.

A unit is what one worker (a process, a Slurm job) runs: one step; or with `pack: auto`
several steps of a kind that packs (training runs) run as one pack; or under Slurm a run's
evaluations and representations together. Everything a worker needs is in its `StepJob`s (picklable, no
study object), so `run_unit` is all a worker imports.

Every step, alone or in a unit, follows the same protocol:
1. take its lock (worldrep.study.locks); a step locked by another runner is not run here;
2. refuse to run if an input is missing, unfinished or failed (the step is 'blocked': it
   records nothing, so nothing is ever cached on top of a failure);
3. write its step record, run its stage, and either finish (manifest) or record the failure.

A Slurm job runs `run_unit_job`, which fails the job when a step of its unit did not finish,
so that `afterok` dependents never start.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import artifacts
from ..errors import WorldrepError
from . import cache, locks
from .load import import_plugins

DONE, FAILED, BLOCKED, LOCKED = "done", "failed", "blocked", "locked"


@dataclass
class StepJob:
    """Everything a worker needs to run one step: picklable, no study object."""

    name: str
    kind: str
    spec: dict
    inputs: dict[str, str]  # referenced step name -> artifact directory
    out: str
    plugins: list[str] = field(default_factory=list)
    record: dict = field(default_factory=dict)  # the step record (worldrep.study.cache)
    lock_token: str | None = None  # set by a runner that took the lock for this job


@dataclass
class Outcome:
    name: str
    status: str  # done, failed, blocked (an input is not done), locked (another runner has it)
    error: str | None = None
    seconds: float = 0.0
    elsewhere: bool = False  # found done once locked: another runner ran it, not this one

    @property
    def ok(self) -> bool:
        return self.status == DONE


class UnitFailed(WorldrepError):
    """Raised by a Slurm job whose unit did not finish every step (so the job fails)."""


def input_problem(job: StepJob) -> str | None:
    """One clear line naming the first input this step must not read, or None."""
    for name, path in job.inputs.items():
        problem = cache.input_problem(Path(path))
        if problem:
            return f"input '{name}' is not done: {problem} ({path})"
        problem = artifacts.verify_problem(Path(path))
        if problem:
            return f"input '{name}' does not match its manifest: {problem}"
    return None


def _claim(job: StepJob) -> Outcome | None:
    """Lock the step and check it may run; an Outcome when it must not run here."""
    out = Path(job.out)
    try:
        holder = locks.acquire(out, locks.me(step=job.name), job.lock_token)
    except OSError as err:  # a read-only or full output directory
        return Outcome(job.name, FAILED, f"cannot lock {out}: {err.strerror}")
    if holder is not None:
        return Outcome(job.name, LOCKED, f"running elsewhere: {locks.describe(holder)}")
    if artifacts.is_complete(out):  # checked again under the lock: finished meanwhile
        locks.release(out)
        return Outcome(job.name, DONE, elsewhere=True)
    problem = input_problem(job)
    if problem:
        locks.release(out)
        return Outcome(job.name, BLOCKED, problem)
    try:
        cache.remove_stale_temps(out)
        cache.clear_failure(out)  # this attempt's outcome replaces the last one's
        if job.record:
            cache.write_record(out, job.record)
    except OSError as err:  # a read-only or full output directory: nothing was started
        locks.release(out)
        return Outcome(job.name, FAILED, f"cannot write beside {out}: {err.strerror}")
    return None


def _settle(job: StepJob, err: BaseException | None, seconds: float) -> Outcome:
    """Record how a claimed step ended, then release its lock."""
    out = Path(job.out)
    try:
        if err is None and artifacts.is_complete(out):
            cache.clear_failure(out)
            return Outcome(job.name, DONE, None, seconds)
        err = err or WorldrepError(f"step '{job.name}' ended without finishing {out}")
        try:
            error = cache.record_failure(out, err)["error"]
        except OSError as disk:  # a full disk: the outcome is still reported, not raised
            error = (f"{type(err).__name__}: {err} (its failure record could not be "
                     f"written: {disk.strerror})")
        return Outcome(job.name, FAILED, error, seconds)
    finally:
        locks.release(out)


def run_step(job: StepJob) -> Outcome:
    """Run one step into its artifact directory, recording a failure instead of raising."""
    from .kinds import get_kind

    refused = _claim(job)
    if refused is not None:
        return refused
    start, out = time.time(), Path(job.out)
    try:
        import_plugins(job.plugins)
        get_kind(job.kind).run(job.spec, {k: Path(v) for k, v in job.inputs.items()}, out)
        if out.is_dir() and not artifacts.is_complete(out):  # a stage that leaves the
            artifacts.write_manifest(out, job.kind, job.spec, step=job.name)  # manifest to us
    except Exception as err:  # noqa: BLE001 - any stage error is recorded, not fatal
        return _settle(job, err, time.time() - start)
    finally:
        locks.release(out)  # also when interrupted (settling released it already otherwise)
    return _settle(job, None, time.time() - start)


def run_pack(unit: list[StepJob]) -> list[Outcome]:
    """Run a unit's steps (of one kind that packs) as one pack: each step that fails is
    recorded for that step alone and the others finish."""
    from .kinds import get_kind

    outcomes: dict[str, Outcome] = {}
    todo = []
    for job in unit:
        refused = _claim(job)
        if refused is None:
            todo.append(job)
        else:
            outcomes[job.name] = refused
    start = time.time()
    try:
        import_plugins(todo[0].plugins if todo else [])
        jobs = [(j.spec, {k: Path(v) for k, v in j.inputs.items()}, Path(j.out)) for j in todo]
        errors = get_kind(unit[0].kind).run_pack(jobs) if todo else {}
        failures = {str(Path(out)): WorldrepError(msg) for out, msg in errors.items()}
    except Exception as err:  # noqa: BLE001 - recorded for every unfinished step of the pack
        failures = {str(Path(j.out)): err for j in todo}
    except BaseException:  # interrupted: the steps resume next time, nobody holds them
        for job in todo:
            locks.release(Path(job.out))
        raise
    seconds = time.time() - start
    for job in todo:
        outcomes[job.name] = _settle(job, failures.get(str(Path(job.out))), seconds)
    return [outcomes[job.name] for job in unit]


def run_unit(unit: list[StepJob]) -> list[Outcome]:
    """Run a unit's steps in order; consecutive steps of one kind that packs (training runs)
    run as one pack."""
    from .kinds import KINDS

    outcomes: list[Outcome] = []
    i = 0
    while i < len(unit):
        j = i + 1
        kind = KINDS.get(unit[i].kind)  # a plugin's kind is known once a step imports it
        if kind is not None and kind.packs:
            while j < len(unit) and unit[j].kind == unit[i].kind:
                j += 1
        if j - i > 1:
            outcomes += run_pack(unit[i:j])
        else:
            outcomes.append(run_step(unit[i]))
        i = j
    return outcomes


def run_unit_job(unit: list[StepJob]) -> list[Outcome]:
    """A Slurm job's body: the unit's outcomes, or a failed job if any step did not finish."""
    outcomes = run_unit(unit)
    bad = [o for o in outcomes if not o.ok]
    if bad:
        shown = "; ".join(f"{o.name}: {o.status}: {o.error}" for o in bad[:5])
        raise UnitFailed(f"{len(bad)} of {len(outcomes)} steps did not finish: {shown}")
    return outcomes


def outcomes_on_disk(unit: list[StepJob], died: str) -> list[Outcome]:
    """What a unit whose worker ended abnormally (a failed Slurm job, a killed process) left:
    each step's state read back from its directory. A step that is neither done, failed nor
    blocked failed with the worker (`died` says how)."""
    outcomes = []
    for job in unit:
        out = Path(job.out)
        if artifacts.is_complete(out):
            outcomes.append(Outcome(job.name, DONE))
        elif cache.failure(out):
            outcomes.append(Outcome(job.name, FAILED, cache.failure(out)["error"]))
        elif problem := input_problem(job):
            outcomes.append(Outcome(job.name, BLOCKED, problem))
        else:
            record = cache.record_failure(out, WorldrepError(f"the worker died: {died}"))
            outcomes.append(Outcome(job.name, FAILED, record["error"]))
    return outcomes
