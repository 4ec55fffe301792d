"""Similarity between models' city representations: linear CKA, debiased CKA, mutual kNN.

Linear CKA is computed in feature space, ||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with
column-centred X and Y; that equals the kernel form <HKH, HLH> / (||HKH|| ||HLH||) with
K = XX^T, H = I - 11^T/n, but costs O(n d^2) instead of O(n^3) and never builds an n x n
matrix. Debiased CKA replaces each HSIC by its unbiased U-statistic estimator (Song et al.
2012), also written in feature space. Mutual k-nearest-neighbour alignment (Huh et al. 2024)
is the mean share of each city's k nearest neighbours that the two models agree on.

`cka_matrix` compares any set of runs: each run is prepared once (centred features, Gram norm,
neighbour lists), then every pair is one d x d product. Labels `CONFIG@SEED` mark seeds of one
configuration: cell (A, B) averages all seed pairs, the diagonal (A, A) only cross-seed pairs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pydantic

from .. import artifacts
from ..config import Strict
from ..errors import WorldrepError
from . import figures
from .blas import single_blas_thread
from .reps import Reps, load_reps

Metric = Literal["linear_cka", "debiased_cka", "mutual_knn"]
METRIC_TITLES = {"linear_cka": "linear CKA", "debiased_cka": "debiased CKA",
                 "mutual_knn": "mutual kNN alignment"}


def _centred(X) -> np.ndarray:
    X = np.asarray(X, np.float64)
    if X.ndim != 2:
        raise WorldrepError(f"features must be a 2-D array [cities, dims], got shape {X.shape}")
    return X - X.mean(axis=0)


def _check_pair(X, Y) -> None:
    if len(X) != len(Y):
        raise WorldrepError(f"both representations must cover the same cities in the same order; "
                            f"got {len(X)} and {len(Y)} rows")


# -- the measures on two matrices ------------------------------------------------------------
@single_blas_thread
def linear_cka(X, Y) -> float:
    """Centred linear CKA of two [n, d] feature matrices over the same rows."""
    _check_pair(X, Y)
    return _Prepared.of(X).linear_cka(_Prepared.of(Y))


@single_blas_thread
def debiased_cka(X, Y) -> float:
    """CKA with unbiased HSIC estimates: near 0 for independent features even when d ~ n."""
    _check_pair(X, Y)
    if len(X) < 4:
        raise WorldrepError(f"debiased CKA needs at least 4 cities, got {len(X)}")
    return _Prepared.of(X).debiased_cka(_Prepared.of(Y))


@single_blas_thread
def mutual_knn(X, Y, k: int = 10, metric: Literal["cosine", "euclidean"] = "cosine") -> float:
    """Mean over cities of |kNN_X(i) & kNN_Y(i)| / k (self excluded from the neighbours)."""
    _check_pair(X, Y)
    return _agreement(knn_indices(X, k, metric), knn_indices(Y, k, metric))


def knn_indices(X, k: int = 10, metric: str = "cosine", block: int = 1024) -> np.ndarray:
    """[n, k] indices of each row's k nearest other rows, in blocks of rows (bounded memory)."""
    X = np.asarray(X, np.float64)
    n = len(X)
    if not 1 <= k < n:
        raise WorldrepError(f"k must be between 1 and n-1={n - 1}, got {k}")
    if metric == "cosine":
        X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    elif metric != "euclidean":
        raise WorldrepError(f"unknown kNN metric '{metric}'; allowed: 'cosine', 'euclidean'")
    sq = (X**2).sum(axis=1)
    out = np.empty((n, k), np.int64)
    for start in range(0, n, block):
        rows = slice(start, min(start + block, n))
        # Larger is nearer: cosine similarity, or minus the squared distance up to a row constant.
        near = X[rows] @ X.T if metric == "cosine" else 2 * X[rows] @ X.T - sq[None, :]
        near[np.arange(near.shape[0]), np.arange(rows.start, rows.stop)] = -np.inf
        out[rows] = np.argpartition(-near, k - 1, axis=1)[:, :k]
    return out


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    shared = (a[:, :, None] == b[:, None, :]).any(axis=2).sum(axis=1)
    return float(shared.mean() / a.shape[1])


