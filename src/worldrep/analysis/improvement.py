"""Normalised improvement (NI) of fine-tuned models on Atlantis queries, and best-teacher
deviation for multi-task fine-tuning.

NI puts a fine-tuned model's Atlantis score v on the base model's scale (paper §6):
0 = the base model on Atlantis queries (atl), 1 = the base model on world queries (std).
- error tasks: log(atl / v) / log(atl / std); when std >= atl or any of v, atl, std <= 0 the
  log ratio is meaningless and the reference falls back to 0 if v >= atl, 1 if v <= std,
  linear in between (so a perfect model, v = 0, scores 1, as in the reference);
- accuracy (and score) tasks: (v - atl) / (std - atl), or 0 when std <= atl.
The reference clipped NI to [0, 1.5] before every figure; `clip` keeps that default.
Best-teacher expectation for a model fine-tuned on tasks {j, k}: max(NI(j), NI(k)) per
evaluated task and seed; deviation = actual - expected.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .. import artifacts
from ..config import Strict
from ..errors import WorldrepError
from . import figures

METRIC_KEYS = {"mean_error": "error", "accuracy": "accuracy", "mean_score": "score"}


def normalized_improvement(value, base_world, base_atlantis, metric: str,
                           clip: tuple[float, float] | None = (0.0, 1.5)):
    """NI of `value` (scalar or array) given the base model's world and Atlantis scores."""
    v, std, atl = (np.asarray(a, np.float64) for a in (value, base_world, base_atlantis))
    with np.errstate(divide="ignore", invalid="ignore"):
        if metric == "error":
            usable = (std < atl) & (std > 0) & (atl > 0) & (v > 0)
            log_ratio = np.log(atl / v) / np.log(atl / std)
            linear = np.where(v >= atl, 0.0, np.where(v <= std, 1.0, (atl - v) / (atl - std)))
            ni = np.where(usable, log_ratio, linear)
        elif metric in ("accuracy", "score"):  # higher is better: linear
            ni = np.where(std > atl, (v - atl) / (std - atl), 0.0)
        else:
            raise WorldrepError(f"unknown metric '{metric}'; allowed: 'error', 'accuracy', "
                                "'score'")
    ni = np.where(np.isnan(v), np.nan, ni)
    if clip is not None:
        ni = np.clip(ni, *clip)
    return float(ni) if ni.ndim == 0 else ni


# -- reading evaluation summaries ------------------------------------------------------------
def conditioned(base_world, base_atlantis, metric: str, min_gap: float) -> bool:
    """Whether the base's world and Atlantis scores are far enough apart for NI to mean
    anything: log(atl/std) >= min_gap for error tasks, std - atl >= min_gap for the others.
    Below it NI divides by almost zero (a base that never learned the task on either)."""
    std, atl = float(base_world), float(base_atlantis)
    if metric == "error":
        return std > 0 and atl > 0 and np.log(atl / std) >= min_gap
    return std - atl >= min_gap


def _is_summary(obj) -> bool:
    return isinstance(obj, dict) and all(
        isinstance(v, int | float) or (isinstance(v, dict) and any(k in v for k in METRIC_KEYS))
        for v in obj.values())


def load_summary(source, eval_name: str | None = None, checkpoint: str = "final") -> dict:
    """A summary dict from a dict, a summary.json, a directory holding one, or a run dir
    (RUN/evals/<eval_name>/<checkpoint>/summary.json)."""
    if isinstance(source, dict):
        return source
    path = Path(source)
    tried = [path, path / "summary.json"]
    if eval_name:
        tried.append(path / "evals" / eval_name / checkpoint / "summary.json")
    for p in tried:
        if p.is_file():
            try:
                return json.loads(p.read_text())
            except json.JSONDecodeError as err:
                raise WorldrepError(f"{p}: not valid JSON: {err}") from None
    raise WorldrepError(f"no evaluation summary at {path}; tried: "
                        + ", ".join(str(p) for p in tried))


def summary_values(summary: dict) -> dict[str, tuple[float, str]]:
    """task -> (value, metric): mean_error for error tasks, accuracy (or mean_score) for the
    others. Plain numbers take the metric from the task registry."""
    from ..tasks import get_task

    out = {}
    for task, entry in summary.items():
        if isinstance(entry, dict):
            key = next((k for k in METRIC_KEYS if k in entry), None)
            if key is None:
                raise WorldrepError(f"summary entry for '{task}' has none of "
                                    f"{', '.join(METRIC_KEYS)} (keys: {', '.join(entry)})")
            out[task] = (float(entry[key]), METRIC_KEYS[key])
        elif isinstance(entry, int | float):
            out[task] = (float(entry), get_task(task).metric)
        else:
            raise WorldrepError(f"summary entry for '{task}' must be a number or a dict, got "
                                f"{type(entry).__name__}")
    return out


