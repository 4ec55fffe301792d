"""Where a study's time went, by stage: seconds summed per step kind from a runner's log, and
each training step split into its training steps, its first logged steps (which hold the
compile, when the run compiles) and the rest (training-time evaluations, checkpoints, start),
read from the run's metrics.jsonl.

    worldrep quickstart --out out/qs 2>&1 | tee qs.log
    python scripts/stage_times.py qs.log --out out/qs

Steps run side by side (--jobs 2) overlap, so the kinds' seconds add up to more than the wall
time; the table says how the work divides, the wall time how long one waited.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

DONE = re.compile(r"\] done\s+(\w+)\s+(\S+) \(([\d.]+)s\)")


def training_seconds(out: Path, name: str) -> tuple[float, float] | None:
    """(seconds of a run's first logged interval, which holds its compile, and seconds of its
    other training steps), from its own throughput records."""
    runs = sorted(p for p in (out / "train").glob(f"{name}-*/metrics.jsonl"))
    if not runs:
        return None
    first, total, last = None, 0.0, 0
    for line in runs[-1].read_text().splitlines():
        record = json.loads(line)
        if record.get("steps_per_s"):
            seconds = (record["step"] - last) / record["steps_per_s"]
            if first is None:
                first = seconds
            else:
                total += seconds
            last = record["step"]
    return first or 0.0, total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("log", type=Path, help="the runner's output")
    parser.add_argument("--out", type=Path, default=None, help="the study's output directory")
    args = parser.parse_args(argv)
    seconds: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for line in args.log.read_text().splitlines():
        if m := DONE.search(line):
            kind, name, s = m.group(1), m.group(2), float(m.group(3))
            if kind == "train" and args.out is not None:
                split = training_seconds(args.out, name)
                if split is not None:
                    first, steps = split
                    parts = {"train: steps": steps,
                             "train: first logged steps (with the compile)": first,
                             "train: evaluations, checkpoints, start": s - steps - first}
                    for part, value in parts.items():
                        seconds[part] += value
                        counts[part] += 1
                    continue
            seconds[kind] += s
            counts[kind] += 1
    total = sum(seconds.values())
    print("| stage | steps | seconds | share |\n|---|---|---|---|")
    for kind, s in sorted(seconds.items(), key=lambda kv: -kv[1]):
        print(f"| {kind} | {counts[kind]} | {s:.1f} | {s / total:.0%} |")
    print(f"| all | {sum(counts.values())} | {total:.1f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