@dataclass
class _Prepared:
    """Everything pairwise measures need from one run, computed once."""

    Xc: np.ndarray  # centred features [n, d]
    gram_norm: float  # ||Xc^T Xc||_F
    row_sq: np.ndarray  # ||x_i||^2 of centred rows
    knn: np.ndarray | None = None

    @classmethod
    def of(cls, X, k: int | None = None, knn_metric: str = "cosine") -> _Prepared:
        Xc = _centred(X)
        knn = knn_indices(X, k, knn_metric) if k else None
        return cls(Xc, float(np.linalg.norm(Xc.T @ Xc)), np.einsum("ij,ij->i", Xc, Xc), knn)

    @property
    def n(self) -> int:
        return len(self.Xc)

    def cross(self, other: _Prepared) -> float:
        return float(np.linalg.norm(self.Xc.T @ other.Xc) ** 2)

    def linear_cka(self, other: _Prepared) -> float:
        denom = self.gram_norm * other.gram_norm
        return self.cross(other) / denom if denom > 0 else float("nan")

    def _hsic_u(self, other: _Prepared, cross: float) -> float:
        """Unbiased HSIC x n(n-3) for centred linear kernels K, L with zeroed diagonals:
        tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1, where (rows of K summing to 0)
        tr(K~L~) = cross - k.l, 1'K~1 = -sum k, and 1'K~L~1 = k.l, k = diag K."""
        n = self.n
        kl = float(self.row_sq @ other.row_sq)
        return (cross - kl + self.row_sq.sum() * other.row_sq.sum() / ((n - 1) * (n - 2))
                - 2 * kl / (n - 2))

    def debiased_cka(self, other: _Prepared) -> float:
        xy = self._hsic_u(other, self.cross(other))
        xx = self._hsic_u(self, self.gram_norm**2)
        yy = other._hsic_u(other, other.gram_norm**2)
        return xy / np.sqrt(xx * yy) if xx > 0 and yy > 0 else float("nan")

    def mutual_knn(self, other: _Prepared) -> float:
        return _agreement(self.knn, other.knn)


# -- the similarity-matrix stage -------------------------------------------------------------
class CKASpec(Strict):
    """Reference: linear CKA at layer 5 over world cities (no Atlantis, ids >= 1000)."""

    metrics: list[Metric] = pydantic.Field(default_factory=lambda: ["linear_cka"])
    layers: list[int] | None = None  # one matrix per layer; None: every layer the runs share
    positions: list[str] | None = None  # None: every stored position, concatenated
    cities: str = "world"  # selector; cities are matched by id across runs
    k: int = pydantic.Field(10, ge=1)  # mutual kNN neighbours
    knn_metric: Literal["cosine", "euclidean"] = "cosine"
    seed_separator: str = "@"  # label CONFIG@SEED: several seeds of one configuration


def config_of(label: str, separator: str = "@") -> str:
    return label.split(separator, 1)[0] if separator else label


def common_cities(runs: dict[str, Reps], selector: str) -> np.ndarray:
    """Sorted ids present (and selected) in every run."""
    common = None
    for reps in runs.values():
        ids = reps.ids[reps.select(selector)]
        common = ids if common is None else np.intersect1d(common, ids)
    if common is None or len(common) < 4:
        raise WorldrepError(f"the runs share {0 if common is None else len(common)} cities "
                            f"matching '{selector}'; at least 4 are needed")
    return np.sort(common)


def _aligned(reps: Reps, ids: np.ndarray) -> Reps:
    lookup = pd.Series(np.arange(len(reps.ids)), index=reps.ids)
    return reps.take(lookup.loc[ids].to_numpy())


def _shared_layers(runs: dict[str, Reps], wanted: list[int] | None) -> list[int]:
    shared = set.intersection(*(set(r.layers.tolist()) for r in runs.values()))
    if wanted is None:
        if not shared:
            raise WorldrepError("the runs' representations share no layer")
        return sorted(shared)
    missing = {label: [w for w in wanted if w not in r.layers.tolist()] for label, r in runs.items()}
    missing = {k: v for k, v in missing.items() if v}
    if missing:
        raise WorldrepError(f"layers missing from some runs: {missing}; shared layers: "
                            f"{sorted(shared)}")
    return list(wanted)


