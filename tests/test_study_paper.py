"""The paper study is the paper: its grids, seeds, task orders, pools and sizes, checked on
the expanded plan that `worldrep plan --json` prints (what a script would read)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from worldrep.cli import app
from worldrep.study import load_study
from worldrep.study.grid import task_name

TASKS = range(1, 8)
PAPER = Path(__file__).resolve().parents[1] / "studies" / "paper.yaml"
CYCLIC2 = {1: (1, 2), 2: (3, 4), 3: (5, 6), 4: (7, 1), 5: (2, 3), 6: (4, 5), 7: (6, 7), 8: (1, 3)}
CYCLIC3 = {1: (1, 2, 3), 2: (4, 5, 6), 3: (7, 1, 2), 4: (3, 4, 5), 5: (6, 7, 1), 6: (2, 3, 4),
           7: (5, 6, 7), 8: (1, 2, 4)}


@pytest.fixture(scope="module")
def plan() -> dict:
    result = CliRunner().invoke(app, ["plan", str(PAPER), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    return {s["name"]: s for s in data["steps"]}


@pytest.fixture(scope="module")
def paper():
    return load_study(PAPER)


def train(plan, prefix: str) -> dict:
    return {n: s for n, s in plan.items() if s["kind"] == "train" and n.startswith(prefix)}


def mixture_tasks(plan, data: str) -> list[str]:
    """The tasks of a dataset or mixture step, in the order its sources are listed."""
    step = plan[data]
    if step["kind"] == "dataset":
        return [step["spec"]["task"]]
    return [t for src in step["spec"]["sources"] for t in mixture_tasks(plan, src["data"])]


def sources(plan, run) -> list[tuple[str, int | None]]:
    return [(s["data"], s["n"]) for s in plan[run["spec"]["data"]]["spec"]["sources"]]


def reps_of(plan, run: str) -> dict:
    return plan[f"{run}.reps"]["spec"]


def test_seed_counts_per_grid(plan):
    def seeds(prefix_re):
        import re

        found: dict[str, set[int]] = {}
        for name, step in train(plan, "").items():
            m = re.fullmatch(prefix_re, name)
            if m:
                found.setdefault(m.group(1), set()).add(step["spec"]["seed"])
        return found

    pt1 = seeds(r"pt1-(\d)-s\d+")
    assert set(pt1) == {str(x) for x in TASKS}
    assert all(pt1[str(x)] == {42, 1, 2} for x in TASKS if x != 5)
    assert pt1["5"] == {42, 1, 2, 3, 4, 5, 6, 7}  # inside's extra seeds
    for grid in (r"pt2-(\d)-s\d+", r"pt3-(\d)-s\d+"):
        found = seeds(grid)
        assert set(found) == {str(k) for k in range(1, 9)}
        assert all(v == {42, 1, 2} for v in found.values())
    assert seeds(r"(pt7)-s\d+")["pt7"] == {42, 1, 2, 3}
    for kind, n in (("ftwb1", 7), ("ftwb2", 21)):
        per_seed = seeds(rf"{kind}-\d+-s(\d+)")
        assert {s: len([k for k in train(plan, kind) if k.endswith(f"-s{s}")
                        and "wide" not in k and "narrow" not in k])
                for s in per_seed} == {s: n for s in ("42", "1", "2", "3")}
    # the exhaustive single-seed grids: every pair and triple, seed 42
    assert len(train(plan, "combo2-")) == 21 and len(train(plan, "combo3-")) == 35
    assert {s["spec"]["seed"] for s in {**train(plan, "combo2-"),
                                        **train(plan, "combo3-")}.values()} == {42}
    # the seed is in every seeded name, and it is the run's seed
    for name, step in train(plan, "").items():
        if not name.startswith("pft"):
            assert name.endswith(f"-s{step['spec']['seed']}"), name


@pytest.mark.parametrize("grid,table,epochs", [("pt2", CYCLIC2, 21), ("pt3", CYCLIC3, 14)])
def test_cyclic_sets_keep_the_reference_task_order_and_read_the_first_tasks_prompt(
        plan, grid, table, epochs):
    for k, tasks in table.items():
        for seed in (42, 1, 2):
            run = plan[f"{grid}-{k}-s{seed}"]
            assert run["spec"]["epochs"] == epochs
            assert mixture_tasks(plan, run["spec"]["data"]) == [task_name(t) for t in tasks]
            assert plan[run["spec"]["data"]]["spec"]["mode"] == "concat"
            assert reps_of(plan, f"{grid}-{k}-s{seed}")["task"] == task_name(tasks[0])
            assert reps_of(plan, f"{grid}-{k}-s{seed}")["layers"] == [3, 4, 5, 6]
    # {7, 1} reads the crossing prompt, {6, 7, 1} the perimeter one (not distance's)
    assert reps_of(plan, f"{grid}-4-s42" if grid == "pt2" else f"{grid}-5-s42")["task"] \
        == ("crossing" if grid == "pt2" else "perimeter")


def test_pretraining_sizes(plan):
    for x in TASKS:
        run = plan[f"pt1-{x}-s42"]
        assert run["spec"]["epochs"] == 42 and run["spec"]["init_from"] is None
        assert plan[run["spec"]["data"]]["spec"]["n_train"] == 1_000_000
        assert reps_of(plan, f"pt1-{x}-s42")["task"] == task_name(x)
    for s in (42, 1, 2, 3):
        run = plan[f"pt7-s{s}"]
        assert run["spec"]["epochs"] == 6 and len(mixture_tasks(plan, run["spec"]["data"])) == 7


def test_the_pooled_atlantis_groups_are_the_papers(plan):
    spec = plan["atlantis-ftwb2"]["spec"]
    labels = [r["label"] for r in spec["reps"]]
    assert len(labels) == 84  # 21 pairs x 4 seeds, ftwb2 only
    with_d = {k for k, g in spec["groups"].items() if g == "with distance"}
    without = {k for k, g in spec["groups"].items() if g == "without distance"}
    assert len(with_d) == 6 * 4 and len(without) == 15 * 4 and with_d | without == set(labels)
    for label in labels:  # ftwb2-<pair>-s<seed>: distance (1) in the pair, or not
        pair = label.split("-")[1]
        assert (label in with_d) == ("1" in pair)
    assert plan["atlantis-in-pretraining"]["spec"]["groups"] == {
        "pt7-withatlantis-s42": "in pretraining"}


def test_every_width_atlantis_in_pretraining_and_scattered_model_exists(plan):
    for w, preset, epochs in (("narrow", "narrow", 12), ("wide", "wide", 3),
                              ("wider", "wider", 3)):
        run = plan[f"pt7-{w}-s42"]
        assert run["spec"]["model"]["preset"] == preset and run["spec"]["epochs"] == epochs
        for x in TASKS:
            assert plan[f"ftwb1-{x}-{w}-s42"]["spec"]["init_from"] == f"pt7-{w}-s42"
        pairs = {n.split("-")[1] for n in train(plan, "ftwb2-") if n.endswith(f"-{w}-s42")}
        assert pairs == {"17", "16", "14", "34", "24", "57"}  # D+Cr D+P D+Co A+Co T+Co I+Cr
    exp5 = plan["pt7-withatlantis-s42"]
    assert all(plan[src["data"]]["spec"]["pool"] == "all"
               and plan[src["data"]]["spec"]["require"] is None
               for src in plan[exp5["spec"]["data"]]["spec"]["sources"])
    scattered = plan["world-scattered"]["spec"]["synthetic"][0]
    assert scattered["layout"] == "uniform" and scattered["n_cities"] == 100
    assert plan["pt7-scattered-s42"]["inputs"] == ["scattered-all7"]
    for x in TASKS:
        assert plan[f"scattered-ftwb1-{x}-s42"]["spec"]["init_from"] == "pt7-scattered-s42"
    assert len([n for n in train(plan, "scattered-ftwb2-")]) == 21
    assert plan["scattered-world-1"]["inputs"] == ["world-scattered"]


def test_pft_is_42_runs_from_pt1_of_the_first_task_with_20k_of_it_and_100k_of_the_other(plan):
    pft = train(plan, "pft")
    assert sorted(pft) == sorted(f"pft{x}-{y}" for x, y in itertools.permutations(TASKS, 2))
    for x, y in itertools.permutations(TASKS, 2):
        step = pft[f"pft{x}-{y}"]
        assert step["spec"]["init_from"] == f"pt1-{x}-s42"
        (first, n_first), (second, n_second) = sources(plan, step)
        assert (n_first, n_second) == (20_000, 100_000)
        assert mixture_tasks(plan, first) == [task_name(x)]
        assert mixture_tasks(plan, second) == [task_name(y)]
        assert plan[first]["spec"]["pool"] == "world"
        evals = [s for s in plan.values() if s["kind"] == "eval"
                 and s["spec"]["run"] == f"pft{x}-{y}"]
        assert [mixture_tasks(plan, e["spec"]["data"])[0] for e in evals] == [task_name(x),
                                                                              task_name(y)]
        assert step["spec"]["optimizer"]["lr"] == 1e-5 and step["spec"]["epochs"] == 30


def test_ftwb_runs_fine_tune_the_7_task_model_with_atlantis(plan):
    step = plan["ftwb2-13-s42"]
    assert step["spec"]["init_from"] == "pt7-s42" and step["spec"]["optimizer"]["lr"] == 1e-5
    assert step["spec"]["epochs"] == 30
    got = sources(plan, step)
    assert got[:4] == [("atlantis-1", 100_000), ("atlantis-3", 100_000),
                       ("world-1", 20_000), ("world-3", 20_000)]
    assert got[4:] == [(f"atlantis-{t}", 256) for t in TASKS]
    assert sum(n for _, n in got) == 241_792  # the reference's ftwb2 size
    assert sum(n for _, n in sources(plan, plan["ftwb1-5-s42"])) == 121_792
    evals = [s["spec"]["data"] for s in plan.values()
             if s["kind"] == "eval" and s["spec"]["run"] == "ftwb1-5-s42"]
    assert evals == [f"world-{t}" for t in TASKS] + [f"atlantis-{t}" for t in TASKS]


def test_ni_and_cka_analyses_are_seed_aware(plan):
    ni = plan["ni-ftwb"]["spec"]
    assert ni["base_seeds"] == {f"pt7-s{s}": str(s) for s in (42, 1, 2, 3)}
    assert len(ni["finetuned"]) == 4 * (7 + 21)
    assert {f["seed"] for f in ni["finetuned"]} == {"42", "1", "2", "3"}
    cka = [r["label"] for r in plan["cka-pt1"]["spec"]["reps"]]
    assert "inside@3" in cka and "inside@2" not in cka and "distance@2" in cka
    conv = plan["convergence"]["spec"]["models"]
    assert conv["pt2-4@42"] == {"tasks": ["distance", "crossing"], "seed": "42"}
    assert "pt2-8@42" not in conv and len(conv) == 21 + 21 + 21


def test_scale_shrinks_data_and_steps_not_the_graph(paper):
    small = load_study(PAPER, scale=1000)
    assert list(small.steps) == list(paper.steps)
    assert small.steps["world-1"].spec["n_train"] == 1000
    assert [src["n"] for src in small.steps["pft1-2.mix"].spec["sources"]] == [20, 100]
    assert small.steps["pt1-1-s42"].spec["epochs"] == 42  # fewer rows, so 1/1000 of the steps


def test_set_overrides_every_step_of_a_kind_and_errors_name_what_is_allowed(paper):
    # (the paper reads layers up to 6: a model with fewer is refused at load)
    tiny = load_study(PAPER, scale=20000, overrides=["train.model.preset=tiny",
                                                     "train.model.layers=6"])
    assert {s.spec["model"]["preset"] for s in tiny.steps.values() if s.kind == "train"} == {
        "tiny"}
    assert tiny.steps["pt1-1-s42"].hash != load_study(PAPER, scale=20000).steps["pt1-1-s42"].hash
    from worldrep.errors import WorldrepError

    with pytest.raises(WorldrepError, match="'trian' is neither a step kind"):
        load_study(PAPER, overrides=["trian.steps=3"])
    with pytest.raises(WorldrepError, match="unknown key 'model.prest'"):
        load_study(PAPER, overrides=["train.model.prest=tiny"])


def test_plan_prints_models_per_set_model_steps_and_gpu_hours():
    result = CliRunner().invoke(app, ["plan", str(PAPER)])
    assert result.exit_code == 0
    assert "training runs by experiment set" in result.output
    line = next(li for li in result.output.splitlines() if li.strip().startswith("pt1-{x}-s{s}"))
    assert "21 models" in line and "6,891,066 model-steps" in line and "GPU-h" in line
    assert next(li for li in result.output.splitlines()
                if li.strip().startswith("all ")).split()[1] == "360"


def test_slurm_submits_a_few_hundred_jobs_with_each_runs_evals_and_reps_in_one(paper):
    from worldrep.study.units import slurm_units

    units = slurm_units(paper)
    assert len(units) < 450 < len(paper.steps)  # was one job per step: ~4,000
    after_run: dict[str, list[str]] = {}
    for unit in units:
        for name in unit.steps:
            step = paper.steps[name]
            if step.kind in ("eval", "reps"):
                run = next(d for d in step.deps if paper.steps[d].kind == "train")
                after_run.setdefault(run, []).append(unit.name)
    assert all(len(set(jobs)) == 1 for jobs in after_run.values())
    position = {n: i for i, u in enumerate(units) for n in u.steps}
    for i, unit in enumerate(units):  # every job comes after the jobs it needs
        for name in unit.steps:
            assert all(position[d] <= i for d in paper.steps[name].deps)
    result = CliRunner().invoke(app, ["plan", str(PAPER), "--executor", "slurm"])
    assert f"slurm: {len(units)} jobs for {len(paper.steps)} steps" in result.output


def test_the_paper_beside_us_takes_rows_the_paper_gives_as_a_range_or_prose():
    """paper-results gives some rows of a table as a range ('0.97-1.0') and some findings as
    prose: the report puts the paper's table cells beside ours and leaves the rest out
    (the paper smoke run once failed here, after all 3,956 steps had finished)."""
    from worldrep.study.report import _paper

    ours = {"distance": {"x": 0.5, "y": 0.25}, "angle": {"x": 0.125, "y": 0.0}}
    mixed = {"id": "probe", "claim": "R²", "value": ours,
             "paper": {"distance": "0.97-1.0", "angle": {"x": 0.99, "y": 0.98}}}
    prose = {"id": "prose", "claim": "c", "value": ours, "paper": "distance lowest"}
    page = _paper([mixed, prose])
    assert "0.99" in page and "0.98" in page  # angle's cells, beside ours
    assert "0.97-1.0" not in page  # a row given as a range is not a cell
    assert page.count("<h3>") == 2 and "<th>d</th>" not in page  # prose is not split into rows


def test_set_reaches_inside_a_study_key_mapping(paper):
    # `--set lists.seeds=[...]` changes a list the grids expand (how the findings study adds
    # its second seed); a key that holds no mapping says how to set it instead.
    from worldrep.errors import WorldrepError

    findings = PAPER.with_name("findings.yaml")
    two = load_study(findings, overrides=["lists.seeds=[42, 1]"])
    assert "base-s1" in two.steps and "base-s1" not in load_study(findings).steps
    with pytest.raises(WorldrepError, match="'name' holds no mapping; set it whole: name=VALUE"):
        load_study(PAPER, overrides=["name.x=1"])
