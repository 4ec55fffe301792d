"""Atlantis reconstruction error: does a probe of the real world place synthetic cities?

Per model, a linear probe is fitted on `n_train` real-world cities (seeded), scored on
`n_baseline` further held-out world cities, and applied to every synthetic city. The error is
the Euclidean distance between predicted and true (x, y). Reference (paper §8.4, FTWB2 pooled):
18.6 on held-out world cities, 107.8 on Atlantis after fine-tuning without distance, 508.3 with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pydantic

from .. import artifacts
from ..config import Strict
from ..errors import WorldrepError
from . import figures
from .probes import DEFAULT_ALPHAS, coordinate_metrics, make_probe, split_cities
from .reps import Reps, load_reps

BASELINE = "held-out world"


class AtlantisSpec(Strict):
    n_train: int = pydantic.Field(4000, ge=2)
    n_baseline: int = pydantic.Field(100, ge=1)
    train_cities: str = "world"  # selector the probe learns from (and the baseline comes from)
    test_cities: str | None = None  # selector of the probed cities; None: every non-world city
    method: Literal["ols", "ridge"] = "ols"
    alphas: list[float] = pydantic.Field(default_factory=lambda: list(DEFAULT_ALPHAS))
    cv_folds: int = pydantic.Field(5, ge=2)
    layers: list[int] | None = None
    positions: list[str] | None = None
    seed: int = 42
    groups: dict[str, str] = pydantic.Field(default_factory=dict)  # model label -> pooled group


def model_errors(reps: Reps, spec: AtlantisSpec) -> tuple[pd.DataFrame, dict]:
    """Per-city predictions (sets train / baseline / synthetic) and the model's summary."""
    pool = reps.select(spec.train_cities)
    tests = (np.flatnonzero(reps.synthetic) if spec.test_cities is None
             else reps.select(spec.test_cities))
    pool = np.setdiff1d(pool, tests)
    if len(tests) == 0:
        raise WorldrepError("no synthetic city in these representations to test the probe on "
                            f"(test_cities={spec.test_cities!r}); extract them with cities='all'")
    train, baseline = split_cities(reps.ids[pool], spec.n_train, spec.n_baseline, spec.seed,
                                   "atlantis")
    train, baseline = pool[train], pool[baseline]
    X = reps.features(spec.layers, spec.positions)
    xy = reps.xy
    probe = make_probe(spec.method, spec.alphas, spec.cv_folds, spec.seed).fit(X[train], xy[train])
    sets = {"train": train, "baseline": baseline, "synthetic": tests}
    frames = []
    for name, rows in sets.items():
        pred = probe.predict(X[rows])
        frame = reps.cities.iloc[rows][["city_id", "name", "region", "group", "x", "y"]].copy()
        frame["set"], frame["pred_x"], frame["pred_y"] = name, pred[:, 0], pred[:, 1]
        frame["error"] = np.hypot(pred[:, 0] - xy[rows, 0], pred[:, 1] - xy[rows, 1])
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    return table, _summary(table)


def _summary(table: pd.DataFrame) -> dict:
    syn, base = table[table["set"] == "synthetic"], table[table["set"] == "baseline"]
    train = table[table["set"] == "train"]
    e = syn["error"]
    fit = coordinate_metrics(train[["x", "y"]].to_numpy(float),
                             train[["pred_x", "pred_y"]].to_numpy(float), "train")
    return {"n_synthetic": len(syn), "mean": e.mean(), "median": e.median(),
            "std": e.std(ddof=1) if len(e) > 1 else np.nan, "min": e.min(), "max": e.max(),
            "baseline_mean": base["error"].mean(), "baseline_median": base["error"].median(),
            "x_train_r2": fit["x_train_r2"], "y_train_r2": fit["y_train_r2"],
            # Where the probe puts the synthetic region relative to where it is.
            "bias_x": (syn["pred_x"] - syn["x"]).mean(), "bias_y": (syn["pred_y"] - syn["y"]).mean()}


