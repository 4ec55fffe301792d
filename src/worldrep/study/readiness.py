"""Whether the models a finding reads learned what it needs: shown, not shown, inconclusive.

A finding computed from models that never learned is evidence of nothing, so before a value
is held against its band every model the finding reads is checked:

- learned: on each task it was trained on, its metric on world queries (an evaluation the
  study declares, final checkpoint) has come at least `LEARNED` (10 %) of the way from the
  untrained level to perfect. A task that makes up under `TRAINED_SHARE` (5 %) of a run's
  training rows does not count: the paper's fine-tunes carry a few "elicitation" rows of
  every task, and a compass fine-tune is not asked to keep distance (the quickstart's did not:
  docs/findings.md, Q2); it is asked to learn compass and, where maps are compared, to keep a
  map. The untrained level is the metric of the best constant answer
  on the same rows (`evaluate.untrained_level`): the plateau where a model has learned the
  answers' format and distribution and nothing of the cities.
- a map, for findings that compare maps (CKA, convergence, Atlantis, transfer): held-out probe
  R² of at least `MAP_R2` (0.5) in x and in y, at the best layer a probe of the study read.

(`LEARNED`, `PERFECT` and `progress` are the learning-speed analysis's: one meaning of
"learned" for the speed map and for the findings.) A finding is "inconclusive" when a model fails a check (or a check cannot be made: no world
evaluation, no probe), naming each model and why; otherwise it is "shown" when its value lies
in its band and "not shown" when it does not. `world-map` needs only the tasks learned: a
learned task without a map is "not shown", which is a result.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from .. import artifacts
from ..analysis.speed import LEARNED, PERFECT, progress
from .load import Study

MAP_R2 = 0.5  # the least held-out probe R² in x and in y that counts as a map
TRAINED_SHARE = 0.05  # the least share of a run's training rows that makes a task its own


def task_rows(study: Study, data: str) -> dict[str, float]:
    """Training rows per task of a dataset or mixture step, from the specs (a source without
    `n` contributes all its rows)."""
    spec = _spec(study, data)
    if "task" in spec:
        return {spec["task"]: float(spec.get("n_train") or 0)}
    rows: dict[str, float] = {}
    for source in spec.get("sources", []):
        inner = task_rows(study, source["data"])
        total = sum(inner.values())
        scale = 1.0 if source.get("n") is None or not total else source["n"] / total
        for task, n in inner.items():
            rows[task] = rows.get(task, 0.0) + n * scale
    return rows


def own_tasks(study: Study, run: str) -> list[str]:
    """The tasks a run is held to: those of at least `TRAINED_SHARE` of its training rows,
    in the paper's order."""
    from .kinds import trained_on

    rows = task_rows(study, _spec(study, run).get("data", ""))
    total = sum(rows.values())
    return [t for t in trained_on(study.steps, run)
            if not total or rows.get(t, 0.0) >= TRAINED_SHARE * total]


def _runs_of_reps(study: Study, reps_items: list, labels=None) -> list[str]:
    """The train steps behind a list of reps inputs (names or {label, reps}), optionally only
    those whose label (or its configuration before '@') is in `labels`."""
    wanted = None if labels is None else set(labels if isinstance(labels, list) else [labels])
    runs = []
    for item in reps_items:
        reps, label = (item, item.removesuffix(".reps")) if isinstance(item, str) else (
            item["reps"], item["label"])
        if wanted is not None and label not in wanted and label.split("@")[0] not in wanted:
            continue
        if reps in study.steps and "run" in study.steps[reps].spec:
            runs.append(study.steps[reps].spec["run"])
    return runs


def _spec(study: Study, step: str) -> dict:
    return study.steps[step].spec if step in study.steps else {}


def _probe_runs(study, probes, labels=None, layers=None):
    names = probes if isinstance(probes, list) else [probes]
    return [r for p in names for r in _runs_of_reps(study, _spec(study, p).get("reps", []),
                                                    labels)], False


def _reps_runs(study, step, **_):
    return _runs_of_reps(study, _spec(study, step).get("reps", [])), True


def _ni_runs(study, step, **_):
    spec = _spec(study, step)
    bases = spec.get("base", [])
    bases = bases if isinstance(bases, list) else [bases]
    tuned = [item["run"] for item in spec.get("finetuned", []) if isinstance(item, dict)]
    return [b for b in bases if isinstance(b, str)] + tuned, True


def _cka_ni_runs(study, cka, ni, **_):
    return _reps_runs(study, cka)[0] + _ni_runs(study, ni)[0], True


