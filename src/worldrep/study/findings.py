"""Findings: what a study shows, computed from its artifacts and held against the paper.

A study file lists its findings:

    findings:
      - id: atlantis-divergence
        claim: fine-tuning with distance writes Atlantis off the world's map
        measure: atlantis_ratio            # a function below, reading analysis artifacts
        args: {step: atlantis-ft, numerator: with distance, denominator: without distance}
        paper: 4.7                         # the paper's number (or a key of paper numbers)
        paper_band: {min: 3}               # the paper's pass band (paper-results §13)
        band: {min: 3}                     # the band this study is held to (default: paper's)

`evaluate(study, out)` computes every finding into one record
`{id, claim, value, paper, band, paper_band, status, pass, details}`; the report writes them
to `findings.json` and shows them first. `status` is one of three (`readiness` checks the
models): "shown" (in its band), "not shown" (out of it, on models that learned what the
finding needs: a result), or "inconclusive" (a model it reads is on its plateau or has no map
to compare, or an input is missing: `details` names them, and `pass` is null). A finding
without a band is descriptive (status null). Values are never typed in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from .. import artifacts
from ..errors import WorldrepError
from .load import Study
from .readiness import describe, readiness

FINDINGS_FILE = "findings.json"
RULES = ("min", "max", "between", "within")
SHOWN, NOT_SHOWN, INCONCLUSIVE = "shown", "not shown", "inconclusive"


class NotMeasured(Exception):
    """A finding's inputs are not there (yet): its value is None and it does not pass."""


@dataclass
class Context:
    study: Study
    out: Path
    states: dict | None = None

    def dir(self, step: str) -> Path:
        if step not in self.study.steps:
            raise WorldrepError(f"finding refers to step '{step}', which the study does not "
                                f"have")
        path = self.study.step_dir(self.out, step)
        if not artifacts.is_complete(path):
            raise NotMeasured(f"step '{step}' is not done")
        if self.states is None:
            from .cache import study_states

            self.states = study_states(self.study, self.out)
        if self.states[step].state != "done":  # e.g. made from a run that failed since
            raise NotMeasured(f"step '{step}' is {self.states[step].state}: "
                              f"{self.states[step].why}")
        return path

    def csv(self, step: str, name: str, **kw) -> pd.DataFrame:
        return pd.read_csv(self.dir(step) / name, **kw)


@cache
def paper_numbers() -> dict:
    """The paper's numbers (from shared/reference/paper-results.md), by key."""
    from importlib import resources

    text = resources.files("worldrep").joinpath("data_files/paper_numbers.yaml").read_text()
    return yaml.safe_load(text)


# -- measures ----------------------------------------------------------------------------------
MEASURES: dict[str, Callable[..., tuple[Any, dict]]] = {}


def measure(fn):
    MEASURES[fn.__name__] = fn
    return fn


def _probe_rows(ctx: Context, steps, labels, layers) -> pd.DataFrame:
    frames = [ctx.csv(s, "metrics.csv").assign(probe=s) for s in _list(steps)]
    table = pd.concat(frames, ignore_index=True)
    table["model"] = table["label"].astype(str).str.split("/").str[0]
    if layers is not None:  # as the probe writes them: "5", or "3,4" for a concatenation
        wanted = ",".join(map(str, _list(layers)))
        table = table[table["layers"].astype(str) == wanted]
    if labels is not None:  # a label names a model, or a configuration of several seeds
        config = table["model"].str.split("@").str[0]
        wanted = _list(labels)
        table = table[table["model"].isin(wanted) | config.isin(wanted)]
    if table.empty:
        raise NotMeasured(f"no probe row for labels {labels} (layers {layers})")
    return table


@measure
def probe_r2_min(ctx: Context, probes, labels=None, layers=None):
    """The lowest held-out probe R² of x or y over the chosen models (their last
    checkpoint where a probe covers a series)."""
    table = _probe_rows(ctx, probes, labels, layers)
    table = table.groupby("model", sort=False).tail(1)  # series: the last checkpoint
    worst = table[["x_test_r2", "y_test_r2"]].min(axis=1)
    details = {m: {"x": round(float(x), 4), "y": round(float(y), 4)}
               for m, x, y in zip(table["model"], table["x_test_r2"], table["y_test_r2"],
                                  strict=True)}
    return float(worst.min()), {"models": details,
                                "lowest": str(table["model"].iloc[int(worst.to_numpy().argmin())])}


