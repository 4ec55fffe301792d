"""The artifact cache of a study: which steps are done, running, failed or pending.

A step's artifact directory `OUT/<kind>/<name>-<hash>` is done when it holds `manifest.json`
(written last). Beside it, two small marker files tell the rest:

  <name>-<hash>.running.json   pid, host and start time of whoever runs it now
  <name>-<hash>.failed.json    the error and traceback of its last failure

A running marker whose process is gone (a killed runner) means the step is pending again; a
half-written directory without manifest is never taken as done and is redone.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from .. import artifacts
from .load import Study

STATES = ("done", "running", "failed", "pending", "blocked")


@dataclass
class StepState:
    state: str  # one of STATES
    error: str | None = None  # failed: the error line; blocked: which dependency
    info: dict | None = None  # running: pid/host/start; failed: the failure record


def running_marker(path: Path) -> Path:
    return path.with_name(f"{path.name}.running.json")


def failure_marker(path: Path) -> Path:
    return path.with_name(f"{path.name}.failed.json")


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def slurm_job_alive(job_id: str) -> bool:
    """Whether Slurm still knows the job as pending or running (True if it cannot tell)."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return True
    return out.returncode != 0 or bool(out.stdout.strip())


def is_live(info: dict | None) -> bool:
    """A running marker is live if its process still exists; a queued or remote Slurm job if
    Slurm still lists it; another host's process is assumed alive."""
    if not info:
        return False
    if info.get("slurm_job_id"):
        return slurm_job_alive(info["slurm_job_id"])
    if info.get("host") != socket.gethostname():
        return True
    return process_alive(int(info.get("pid", -1)))


def mark_queued(path: Path, job_id: str) -> None:
    """A step submitted to Slurm and not yet started: a rerun must not submit it again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    artifacts.write_json_atomic(running_marker(path), {
        "pid": -1, "host": "slurm", "queued": time.time(), "started": time.time(),
        "slurm_job_id": str(job_id)})


def clear_marker(path: Path) -> None:
    running_marker(path).unlink(missing_ok=True)


def mark_running(path: Path, **extra) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), **extra}
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        info["slurm_job_id"] = job
    artifacts.write_json_atomic(running_marker(path), info)


def clear_running(path: Path) -> None:
    marker = running_marker(path)
    info = _read(marker)
    if info is None or info.get("pid") == os.getpid():
        marker.unlink(missing_ok=True)


def record_failure(path: Path, err: BaseException) -> dict:
    record = {"error": f"{type(err).__name__}: {err}".strip(),
              "traceback": "".join(traceback.format_exception(err)),
              "time": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
    path.parent.mkdir(parents=True, exist_ok=True)
    artifacts.write_json_atomic(failure_marker(path), record)
    return record


def clear_failure(path: Path) -> None:
    failure_marker(path).unlink(missing_ok=True)


def remove_stale_temps(path: Path) -> None:
    """Delete `.<dir>.tmp-<pid>` leftovers of writers that were killed."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def step_state(path: Path) -> StepState:
    if artifacts.is_complete(path):
        return StepState("done")
    running = _read(running_marker(path))
    if is_live(running):
        return StepState("running", info=running)
    failed = _read(failure_marker(path))
    if failed:
        return StepState("failed", error=failed.get("error"), info=failed)
    return StepState("pending")


def study_states(study: Study, out: Path) -> dict[str, StepState]:
    """The state of every step; a pending step below a failed one is 'blocked'."""
    states: dict[str, StepState] = {}
    for step in study.steps.values():
        state = step_state(study.step_dir(out, step))
        if state.state == "pending":
            bad = next((d for d in step.deps if states[d].state in ("failed", "blocked")), None)
            if bad:
                state = StepState("blocked", error=f"needs '{bad}' ({states[bad].state})")
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
        note = ""
        if st.state == "failed":
            note = f"  {st.error}"
        elif st.state == "blocked":
            note = f"  {st.error}"
        elif st.state == "running" and st.info:
            since = time.time() - float(st.info.get("started", time.time()))
            note = f"  pid {st.info.get('pid')} on {st.info.get('host')}, {since:.0f}s"
        lines.append(f"  {st.state:<8} {step.kind:<8} {step.name:<{width}}{note}")
    return "\n".join(lines)
