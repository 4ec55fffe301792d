"""Data generation throughput: 1M distance rows, then each paper task at 1M rows.

Each generation runs in its own process so its peak memory (ru_maxrss) is its own. The baseline,
run in the same script, is a per-row generator written the way the reference system worked
(Python loop per row: pick a pair, format, tokenise, build the loss mask character by character);
it is timed on 20k rows and compared as rows/s.

    python benchmarks/datagen.py            # all seven tasks at 1M
    python benchmarks/datagen.py --rows 100000 --tasks distance,compass
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from worldrep.data import DatasetSpec, make_dataset
from worldrep.world import load_world
world_dir, task, rows, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
world = load_world(world_dir)
t = time.perf_counter()
make_dataset(world, DatasetSpec(task=task, n_train=rows, n_val=128, n_test=10_000), out)
seconds = time.perf_counter() - t
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"task": task, "seconds": seconds, "peak_mb": peak_mb}))
"""


def reference_style_rows_per_s(world_dir: Path, n: int = 20_000) -> float:
    """Per-row generation as the reference did it: one Python iteration per row, an HF
    tokenizer call per row for the ids and another for the `=` id, a character loop for the
    loss mask. (The reference also used pandas .iloc per city; that is left out, which makes
    this baseline faster than the reference was.)"""
    import numpy as np

    from worldrep import tokenizer
    from worldrep.world import load_world

    world = load_world(world_dir)
    rows = np.flatnonzero(world.groups == "world")
    g = np.random.default_rng(0)
    hf = tokenizer.build_hf_tokenizer()
    t = time.perf_counter()
    out = []
    for _ in range(n):
        i, j = g.choice(rows, 2, replace=False)
        d = round(math.hypot(world.x[i] - world.x[j], world.y[i] - world.y[j]))
        compact = f"dist(c_{world.ids[i]:04d},c_{world.ids[j]:04d})={d}"
        text = "<bos> " + " ".join(compact) + " <eos>"
        ids = hf.encode(text, add_special_tokens=False)
        eq = ids.index(hf.encode("=", add_special_tokens=False)[0])
        mask = "".join("0" if k <= eq else "1" for k in range(len(ids)))
        out.append((text, len(ids), mask))
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--tasks", default="distance,trianglearea,angle,compass,inside,perimeter,"
                    "crossing")
    args = ap.parse_args()
    from worldrep.world import make_world

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_world(tmp / "world")
        baseline = reference_style_rows_per_s(tmp / "world")
        print(f"baseline (per-row, reference style): {baseline:,.0f} rows/s")
        results = []
        for task in args.tasks.split(","):
            p = subprocess.run([sys.executable, "-c", CHILD, str(tmp / "world"), task,
                                str(args.rows), str(tmp / task)],
                               capture_output=True, text=True, check=True)
            r = json.loads(p.stdout.strip().splitlines()[-1])
            rate = (args.rows + 10_128) / r["seconds"]
            results.append(r)
            print(f"{task:>13}: {args.rows:,} train + 10,128 rows in {r['seconds']:6.2f} s "
                  f"= {rate:>9,.0f} rows/s ({rate / baseline:5.0f}x baseline), "
                  f"peak {r['peak_mb']:,.0f} MB")
        total = sum(r["seconds"] for r in results)
        peak = max(r["peak_mb"] for r in results)
        print(f"all {len(results)} tasks: {total:.1f} s, max peak memory {peak:,.0f} MB")


if __name__ == "__main__":
    main()
