"""How fast a run learns: the step and the training seconds at which each task leaves its
plateau, and at which a probe of its representations finds a map.

Read off curves a run already writes: its training-time evaluations (`metrics.jsonl`: the
metric of each task and its untrained level, the best constant answer's, at each evaluation
step) and a probe over a series of its checkpoints (`metrics.csv` rows `label/checkpoint-N`).

- a task leaves its plateau at the first evaluation whose metric is at least halfway from the
  untrained level to the run's best (never, if the best is not `LEARNED` of the way from
  untrained to perfect);
- the map is there in x (in y) at the first checkpoint whose held-out probe R² reaches
  `r2` (0.9), and in both at the first where x and y both do.

Training seconds are summed from the run's own throughput records (the wall time of its
training steps, evaluations and checkpoints left out): on a machine that runs nothing else
beside one process per core they are that run's CPU-seconds. They are measurements of a
machine, not results: they go to `seconds.jsonl` (a log, like a run's metrics.jsonl), so that
`speed.csv` and `curves.csv` are the same bytes wherever and however often the study runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pydantic

from .. import artifacts
from ..checkpoints import STEP_RE
from ..config import Strict
from . import figures

PERFECT = {"mean_error": 0.0, "accuracy": 1.0}
LEARNED = 0.1  # the least share of the way from untrained to perfect that counts as learned
CHECKPOINT = re.compile(rf"/{STEP_RE.pattern}$")  # a probe label's checkpoint step
SECONDS_FILE = "seconds.jsonl"


class SpeedSpec(Strict):
    r2: float = pydantic.Field(0.9, gt=0, le=1)  # the probe R² that counts as a map
    layer: int | None = None  # the probe layer to read (None: the best at each checkpoint)


def run_curves(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(metric curves: step, task, key, value, untrained; seconds: step, train_s) of a run."""
    rows, seconds, last, total = [], [], 0, 0.0
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        step = record.get("step")
        if "steps_per_s" in record and record["steps_per_s"] > 0:
            total += (step - last) / record["steps_per_s"]
            last = step
            seconds.append({"step": step, "train_s": total})
        for name, value in record.items():
            key, _, task = name.partition("/")
            if key in PERFECT and task:
                rows.append({"step": step, "task": task, "key": key, "value": float(value),
                             "untrained": record.get(f"untrained/{task}")})
    curves = pd.DataFrame(rows, columns=["step", "task", "key", "value", "untrained"])
    secs = pd.DataFrame([{"step": 0, "train_s": 0.0}] + seconds)
    return curves.drop_duplicates(["step", "task"], keep="last"), secs.drop_duplicates(
        "step", keep="last")


def probe_curve(table: pd.DataFrame, label: str, layer: int | None) -> pd.DataFrame:
    """step, x, y: held-out probe R² at each checkpoint of `label` (best layer, or `layer`)."""
    rows = table[table["label"].astype(str).str.startswith(f"{label}/")].copy()
    rows["step"] = rows["label"].astype(str).str.extract(CHECKPOINT)[0].astype(float)
    rows = rows.dropna(subset=["step"])
    if layer is not None:
        rows = rows[rows["layers"].astype(str) == str(layer)]
    rows["both"] = rows[["x_test_r2", "y_test_r2"]].min(axis=1)
    best = rows.sort_values("both").groupby("step").tail(1).sort_values("step")
    return pd.DataFrame({"step": best["step"].astype(int).to_numpy(),
                         "x": best["x_test_r2"].to_numpy(), "y": best["y_test_r2"].to_numpy()})


def progress(metric: float, untrained: float, key: str) -> float:
    """The share of the way from the untrained level to perfect that a metric has come."""
    span = untrained - PERFECT[key]
    return (untrained - metric) / span if span else 0.0


def _first(steps: np.ndarray, hit: np.ndarray) -> int | None:
    where = np.flatnonzero(hit)
    return int(steps[where[0]]) if len(where) else None