@measure
def probe_r2(ctx: Context, probes, labels=None, layers=None):
    """Held-out probe R² (x, y) of each chosen model."""
    table = _probe_rows(ctx, probes, labels, layers).groupby("model", sort=False).tail(1)
    return {m: {"x": float(x), "y": float(y)} for m, x, y in
            zip(table["model"], table["x_test_r2"], table["y_test_r2"], strict=True)}, {}


def _cka(ctx: Context, step: str, layer: int, metric: str = "linear_cka") -> pd.DataFrame:
    return ctx.csv(step, f"{metric}_l{layer}.csv", index_col=0)


@measure
def cka_divergent(ctx: Context, step, layer, task="distance", exclude=("crossing",)):
    """Mean CKA of `task` with the other models minus the lowest such mean among the
    others (< 0: `task` is the least similar, the paper's divergent task)."""
    m = _cka(ctx, step, layer)
    names = [c for c in m.index if c not in _list(exclude)]
    if task not in names:
        raise NotMeasured(f"'{task}' is not a row of the CKA matrix ({', '.join(m.index)})")
    means = {c: float(m.loc[c, [o for o in names if o != c]].mean()) for c in names}
    others = {c: v for c, v in means.items() if c != task}
    lowest = min(others, key=others.get)
    return means[task] - others[lowest], {"row_means": means, "lowest_other": lowest}


@measure
def cka_matrix(ctx: Context, step, layer, metric="linear_cka"):
    """The similarity matrix (mean over seed pairs; diagonal: cross-seed pairs)."""
    m = _cka(ctx, step, layer, metric)
    return _frame_dict(m), {}


@measure
def convergence(ctx: Context, step, layer, relation="no shared task"):
    """Mean CKA of non-overlapping model pairs for 1, 2, 3 tasks; the 1 -> 2 rise and the
    2 -> 3 change."""
    s = ctx.csv(step, "summary.csv")
    s = s[(s["relation"] == relation) & (s["layer"] == int(layer))]
    by = {int(k): float(v) for k, v in zip(s["n_tasks"], s["mean"], strict=True)}
    value = {f"{k} tasks": v for k, v in sorted(by.items())}
    if 1 in by and 2 in by:
        value["rise"] = by[2] - by[1]
    if 2 in by and 3 in by:
        value["change"] = by[3] - by[2]
    return value, {"pairs": {int(k): int(n) for k, n in zip(s["n_tasks"], s["n"], strict=True)}}


@measure
def convergence_by_layer(ctx: Context, step, relation="no shared task"):
    s = ctx.csv(step, "summary.csv")
    s = s[s["relation"] == relation]
    return {f"layer {int(layer)}": {f"{int(k)} tasks": float(v) for k, v in
                                    zip(part["n_tasks"], part["mean"], strict=True)}
            for layer, part in s.groupby("layer")}, {}


def _atlantis_groups(ctx: Context, step) -> pd.DataFrame:
    return ctx.csv(step, "summary.csv").set_index("group")


def _group(table: pd.DataFrame, name: str) -> pd.Series:
    hits = [g for g in table.index if g == name or str(g).endswith(f", {name}")]
    if not hits:
        raise NotMeasured(f"no pooled group '{name}' (groups: {', '.join(map(str, table.index))})")
    return table.loc[hits[0]]


@measure
def atlantis_ratio(ctx: Context, step, numerator, denominator, stat="mean"):
    """Pooled Atlantis reconstruction error of one group over another's (paper: 508.3 /
    107.8 = 4.7x for fine-tunes with / without distance)."""
    table = _atlantis_groups(ctx, step)
    a, b = _group(table, numerator), _group(table, denominator)
    details = {str(g): {"n": int(r["n"]), "mean": float(r["mean"]), "median": float(r["median"])}
               for g, r in table.iterrows()}
    tests = ctx.csv(step, "tests.csv")
    for row in tests.itertuples():
        if {row.group_a, row.group_b} == {a.name, b.name}:
            details["mann_whitney_p"] = float(row.p)
    return float(a[stat]) / float(b[stat]) if float(b[stat]) else math.nan, details


