"""Study files: grids, templates, references, hashes and the errors of a bad study."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from worldrep.cli import app
from worldrep.errors import WorldrepError
from worldrep.study.grid import expand, render
from worldrep.study.load import BUILTIN_DIR, load_study
from worldrep.study.plan import format_plan

BASE = {
    "name": "s",
    "lists": {"tasks": [1, 2, 4]},
    "world": {},
    "datasets": [{"name": "world-{x}", "grid": {"x": "tasks"}, "task": "{x}",
                  "n_train": 1000, "n_test": 100}],
    "mixtures": [{"name": "pft{x}-{y}", "grid": {"x": "tasks", "y": "tasks"}, "where": "x != y",
                  "sources": [{"data": "world-{x}", "n": 200}, {"data": "world-{y}", "n": 500}]}],
}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def with_(base: dict, **changes) -> dict:
    data = yaml.safe_load(yaml.safe_dump(base))
    data.update(changes)
    return data


# -- grids and templates ----------------------------------------------------------------------
def test_generators_count_and_order():
    lists = {"t": list(range(1, 8))}
    assert len(list(expand({"c": {"pairs": "t"}}, None, lists))) == 21
    assert len(list(expand({"c": {"triples": "t"}}, None, lists))) == 35
    ordered = list(expand({"x": "t", "y": "t"}, "x != y", lists))
    assert len(ordered) == 42 and (ordered[0]["x"].raw, ordered[0]["y"].raw) == (1, 2)
    assert len(list(expand({"c": {"combinations": "t", "k": 4}}, "1 in c", lists))) == 20
    assert [b["s"].raw for b in expand({"s": {"range": [0, 3]}}, None, {})] == [0, 1, 2]


def test_render_placeholders_attributes_and_for_items():
    (b,) = expand({"x": [2], "c": [[1, 3]], "w": [{"name": "wide", "epochs": 3}]}, None, {})
    assert render("pft{x}-{c[0]}", b) == "pft2-1"
    assert render("{x.name}+{c[1].name}", b) == "trianglearea+angle"
    assert render("pt2-{c}", b) == "pt2-13" and render("{c}", b) == [1, 3]
    assert render("{x}", b) == 2 and render("n{x}", b) == "n2"  # a whole placeholder stays int
    assert render({"epochs": "{w.epochs}", "name": "pt-{w}"}, b) == {"epochs": 3, "name": "pt-wide"}
    items = render([{"for": {"t": "{c}"}, "item": {"data": "atlantis-{t}", "n": 256}}, "x"], b)
    assert items == [{"data": "atlantis-1", "n": 256}, {"data": "atlantis-3", "n": 256}, "x"]
    assert render("bounds:{3}", b) == "bounds:{3}"  # not a variable: left alone
    with pytest.raises(WorldrepError, match=r"unknown template variable '\{z\}'"):
        render("a-{z}", b)


def test_task_numbers_and_names_are_both_accepted(tmp_path):
    data = with_(BASE, lists={"tasks": ["distance", 4]})
    study = load_study(write(tmp_path, data))
    assert study.steps["world-distance"].spec["task"] == "distance"
    assert study.steps["world-4"].spec["task"] == "compass"


def test_plan_lists_steps_with_dependencies_and_scale(tmp_path):
    study = load_study(write(tmp_path, BASE))
    assert list(study.steps)[:4] == ["world", "world-1", "world-2", "world-4"]
    assert study.steps["pft4-1"].deps == ["world-4", "world-1"]
    text = format_plan(study)
    assert "mixture  pft2-4" in text and "<- world-2, world-4" in text
    small = load_study(write(tmp_path, BASE), scale=10)
    assert small.steps["world-1"].spec["n_train"] == 100
    assert small.steps["pft1-2"].spec["sources"][1]["n"] == 50
    assert small.default_out().name == "s-scale10"


def test_hash_changes_for_the_changed_step_and_its_dependents_only(tmp_path):
    before = load_study(write(tmp_path, BASE))
    changed = with_(BASE)
    changed["datasets"].append({"name": "world-9", "task": 1, "n_train": 10})
    changed["datasets"][0]["grid"] = {"x": [2, 4]}
    changed["datasets"].insert(0, {"name": "world-1", "task": 1, "n_train": 999, "n_test": 100})
    after = load_study(write(tmp_path, changed))
    moved = {n for n in before.steps if before.steps[n].hash != after.steps[n].hash}
    assert moved == {"world-1", "pft1-2", "pft1-4", "pft2-1", "pft4-1"}


def test_templates_and_defaults_merge_under_the_declaration(tmp_path):
    data = with_(BASE, templates={"small": {"n_train": 600, "n_test": 30}},
                 defaults={"dataset": {"n_val": 7}}, seed=5)
    data["datasets"][0]["use"] = "small"
    data["datasets"][0].pop("n_train")
    study = load_study(write(tmp_path, data))
    spec = study.steps["world-2"].spec
    assert (spec["n_train"], spec["n_test"], spec["n_val"], spec["seed"]) == (600, 100, 7, 5)


# -- a bad study fails at plan time with the file, the step and the key -----------------------
@pytest.mark.parametrize("change, message", [
    (lambda d: d["datasets"][0].update(n_trian=5),
     r"study\.yaml: step 'world-1' \(datasets\[0\] 'world-\{x\}' \(x=1\)\).*unknown key 'n_trian'"),
    (lambda d: d["datasets"][0].update(n_train="many"),
     r"step 'world-1' .*'n_train': Input should be a valid integer"),
    (lambda d: d["mixtures"][0]["sources"][0].update(data="wrld-{x}"),
     r"step 'pft1-2' .*'sources\[0\]\.data': no dataset or mixture step named 'wrld-1'; "
     r"did you mean world-1"),
    (lambda d: d["mixtures"][0]["sources"][0].update(data="world"),
     r"'sources\[0\]\.data': 'world' is a world step; expected a dataset or mixture step"),
    (lambda d: d["mixtures"][0].update(where="x != z"),
     r"mixtures\[0\] 'pft\{x\}-\{y\}': where: 'x != z' names 'z'"),
    (lambda d: d["mixtures"][0].update(name="pft{x}"),
     r"the name 'pft1' is already taken by the step declared at mixtures\[0\]"),
    (lambda d: d["datasets"][0].update(task="{x}-{q}"),
     r"unknown template variable '\{q\}'"),
    (lambda d: d["datasets"][0].update(task=9),
     r"no task numbered 9; allowed: 1 \(distance\)"),
    (lambda d: d["datasets"][0].update(grid={"x": "taks"}),
     r"grid 'x': no list named 'taks' \(lists: tasks\)"),
    (lambda d: d.update(runz=[]), r"study\.yaml: unknown key 'runz'"),
    (lambda d: d["mixtures"][0]["sources"].append({"data": "world-{x}", "n": 900}),
     r"step 'pft1-2' .*'sources\[2\]': 'world-1' is asked 1100 train rows in all"),
    (lambda d: d["mixtures"][0]["sources"][1].update(n=5000),
     r"step 'pft1-2' .*'sources\[1\]': mixture source world-2: n=5000 but it has only 1000"),
])
def test_bad_studies_name_file_step_and_key(tmp_path, change, message):
    data = with_(BASE)
    change(data)
    with pytest.raises(WorldrepError, match=message):
        load_study(write(tmp_path, data))


def test_cycles_are_reported(tmp_path):
    data = {"plugins": ["study_fakes"], "steps": [
        {"name": "a", "kind": "fake", "inputs": ["b"]},
        {"name": "b", "kind": "fake", "inputs": ["a"]}]}
    with pytest.raises(WorldrepError, match="circular references among: a, b"):
        load_study(write(tmp_path, data))


def test_cli_plan_prints_steps_and_fails_cleanly(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["plan", str(write(tmp_path, BASE))])
    assert ok.exit_code == 0 and "study s: 10 steps (world 1, dataset 3, mixture 6)" in ok.output
    bad = with_(BASE)
    bad["datasets"][0]["pool"] = 3.5
    result = runner.invoke(app, ["plan", str(write(tmp_path, bad))])
    assert result.exit_code == 2
    assert "error:" in result.output and "'pool'" in result.output
    missing = runner.invoke(app, ["plan", "nope"])
    assert missing.exit_code == 2 and "built-in studies" in missing.output
    # --help names every study the package ships, and each of them loads.
    shipped = sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))
    assert {"quickstart", "map", "speed", "findings", "paper"} <= set(shipped)
    page = runner.invoke(app, ["plan", "--help"]).output
    helped = " ".join(page.replace("│", " ").split())  # the text without rich's box
    assert f"a built-in: {', '.join(shipped)}" in helped
    for name in shipped:
        assert load_study(name).steps


def test_a_dataset_larger_than_its_world_allows_fails_at_plan_time(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump({
        "world": {"min_population": 4000000},  # 82 cities: 3,321 pairs
        "datasets": [{"name": "d", "task": "distance", "n_train": 5000}]}))
    with pytest.raises(WorldrepError, match=r"step 'd'.*distance: 15128 unique items requested "
                                            r".*only 3321 distinct items exist"):
        load_study(path)
