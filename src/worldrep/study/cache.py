"""The artifact cache of a study: which steps are done, running, failed or due, and why.

A step's artifact directory `OUT/<kind>/<name>-<hash>` (worldrep.study.identity says what the
hash covers) is done when it holds `manifest.json`, written last. Beside it:

  <name>-<hash>.step.json    what the directory is meant to hold: the step's identity record
  <name>-<hash>.lock         who runs it now (worldrep.study.locks)
  <name>-<hash>.failed.json  the error and traceback of its last failure

A step that is not done is due, for one reason: it is new, its spec, an input or its code
changed since its last finished directory (read from that directory's step record), or it
failed before. A half-written directory without manifest is never taken as done; a step never
runs on an input that is not done.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from .. import artifacts
from . import locks
from .identity import changes
from .load import Step, Study

STATES = ("done", "running", "failed", "pending", "blocked")
RECORD, FAILED = ".step.json", ".failed.json"


@dataclass
class StepState:
    state: str  # one of STATES
    why: str | None = None  # pending: why it is due; failed: the error; blocked: the input
    info: dict | None = None  # running: the lock holder; failed: the failure record


def record_file(path: Path) -> Path:
    return path.with_name(f"{path.name}{RECORD}")


def failure_file(path: Path) -> Path:
    return path.with_name(f"{path.name}{FAILED}")


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def step_record(step: Step) -> dict:
    """What a step's directory is meant to hold: name, where it was declared, identity."""
    return {"name": step.name, "origin": step.origin, **step.identity.record()}


