"""A finding's three states: shown and not shown on models that learned what it needs,
inconclusive on models that did not (on their plateau, or without a map to compare).

The study below is planned, not run: its evaluation, probe and CKA artifacts are written by
hand, so each case sets exactly what the models learned."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from worldrep import artifacts
from worldrep.evaluate import untrained_level
from worldrep.study import load_study
from worldrep.study.findings import evaluate
from worldrep.study.readiness import progress

STUDY = {
    "name": "three-states",
    "lists": {"tasks": [{"name": "distance", "short": "d"}, {"name": "compass", "short": "c"}]},
    "world": {"min_population": 2000000},
    "datasets": [{"name": "world-{t.short}", "grid": {"t": "tasks"}, "task": "{t.name}",
                  "n_train": 100, "n_val": 10, "n_test": 50}],
    "runs": [{"name": "pt1-{t.short}", "grid": {"t": "tasks"}, "data": "world-{t.short}",
              "steps": 10, "evals": ["world-{t.short}"],
              "reps": {"task": "distance", "layers": [1]}}],
    "analyses": [
        {"name": "probes", "kind": "probe", "method": "ridge", "cities": "world",
         "n_train": 20, "n_test": 10, "layers": [1], "reps": ["pt1-d.reps", "pt1-c.reps"]},
        {"name": "cka", "kind": "cka", "reps": ["pt1-d.reps", "pt1-c.reps"]}],
    "findings": [
        {"id": "world-map", "measure": "probe_r2_min", "args": {"probes": "probes"},
         "paper_band": {"min": 0.9}},
        {"id": "alike", "measure": "cka_divergent",
         "args": {"step": "cka", "layer": 1, "task": "pt1-d"}, "paper_band": {"min": -0.5}}],
}


@pytest.fixture
def study(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY, sort_keys=False))
    return load_study(path)


def done(study, out: Path, step: str, files: dict) -> None:
    """Write a finished artifact of `step` holding `files` (name -> text)."""
    path = study.step_dir(out, step)
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)
    artifacts.write_manifest(path, study.steps[step].kind, {"fixture": step})


def fill(study, out: Path, distance_mae=100.0, compass_acc=0.9, r2=(0.95, 0.92), cka=0.6):
    """Evaluations, probes and CKA as if pt1-d and pt1-c had learned this much."""
    summaries = {"pt1-d.eval.world-d": {"distance": {"mean_error": distance_mae,
                                                     "untrained": 600.0}},
                 "pt1-c.eval.world-c": {"compass": {"accuracy": compass_acc,
                                                    "untrained": 0.2}}}
    for step, summary in summaries.items():
        done(study, out, step, {"summary.json": json.dumps({"final": summary})})
    probe = pd.DataFrame({"label": ["pt1-d", "pt1-c"], "layers": ["1", "1"],
                          "x_test_r2": [0.97, r2[0]], "y_test_r2": [0.96, r2[1]]})
    done(study, out, "probes", {"metrics.csv": probe.to_csv(index=False)})
    matrix = pd.DataFrame([[1.0, cka], [cka, 1.0]], index=["pt1-d", "pt1-c"],
                          columns=["pt1-d", "pt1-c"])
    done(study, out, "cka", {"linear_cka_l1.csv": matrix.to_csv()})


def by_id(study, out) -> dict[str, dict]:
    return {r["id"]: r for r in evaluate(study, out)}


def test_learned_models_with_maps_give_shown_or_not_shown(study, tmp_path):
    fill(study, tmp_path)
    found = by_id(study, tmp_path)
    assert found["world-map"]["status"] == "shown" and found["world-map"]["pass"] is True
    assert found["world-map"]["value"] == pytest.approx(0.92)
    assert found["alike"]["status"] == "shown"  # 0.6 - 0.6 = 0 >= -0.5


def test_a_learned_task_without_a_map_is_not_shown_for_the_map_and_inconclusive_for_cka(
        study, tmp_path):
    fill(study, tmp_path, r2=(0.6, 0.3))
    found = by_id(study, tmp_path)
    assert found["world-map"]["status"] == "not shown" and found["world-map"]["pass"] is False
    alike = found["alike"]
    assert alike["status"] == "inconclusive" and alike["pass"] is None
    assert alike["details"]["models"] == {"pt1-c": {"no map": {"x": 0.6, "y": 0.3,
                                                                "needs": 0.5}}}
    assert "pt1-c has no map (R² x 0.60, y 0.30)" in alike["details"]["inconclusive"]


def test_a_model_on_its_plateau_makes_every_finding_that_reads_it_inconclusive(study,
                                                                              tmp_path):
    fill(study, tmp_path, compass_acc=0.25)  # 0.05 of the 0.8 from chance to perfect: 6 %
    found = by_id(study, tmp_path)
    for record in found.values():
        assert record["status"] == "inconclusive" and record["pass"] is None
        assert list(record["details"]["models"]) == ["pt1-c"]
        assert "pt1-c on its plateau (compass 6% of the way)" in record["details"][
            "inconclusive"]
    # the value is still computed and reported, only not judged
    assert found["world-map"]["value"] == pytest.approx(0.92)


def test_the_threshold_is_ten_percent_of_the_way_from_untrained_to_perfect(study, tmp_path):
    fill(study, tmp_path, distance_mae=541.0)  # (600 - 541) / 600 = 9.8 %: on the plateau
    assert by_id(study, tmp_path)["world-map"]["status"] == "inconclusive"
    fill(study, tmp_path, distance_mae=539.0)  # 10.2 %: learned
    assert by_id(study, tmp_path)["world-map"]["status"] == "shown"


def test_a_missing_evaluation_is_inconclusive_and_says_so(study, tmp_path):
    fill(study, tmp_path)
    (study.step_dir(tmp_path, "pt1-d.eval.world-d") / "manifest.json").unlink()
    record = by_id(study, tmp_path)["world-map"]
    assert record["status"] == "inconclusive"
    assert record["details"]["models"]["pt1-d"]["not learned"] == {
        "distance": "no finished evaluation on world queries"}


def test_a_finding_whose_inputs_are_missing_is_inconclusive_not_failed(study, tmp_path):
    record = by_id(study, tmp_path)["world-map"]
    assert record["status"] == "inconclusive" and record["value"] is None
    assert "not measured" in record["details"]


def test_untrained_level_is_the_best_constant_answer():
    # median 205: |100-205| + |200-205| + |400-205| + |210-205| = 310, over 4 rows
    assert untrained_level("error", pd.Series(["100", "200", "400", "210"])) == \
        pytest.approx(310 / 4)
    assert untrained_level("accuracy", pd.Series(["N", "N", "S", "E"])) == 0.5
    assert untrained_level("error", pd.Series(["c_0001"])) is None
    assert untrained_level("score", pd.Series(["1"])) is None
    assert progress(300.0, 600.0, "mean_error") == pytest.approx(0.5)
    assert progress(0.6, 0.2, "accuracy") == pytest.approx(0.5)


def test_a_fine_tune_is_held_to_its_own_tasks_not_to_its_few_elicitation_rows(tmp_path):
    # The paper's fine-tunes carry a few rows of every task ("elicitation"): a compass
    # fine-tune with 64 distance rows among 3,064 is held to compass only; a mixture with a
    # real share of a task is held to it.
    from worldrep.study.readiness import own_tasks, task_rows

    body = {**STUDY, "analyses": [], "findings": [], "mixtures": [
        {"name": "ft-mix", "sources": [{"data": "world-c", "n": 90}, {"data": "world-d", "n": 4}]},
        {"name": "even", "mode": "concat", "sources": [{"data": "world-c"}, {"data": "world-d"}]}],
        "runs": [{"name": "ft-c", "data": "ft-mix", "steps": 10},
                 {"name": "both", "data": "even", "steps": 10}]}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    s = load_study(path)
    assert task_rows(s, s.steps["ft-c"].spec["data"]) == {"compass": 90.0, "distance": 4.0}
    assert own_tasks(s, "ft-c") == ["compass"]  # 4 of 94 rows: under 5 %
    assert own_tasks(s, "both") == ["distance", "compass"]
