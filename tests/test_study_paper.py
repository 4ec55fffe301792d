"""The paper study expresses the reference experiment sets exactly, with the paper's sizes."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from worldrep.study import load_study
from worldrep.study.grid import task_name

TASKS = range(1, 8)
PAPER = Path(__file__).resolve().parents[1] / "studies" / "paper.yaml"


@pytest.fixture(scope="module")
def paper():
    return load_study(PAPER)


def runs(study, prefix: str) -> dict:
    return {n: s for n, s in study.steps.items()
            if s.kind == "train" and n.startswith(prefix)}


def sources(study, step) -> list[tuple[str, int | None]]:
    mix = study.steps[step.spec["data"]]
    assert mix.kind == "mixture"
    return [(s["data"], s["n"]) for s in mix.spec["sources"]]


def dataset_task(study, name: str) -> str:
    return study.steps[name].spec["task"]


def test_pft_is_42_runs_from_pt1_of_the_first_task_with_20k_of_it_and_100k_of_the_other(paper):
    pft = runs(paper, "pft")
    assert sorted(pft) == sorted(f"pft{x}-{y}" for x, y in itertools.permutations(TASKS, 2))
    for x, y in itertools.permutations(TASKS, 2):
        step = pft[f"pft{x}-{y}"]
        assert step.spec["init_from"] == f"pt1-{x}" and step.deps[-1] == f"pt1-{x}"
        (first, n_first), (second, n_second) = sources(paper, step)
        assert (n_first, n_second) == (20_000, 100_000)
        assert dataset_task(paper, first) == task_name(x)
        assert dataset_task(paper, second) == task_name(y)
        assert paper.steps[first].spec["pool"] == "world"
        evals = [s for s in paper.steps.values() if s.kind == "eval"
                 and s.spec["run"] == f"pft{x}-{y}"]
        assert [dataset_task(paper, e.spec["data"]) for e in evals] == [task_name(x), task_name(y)]
        assert step.spec["optimizer"]["lr"] == 1e-5 and step.spec["epochs"] == 30


def test_pretraining_grids_have_the_paper_sizes(paper):
    pt1, pt2, pt3 = runs(paper, "pt1-"), runs(paper, "pt2-"), runs(paper, "pt3-")
    assert (len(pt1), len(pt2), len(pt3)) == (7, 21, 35)
    for x in TASKS:
        step = pt1[f"pt1-{x}"]
        assert step.spec["epochs"] == 42 and step.spec["init_from"] is None
        assert paper.steps[step.spec["data"]].spec["n_train"] == 1_000_000
        assert dataset_task(paper, step.spec["data"]) == task_name(x)
    for group, k, epochs in ((pt2, 2, 21), (pt3, 3, 14)):
        combos = {tuple(int(d) for d in n.split("-")[1]) for n in group}
        assert combos == set(itertools.combinations(TASKS, k))
        for step in group.values():
            assert step.spec["epochs"] == epochs
            mix = paper.steps[step.spec["data"]].spec
            assert mix["mode"] == "concat" and len(mix["sources"]) == k
    pt7 = runs(paper, "pt7-s")
    assert sorted(s.spec["seed"] for s in pt7.values()) == [1, 2, 3, 42]
    for step in pt7.values():
        assert step.spec["epochs"] == 6
        mix = paper.steps[step.spec["data"]].spec
        assert mix["mode"] == "concat" and len(mix["sources"]) == 7
    widths = [paper.steps[f"pt7-{w}"] for w in ("narrow", "wide", "wider")]
    assert [(w.spec["model"]["preset"], w.spec["epochs"]) for w in widths] == [
        ("narrow", 12), ("wide", 3), ("wider", 3)]
    assert len(pt1) + len(pt2) + len(pt3) + len(pt7) + len(widths) == 70


def test_ftwb_runs_fine_tune_the_7_task_model_with_atlantis(paper):
    ftwb1 = runs(paper, "ftwb1-")
    ftwb2 = runs(paper, "ftwb2-")
    assert len([n for n in ftwb1 if n.endswith("-s42")]) == 7
    assert len([n for n in ftwb2 if n.endswith("-s42")]) == 21
    step = ftwb2["ftwb2-13-s42"]
    assert step.spec["init_from"] == "pt7-s42" and step.spec["optimizer"]["lr"] == 1e-5
    assert step.spec["epochs"] == 30
    got = sources(paper, step)
    assert got[:4] == [("atlantis-1", 100_000), ("atlantis-3", 100_000),
                       ("world-1", 20_000), ("world-3", 20_000)]
    assert got[4:] == [(f"atlantis-{t}", 256) for t in TASKS]
    assert sum(n for _, n in got) == 241_792  # the reference's ftwb2 size
    assert sum(n for _, n in sources(paper, ftwb1["ftwb1-5-s42"])) == 121_792
    for t in TASKS:  # Atlantis datasets hold the 100k draw and the 256 elicitation rows
        spec = paper.steps[f"atlantis-{t}"].spec
        assert spec["require"] == "Atlantis" and spec["n_train"] >= 100_256
    evals = [s.spec["data"] for s in paper.steps.values()
             if s.kind == "eval" and s.spec["run"] == "ftwb1-5-s42"]
    assert evals == [f"world-{t}" for t in TASKS] + [f"atlantis-{t}" for t in TASKS]


def test_scale_shrinks_data_and_steps_not_the_graph(paper):
    small = load_study(PAPER, scale=1000)
    assert list(small.steps) == list(paper.steps)
    assert small.steps["world-1"].spec["n_train"] == 1000
    assert [n for _, n in sources(small, small.steps["pft1-2"])] == [20, 100]
    assert small.steps["pt1-1"].spec["epochs"] == 42  # fewer rows, so 1/1000 of the steps