def write_record(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    artifacts.write_json_atomic(record_file(path), record)


def record_failure(path: Path, err: BaseException) -> dict:
    record = {"error": f"{type(err).__name__}: {err}".strip(),
              "traceback": "".join(traceback.format_exception(err)),
              "time": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
    path.parent.mkdir(parents=True, exist_ok=True)
    artifacts.write_json_atomic(failure_file(path), record)
    return record


def failure(path: Path) -> dict | None:
    return _read(failure_file(path))


def clear_failure(path: Path) -> None:
    failure_file(path).unlink(missing_ok=True)


def remove_stale_temps(path: Path) -> None:
    """Delete `.<dir>.tmp-<pid>` leftovers of writers that were killed."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not locks.process_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def input_problem(path: Path) -> str | None:
    """Why a step must not read the artifact at `path` (None when it is finished)."""
    if not path.is_dir():
        return "it does not exist"
    if failure_file(path).is_file() and not artifacts.is_complete(path):
        return f"it failed ({(failure(path) or {}).get('error', 'see its .failed.json')})"
    if not artifacts.is_complete(path):
        return "it is not finished (no manifest.json)"
    return None


# -- why a step is due ---------------------------------------------------------------------------
def finished_versions(out: Path, kind: str) -> dict[str, list[dict]]:
    """Step name -> records of its finished directories under OUT/<kind>, newest first."""
    found: dict[str, list[tuple[float, dict]]] = {}
    root = Path(out) / kind
    if not root.is_dir():
        return {}
    for file in root.glob(f"*{RECORD}"):
        directory = file.with_name(file.name[: -len(RECORD)])
        record = _read(file)
        if record and artifacts.is_complete(directory):
            found.setdefault(record.get("name", ""), []).append(
                (file.stat().st_mtime, {**record, "dir": str(directory)}))
    return {name: [r for _, r in sorted(items, key=lambda t: -t[0])]
            for name, items in found.items()}


def due_reason(step: Step, versions: dict[str, list[dict]], path: Path) -> str:
    failed = failure(path)
    if failed:
        return f"failed before: {failed.get('error', '')}"
    earlier = [r for r in versions.get(step.name, []) if r.get("hash") != step.hash]
    if not earlier:
        return "new"
    return changes(earlier[0], step.identity.record()) or "new"


def adoptable(step: Step, versions: dict[str, list[dict]]) -> dict | None:
    """A finished directory of this step that differs from it in code only (same base)."""
    return next((r for r in versions.get(step.name, [])
                 if r.get("base") == step.identity.base and r.get("hash") != step.hash), None)


# -- states --------------------------------------------------------------------------------------
def step_state(path: Path, step: Step | None = None, versions: dict | None = None) -> StepState:
    if artifacts.is_complete(path):
        return StepState("done")
    holder = locks.read(path)
    if holder and locks.alive(holder):
        return StepState("running", locks.describe(holder), holder)
    failed = failure(path)
    if failed:
        return StepState("failed", failed.get("error"), failed)
    why = due_reason(step, versions or {}, path) if step is not None else None
    resume = resume_step(path)
    if resume is not None:
        why = f"resumes at step {resume}" + (f" ({why})" if why and why != "new" else "")
    elif (path / "resume" / "state.pt").is_file():
        why = f"{why}; its resume/state.pt cannot be read (training will name its checkpoints)"
    return StepState("pending", why)


def resume_step(path: Path) -> int | None:
    """The step a half-trained run in `path` resumes at (read from its resume state, which
    follows each checkpoint), or None when it has none."""
    state = path / "resume" / "state.pt"
    if not state.is_file():
        return None
    try:
        import torch

        return int(torch.load(state, map_location="cpu", weights_only=True)["step"])
    except Exception:  # noqa: BLE001 - damaged: training says so, naming the checkpoints
        return None


def study_states(study: Study, out: Path) -> dict[str, StepState]:
    """The state of every step; a pending step below a failed one is 'blocked'."""
    versions: dict[str, dict[str, list[dict]]] = {}
    states: dict[str, StepState] = {}
    for step in study.steps.values():
        if step.kind not in versions:
            versions[step.kind] = finished_versions(out, step.kind)
        state = step_state(study.step_dir(out, step), step, versions[step.kind])
        stale = next((d for d in step.deps if states[d].state in ("failed", "blocked")), None)
        if state.state == "done" and stale:  # made from an input that has failed since:
            state = StepState("blocked", f"made from '{stale}', which is {states[stale].state} "
                              "now; redone once it is done")  # never quoted as a result
        if state.state == "pending":
            bad = next((d for d in step.deps if states[d].state in ("failed", "blocked")), None)
            if bad:
                state = StepState("blocked", f"needs '{bad}' ({states[bad].state})")
        states[step.name] = state
    return states


def format_status(study: Study, out: Path, states: dict[str, StepState]) -> str:
    counts = {s: 0 for s in STATES}
    for st in states.values():
        counts[st.state] += 1
    lines = [f"study {study.name} in {out}: "
             + ", ".join(f"{n} {s}" for s, n in counts.items() if n)]
    width = max((len(n) for n in study.steps), default=4)
    for step in study.steps.values():
        st = states[step.name]
        note = f"  {st.why}" if st.why else ""
        lines.append(f"  {st.state:<8} {step.kind:<8} {step.name:<{width}}{note}")
    return "\n".join(lines)


def held_locks(study: Study, out: Path) -> list[tuple[str, dict]]:
    """(step, holder) of every lock beside the study's steps."""
    found = []
    for step in study.steps.values():
        info = locks.read(study.step_dir(out, step))
        if info is not None:
            found.append((step.name, info))
    return found


def clear_locks(study: Study, out: Path, force: bool = False) -> list[str]:
    """Remove the locks no runner here can vouch for: holders that are gone, processes on
    other hosts, unreadable locks. A live process on this host or a Slurm job that Slurm
    still lists keeps its lock unless `force`. Returns the steps cleared."""
    cleared = []
    for name, info in held_locks(study, out):
        if force or not locks.alive(info, unknown=False):
            locks.lock_file(study.step_dir(out, name)).unlink(missing_ok=True)
            cleared.append(name)
    return cleared
