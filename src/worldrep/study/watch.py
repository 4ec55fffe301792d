"""`worldrep status --watch`: a live table of a study's state, redrawn until interrupted.

Counts of steps by kind and state, what is running (who holds it, for how long), and an ETA
from measured throughput: per kind, the mean wall time of the steps finished in this output
directory (from each step record's start to its manifest), times the steps still to run,
spread over the runners working now.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .. import artifacts
from .cache import STATES, StepState, record_file, study_states
from .load import Study


def durations(study: Study, out: Path, states: dict[str, StepState]) -> dict[str, list[float]]:
    """Seconds each finished step took, by kind (steps finished elsewhere have no record)."""
    found: dict[str, list[float]] = {}
    for name, st in states.items():
        if st.state != "done":
            continue
        path = study.step_dir(out, name)
        record = record_file(path)
        try:
            began = record.stat().st_mtime
            ended = float(json.loads((path / artifacts.MANIFEST).read_text())["created"])
        except (OSError, ValueError, KeyError):
            continue
        if ended >= began:
            found.setdefault(study.steps[name].kind, []).append(ended - began)
    return found


def eta_seconds(study: Study, states: dict[str, StepState],
                took: dict[str, list[float]]) -> float | None:
    """Expected seconds until every step is done, or None before anything was measured."""
    if not took:
        return None
    overall = sum(sum(v) for v in took.values()) / sum(len(v) for v in took.values())
    left = 0.0
    for name, st in states.items():
        if st.state in ("pending", "running"):
            kind = study.steps[name].kind
            mean = sum(took[kind]) / len(took[kind]) if kind in took else overall
            left += mean / 2 if st.state == "running" else mean
    workers = max(1, sum(st.state == "running" for st in states.values()))
    return left / workers


def status_table(study: Study, out: Path):
    """A rich renderable: counts by kind and state, running steps, ETA."""
    from rich.console import Group
    from rich.table import Table

    states = study_states(study, out)
    kinds = list(dict.fromkeys(s.kind for s in study.steps.values()))
    counts = Table(title=f"{study.name} in {out}", title_justify="left")
    counts.add_column("kind")
    for state in STATES:
        counts.add_column(state, justify="right")
    for kind in kinds:
        row = [sum(1 for n, st in states.items() if study.steps[n].kind == kind
                   and st.state == state) for state in STATES]
        counts.add_row(kind, *[str(v) if v else "" for v in row])
    totals = [sum(st.state == state for st in states.values()) for state in STATES]
    counts.add_row("all", *[str(v) for v in totals], style="bold")
    running = Table(title="running", title_justify="left")
    for column in ("step", "kind", "held by"):
        running.add_column(column)
    for name, st in states.items():
        if st.state == "running":
            running.add_row(name, study.steps[name].kind, st.why or "")
    eta = eta_seconds(study, states, durations(study, out, states))
    left = sum(st.state in ("pending", "running") for st in states.values())
    line = (f"{left} steps to go; ETA {_clock(eta)} at the measured throughput"
            if eta is not None and left else
            f"{left} steps to go" if left else "every step is done")
    return Group(counts, running if running.row_count else "", line)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return (f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600
            else f"{seconds // 60}m{seconds % 60:02d}s")


def watch_status(study: Study, out: Path, every: float = 2.0) -> None:
    from rich.live import Live

    with Live(status_table(study, out), refresh_per_second=4, screen=False) as live:
        try:
            while True:
                time.sleep(every)
                live.update(status_table(study, out))
        except KeyboardInterrupt:
            pass
