"""The learning-speed study's tables and figure for the notebook, read from its artifacts.

    worldrep run speed --jobs 2 --out out/speed
    python scripts/speed_tables.py out/speed --figure docs/speed-map.png

Prints one markdown table per family (the run names' prefixes, as studies/speed.yaml groups
them): for each run, the step (and training seconds) at which each task leaves its plateau,
the first checkpoint with a held-out probe R² of 0.9 in x and in y, the probe's R² at a quarter,
half and the end of the run, and its training seconds. Steps and R² come from `speed.csv` and
`curves.csv` (the same bytes on every run of the study); seconds from `seconds.jsonl` and the
runs' own throughput records (a measurement of the machine: on a machine that runs nothing
but the study, one process per core, they are CPU-seconds).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from worldrep import artifacts
from worldrep.analysis.speed import run_curves
from worldrep.study.load import Study
from worldrep.study.outdir import open_study

# (title, run-name test), in the order studies/speed.yaml lists its families.
FAMILIES = [
    ("the seven tasks alone (batch 64)", lambda r: r.startswith("single-")),
    ("the three slow tasks at batch 128", lambda r: r.startswith("slow-")),
    ("mixtures (batch 64)", lambda r: r.startswith("mix-")),
    ("distance + compass, one factor at a time around the batch-64 centre",
     lambda r: r.startswith("dc-") and not r.startswith(("dc-world-", "dc-centre-s"))),
    ("the centre's seeds", lambda r: r.startswith("dc-centre-s")),
    ("the centre on bigger worlds", lambda r: r.startswith("dc-world-")),
    ("the quickstart's base (batch 128, 2,500 steps), one factor at a time",
     lambda r: r.startswith("qs-") and not r.startswith(("qs-dcip", "qs-spread"))),
    ("the four-task base (batch 128, 6,000 steps)", lambda r: r.startswith("qs-dcip")),
    ("the quickstart's base on an evenly spread world", lambda r: r.startswith("qs-spread")),
]
ABBREV = {"distance": "D", "trianglearea": "T", "angle": "A", "compass": "Co", "inside": "I",
          "perimeter": "P", "crossing": "Cr"}


def load(out: Path) -> tuple[Study, pd.DataFrame, pd.DataFrame, dict]:
    """(the study, speed rows, curves, seconds per run) over the study's current speed
    analyses: an output directory also keeps the analyses of earlier versions of the study
    file (never deleted), and those are not read."""
    study, out = open_study(None, out, None, None)
    speed, curves, seconds = [], [], {}
    for step in study.steps.values():
        if step.kind != "speed":
            continue
        where = study.step_dir(out, step)
        if not artifacts.is_complete(where):
            raise SystemExit(f"{where} is not done: run `worldrep run --out {out} "
                             f"--step {step.name}` first")
        speed.append(pd.read_csv(where / "speed.csv"))
        curves.append(pd.read_csv(where / "curves.csv"))
        for line in (where / "seconds.jsonl").read_text().splitlines():
            record = json.loads(line)
            seconds[record["run"]] = record
    return study, pd.concat(speed), pd.concat(curves), seconds


def run_seconds(study: Study, out: Path, run: str) -> pd.DataFrame:
    """step -> training seconds of one run, from its throughput records."""
    return run_curves(study.step_dir(out, run))[1]


def _num(value, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "—"
    return f"{value:,.{digits}f}"


def _metric(value: float, key: str) -> str:
    return f"{value:.2f}" if key == "accuracy" else f"{value:,.0f}"


def r2_at(probe: pd.DataFrame, fraction: float) -> str:
    """Probe R² x / y at the checkpoint nearest `fraction` of the run."""
    target = fraction * probe["step"].max()
    row = probe.iloc[int(np.argmin(np.abs(probe["step"] - target)))]
    return f"{row['x']:.2f} / {row['y']:.2f}"


def family_table(speed: pd.DataFrame, curves: pd.DataFrame, seconds: dict, runs) -> str:
    lines = ["| run | leaves its plateau: step (untrained → best) | x ≥ 0.9 | y ≥ 0.9 | "
             "R² x / y at ¼ | at ½ | at the end | training s (to a map) |",
             "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        rows = speed[speed["run"] == run]
        probe = curves[(curves["run"] == run) & (curves["task"] == "probe")]
        exits = []
        for row in rows.itertuples():
            where = "never" if pd.isna(row.plateau_step) else f"{int(row.plateau_step):,}"
            exits.append(f"{ABBREV.get(row.task, row.task)} {where} "
                         f"({_metric(row.untrained, row.metric)} → {_metric(row.best, row.metric)})")
        first = rows.iloc[0]
        timing = seconds.get(run, {})
        to_map = f" ({_num(timing.get('map_s'))})" if timing.get("map_s") is not None else ""
        lines.append(
            f"| {run} | {'; '.join(exits)} | {_num(first.map_x_step)} | {_num(first.map_y_step)} "
            f"| {r2_at(probe, 0.25)} | {r2_at(probe, 0.5)} | {r2_at(probe, 1.0)} "
            f"| {_num(timing.get('train_s'))}{to_map} |")
    return "\n".join(lines)


def figure(study: Study, out: Path, curves: pd.DataFrame, path: Path) -> None:
    """y's probe R² against training seconds, one panel per group of families."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("tasks alone and mixtures", ("single-", "mix-")),
              ("distance + compass: factors (batch 64)", ("dc-",)),
              ("the quickstart's base and the four-task base (batch 128)", ("qs-",))]
    fig, axes = plt.subplots(1, len(panels), figsize=(18, 5.5), sharey=True)
    probes = curves[curves["task"] == "probe"]
    for ax, (title, prefixes) in zip(axes, panels, strict=True):
        runs = [r for r in probes["run"].unique() if r.startswith(prefixes)]
        for run in runs:
            part = probes[probes["run"] == run]
            secs = run_seconds(study, out, run)
            t = np.interp(part["step"], secs["step"], secs["train_s"])
            ax.plot(t, part["y"], label=run, linewidth=1.2)
        ax.axhline(0.9, color="#999999", linewidth=0.8, linestyle=":")
        ax.set(title=title, xlabel="training seconds (one core)", ylim=(-0.1, 1.02))
        ax.legend(fontsize=6, ncol=2)
    axes[0].set_ylabel("held-out probe R², y (latitude)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="the speed study's output directory")
    parser.add_argument("--figure", type=Path, help="write y's R² against seconds here")
    args = parser.parse_args()
    study, speed, curves, seconds = load(args.out)
    done = set(speed["run"])
    for title, test in FAMILIES:
        runs = [r for r in dict.fromkeys(speed["run"]) if test(r)]
        if runs:
            print(f"\n**{title}**\n\n{family_table(speed, curves, seconds, runs)}")
            done -= set(runs)
    if done:
        print(f"\nruns in no family: {sorted(done)}")
    if args.figure:
        figure(study, args.out, curves, args.figure)


if __name__ == "__main__":
    main()
