"""Top principal components of city representations: 3-D HTML, PNG panels, timelines.

The projection is fitted on `fit_cities` (by default the real world, so synthetic cities are
shown where the world's axes put them: the reference's "na" view) and is centred (the
reference's timeline projection was not). A timeline fits the projection once, on the last
checkpoint, and shows every checkpoint in that frame, each centred by its own fit-city mean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydantic

from .. import artifacts
from ..config import Strict
from ..errors import WorldrepError
from ..seeding import rng
from . import figures
from .reps import Reps, load_reps


class PCA:
    """Principal components by SVD of the centred data (scikit-learn style)."""

    def __init__(self, n_components: int = 3):
        self.n_components = int(n_components)

    def fit(self, X) -> PCA:
        X = np.asarray(X, np.float64)
        k = self.n_components
        if not 1 <= k <= min(X.shape):
            raise WorldrepError(f"n_components must be between 1 and {min(X.shape)} for data of "
                                f"shape {X.shape}, got {k}")
        self.mean_ = X.mean(axis=0)
        _, s, vt = np.linalg.svd(X - self.mean_, full_matrices=False)
        # Sign convention: the largest-magnitude loading of each component is positive, so
        # refits of the same data give the same picture.
        signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
        vt = vt * np.where(signs == 0, 1, signs)[:, None]
        var = s**2 / max(len(X) - 1, 1)
        self.components_ = vt[:k]
        self.explained_variance_ = var[:k]
        self.explained_variance_ratio_ = var[:k] / var.sum() if var.sum() > 0 else var[:k]
        return self

    def transform(self, X, mean: np.ndarray | None = None) -> np.ndarray:
        centre = self.mean_ if mean is None else mean
        return (np.asarray(X, np.float64) - centre) @ self.components_.T


class PCASpec(Strict):
    n_components: int = pydantic.Field(3, ge=3, le=50)  # the figures show the first three
    layers: list[int] | None = None
    positions: list[str] | None = None
    fit_cities: str = "world"  # selector of the cities the projection is fitted on
    show_cities: str = "all"  # selector of the cities drawn
    max_points: int | None = pydantic.Field(None, ge=10)  # seeded subsample of drawn cities
    seed: int = 42


def _shown(reps: Reps, spec: PCASpec) -> np.ndarray:
    """Drawn rows; a subsample keeps every synthetic city (they are what one looks for)."""
    rows = reps.select(spec.show_cities)
    if spec.max_points is None or len(rows) <= spec.max_points:
        return rows
    synthetic = rows[reps.synthetic[rows]]
    world = rows[~reps.synthetic[rows]]
    keep = max(spec.max_points - len(synthetic), 0)
    pick = rng(spec.seed, "pca", "points").choice(world, min(keep, len(world)), replace=False)
    return np.sort(np.concatenate([synthetic, pick]))


def _fit(reps: Reps, spec: PCASpec) -> PCA:
    rows = reps.select(spec.fit_cities)
    if len(rows) <= spec.n_components:
        raise WorldrepError(f"'{spec.fit_cities}' selects {len(rows)} cities; the projection "
                            f"needs more than n_components={spec.n_components}")
    return PCA(spec.n_components).fit(reps.features(spec.layers, spec.positions)[rows])


def _frame(reps: Reps, rows: np.ndarray, coords: np.ndarray, label: str) -> pd.DataFrame:
    frame = reps.cities.iloc[rows][["city_id", "name", "region", "group", "x", "y"]].copy()
    for i in range(coords.shape[1]):
        frame[f"pc{i + 1}"] = coords[:, i]
    frame["label"] = label
    return frame.reset_index(drop=True)


def _hover(reps: Reps, rows: np.ndarray) -> np.ndarray:
    c = reps.cities.iloc[rows]
    return (c["name"].astype(str) + " (c_" + c["city_id"].astype(str).str.zfill(4) + ", "
            + c["region"].astype(str) + ")").to_numpy()


def pca_views(reps_path: str | Path, spec: PCASpec | None = None, out: str | Path = "pca",
              title: str | None = None) -> Path:
    """PCA of one checkpoint's representations: pca.html (3-D, offline), pca.png, tables."""
    spec = spec or PCASpec()
    reps = load_reps(reps_path)
    pca = _fit(reps, spec)
    rows = _shown(reps, spec)
    coords = pca.transform(reps.features(spec.layers, spec.positions)[rows])
    title = title or f"PCA of {Path(reps_path).name}"
    full_spec = {"pca": spec.model_dump(mode="json"), "reps": artifacts.content_id(reps_path)}
    with artifacts.artifact_dir(out, "pca") as tmp:
        _frame(reps, rows, coords, Path(reps_path).name).to_parquet(tmp / "projections.parquet",
                                                                   index=False)
        _variance_table(pca).to_csv(tmp / "explained_variance.csv", index=False)
        args = (coords[:, :3], reps.cities["region"].to_numpy(str)[rows], reps.synthetic[rows])
        figures.pca_html(tmp / "pca.html", *args, _hover(reps, rows),
                         pca.explained_variance_ratio_, title)
        figures.pca_panels(tmp / "pca.png", *args, pca.explained_variance_ratio_, title)
        artifacts.write_spec(tmp, full_spec)
        artifacts.write_manifest(tmp, "pca", full_spec, n_cities=len(rows),
                                 explained=pca.explained_variance_ratio_.round(4).tolist())
    return Path(out)


