"""What a step's name stands for: spec, inputs and code; never a path or a display setting.

Code edits are made to a copy of the worldrep sources (`Sources(root=copy)`), so the tests
see exactly which steps an edit would redo without touching the installed package.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import worldrep
from worldrep.cli import app
from worldrep.study import load_study
from worldrep.study.cache import study_states
from worldrep.study.executors import run_study
from worldrep.study.identity import Sources

TESTS = Path(__file__).parent


@pytest.fixture
def sources(tmp_path) -> Sources:
    copy = tmp_path / "src" / "worldrep"
    shutil.copytree(Path(worldrep.__file__).parent, copy,
                    ignore=shutil.ignore_patterns("__pycache__"))
    return Sources(root=copy)


def hashes(study) -> dict[str, str]:
    return {name: step.hash for name, step in study.steps.items()}


def changed(before: dict, after: dict) -> set[str]:
    return {n for n in before if before[n] != after[n]}


def downstream(study, names: set[str]) -> set[str]:
    out = set(names)
    for step in study.steps.values():
        if any(d in out for d in step.deps):
            out.add(step.name)
    return out


def edit(sources: Sources, module: str, old: str, new: str) -> None:
    path = sources.file(module)
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def test_editing_a_task_formula_redoes_its_datasets_and_everything_downstream(sources):
    study = load_study("quickstart", sources=sources)
    before = hashes(study)
    edit(sources, "worldrep.tasks.distance", "round_half_even(d)", "round_half_even(d + 1)")
    after = hashes(load_study("quickstart", sources=Sources(root=sources.root)))
    distance = {"world-distance", "atlantis-distance"}
    assert changed(before, after) == downstream(study, distance)
    # The compass datasets are kept (every model here trains on distance or starts from one
    # that did, so all of them are downstream).
    for kept in ("world", "world-compass", "atlantis-compass"):
        assert before[kept] == after[kept]


@pytest.mark.parametrize("module", ["worldrep.study.report", "worldrep.cli",
                                    "worldrep.study.executors", "worldrep.tasks.angle"])
def test_editing_the_report_the_cli_the_engine_or_an_unused_task_redoes_nothing_it_does_not_run(
        sources, module):
    study = load_study("quickstart", sources=sources)
    before = hashes(study)
    path = sources.file(module)
    path.write_text(path.read_text() + "\n# an edit\n")
    after = hashes(load_study("quickstart", sources=Sources(root=sources.root)))
    assert changed(before, after) == set()  # the quickstart has no angle step


def test_editing_one_analysis_redoes_that_analysis_only(sources):
    study = load_study("quickstart", sources=sources)
    before = hashes(study)
    edit(sources, "worldrep.analysis.cka", "def linear_cka(", "def linear_cka(  # edited\n")
    after = hashes(load_study("quickstart", sources=Sources(root=sources.root)))
    assert changed(before, after) == {"cka"}


def _with_defaults(tmp_path, **train) -> Path:
    data = yaml.safe_load(Path(load_study("quickstart").path).read_text())
    data["defaults"]["train"].update(train)
    path = tmp_path / "quickstart.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_settings_that_do_not_change_results_are_not_identity(tmp_path):
    base = hashes(load_study("quickstart"))
    quiet = hashes(load_study(_with_defaults(tmp_path, progress=True, threads=1, log_every=5,
                                             device="cpu")))
    assert quiet == base
    other = hashes(load_study(_with_defaults(tmp_path, eval={"every": 0.25,
                                                             "rows_per_task": 64})))
    assert other["base"] != base["base"] and other["world-distance"] == base["world-distance"]


# -- reasons and cosmetic changes, end to end on fake steps -----------------------------------
PLUGIN = """
import json
import os

from worldrep.artifacts import artifact_dir
from worldrep.config import Strict
from worldrep.study.kinds import Ref, StepKind, register_kind


class Spec(Strict):
    value: int = 0
    inputs: list[str] = []


@register_kind
class Adder(StepKind):
    name = "adder"
    section = "steps"
    Spec = Spec

    def refs(self, spec):
        return [Ref(f"inputs[{i}]", n, ("adder",)) for i, n in enumerate(spec["inputs"])]

    def run(self, spec, inputs, out):
        with open(os.environ["ADDER_LOG"], "a") as f:
            f.write(out.name.rsplit("-", 1)[0] + "\\n")
        total = spec["value"] + sum(json.loads((inputs[n] / "v.json").read_text())
                                    for n in spec["inputs"])
        with artifact_dir(out) as tmp:
            (tmp / "v.json").write_text(json.dumps(total))