@measure
def atlantis_table(ctx: Context, step):
    """Every pooled group's n, mean, std and median error."""
    table = _atlantis_groups(ctx, step)
    return {str(g): {k: float(r[k]) for k in ("n", "mean", "std", "median")}
            for g, r in table.iterrows()}, {}


def _ni_long(ctx: Context, step) -> pd.DataFrame:
    return ctx.csv(step, "ni_long.csv")


@measure
def ni_transfer(ctx: Context, step, giver, vs, giver_on=None, vs_on=None):
    """Mean NI (over seeds and tasks) of the `giver` fine-tune on other tasks' Atlantis
    queries (`giver_on`, default every task but its own), beside the `vs` fine-tune's
    (`vs_on`). Paper: distance -> {trianglearea, angle} <= 0.1, angle -> others >= 0.6."""
    long = _ni_long(ctx, step)

    def mean_on(config: str, on) -> float:
        rows = long[(long["config"] == config) & (long["task"] != config)]
        if on is not None:
            rows = rows[rows["task"].isin(_list(on))]
        if rows.empty or rows["ni"].isna().all():
            raise NotMeasured(f"no conditioned NI rows of the '{config}' fine-tune")
        return float(rows["ni"].mean())  # ill-conditioned cells are NaN: left out

    return {giver: mean_on(giver, giver_on), vs: mean_on(vs, vs_on)}, {
        "ill_conditioned_tasks": sorted(set(long[~long["conditioned"]]["task"]))}


@measure
def ni_values(ctx: Context, step, which="single"):
    """The seed-mean NI matrix of single-task (or multi-task) fine-tunes, or the deviation."""
    name = {"single": "ni_single.csv", "multi": "ni_multi.csv",
            "deviation": "deviation.csv"}[which]
    return _frame_dict(ctx.csv(step, name, index_col=0)), {}


@measure
def ni_summary(ctx: Context, step):
    """Mean NI on the trained tasks (diagonal) and on the others (transfer)."""
    long = _ni_long(ctx, step)
    single = long[~long["config"].str.contains("+", regex=False)]
    trained = single[single["config"] == single["task"]]["ni"]
    transfer = single[single["config"] != single["task"]]["ni"]
    return {"trained": float(trained.mean()), "transfer": float(transfer.mean())}, {}


@measure
def deviation_by_distance(ctx: Context, step, task="distance"):
    """Best-teacher deviation pooled over pairs with `task` and pairs without (paper:
    -0.185 +- 0.180, n = 168 with distance; +0.077 +- 0.094, n = 420 without)."""
    dev = ctx.csv(step, "deviation_long.csv")
    has = dev["config"].str.split("+").apply(lambda parts: task in parts)
    value = {f"with {task}": float(dev[has]["deviation"].mean()),
             f"without {task}": float(dev[~has]["deviation"].mean())}
    return value, {"n": {f"with {task}": int(has.sum()), f"without {task}": int((~has).sum())}}


@measure
def cka_predicts_transfer(ctx: Context, cka, ni, layer=5, exclude=("crossing",)):
    """R² of a line through (CKA(X, Y) of single-task models, NI on Y after fine-tuning on X)
    over ordered pairs X != Y (paper Fig. 5b: 0.188, p = 0.017)."""
    import numpy as np
    from scipy.stats import linregress

    m = _cka(ctx, cka, layer)
    long = _ni_long(ctx, ni)
    table = long.groupby(["config", "task"])["ni"].mean()
    xs, ys = [], []
    for (config, task), value in table.items():
        if (config != task and config in m.index and task in m.columns
                and config not in exclude and task not in exclude and np.isfinite(value)):
            xs.append(float(m.loc[config, task]))
            ys.append(float(value))
    if len(xs) < 3:
        raise NotMeasured(f"{len(xs)} (CKA, NI) pairs: too few for a fit")
    fit = linregress(xs, ys)
    return float(fit.rvalue ** 2), {"n": len(xs), "p": float(fit.pvalue),
                                    "slope": float(fit.slope)}


@measure
def eval_metric(ctx: Context, evals, checkpoint="final"):
    """Each evaluated task's headline metric (mean error or accuracy) at a checkpoint."""
    from .kinds import eval_summary

    out = {}
    for step in _list(evals):
        for task, m in eval_summary(ctx.dir(step), checkpoint).items():
            key = next(k for k in ("mean_error", "accuracy", "mean_score") if k in m)
            out[task] = float(m[key])
    return out, {}


