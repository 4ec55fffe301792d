"""How much of a probe's held-out R² is the one split of the cities it was fitted on.

Refits a probe step's own spec (read from its artifact: method, cities, sizes, layers) on 20
other seeded splits of the same cities, for each representations directory given, and
prints the R² of the probe's split beside the median and range over the others, per layer
set; then the out-of-fold R² of 5- and 10-fold refits over all the probe's cities (every city
held out once, 80 % and 90 % of them to train on: is the probe short of cities?).

  python scripts/probe_splits.py OUT/probe/probes-* OUT/world/<world> OUT/reps/base.reps-*/checkpoint-2500 ...
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from worldrep.analysis.probes import (
    ProbeSpec,
    _layer_sets,
    make_probe,
    probe_reps,
    r2_score,
    with_world_truth,
)
from worldrep.analysis.reps import load_reps
from worldrep.config import load_yaml
from worldrep.seeding import rng
from worldrep.world import load_world

OTHER_SPLITS = 20
FOLDS = (5, 10)


def r2(reps, spec: ProbeSpec, seed: int) -> tuple[list[str], np.ndarray]:
    """The layer sets, and [layer sets, 2]: the held-out R² of x and y of each, with the
    split of `seed`."""
    metrics, _ = probe_reps(reps, spec.model_copy(update={"seed": seed}))
    return [m["layers"] for m in metrics], np.array([[m["x_test_r2"], m["y_test_r2"]]
                                                     for m in metrics])


def out_of_fold(sub, spec: ProbeSpec, folds: int) -> list[tuple[str, float, float]]:
    """(layers, x R², y R²) of predictions each made by a probe that never saw its city, over
    `sub`, the probe's cities; the layer sets are the probe stage's own."""
    order = rng(spec.seed, "probe", "folds").permutation(len(sub.ids))
    rows = []
    for layers in _layer_sets(sub, spec):
        X, xy = sub.features(layers, spec.positions), sub.xy
        pred = np.zeros_like(xy)
        for fold in range(folds):
            test = order[fold::folds]
            train = np.setdiff1d(order, test)
            probe = make_probe(spec.method, spec.alphas, spec.cv_folds, spec.seed)
            pred[test] = probe.fit(X[train], xy[train]).predict(X[test])
        rows.append((",".join(map(str, layers)), *r2_score(xy, pred)))
    return rows


def main(probe_dir: str, world_dir: str, reps_dirs: list[str]) -> None:
    spec = ProbeSpec(**load_yaml(Path(probe_dir) / "spec.yaml")["probe"])
    world = load_world(world_dir)
    for path in reps_dirs:
        reps = with_world_truth(load_reps(path), world)
        layer_sets, shipped = r2(reps, spec, spec.seed)
        others = np.stack([r2(reps, spec, seed)[1] for seed in range(OTHER_SPLITS)])
        for i, layers in enumerate(layer_sets):
            (x, y), xs, ys = shipped[i], others[:, i, 0], others[:, i, 1]
            print(f"{path} layers {layers}: the probe's split x {x:.3f} y {y:.3f}; "
                  f"{OTHER_SPLITS} other splits: x median {np.median(xs):.3f} "
                  f"[{xs.min():.2f}, {xs.max():.2f}], y median {np.median(ys):.3f} "
                  f"[{ys.min():.2f}, {ys.max():.2f}], y >= 0.9 in {(ys >= 0.9).sum()}")
        sub = reps.take(reps.select(spec.cities))
        for folds in FOLDS:
            for layers, x, y in out_of_fold(sub, spec, folds):
                print(f"{path} layers {layers}: {folds}-fold out-of-fold over all "
                      f"{len(sub.ids)} cities: x {x:.3f} y {y:.3f}")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