def _seconds(secs: pd.DataFrame, step: int | None) -> float | None:
    if step is None:
        return None
    return float(np.interp(step, secs["step"], secs["train_s"]))


def plateau_exit(curve: pd.DataFrame) -> dict:
    """One task's curve: untrained level, best, progress and the step it leaves its plateau."""
    key = curve["key"].iloc[0]
    untrained = curve["untrained"].dropna()
    u = float(untrained.iloc[-1]) if len(untrained) else float(curve["value"].iloc[0])
    values, steps = curve["value"].to_numpy(), curve["step"].to_numpy()
    best = float(values.min() if key == "mean_error" else values.max())
    share = progress(best, u, key)
    half = (u + best) / 2
    hit = values <= half if key == "mean_error" else values >= half
    step = _first(steps, hit) if share >= LEARNED else None
    return {"metric": key, "untrained": u, "best": best, "final": float(values[-1]),
            "progress": share, "plateau_step": step}


def learning_speed(runs: dict[str, Path], probes: pd.DataFrame, spec: SpeedSpec | None = None,
                   out: str | Path = "speed") -> Path:
    """speed.csv (a row per run and task: steps), seconds.jsonl (a line per run: training
    seconds in all, to the map, to each task's plateau exit), curves.csv and speed.png for
    `runs` (label -> run directory; the probe table's labels are `label/checkpoint-N`)."""
    spec = spec or SpeedSpec()
    table, long, timings = [], [], []
    for label, run_dir in runs.items():
        curves, secs = run_curves(run_dir)
        maps = probe_curve(probes, label, spec.layer)
        steps = maps["step"].to_numpy()
        x_step = _first(steps, maps["x"].to_numpy() >= spec.r2)
        y_step = _first(steps, maps["y"].to_numpy() >= spec.r2)
        both = _first(steps, np.minimum(maps["x"], maps["y"]).to_numpy() >= spec.r2)
        final = maps.iloc[-1] if len(maps) else {"x": np.nan, "y": np.nan}
        per_map = {"map_x_step": x_step, "map_y_step": y_step, "map_step": both,
                   "final_x_r2": float(final["x"]), "final_y_r2": float(final["y"]),
                   "steps": int(secs["step"].iloc[-1])}
        timing = {"run": label, "train_s": float(secs["train_s"].iloc[-1]),
                  "map_s": _seconds(secs, both), "plateau_s": {}}
        for task, curve in curves.groupby("task", sort=False):
            exit_ = plateau_exit(curve)
            table.append({"run": label, "task": task, **exit_, **per_map})
            timing["plateau_s"][task] = _seconds(secs, exit_["plateau_step"])
            long += [{"run": label, "task": task, "step": int(s), "value": v,
                      "progress": progress(v, exit_["untrained"], exit_["metric"])}
                     for s, v in zip(curve["step"], curve["value"], strict=True)]
        long += [{"run": label, "task": "probe", "step": int(s), "x": x, "y": y}
                 for s, x, y in zip(maps["step"], maps["x"], maps["y"], strict=True)]
        timings.append(timing)
    frame, curves_long = pd.DataFrame(table), pd.DataFrame(long)
    record = {"speed": spec.model_dump(mode="json"),
              "runs": {k: artifacts.read_manifest(v).get("hash") for k, v in runs.items()}}
    with artifacts.artifact_dir(out) as tmp:
        frame.to_csv(tmp / "speed.csv", index=False)
        curves_long.to_csv(tmp / "curves.csv", index=False)
        (tmp / SECONDS_FILE).write_text("".join(json.dumps(t) + "\n" for t in timings))
        if len(curves_long):
            figures.learning_curves(tmp / "speed.png", curves_long, spec.r2)
        artifacts.write_spec(tmp, record)
        artifacts.write_manifest(tmp, "speed", record, rows=len(frame))
    return Path(out)