def _frame_dict(frame: pd.DataFrame) -> dict:
    return {str(r): {str(c): (None if pd.isna(v) else float(v)) for c, v in row.items()}
            for r, row in frame.iterrows()}


def _list(x) -> list:
    return list(x) if isinstance(x, list | tuple) else [x]


# -- bands and evaluation ----------------------------------------------------------------------
def check(value, band) -> bool | None:
    """Whether a value lies in its band: {min}, {max}, {between: [a, b]}, {within: w}
    (|value| <= w), or per component of a dict value ({rise: {min: 0.15}, ...})."""
    if band is None:
        return None
    if isinstance(band, dict) and set(band) & set(RULES):
        v = _number(value)
        if v is None:
            return False
        ok = True
        if "min" in band:
            ok &= v >= band["min"]
        if "max" in band:
            ok &= v <= band["max"]
        if "between" in band:
            ok &= band["between"][0] <= v <= band["between"][1]
        if "within" in band:
            ok &= abs(v) <= band["within"]
        return bool(ok)
    if isinstance(band, dict) and isinstance(value, dict):
        results = [check(value.get(k), b) for k, b in band.items()]
        return all(r is not False for r in results) if results else None
    raise WorldrepError(f"a band is {{min|max|between|within: ...}} or a mapping of a "
                        f"value's components to such bands; got {band!r}")


def _number(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def describe_band(band) -> str:
    if band is None:
        return ""
    if isinstance(band, dict) and set(band) & set(RULES):
        parts = []
        if "min" in band:
            parts.append(f"≥ {band['min']:g}")
        if "max" in band:
            parts.append(f"≤ {band['max']:g}")
        if "between" in band:
            parts.append(f"in [{band['between'][0]:g}, {band['between'][1]:g}]")
        if "within" in band:
            parts.append(f"within ±{band['within']:g}")
        return " and ".join(parts)
    return "; ".join(f"{k} {describe_band(b)}" for k, b in band.items())


def _resolve_refs(paper):
    """'ref: KEY' (anywhere in a finding's `paper`) stands for the paper's number KEY."""
    if isinstance(paper, str) and paper.startswith("ref:"):
        key = paper[4:].strip()
        if key not in paper_numbers():
            raise WorldrepError(f"no paper number '{key}'; known: "
                                + ", ".join(k for k in paper_numbers() if not k.startswith("_")))
        return paper_numbers()[key]
    if isinstance(paper, dict):
        return {k: _resolve_refs(v) for k, v in paper.items()}
    return paper


def evaluate(study: Study, out: Path) -> list[dict]:
    ctx = Context(study, Path(out))
    records = []
    for spec in study.findings:
        spec = dict(spec)
        missing = [k for k in ("id", "measure") if k not in spec]
        if missing or spec["measure"] not in MEASURES:
            raise WorldrepError(f"{study.path}: finding {spec.get('id', '?')}: needs 'id' and "
                                f"a 'measure' among {', '.join(sorted(MEASURES))}")
        paper = _resolve_refs(spec.get("paper"))
        paper_band = spec.get("paper_band")
        band = spec.get("band", paper_band)
        record = {"id": spec["id"], "claim": spec.get("claim", ""), "value": None,
                  "paper": paper, "band": band, "paper_band": paper_band, "status": None,
                  "pass": None, "details": {}}
        args = spec.get("args") or {}
        try:
            value, details = MEASURES[spec["measure"]](ctx, **args)
        except NotMeasured as err:
            record["details"] = {"not measured": str(err)}
            record["status"] = INCONCLUSIVE if band is not None else None
            records.append(record)
            continue
        record.update(value=value, details=details)
        problems = readiness(study, ctx.out, spec["measure"], args)
        if problems:  # a value from models that did not learn is evidence of nothing
            record["status"] = INCONCLUSIVE
            record["details"] = {**details, "inconclusive": describe(problems),
                                 "models": problems}
        elif band is not None:
            record["pass"] = check(value, band)
            record["status"] = SHOWN if record["pass"] else NOT_SHOWN
        records.append(record)
    return records


def _finite(obj):
    """NaN and inf become null: findings.json is plain JSON, and a missing number is shown
    as missing, never as a number."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_findings(records: list[dict], path: Path) -> None:
    artifacts.write_json_atomic(path, {"findings": _finite(records)})