# -- the NI stage ----------------------------------------------------------------------------
class NISpec(Strict):
    tasks: list[str] | None = None  # evaluated tasks (columns); None: those of the base summaries
    clip: tuple[float, float] | None = (0.0, 1.5)  # reference; None keeps raw NI
    task_separator: str = "+"  # label 'distance+angle' = fine-tuned on both
    seed_separator: str = "@"  # label 'distance@2' = seed 2 of 'distance'
    eval_name_world: str = "world"  # run dirs: RUN/evals/<eval_name>/<checkpoint>/summary.json
    eval_name_atlantis: str = "atlantis"
    checkpoint: str = "final"
    # Below this gap between the base's world and Atlantis scores NI is ill-conditioned:
    # reported as such (NaN in the matrices), never plotted as a number.
    min_gap: float = 0.1


def _split_label(label: str, sep: str) -> tuple[str, str]:
    config, _, seed = label.partition(sep) if sep else (label, "", "")
    return config, seed


def _per_seed(base, eval_name: str, spec: NISpec) -> dict[str, dict]:
    """'' -> summary for one shared base, or seed -> summary for per-seed bases."""
    if isinstance(base, dict) and base and not _is_summary(base):
        return {str(s): summary_values(load_summary(b, eval_name, spec.checkpoint))
                for s, b in base.items()}
    return {"": summary_values(load_summary(base, eval_name, spec.checkpoint))}


def _base_for(bases: dict[str, dict], seed: str, what: str) -> dict:
    if "" in bases:
        return bases[""]
    if seed not in bases:
        raise WorldrepError(f"no {what} base summary for seed '{seed}'; have seeds "
                            f"{', '.join(bases)}")
    return bases[seed]


def _paper_order(tasks: list[str]) -> list[str]:
    """The paper's tasks in their numbering order (distance ... crossing), then the rest."""
    from ..tasks import paper_tasks

    paper = paper_tasks()
    return [t for t in paper if t in tasks] + [t for t in tasks if t not in paper]


def ni_table(finetuned: dict, base_world, base_atlantis, spec: NISpec | None = None
             ) -> pd.DataFrame:
    """Long table: one row per (fine-tuned model, evaluated task) with its NI."""
    spec = spec or NISpec()
    worlds = _per_seed(base_world, spec.eval_name_world, spec)
    atls = _per_seed(base_atlantis, spec.eval_name_atlantis, spec)
    rows = []
    for label, source in finetuned.items():
        config, seed = _split_label(str(label), spec.seed_separator)
        bw, ba = _base_for(worlds, seed, "world"), _base_for(atls, seed, "Atlantis")
        ft = summary_values(load_summary(source, spec.eval_name_atlantis, spec.checkpoint))
        for task in spec.tasks or _paper_order(list(bw)):
            missing = [name for name, s in (("base world", bw), ("base Atlantis", ba),
                                            (f"'{label}'", ft)) if task not in s]
            if missing:
                raise WorldrepError(f"task '{task}' missing from the {', '.join(missing)} "
                                    "summary; evaluate it or leave it out of `tasks`")
            (v, metric), (std, _), (atl, _) = ft[task], bw[task], ba[task]
            ok = conditioned(std, atl, metric, spec.min_gap)
            rows.append({"label": str(label), "config": config, "seed": seed, "task": task,
                         "metric": metric, "value": v, "base_world": std, "base_atlantis": atl,
                         "conditioned": ok,
                         "ni": normalized_improvement(v, std, atl, metric, spec.clip)
                         if ok else np.nan})
    if not rows:
        raise WorldrepError("no fine-tuned model given")
    return pd.DataFrame(rows)


