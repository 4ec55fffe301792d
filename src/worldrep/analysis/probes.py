"""Linear probes of city coordinates from representations (numpy, scikit-learn style).

`LinearProbe` is ordinary least squares with an intercept (the reference probe); `RidgeProbe`
adds an L2 penalty, and `RidgeCVProbe` picks it by seeded k-fold cross-validation. All are fitted
on centred data through the d x d normal equations (one matrix product and a Cholesky solve),
so x and y together cost one factorisation and a CV grid of alphas stays cheap.
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
from ..seeding import rng
from ..world import World, load_world
from . import figures
from .blas import single_blas_thread
from .reps import Reps, load_reps

DEFAULT_ALPHAS = tuple(float(a) for a in np.logspace(-3, 5, 17))


# -- estimators ------------------------------------------------------------------------------
class _Linear:
    coef_: np.ndarray  # [d, k]
    intercept_: np.ndarray  # [k]

    def predict(self, X) -> np.ndarray:
        out = np.asarray(X, np.float64) @ self.coef_ + self.intercept_
        return out[:, 0] if self._one_target else out

    def score(self, X, y) -> float:
        """R^2 averaged over targets (as sklearn's `score`)."""
        return float(np.mean(r2_score(np.asarray(y, np.float64), self.predict(X))))

    def _prepare(self, X, y):
        X = np.asarray(X, np.float64)
        y = np.asarray(y, np.float64)
        self._one_target = y.ndim == 1
        y = y[:, None] if y.ndim == 1 else y
        if X.ndim != 2 or len(X) != len(y) or len(X) < 2:
            raise WorldrepError(f"probe needs X [n, d] and y [n] or [n, k] with n >= 2; got "
                                f"X {X.shape}, y {y.shape}")
        self._x_mean, self._y_mean = X.mean(axis=0), y.mean(axis=0)
        return X - self._x_mean, y - self._y_mean

    def _finish(self, coef: np.ndarray):
        self.coef_ = coef
        self.intercept_ = self._y_mean - self._x_mean @ coef
        return self


def _normal(Xc: np.ndarray, yc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The normal equations' d x d Gram matrix and right-hand side: one matrix product."""
    return Xc.T @ Xc, Xc.T @ yc


def _cholesky_solve(A: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """A^-1 b by Cholesky (a fraction of a millisecond at d = 256), or None when A is nearly
    singular (a tiny pivot), where the normal equations would lose precision."""
    import scipy.linalg as sl

    try:
        c = sl.cho_factor(A, check_finite=False)
    except np.linalg.LinAlgError:
        return None
    pivots = np.diag(c[0]) ** 2
    if pivots.min() <= pivots.max() * 1e-10:
        return None
    return sl.cho_solve(c, b, check_finite=False)


def _ridge_solve(G: np.ndarray, b: np.ndarray, alpha: float) -> np.ndarray:
    A = G + alpha * np.eye(len(G))
    coef = _cholesky_solve(A, b)
    return np.linalg.solve(A, b) if coef is None else coef


class LinearProbe(_Linear):
    """Ordinary least squares with intercept; minimum-norm solution when X is rank-deficient."""

    def fit(self, X, y) -> LinearProbe:
        Xc, yc = self._prepare(X, y)
        coef = _cholesky_solve(*_normal(Xc, yc))
        if coef is None:  # ill-conditioned: least squares on the data itself (SVD), as lstsq
            coef = np.linalg.lstsq(Xc, yc, rcond=None)[0]
        return self._finish(coef)


class RidgeProbe(_Linear):
    """Ridge regression (intercept not penalised)."""

    def __init__(self, alpha: float = 10.0):
        self.alpha = float(alpha)

    def fit(self, X, y) -> RidgeProbe:
        Xc, yc = self._prepare(X, y)
        return self._finish(_ridge_solve(*_normal(Xc, yc), self.alpha))


class RidgeCVProbe(_Linear):
    """Ridge with alpha chosen by k-fold CV (mean squared error), folds from `random_state`."""

    def __init__(self, alphas=DEFAULT_ALPHAS, cv: int = 5, random_state: int = 0):
        self.alphas = tuple(float(a) for a in alphas)
        self.cv = int(cv)
        self.random_state = random_state

    def fit(self, X, y) -> RidgeCVProbe:
        X = np.asarray(X, np.float64)
        y = np.asarray(y, np.float64)
        if self.cv < 2 or self.cv > len(X):
            raise WorldrepError(f"cv folds must be between 2 and n={len(X)}, got {self.cv}")
        if not self.alphas or min(self.alphas) <= 0:
            raise WorldrepError(f"ridge alphas must be positive, got {list(self.alphas)}")
        folds = rng(self.random_state, "probe", "cv").permutation(len(X)) % self.cv
        y2 = y[:, None] if y.ndim == 1 else y
        errors = np.zeros(len(self.alphas))
        for f in range(self.cv):
            tr, te = folds != f, folds == f
            xm, ym = X[tr].mean(axis=0), y2[tr].mean(axis=0)
            G, b = _normal(X[tr] - xm, y2[tr] - ym)
            # One eigen-decomposition per fold serves the whole alpha grid.
            lam, v = np.linalg.eigh(G)
            vtb, Xv = v.T @ b, (X[te] - xm) @ v
            for i, a in enumerate(self.alphas):
                pred = Xv @ (vtb / (np.maximum(lam, 0.0) + a)[:, None]) + ym
                errors[i] += np.sum((pred - y2[te]) ** 2)
        self.cv_mse_ = errors / len(X)
        self.alpha_ = self.alphas[int(np.argmin(errors))]
        Xc, yc = self._prepare(X, y)
        return self._finish(_ridge_solve(*_normal(Xc, yc), self.alpha_))


def make_probe(method: str, alphas=DEFAULT_ALPHAS, cv: int = 5, random_state: int = 0):
    if method == "ols":
        return LinearProbe()
    if method == "ridge":
        return RidgeCVProbe(alphas, cv, random_state)
    raise WorldrepError(f"unknown probe method '{method}'; allowed: 'ols', 'ridge'")


# -- metrics ---------------------------------------------------------------------------------
def r2_score(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Coefficient of determination per target column (sklearn's definition)."""
    y = y[:, None] if y.ndim == 1 else y
    pred = pred[:, None] if pred.ndim == 1 else pred
    ss_res = ((y - pred) ** 2).sum(axis=0)
    ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ss_tot > 0, 1 - ss_res / ss_tot, np.where(ss_res > 0, 0.0, 1.0))


def coordinate_metrics(xy: np.ndarray, pred: np.ndarray, prefix: str = "test") -> dict:
    """R^2 and mean absolute error of x and y, and Euclidean error (0.1-degree units)."""
    r2 = r2_score(xy, pred)
    dist = np.hypot(*(pred - xy).T)
    return {f"x_{prefix}_r2": float(r2[0]), f"y_{prefix}_r2": float(r2[1]),
            f"x_{prefix}_mae": float(np.abs(pred[:, 0] - xy[:, 0]).mean()),
            f"y_{prefix}_mae": float(np.abs(pred[:, 1] - xy[:, 1]).mean()),
            f"{prefix}_mean_error": float(dist.mean()),
            f"{prefix}_median_error": float(np.median(dist))}


# -- the probe stage -------------------------------------------------------------------------
class ProbeSpec(Strict):
    """Reference: OLS, 3,250 train / 1,250 test cities of all regions, seed 42, layer 5."""

    method: Literal["ols", "ridge"] = "ols"
    alphas: list[float] = pydantic.Field(default_factory=lambda: list(DEFAULT_ALPHAS))
    cv_folds: int = pydantic.Field(5, ge=2)
    n_train: int = pydantic.Field(3250, ge=2)
    n_test: int = pydantic.Field(1250, ge=1)
    seed: int = 42
    cities: str = "all"  # selector of the cities split into train and test
    layers: list[int] | None = None  # None: every stored layer, concatenated
    positions: list[str] | None = None  # None: every stored position, concatenated
    each_layer: bool = False  # one probe per stored layer instead of one on the concatenation


def split_cities(ids: np.ndarray, n_train: int, n_test: int, seed: int,
                 purpose: str = "probe") -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint (train, test) positions into `ids`.

    The draw depends only on the sorted set of ids, so two runs with the same cities get the
    same split (which keeps probes comparable across models).
    """
    order = np.argsort(ids, kind="stable")
    if n_train + n_test > len(ids):
        raise WorldrepError(f"{n_train} train + {n_test} test cities requested but only "
                            f"{len(ids)} are available; allowed: n_train + n_test <= {len(ids)}")
    pick = order[rng(seed, purpose, "split").permutation(len(ids))[: n_train + n_test]]
    return pick[:n_train], pick[n_train:]


@single_blas_thread
def fit_probe(X: np.ndarray, xy: np.ndarray, train: np.ndarray, test: np.ndarray,
              spec: ProbeSpec) -> tuple[dict, np.ndarray]:
    """Fit on train rows; metrics on train and test, and predictions for every row."""
    probe = make_probe(spec.method, spec.alphas, spec.cv_folds, spec.seed).fit(X[train], xy[train])
    pred = probe.predict(X)
    metrics = {**coordinate_metrics(xy[train], pred[train], "train"),
               **coordinate_metrics(xy[test], pred[test], "test"),
               "n_train": len(train), "n_test": len(test), "n_features": X.shape[1]}
    if spec.method == "ridge":
        metrics["alpha"] = probe.alpha_
    return metrics, pred


def with_world_truth(reps: Reps, world: World | None) -> Reps:
    """Coordinates and regions from the world (authoritative) when one is given."""
    if world is None:
        return reps
    rows = world.row_of_id[reps.ids]
    if (rows < 0).any():
        raise WorldrepError(f"{int((rows < 0).sum())} cities of the representations are not in "
                            f"the world {world.path}; use the world they were extracted with")
    cities = reps.cities.copy()
    for col in ("x", "y", "region", "group", "name", "country"):
        cities[col] = world.cities[col].to_numpy()[rows]
    return Reps(cities, reps.layers, reps.positions, reps.vectors, reps.meta)


def _layer_sets(reps: Reps, spec: ProbeSpec) -> list[list[int]]:
    stored = reps.layers.tolist()
    if spec.each_layer:
        return [[layer] for layer in (spec.layers or stored)]
    return [spec.layers or stored]


@single_blas_thread
def probe_reps(reps: Reps, spec: ProbeSpec) -> tuple[list[dict], list[pd.DataFrame]]:
    """Metric rows and prediction tables, one per layer set."""
    rows = reps.select(spec.cities)
    sub = reps.take(rows)
    train, test = split_cities(sub.ids, spec.n_train, spec.n_test, spec.seed)
    split = np.full(len(sub.ids), "", dtype=object)
    split[train], split[test] = "train", "test"
    used = np.concatenate([train, test])
    metrics, preds = [], []
    for layers in _layer_sets(sub, spec):
        X = sub.features(layers, spec.positions)
        m, pred = fit_probe(X, sub.xy, train, test, spec)
        metrics.append({"layers": ",".join(map(str, layers)), **m})
        frame = sub.cities.iloc[used][["city_id", "name", "region", "group", "x", "y"]].copy()
        frame["split"] = split[used]
        frame["pred_x"], frame["pred_y"] = pred[used, 0], pred[used, 1]
        frame["error"] = np.hypot(frame["pred_x"] - frame["x"], frame["pred_y"] - frame["y"])
        frame["layers"] = metrics[-1]["layers"]
        preds.append(frame.reset_index(drop=True))
    return metrics, preds


def _as_paths(reps_paths) -> dict[str, Path]:
    if isinstance(reps_paths, dict):
        return {str(k): Path(v) for k, v in reps_paths.items()}
    return {Path(reps_paths).name: Path(reps_paths)}


def run_probe(reps_path, world: World | str | Path | None = None, spec: ProbeSpec | None = None,
              out: str | Path = "probe") -> Path:
    """Probe x and y from one reps dir (or a dict label -> reps dir): metrics table, per-city
    predictions and a world map of the predicted test cities."""
    spec = spec or ProbeSpec()
    paths = _as_paths(reps_path)
    if world is not None and not isinstance(world, World):
        world = load_world(world)
    tables, preds = [], []
    for label, path in paths.items():
        m, p = probe_reps(with_world_truth(load_reps(path), world), spec)
        tables += [{"label": label, **row} for row in m]
        preds += [frame.assign(label=label) for frame in p]
    table = pd.DataFrame(tables)
    full_spec = {"probe": spec.model_dump(mode="json"),
                 "reps": {k: artifacts.content_id(v) for k, v in paths.items()},
                 "world": world.hash if world is not None else None}
    with artifacts.artifact_dir(out, "probe") as tmp:
        table.to_csv(tmp / "metrics.csv", index=False)
        pd.concat(preds, ignore_index=True).to_parquet(tmp / "predictions.parquet", index=False)
        for frame in preds:
            _map(tmp, frame, len(paths) > 1 or spec.each_layer)
        artifacts.write_spec(tmp, full_spec)
        artifacts.write_manifest(tmp, "probe", full_spec, rows=len(table))
    return Path(out)


def _map(directory: Path, frame: pd.DataFrame, named: bool) -> None:
    test = frame[frame["split"] == "test"]
    label, layers = frame["label"].iloc[0], frame["layers"].iloc[0]
    stem = f"map_{_safe(label)}_l{layers.replace(',', '-')}" if named else "map"
    err = test["error"].mean()
    figures.world_map(directory / f"{stem}.png", test[["x", "y"]].to_numpy(float),
                      test[["pred_x", "pred_y"]].to_numpy(float), test["region"].to_numpy(str),
                      test["group"].to_numpy(str) != "world",
                      title=f"{label}, layers {layers}: probe predictions of test cities "
                            f"(mean error {err:.1f})")


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