def aligned_runs(reps_paths: dict, cities: str, layers: list[int] | None
                 ) -> tuple[dict[str, Reps], np.ndarray, list[int]]:
    """Every run's representations on the cities they share (matched by id, sorted), and the
    layers to compare (those asked for, else every shared one)."""
    runs = {str(k): load_reps(v) for k, v in reps_paths.items()}
    ids = common_cities(runs, cities)
    runs = {k: _aligned(r, ids) for k, r in runs.items()}
    return runs, ids, _shared_layers(runs, layers)


@single_blas_thread
def pairwise(prepared: dict[str, _Prepared], metric: str) -> pd.DataFrame:
    """Every unordered pair of distinct labels with its similarity."""
    rows = []
    for a, b in itertools.combinations(prepared, 2):
        rows.append({"label_a": a, "label_b": b,
                     "value": getattr(prepared[a], metric)(prepared[b])})
    return pd.DataFrame(rows, columns=["label_a", "label_b", "value"])


def seed_aware_matrix(pairs: pd.DataFrame, labels: list[str], separator: str = "@"
                      ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(configs, mean, SEM, n_pairs): (A, B) over all seed pairs, (A, A) over cross-seed pairs
    only (a run compared with itself is trivially 1 and never counted)."""
    configs = list(dict.fromkeys(config_of(label, separator) for label in labels))
    index = {c: i for i, c in enumerate(configs)}
    sums = [[[] for _ in configs] for _ in configs]
    for a, b, v in pairs[["label_a", "label_b", "value"]].itertuples(index=False):
        i, j = index[config_of(a, separator)], index[config_of(b, separator)]
        sums[i][j].append(v)
        if i != j:
            sums[j][i].append(v)
    n = np.array([[len(c) for c in row] for row in sums])
    mean = np.array([[np.mean(c) if c else np.nan for c in row] for row in sums])
    sem = np.array([[np.std(c, ddof=1) / np.sqrt(len(c)) if len(c) > 1 else np.nan for c in row]
                    for row in sums])
    return configs, mean, sem, n


def cka_matrix(reps_paths: dict[str, str | Path], spec: CKASpec | None = None,
               out: str | Path = "cka") -> Path:
    """Similarity matrices (one per metric and layer) over a set of runs, with figures."""
    spec = spec or CKASpec()
    if len(reps_paths) < 2:
        raise WorldrepError(f"similarity needs at least 2 runs, got {len(reps_paths)}")
    runs, ids, layers = aligned_runs(reps_paths, spec.cities, spec.layers)
    long, matrices = [], {}
    for layer in layers:
        k = spec.k if "mutual_knn" in spec.metrics else None
        prepared = {label: _Prepared.of(r.features([layer], spec.positions), k, spec.knn_metric)
                    for label, r in runs.items()}
        for metric in spec.metrics:
            pairs = pairwise(prepared, metric).assign(metric=metric, layer=layer)
            long.append(pairs)
            matrices[(metric, layer)] = seed_aware_matrix(pairs, list(runs), spec.seed_separator)
    full_spec = {"cka": spec.model_dump(mode="json"),
                 "reps": {k: artifacts.content_id(v) for k, v in reps_paths.items()}}
    with artifacts.artifact_dir(out, "similarity") as tmp:
        table = pd.concat(long, ignore_index=True)
        table["config_a"] = table["label_a"].map(lambda s: config_of(s, spec.seed_separator))
        table["config_b"] = table["label_b"].map(lambda s: config_of(s, spec.seed_separator))
        table.to_csv(tmp / "pairs.csv", index=False)
        for (metric, layer), (configs, mean, sem, n) in matrices.items():
            _write_matrix(tmp, metric, layer, configs, mean, sem, n, len(ids))
        artifacts.write_spec(tmp, full_spec)
        artifacts.write_manifest(tmp, "similarity", full_spec, n_cities=len(ids),
                                 layers=layers, runs=list(runs))
    return Path(out)


def _write_matrix(directory: Path, metric, layer, configs, mean, sem, n, n_cities) -> None:
    stem = f"{metric}_l{layer}"
    pd.DataFrame(mean, index=configs, columns=configs).to_csv(directory / f"{stem}.csv")
    pd.DataFrame(sem, index=configs, columns=configs).to_csv(directory / f"{stem}_sem.csv")
    pd.DataFrame(n, index=configs, columns=configs).to_csv(directory / f"{stem}_pairs.csv")
    show_sem = sem if np.isfinite(sem).any() else None
    figures.heatmap(directory / f"{stem}.png", mean, configs, configs, vmin=0.0, vmax=1.0,
                    sem=show_sem,
                    title=f"{METRIC_TITLES[metric]}, layer {layer} ({n_cities} cities; "
                          "diagonal: cross-seed pairs only)")


# -- convergence: CKA against the number of training tasks (paper Fig. 3d) ------------------------
class ConvergenceSpec(Strict):
    """Linear CKA of pairs of models that share no training task, by how many tasks each was
    trained on, per layer. Paper: layer 5, 0.655 (1 task) -> 0.873 (2) -> 0.851 (3)."""

    layers: list[int] | None = None  # None: every layer the runs share
    positions: list[str] | None = None
    cities: str = "world"
    pairing: Literal["same_seed", "all"] = "same_seed"  # paper Fig. 3d: pairs within a seed
    exclude_single: list[str] = pydantic.Field(default_factory=lambda: ["crossing"])


@dataclass
class Model:
    """What a model was trained on, for pairing: its tasks and its seed."""

    tasks: tuple[str, ...]
    seed: str


def cka_by_tasks(reps_paths: dict[str, str | Path], models: dict[str, Model],
                 spec: ConvergenceSpec | None = None, out: str | Path = "convergence") -> Path:
    """Mean linear CKA (with SEM) of non-overlapping model pairs of equal task count, per
    layer; and, per task count, of the same configuration across seeds (within-config)."""
    spec = spec or ConvergenceSpec()
    keep = {k: v for k, v in reps_paths.items()
            if not (len(models[k].tasks) == 1 and models[k].tasks[0] in spec.exclude_single)}
    if len(keep) < 2:
        raise WorldrepError(f"convergence needs at least 2 models, got {len(keep)}")
    runs, ids, layers = aligned_runs(keep, spec.cities, spec.layers)
    pairs = []
    for layer in layers:
        prepared = {label: _Prepared.of(r.features([layer], spec.positions))
                    for label, r in runs.items()}
        for a, b in itertools.combinations(prepared, 2):
            ma, mb = models[a], models[b]
            if len(ma.tasks) != len(mb.tasks):
                continue
            same_config = set(ma.tasks) == set(mb.tasks)
            disjoint = not set(ma.tasks) & set(mb.tasks)
            if same_config and ma.seed != mb.seed:
                relation = "same config"
            elif disjoint and (spec.pairing == "all" or ma.seed == mb.seed):
                relation = "no shared task"
            else:
                continue
            pairs.append({"layer": layer, "n_tasks": len(ma.tasks), "relation": relation,
                          "model_a": a, "model_b": b, "seed_a": ma.seed, "seed_b": mb.seed,
                          "cka": prepared[a].linear_cka(prepared[b])})
    if not pairs:
        raise WorldrepError("no two models of equal task count share no task (or a config "
                            "across seeds); convergence has nothing to compare")
    table = pd.DataFrame(pairs)
    summary = (table.groupby(["relation", "layer", "n_tasks"])["cka"]
               .agg(mean="mean", sem=lambda v: v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1
                    else np.nan, n="count").reset_index())
    full_spec = {"convergence": spec.model_dump(mode="json"),
                 "reps": {k: artifacts.content_id(v) for k, v in keep.items()},
                 "models": {k: {"tasks": list(m.tasks), "seed": m.seed} for k, m in
                            models.items() if k in keep}}
    with artifacts.artifact_dir(out, "convergence") as tmp:
        table.to_csv(tmp / "pairs.csv", index=False)
        summary.to_csv(tmp / "summary.csv", index=False)
        figures.convergence_curves(tmp / "convergence.png", summary,
                                   title=f"linear CKA vs number of tasks ({len(ids)} cities)")
        artifacts.write_spec(tmp, full_spec)
        artifacts.write_manifest(tmp, "convergence", full_spec, models=len(keep), layers=layers)
    return Path(out)