"""
STUDY = {"name": "adders", "plugins": ["adder_plugin"], "steps": [
    {"name": "a", "kind": "adder", "value": 1},
    {"name": "b", "kind": "adder", "value": 2, "inputs": ["a"]},
    {"name": "c", "kind": "adder", "value": 3},
]}


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    folder = tmp_path / "plugin"
    folder.mkdir()
    (folder / "adder_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("ADDER_LOG", str(tmp_path / "log"))
    path = tmp_path / "adders.yaml"
    path.write_text(yaml.safe_dump(STUDY, sort_keys=False))
    return folder / "adder_plugin.py", path, tmp_path / "log"


def _reload(plugin_file: Path):
    import importlib
    import sys

    sys.modules.pop("adder_plugin", None)
    importlib.invalidate_caches()
    os.utime(plugin_file)


def test_status_says_why_each_step_is_due(plugin, tmp_path):
    module, path, log = plugin
    out = tmp_path / "out"
    study = load_study(path)
    assert {s.why for s in study_states(study, out).values()} == {"new"}
    assert run_study(study, out, log=lambda _: None).ok
    # code changed: the plugin module is the code of its kind
    module.write_text(module.read_text().replace("total = spec", "total = 0 + spec"))
    _reload(module)
    states = study_states(load_study(path), out)
    assert states["a"].state == "pending" and states["a"].why == "code changed: adder_plugin"
    # spec changed (and what reads it: input changed)
    data = yaml.safe_load(path.read_text())
    data["steps"][0]["value"] = 5
    path.write_text(yaml.safe_dump(data))
    module.write_text(PLUGIN)
    _reload(module)
    states = study_states(load_study(path), out)
    assert states["a"].why == "spec changed: value"
    assert states["b"].why == "input changed: a"
    assert states["c"].state == "done"
    result = CliRunner().invoke(app, ["status", str(path), "--out", str(out)])
    assert "spec changed: value" in result.output and "input changed: a" in result.output


def test_a_cosmetic_code_change_is_accepted_for_one_run(plugin, tmp_path):
    module, path, log = plugin
    out = tmp_path / "out"
    assert run_study(load_study(path), out, log=lambda _: None).ok
    log.write_text("")
    module.write_text(module.read_text() + "\n# reformatted\n")
    _reload(module)
    study = load_study(path)
    report = run_study(study, out, log=lambda _: None, accept_code=True)
    assert report.ok and report.ran == [] and sorted(report.adopted) == ["a", "b", "c"]
    assert log.read_text() == ""  # nothing was redone
    assert {s.state for s in study_states(study, out).values()} == {"done"}
    record = json.loads((study.step_dir(out, "b").with_name(
        study.step_dir(out, "b").name + ".step.json")).read_text())
    assert record["hash"] == study.steps["b"].hash and "adopted_from" in record
    # Without the flag the same edit redoes everything it touches.
    module.write_text(module.read_text() + "\n# again\n")
    _reload(module)
    report = run_study(load_study(path), out, log=lambda _: None)
    assert sorted(report.ran) == ["a", "b", "c"]
    assert sorted(log.read_text().split()) == ["a", "b", "c"]


def test_plan_json_lists_every_step_with_its_identity(tmp_path):
    result = CliRunner().invoke(app, ["plan", "quickstart", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    study = load_study("quickstart")
    assert [s["name"] for s in plan["steps"]] == list(study.steps)
    for entry in plan["steps"]:
        step = study.steps[entry["name"]]
        assert entry["kind"] == step.kind and entry["hash"] == step.hash
        assert entry["inputs"] == step.deps and entry["spec"] == step.spec
        assert entry["dir"] == f"{step.kind}/{step.name}-{step.hash}"
    train = next(s for s in plan["steps"] if s["name"] == "base")
    assert "progress" in train["spec"] and "progress" not in train["identity_spec"]
    assert "worldrep.train" in train["code"] and "worldrep.cli" not in train["code"]
