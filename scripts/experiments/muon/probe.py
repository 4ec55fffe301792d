"""Held-out probe R² (ridge, 120 / 60 world cities, layer 2: what `world-map` reads) at the
last six checkpoints of each run of the experiment: python probe.py OUT [OUT ...]."""

import sys
from pathlib import Path

from worldrep.analysis.probes import ProbeSpec, probe_reps, with_world_truth
from worldrep.analysis.reps import load_reps
from worldrep.world import load_world

SPEC = ProbeSpec(method="ridge", cities="world", n_train=120, n_test=60, layers=[2])

for out in map(Path, sys.argv[1:]):
    world = load_world(next(p for p in (out / "world").glob("world-*") if p.is_dir()))
    for reps in sorted(p for p in (out / "reps").glob("m-*.reps-*") if p.is_dir()):
        checkpoints = sorted(reps.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        cells = []
        for checkpoint in checkpoints[-6:]:
            (metrics,), _ = probe_reps(with_world_truth(load_reps(checkpoint), world), SPEC)
            cells.append(f"{checkpoint.name.split('-')[1]}: "
                         f"{metrics['x_test_r2']:.2f} / {metrics['y_test_r2']:.2f}")
        print(reps.name.split(".reps")[0], "  ".join(cells))
