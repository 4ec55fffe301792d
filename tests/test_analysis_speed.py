"""Learning speed read off curves: the plateau exit and the map's step, against curves whose
answers are known by construction."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from worldrep import artifacts
from worldrep.analysis.speed import SECONDS_FILE, SpeedSpec, learning_speed, plateau_exit


def curve(key: str, values: list[float], untrained: float) -> pd.DataFrame:
    return pd.DataFrame({"step": [100 * i for i in range(len(values))], "task": "t",
                         "key": key, "value": values, "untrained": untrained})


def test_a_task_leaves_its_plateau_halfway_from_untrained_to_its_best():
    # error: untrained 600, best 100, halfway 350: first reached at step 300 (340)
    exit_ = plateau_exit(curve("mean_error", [900, 600, 480, 340, 200, 100], 600.0))
    assert (exit_["best"], exit_["plateau_step"]) == (100.0, 300)
    assert exit_["progress"] == pytest.approx(500 / 600)
    # accuracy: untrained 0.2, best 0.8, halfway 0.5: step 200
    assert plateau_exit(curve("accuracy", [0.0, 0.3, 0.55, 0.8], 0.2))["plateau_step"] == 200
    # never 10 % of the way to perfect: it never left the plateau, whatever the noise
    flat = plateau_exit(curve("mean_error", [900, 600, 590, 560, 570], 600.0))
    assert flat["plateau_step"] is None and flat["progress"] < 0.1


def test_learning_speed_reads_a_runs_curves_and_probe_series(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    records = [{"kind": "eval", "step": 0, "mean_error/distance": 900.0,
                "untrained/distance": 600.0}]
    for step in (100, 200, 300, 400):  # 10 steps/s: 10 s per 100 steps
        records.append({"step": step, "loss": 1.0, "steps_per_s": 10.0})
        records.append({"kind": "eval", "step": step, "untrained/distance": 600.0,
                        "mean_error/distance": {100: 500.0, 200: 300.0, 300: 150.0,
                                                400: 100.0}[step]})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    artifacts.write_manifest(run, "train", {"fixture": 1})
    probes = pd.DataFrame({
        "label": [f"m/checkpoint-{s}" for s in (0, 200, 400) for _ in (1, 2)],
        "layers": ["1", "2"] * 3,
        "x_test_r2": [0.0, 0.0, 0.5, 0.92, 0.7, 0.95],
        "y_test_r2": [0.0, 0.0, 0.2, 0.6, 0.5, 0.91]})
    out = learning_speed({"m": run}, probes, SpeedSpec(r2=0.9), tmp_path / "speed")
    row = pd.read_csv(out / "speed.csv").iloc[0]
    # halfway between 600 and 100 is 350: step 200 (300)
    assert row["plateau_step"] == 200 and row["best"] == 100.0
    # best layer per checkpoint (by its lower R2): step 200 -> layer 2 (0.92, 0.6)
    assert row["map_x_step"] == 200 and row["map_y_step"] == 400 and row["map_step"] == 400
    seconds = json.loads((out / SECONDS_FILE).read_text())
    assert seconds["train_s"] == pytest.approx(40.0) and seconds["map_s"] == pytest.approx(40.0)
    assert seconds["plateau_s"]["distance"] == pytest.approx(20.0)
    assert (out / "speed.png").is_file()