def _variance_table(pca: PCA) -> pd.DataFrame:
    ratio = pca.explained_variance_ratio_
    return pd.DataFrame({"component": np.arange(1, len(ratio) + 1), "variance": pca.explained_variance_,
                         "ratio": ratio, "cumulative": np.cumsum(ratio)})


def pca_timeline(reps_paths: dict[str, str | Path], spec: PCASpec | None = None,
                 out: str | Path = "pca_timeline", title: str | None = None) -> Path:
    """Checkpoints of one run (ordered, last = reference frame) in the last one's PC axes."""
    spec = spec or PCASpec()
    if not reps_paths:
        raise WorldrepError("a PCA timeline needs at least one checkpoint's representations")
    runs = {str(k): load_reps(v) for k, v in reps_paths.items()}
    final = list(runs.values())[-1]
    pca = _fit(final, spec)
    rows = _shown(final, spec)
    ids = final.ids[rows]
    frames, tables = {}, []
    for label, reps in runs.items():
        if not np.array_equal(np.sort(reps.ids), np.sort(final.ids)):
            raise WorldrepError(f"checkpoint '{label}' covers different cities than the last "
                                "one; extract every checkpoint with the same settings")
        order = pd.Series(np.arange(len(reps.ids)), index=reps.ids)
        X = reps.features(spec.layers, spec.positions)
        fit_mean = X[order.loc[final.ids[final.select(spec.fit_cities)]].to_numpy()].mean(
            axis=0, dtype=np.float64)
        here = order.loc[ids].to_numpy()
        frames[label] = pca.transform(X[here], mean=fit_mean)[:, :3]
        tables.append(_frame(reps, here, frames[label], label))
    regions = final.cities["region"].to_numpy(str)[rows]
    title = title or "PCA timeline (axes of the last checkpoint)"
    full_spec = {"pca": spec.model_dump(mode="json"),
                 "reps": {k: artifacts.content_id(v) for k, v in reps_paths.items()}}
    with artifacts.artifact_dir(out, "pca_timeline") as tmp:
        pd.concat(tables, ignore_index=True).to_parquet(tmp / "projections.parquet", index=False)
        _variance_table(pca).to_csv(tmp / "explained_variance.csv", index=False)
        figures.timeline_html(tmp / "timeline.html", frames, regions, final.synthetic[rows],
                              _hover(final, rows), title)
        figures.timeline_panels(tmp / "timeline.png", frames, regions, final.synthetic[rows], title)
        artifacts.write_spec(tmp, full_spec)
        artifacts.write_manifest(tmp, "pca_timeline", full_spec, checkpoints=list(runs),
                                 n_cities=len(rows))
    return Path(out)