# measure -> (the runs it reads, whether it compares their maps)
READS: dict[str, Callable[..., tuple[list[str], bool]]] = {
    "probe_r2_min": _probe_runs, "probe_r2": _probe_runs,
    "cka_divergent": _reps_runs, "cka_matrix": _reps_runs,
    "convergence": _reps_runs, "convergence_by_layer": _reps_runs,
    "atlantis_ratio": _reps_runs, "atlantis_table": _reps_runs,
    "ni_transfer": _ni_runs, "ni_values": _ni_runs, "ni_summary": _ni_runs,
    "deviation_by_distance": _ni_runs, "cka_predicts_transfer": _cka_ni_runs,
}


def finding_models(study: Study, measure: str, args: dict) -> tuple[list[str], bool]:
    """The train steps a finding reads (each once, in order) and whether it compares maps;
    ([], False) for a measure that reads no model (it is then never inconclusive)."""
    if measure not in READS:
        return [], False
    runs, maps = READS[measure](study, **args)
    return list(dict.fromkeys(runs)), maps


def learned(study: Study, out: Path, run: str) -> tuple[bool, dict]:
    """Whether `run` left the plateau on every task it trained on, with each task's world
    metric, untrained level and progress (or why it cannot be told)."""
    from .kinds import eval_summary

    tasks, found = own_tasks(study, run), {}
    for step in study.steps.values():
        data = _spec(study, step.spec.get("data", "")) if step.kind == "eval" else {}
        if step.spec.get("run") != run or data.get("task") not in tasks or data.get("require"):
            continue
        path = study.step_dir(out, step)
        if not artifacts.is_complete(path):
            continue
        m = eval_summary(path, "final").get(data["task"], {})
        key = next((k for k in PERFECT if k in m), None)
        if key is not None and m.get("untrained") is not None:
            found[data["task"]] = {key: round(m[key], 4), "untrained": round(m["untrained"], 4),
                                   "progress": round(progress(m[key], m["untrained"], key), 3)}
    detail: dict = {}
    for task in tasks:
        if task not in found:
            detail[task] = "no finished evaluation on world queries"
        else:
            detail[task] = found[task]
    ok = all(isinstance(v, dict) and v["progress"] >= LEARNED for v in detail.values())
    return ok and bool(tasks), detail


def map_r2(study: Study, out: Path, run: str) -> dict | None:
    """The best held-out probe R² (x, y) of `run`'s representations over the layers the study's
    probes read (their last checkpoint), or None if no finished probe reads them."""
    best = None
    for step in study.steps.values():
        if step.kind != "probe" or not artifacts.is_complete(study.step_dir(out, step)):
            continue
        labels = [item.removesuffix(".reps") if isinstance(item, str) else item["label"]
                  for item in step.spec.get("reps", [])
                  if _runs_of_reps(study, [item]) == [run]]
        if not labels:
            continue
        table = pd.read_csv(study.step_dir(out, step) / "metrics.csv")
        table = table[table["label"].astype(str).str.split("/").str[0].isin(labels)]
        for _, rows in table.groupby("layers", sort=False):
            last = rows.iloc[-1]
            r2 = {"x": round(float(last["x_test_r2"]), 4), "y": round(float(last["y_test_r2"]), 4)}
            if best is None or min(r2.values()) > min(best.values()):
                best = r2
    return best


def readiness(study: Study, out: Path, measure: str, args: dict) -> dict[str, dict]:
    """Why each model a finding reads cannot support it (empty: every one can)."""
    runs, maps = finding_models(study, measure, args)
    problems: dict[str, dict] = {}
    for run in runs:
        ok, detail = learned(study, out, run)
        if not ok:
            problems[run] = {"not learned": detail}
            continue
        if maps:
            r2 = map_r2(study, out, run)
            if r2 is None:
                problems[run] = {"no map": "no finished probe reads its representations"}
            elif min(r2.values()) < MAP_R2:
                problems[run] = {"no map": {**r2, "needs": MAP_R2}}
    return problems


def describe(problems: dict[str, dict]) -> str:
    """One line naming each model a finding cannot rest on and why."""
    parts = []
    for run, why in problems.items():
        if "not learned" in why:
            flat = [f"{t} {v['progress']:.0%} of the way" if isinstance(v, dict) else f"{t}: {v}"
                    for t, v in why["not learned"].items()
                    if not isinstance(v, dict) or v["progress"] < LEARNED]
            parts.append(f"{run} on its plateau ({'; '.join(flat) or 'no trained task'})")
        else:
            r2 = why["no map"]
            parts.append(f"{run} has no map (" + (r2 if isinstance(r2, str) else
                                                 f"R² x {r2['x']:.2f}, y {r2['y']:.2f}") + ")")
    return "; ".join(parts)
