"""The worker side of the engine: run one unit of steps into their artifact directories.

A unit is what one worker (a process, a Slurm job) runs: one step, or with `pack: auto`
several training runs trained as one pack. Everything a worker needs is in its `StepJob`s
(picklable, no study object), so `run_unit` is all a worker imports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import artifacts
from ..errors import WorldrepError
from . import cache
from .load import import_plugins


@dataclass
class StepJob:
    """Everything a worker needs to run one step: picklable, no study object."""

    name: str
    kind: str
    spec: dict
    inputs: dict[str, str]  # referenced step name -> artifact directory
    out: str
    plugins: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    name: str
    ok: bool
    error: str | None = None
    seconds: float = 0.0


# -- the worker side --------------------------------------------------------------------------
def run_step(job: StepJob) -> Outcome:
    """Run one step into its artifact directory, recording a failure instead of raising."""
    from .kinds import get_kind

    start = time.time()
    out = Path(job.out)
    if artifacts.is_complete(out):
        return Outcome(job.name, True)
    cache.remove_stale_temps(out)
    cache.mark_running(out, step=job.name)
    try:
        import_plugins(job.plugins)
        kind = get_kind(job.kind)
        kind.run(job.spec, {k: Path(v) for k, v in job.inputs.items()}, out)
        if not out.is_dir():
            raise WorldrepError(f"step '{job.name}' finished without writing {out}")
        if not artifacts.is_complete(out):  # a stage that leaves the manifest to its caller
            artifacts.write_manifest(out, job.kind, job.spec, step=job.name)
    except Exception as err:  # noqa: BLE001 - any stage error is recorded, not fatal
        record = cache.record_failure(out, err)
        return Outcome(job.name, False, record["error"], time.time() - start)
    finally:
        cache.clear_running(out)
    cache.clear_failure(out)
    return Outcome(job.name, True, None, time.time() - start)


def run_unit(unit: list[StepJob]) -> list[Outcome]:
    if len(unit) > 1 and all(job.kind == "train" for job in unit):
        return run_packed_unit(unit)
    return [run_step(job) for job in unit]


def run_packed_unit(unit: list) -> list:
    """Run a unit of train jobs as one pack (the worker side of a packed unit): each job's
    outcome is whether its run directory is finished; a run's failure is recorded beside
    its directory as for a single step."""
    import time

    from ..train import PackError, train_packed

    start = time.time()
    todo = []
    outcomes = {}
    for job in unit:
        if artifacts.is_complete(job.out):
            outcomes[job.name] = Outcome(job.name, True)
        else:
            todo.append(job)
    names = [job.name for job in todo]
    failures: dict[str, BaseException] = {}
    for job in todo:
        cache.remove_stale_temps(Path(job.out))
        cache.mark_running(Path(job.out), step=job.name, pack=names)
    try:
        import_plugins(todo[0].plugins if todo else [])
        specs = [_train_spec(job) for job in todo]
        train_packed(specs, [job.out for job in todo], regroup=True)
    except PackError as err:
        failures = {str(Path(out)): WorldrepError(msg) for out, msg in err.errors.items()}
    except Exception as err:  # noqa: BLE001 - recorded for every unfinished run of the pack
        failures = {str(Path(job.out)): err for job in todo}
    finally:
        for job in todo:
            cache.clear_running(Path(job.out))
    seconds = time.time() - start
    for job in todo:
        out = Path(job.out)
        if artifacts.is_complete(out):
            cache.clear_failure(out)
            outcomes[job.name] = Outcome(job.name, True, None, seconds)
            continue
        err = failures.get(str(out), WorldrepError("the pack ended without finishing this run"))
        record = cache.record_failure(out, err)
        outcomes[job.name] = Outcome(job.name, False, record["error"], seconds)
    return [outcomes[job.name] for job in unit]


def _train_spec(job):
    from .kinds import get_kind

    return get_kind("train").train_spec(job.spec, {k: Path(v) for k, v in job.inputs.items()})