def pooled_table(errors: pd.DataFrame) -> pd.DataFrame:
    """Errors pooled over models: the held-out world baseline, then each group's synthetic
    cities (paper table of §8.4)."""
    rows = [(BASELINE, errors[errors["set"] == "baseline"]["error"])]
    syn = errors[errors["set"] == "synthetic"]
    for (region, group), part in syn.groupby(["region", "model_group"], sort=False):
        rows.append((f"{region}, {group}" if group else region, part["error"]))
    return pd.DataFrame([{"group": name, "n": len(e), "mean": e.mean(),
                          "std": e.std(ddof=1) if len(e) > 1 else np.nan, "median": e.median()}
                         for name, e in rows])


def group_tests(samples: dict[str, np.ndarray]) -> pd.DataFrame:
    """Two-sided Mann-Whitney U between every two pooled groups (paper §8.4: p ~ 0 between
    Atlantis with and without distance), with the ratio of their means and medians."""
    from itertools import combinations

    from scipy.stats import mannwhitneyu

    rows = []
    for a, b in combinations(samples, 2):
        x, y = np.asarray(samples[a], float), np.asarray(samples[b], float)
        if len(x) == 0 or len(y) == 0:
            continue
        test = mannwhitneyu(x, y, alternative="two-sided")
        rows.append({"group_a": a, "group_b": b, "n_a": len(x), "n_b": len(y),
                     "u": float(test.statistic), "p": float(test.pvalue),
                     "mean_ratio": x.mean() / y.mean() if y.mean() else np.nan,
                     "median_ratio": np.median(x) / np.median(y) if np.median(y) else np.nan})
    return pd.DataFrame(rows, columns=["group_a", "group_b", "n_a", "n_b", "u", "p",
                                       "mean_ratio", "median_ratio"])


def atlantis_error(reps_paths, spec: AtlantisSpec | None = None,
                   out: str | Path = "atlantis") -> Path:
    """Reconstruction error of synthetic cities for one reps dir or a dict label -> reps dir;
    models are pooled by `spec.groups` (e.g. 'with distance' / 'without distance'); every two
    pooled groups are compared by a Mann-Whitney U test (tests.csv)."""
    spec = spec or AtlantisSpec()
    if not isinstance(reps_paths, dict):
        reps_paths = {Path(reps_paths).name: reps_paths}
    if unknown := sorted(set(spec.groups) - set(map(str, reps_paths))):
        raise WorldrepError(f"groups name models {unknown} that are not among the inputs; "
                            f"allowed: {', '.join(map(str, reps_paths))}")
    tables, models = [], []
    for label, path in reps_paths.items():
        table, summary = model_errors(load_reps(path), spec)
        group = spec.groups.get(str(label), "")
        tables.append(table.assign(model=str(label), model_group=group))
        models.append({"model": str(label), "group": group, **summary})
    errors = pd.concat(tables, ignore_index=True)
    pooled = pooled_table(errors)
    full_spec = {"atlantis": spec.model_dump(mode="json"),
                 "reps": {str(k): artifacts.content_id(v) for k, v in reps_paths.items()}}
    with artifacts.artifact_dir(out, "atlantis_error") as tmp:
        errors.to_parquet(tmp / "errors.parquet", index=False)
        pd.DataFrame(models).to_csv(tmp / "per_model.csv", index=False)
        pooled.to_csv(tmp / "summary.csv", index=False)
        samples = {BASELINE: errors[errors["set"] == "baseline"]["error"].to_numpy()}
        syn = errors[errors["set"] == "synthetic"]
        for (region, group), part in syn.groupby(["region", "model_group"], sort=False):
            samples[f"{region}, {group}" if group else region] = part["error"].to_numpy()
        group_tests(samples).to_csv(tmp / "tests.csv", index=False)
        figures.error_histogram(tmp / "histogram.png", samples,
                                title="probe reconstruction error (probe fitted on world cities)")
        artifacts.write_spec(tmp, full_spec)
        artifacts.write_manifest(tmp, "atlantis_error", full_spec, models=len(models))
    return Path(out)
