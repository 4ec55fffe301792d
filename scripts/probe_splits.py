"""How much of a probe's held-out R² is the one split of the cities it was fitted on.

Refits the quickstart's probe (ridge, world cities, 120 train / 60 held out, layer 2) on
20 other seeded splits of the same cities, for each representations directory given, and
prints the R² of the shipped split (seed 42) beside the median and range over the others.

  python scripts/probe_splits.py OUT/world/<world> OUT/reps/base.reps-*/checkpoint-2500 ...
"""

from __future__ import annotations

import sys

import numpy as np

from worldrep.analysis.probes import ProbeSpec, _truth, probe_reps
from worldrep.analysis.reps import load_reps
from worldrep.world import load_world


def r2(reps, seed: int) -> tuple[float, float]:
    spec = ProbeSpec(method="ridge", cities="world", n_train=120, n_test=60, layers=[2],
                     each_layer=True, seed=seed)
    metrics, _ = probe_reps(reps, spec)
    return metrics[0]["x_test_r2"], metrics[0]["y_test_r2"]


def main(world_dir: str, reps_dirs: list[str]) -> None:
    world = load_world(world_dir)
    for path in reps_dirs:
        reps = _truth(load_reps(path), world)
        x42, y42 = r2(reps, 42)
        xs, ys = np.array([r2(reps, seed) for seed in range(20)]).T
        print(f"{path}: shipped split x {x42:.3f} y {y42:.3f}; 20 other splits: "
              f"x median {np.median(xs):.3f} [{xs.min():.2f}, {xs.max():.2f}], "
              f"y median {np.median(ys):.3f} [{ys.min():.2f}, {ys.max():.2f}], "
              f"y >= 0.9 in {(ys >= 0.9).sum()} of 20")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
