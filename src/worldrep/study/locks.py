"""One step, one runner: an exclusive lock beside each step's artifact directory.

`<dir>.lock` is created atomically with its content (a temporary file hard-linked into place:
the link fails if the lock exists, on local and network file systems alike), so two runners,
or a runner and a Slurm job, can never both hold it. The holder is recorded in the lock:

  {"pid": 4567, "host": "node1", "started": ..., "pid_start": ...}   a process
  {"slurm_job_id": "123", "queued": ...}                              a submitted Slurm job

A lock whose holder is gone (a dead pid on this host, a pid reused by another process, a
Slurm job that Slurm no longer lists) is broken automatically by the next runner that wants
it. A lock held from another host by a plain process cannot be checked from here; `worldrep
unlock` clears such locks once their runner is known to be gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from .. import artifacts

SUFFIX = ".lock"


def lock_file(path: Path) -> Path:
    return Path(path).with_name(f"{Path(path).name}{SUFFIX}")


def _process_start(pid: int) -> str | None:
    """The kernel's start time of a process (so a reused pid is not mistaken for its
    holder); None where /proc does not tell."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def me(**extra) -> dict:
    """This process as a lock holder (with its Slurm job, if it runs in one)."""
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
            "pid_start": _process_start(os.getpid()), **extra}
    if os.environ.get("SLURM_JOB_ID"):
        info["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    return info


def read(path: Path) -> dict | None:
    """The holder of the lock beside `path`, or None when there is no lock."""
    try:
        return json.loads(lock_file(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"unreadable": True}


def process_alive(pid: int, start: str | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if _zombie(pid):  # ended; nobody reaped it yet (a container's init may never do)
        return False
    return start is None or _process_start(pid) in (None, start)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


_QUEUE: dict[str, object] = {"time": 0.0, "ids": None}
QUEUE_TTL_S = 3.0  # one squeue call serves every lock read within this time


def _queued_jobs() -> set[str] | None:
    """Ids of the jobs Slurm lists now (pending, running, completing); None if squeue is
    not there or does not answer."""
    if time.time() - float(_QUEUE["time"]) > QUEUE_TTL_S:
        try:
            out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True,
                                 timeout=20)
            ids = ({line.strip().split("_")[0] for line in out.stdout.splitlines() if line.strip()}
                   if out.returncode == 0 else None)
        except (OSError, subprocess.TimeoutExpired):
            ids = None
        _QUEUE.update(time=time.time(), ids=ids)
    return _QUEUE["ids"]  # type: ignore[return-value]


def slurm_job_alive(job_id: str) -> bool:
    """Whether Slurm still lists the job; True if it cannot tell."""
    ids = _queued_jobs()
    return True if ids is None else str(job_id) in ids


def alive(info: dict | None, unknown: bool = True) -> bool:
    """Whether a lock's holder may still be working; `unknown` is the answer where this
    host cannot tell (a process on another host, an unreadable lock)."""
    if not info:
        return False
    if info.get("unreadable"):
        return unknown  # being written right now, or damaged: never broken silently
    local = info.get("host") == socket.gethostname()
    if info.get("slurm_job_id") and not (info.get("pid") and local):
        return slurm_job_alive(info["slurm_job_id"])
    if not local:
        return unknown
    return process_alive(int(info.get("pid", -1)), info.get("pid_start"))


def mine(info: dict | None, token: str | None = None) -> bool:
    """A lock this process holds, or one taken for it: for the Slurm job it runs in, or by
    the runner that submitted it (which hands the job the lock's `token`)."""
    if not info:
        return False
    if token and info.get("token") == token:
        return True
    job = os.environ.get("SLURM_JOB_ID")
    if job and info.get("slurm_job_id") == job:
        return True
    return info.get("pid") == os.getpid() and info.get("host") == socket.gethostname()


def _link(lock: Path, info: dict) -> bool:
    tmp = lock.with_name(f".{lock.name}.{os.getpid()}.{time.monotonic_ns()}")
    tmp.write_text(json.dumps(info))
    try:
        os.link(tmp, lock)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def acquire(path: Path, holder: dict | None = None, token: str | None = None) -> dict | None:
    """Take the lock of the step at `path`. Returns None when this process now holds it (a
    lock taken for it, see `mine`, passes to it), else the live holder's info."""
    lock = lock_file(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = holder or me()
    for _ in range(3):
        if _link(lock, holder):
            return None
        info = read(path)
        if info is None:
            continue  # released meanwhile
        if mine(info, token):
            replace(path, {**info, **holder})
            return None
        if alive(info):
            return info
        break_stale(path, info)
    return read(path) or {"unreadable": True}


def replace(path: Path, info: dict) -> None:
    """Rewrite the holder of a lock this process owns (e.g. a queued Slurm job's id)."""
    lock = lock_file(path)
    artifacts.write_atomic(lock, lambda tmp: tmp.write_text(json.dumps(info)))


def break_stale(path: Path, seen: dict) -> None:
    """Remove a lock whose holder is gone, unless a new holder took it since it was read."""
    lock = lock_file(path)
    aside = lock.with_name(f".{lock.name}.stale-{os.getpid()}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return
    try:
        current = json.loads(aside.read_text())
    except (OSError, ValueError):
        current = seen
    if current != seen:  # another runner broke it first and holds it now: put it back
        _link(lock, current)
    aside.unlink(missing_ok=True)


def release(path: Path) -> None:
    """Drop the lock if this process (or its Slurm job) holds it."""
    if mine(read(path)):
        lock_file(path).unlink(missing_ok=True)


def describe(info: dict) -> str:
    """One line: who holds a lock and since when."""
    if info.get("unreadable"):
        return "locked (holder unreadable)"
    since = f", {time.time() - float(info.get('started', info.get('queued', time.time()))):.0f}s"
    job = f"Slurm job {info['slurm_job_id']}" if info.get("slurm_job_id") else ""
    if info.get("pid") and info.get("host"):
        who = f"pid {info['pid']} on {info['host']}" + (f" ({job})" if job else "")
    else:
        who = f"{job} (queued)" if job else "unknown holder"
    return who + since


@contextlib.contextmanager
def holding(path: Path, what: str = "written") -> Iterator[None]:
    """Hold the lock of the directory `path` (the one a study runner takes for a step) for a
    command that writes it; a WorldrepError naming the holder if another process has it. A
    lock this process already holds (a runner's stage) is used as it is, and kept."""
    from ..errors import WorldrepError

    path = Path(path)
    if mine(read(path)):
        yield
        return
    try:
        holder = acquire(path)
    except OSError as err:
        raise WorldrepError(f"cannot lock {path}: {err.strerror} ({lock_file(path)})") from None
    if holder is not None:
        raise WorldrepError(f"{path} is being {what} by another process ({describe(holder)}); "
                            f"wait for it to finish, or if it is gone: worldrep unlock {path}")
    try:
        yield
    finally:
        release(path)
