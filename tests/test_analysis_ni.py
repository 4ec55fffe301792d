"""Normalised improvement on hand values, summary reading, NI and deviation matrices."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from worldrep.analysis.improvement import (
    NISpec,
    deviation_table,
    load_summary,
    ni_matrix,
    ni_table,
    normalized_improvement,
    summary_values,
)
from worldrep.errors import WorldrepError


def test_error_task_log_ratio():
    # base on Atlantis 100, on the world 10: geometric midpoint sqrt(1000) is NI 0.5.
    assert normalized_improvement(100, 10, 100, "error") == pytest.approx(0.0)
    assert normalized_improvement(10, 10, 100, "error") == pytest.approx(1.0)
    assert normalized_improvement(math.sqrt(1000), 10, 100, "error") == pytest.approx(0.5)
    assert normalized_improvement(1, 10, 100, "error", clip=None) == pytest.approx(2.0)
    assert normalized_improvement(1, 10, 100, "error") == pytest.approx(1.5)  # reference clip
    assert normalized_improvement(1000, 10, 100, "error", clip=None) == pytest.approx(-1.0)
    assert normalized_improvement(1000, 10, 100, "error") == 0.0


def test_error_task_fallback_when_log_ratio_is_undefined():
    # std >= atl: 0 if v >= atl, 1 if v <= std, linear in between (never reached here).
    assert normalized_improvement(50, 60, 40, "error") == 0.0
    assert normalized_improvement(30, 60, 40, "error") == 1.0
    # std <= 0: linear between atl and std.
    assert normalized_improvement(25, 0, 100, "error") == pytest.approx(0.75)
    # A perfect model (error 0) scores 1, as in the reference (its fallback covers v <= 0),
    # not an unbounded log ratio.
    assert normalized_improvement(0, 5, 100, "error", clip=None) == 1.0


def test_accuracy_task_linear():
    assert normalized_improvement(0.75, 1.0, 0.5, "accuracy") == pytest.approx(0.5)
    assert normalized_improvement(1.2, 1.0, 0.5, "accuracy") == pytest.approx(1.4)
    assert normalized_improvement(0.4, 1.0, 0.5, "accuracy") == 0.0
    assert normalized_improvement(0.4, 1.0, 0.5, "accuracy", clip=None) == pytest.approx(-0.2)
    assert normalized_improvement(0.9, 0.5, 0.6, "accuracy") == 0.0  # std <= atl
    out = normalized_improvement(np.array([0.5, 0.75, 1.0]), 1.0, 0.5, "accuracy")
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0])
    with pytest.raises(WorldrepError, match="unknown metric"):
        normalized_improvement(1, 1, 1, "bogus")


def test_summary_values_reads_evaluation_summaries_and_plain_numbers():
    summary = {"distance": {"n": 10, "valid_rate": 1.0, "mean_error": 12.5, "median_error": 9,
                            "std_error": 3}, "compass": {"n": 10, "accuracy": 0.8}}
    assert summary_values(summary) == {"distance": (12.5, "error"), "compass": (0.8, "accuracy")}
    assert summary_values({"distance": 3.0}) == {"distance": (3.0, "error")}
    with pytest.raises(WorldrepError, match="has none of mean_error, accuracy, mean_score"):
        summary_values({"distance": {"n": 3}})
    with pytest.raises(WorldrepError, match="unknown task"):
        summary_values({"nope": 1.0})


def test_load_summary_from_file_dir_and_run(tmp_path):
    run = tmp_path / "run"
    target = run / "evals" / "atlantis" / "final"
    target.mkdir(parents=True)
    (target / "summary.json").write_text(json.dumps({"distance": {"mean_error": 4.0}}))
    for source in (target / "summary.json", target):
        assert load_summary(source)["distance"]["mean_error"] == 4.0
    assert load_summary(run, "atlantis")["distance"]["mean_error"] == 4.0
    with pytest.raises(WorldrepError, match="no evaluation summary"):
        load_summary(run, "world")


BASE_WORLD = {"distance": 10.0, "angle": 2.0, "compass": 0.9}
BASE_ATL = {"distance": 1000.0, "angle": 200.0, "compass": 0.5}


def _ft(d, a, c):
    return {"distance": {"mean_error": d}, "angle": {"mean_error": a},
            "compass": {"accuracy": c}}


def test_ni_table_and_best_teacher_deviation():
    ft = {"distance": _ft(10.0, 200.0, 0.5),  # NI 1, 0, 0
          "angle": _ft(100.0, 2.0, 0.9),  # NI 0.5, 1, 1
          "distance+angle": _ft(10.0, 20.0, 0.7)}  # NI 1, 0.5, 0.5
    long = ni_table(ft, BASE_WORLD, BASE_ATL)
    ni = long.set_index(["config", "task"])["ni"]
    assert ni[("angle", "distance")] == pytest.approx(0.5)
    assert ni[("distance+angle", "compass")] == pytest.approx(0.5)
    dev = deviation_table(long).set_index("task")["deviation"]
    assert dev["distance"] == pytest.approx(0.0)  # max(1, 0.5) = 1
    assert dev["angle"] == pytest.approx(-0.5)  # max(0, 1) = 1
    assert dev["compass"] == pytest.approx(-0.5)


def test_ni_per_seed_bases_and_seed_means(tmp_path):
    bases_w = {"1": BASE_WORLD, "2": {**BASE_WORLD, "distance": 100.0}}
    bases_a = {"1": BASE_ATL, "2": BASE_ATL}
    ft = {"distance@1": _ft(100.0, 200.0, 0.5), "distance@2": _ft(100.0, 200.0, 0.5),
          "angle@1": _ft(1000.0, 2.0, 0.9)}
    long = ni_table(ft, bases_w, bases_a, NISpec(tasks=["distance", "compass"]))
    d = long[(long["config"] == "distance") & (long["task"] == "distance")]
    np.testing.assert_allclose(sorted(d["ni"]), [0.5, 1.0])  # seed 1: log(10)/log(100)
    out = ni_matrix(ft, bases_w, bases_a, NISpec(tasks=["distance", "compass"]), tmp_path / "ni")
    m = pd.read_csv(out / "ni_single.csv", index_col=0)
    assert m.loc["distance", "distance"] == pytest.approx(0.75)
    assert list(m.columns) == ["distance", "compass"]
    assert (out / "ni_single.png").is_file() and not (out / "deviation.csv").exists()
    with pytest.raises(WorldrepError, match="no world base summary for seed '3'"):
        ni_table({"angle@3": _ft(1, 1, 1)}, bases_w, bases_a)
    with pytest.raises(WorldrepError, match="task 'angle' missing from the 'angle' summary"):
        ni_table({"angle": {"distance": 5.0}}, BASE_WORLD, BASE_ATL)


def test_ni_matrix_writes_deviation_heat_map(tmp_path):
    ft = {"distance": _ft(10.0, 200.0, 0.5), "angle": _ft(100.0, 2.0, 0.9),
          "distance+angle": _ft(10.0, 20.0, 0.7)}
    shuffled = dict(reversed(BASE_WORLD.items()))
    out = ni_matrix(ft, shuffled, BASE_ATL, NISpec(), tmp_path / "ni")
    dev = pd.read_csv(out / "deviation.csv", index_col=0)
    assert list(dev.columns) == ["distance", "angle", "compass"]  # the paper's task order
    assert dev.loc["distance+angle", "angle"] == pytest.approx(-0.5)
    assert (out / "deviation.png").stat().st_size > 5_000
    assert (out / "ni_multi.csv").is_file() and (out / "manifest.json").is_file()


def test_ill_conditioned_normalisation_is_flagged_not_a_number(tmp_path):
    """A base whose world and Atlantis scores barely differ (it never learned the task)
    makes NI divide by almost zero: the cell is blank and named in the manifest."""
    import json

    from worldrep.analysis.improvement import NISpec, ni_matrix

    base_world = {"distance": {"mean_error": 10.0}, "angle": {"mean_error": 168.0}}
    base_atl = {"distance": {"mean_error": 200.0}, "angle": {"mean_error": 174.0}}
    ft = {"distance": {"distance": {"mean_error": 20.0}, "angle": {"mean_error": 100.0}}}
    out = ni_matrix(ft, base_world, base_atl, NISpec(), tmp_path / "ni")
    long = pd.read_csv(out / "ni_long.csv")
    angle = long[long["task"] == "angle"].iloc[0]
    assert not angle["conditioned"] and np.isnan(angle["ni"])
    assert long[long["task"] == "distance"]["ni"].notna().all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["task"] for r in manifest["ill_conditioned"]] == ["angle"]