def deviation_table(table: pd.DataFrame, sep: str = "+") -> pd.DataFrame:
    """Best-teacher deviation of every multi-task config whose parts are all single-task rows.
    Matched per seed where the part has that seed, else against the part's seed mean."""
    ni = table.set_index(["config", "seed", "task"])["ni"]
    mean = table.groupby(["config", "task"])["ni"].mean()
    rows = []
    for (config, seed, task), actual in ni.items():
        parts = config.split(sep)
        if len(parts) < 2 or any((p, task) not in mean.index for p in parts):
            continue
        teachers = [ni.get((p, seed, task), mean[(p, task)]) for p in parts]
        rows.append({"config": config, "seed": seed, "task": task, "actual": actual,
                     "expected": max(teachers), "deviation": actual - max(teachers)})
    return pd.DataFrame(rows, columns=["config", "seed", "task", "actual", "expected",
                                       "deviation"])


def _matrix(long: pd.DataFrame, column: str, rows: list[str], cols: list[str]) -> pd.DataFrame:
    return long.groupby(["config", "task"])[column].mean().unstack("task").reindex(
        index=rows, columns=cols)


def _heatmaps(tmp: Path, long: pd.DataFrame, dev: pd.DataFrame, single: list[str],
              multi: list[str], tasks: list[str], suffix: str = "", what: str = "") -> None:
    """The NI matrices (single-task and multi-task fine-tunes) and the deviation matrix."""
    for name, group in (("single", single), ("multi", multi)):
        if not group:
            continue
        m = _matrix(long, "ni", group, tasks)
        m.to_csv(tmp / f"ni_{name}{suffix}.csv")
        values = m.to_numpy(dtype=float)
        top = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
        figures.heatmap(tmp / f"ni_{name}{suffix}.png", values, group, tasks, cmap="viridis",
                        vmin=0.0, vmax=max(1.0, top),
                        title=f"normalised improvement on Atlantis queries{what} "
                              "(rows: fine-tuned on, columns: evaluated; blank: ill-conditioned)")
    if len(dev):
        d = _matrix(dev, "deviation", [c for c in multi if c in set(dev["config"])], tasks)
        d.to_csv(tmp / f"deviation{suffix}.csv")
        figures.heatmap(tmp / f"deviation{suffix}.png", d.to_numpy(dtype=float), list(d.index),
                        tasks, cmap="RdBu", centre=0.0,
                        title=f"deviation from the best single-task teacher (NI units){what}")


def ni_matrix(finetuned: dict, base_world, base_atlantis, spec: NISpec | None = None,
              out: str | Path = "ni") -> Path:
    """NI matrix (fine-tuned config x evaluated task, seed mean) and, for multi-task configs,
    the best-teacher deviation matrix; tables and heat maps. With several seeds, also one
    panel per seed (`*_s<seed>`). Tasks whose normalisation is ill-conditioned for the base
    (see `conditioned`) are left blank and listed in the manifest."""
    spec = spec or NISpec()
    long = ni_table(finetuned, base_world, base_atlantis, spec)
    tasks = list(dict.fromkeys(long["task"]))
    configs = list(dict.fromkeys(long["config"]))
    single = [c for c in configs if spec.task_separator not in c]
    multi = [c for c in configs if spec.task_separator in c]
    dev = deviation_table(long, spec.task_separator)
    seeds = [s for s in dict.fromkeys(long["seed"]) if s != ""]
    bad = long[~long["conditioned"]][["seed", "task", "base_world", "base_atlantis"]]
    ill = bad.drop_duplicates().to_dict("records")
    # The identity is what was compared (the summaries' numbers), not where they were read.
    full_spec = {"ni": spec.model_dump(mode="json"),
                 "rows": long[["label", "task", "metric", "value", "base_world",
                               "base_atlantis"]].to_dict("records")}
    with artifacts.artifact_dir(out, "normalized_improvement") as tmp:
        long.to_csv(tmp / "ni_long.csv", index=False)
        if len(dev):
            dev.to_csv(tmp / "deviation_long.csv", index=False)
        _heatmaps(tmp, long, dev, single, multi, tasks,
                  what=f", mean of {len(seeds)} seeds" if len(seeds) > 1 else "")
        if len(seeds) > 1:
            for seed in seeds:
                _heatmaps(tmp, long[long["seed"] == seed], dev[dev["seed"] == seed], single,
                          multi, tasks, suffix=f"_s{seed}", what=f", seed {seed}")
        artifacts.write_spec(tmp, full_spec)
        artifacts.write_manifest(tmp, "normalized_improvement", full_spec,
                                 models=len(finetuned), tasks=tasks, seeds=seeds,
                                 ill_conditioned=ill)
    return Path(out)
