"""PCA views and timelines; Atlantis reconstruction error on representations with known geometry."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis_fakes import fake_cities, linear_reps, write_reps
from worldrep.analysis.atlantis import AtlantisSpec, atlantis_error
from worldrep.analysis.pca import PCA, PCASpec, pca_timeline, pca_views
from worldrep.errors import WorldrepError


def test_pca_matches_covariance_eigenvectors():
    g = np.random.default_rng(0)
    X = g.normal(size=(300, 6)) * np.array([5, 4, 3, 2, 1, 0.5]) + 7
    pca = PCA(3).fit(X)
    lam, v = np.linalg.eigh(np.cov(X, rowvar=False))
    np.testing.assert_allclose(pca.explained_variance_, lam[::-1][:3], rtol=1e-10)
    for i in range(3):
        assert abs(pca.components_[i] @ v[:, ::-1][:, i]) == pytest.approx(1.0)
    np.testing.assert_allclose(pca.explained_variance_ratio_, lam[::-1][:3] / lam.sum())
    Z = pca.transform(X)
    np.testing.assert_allclose(Z.mean(axis=0), 0, atol=1e-10)
    np.testing.assert_array_equal(PCA(3).fit(X[::-1]).components_.round(8),
                                  pca.components_.round(8))  # sign convention is stable
    with pytest.raises(WorldrepError, match="n_components must be between"):
        PCA(7).fit(X)


@pytest.fixture(scope="module")
def cities():
    return fake_cities(n_world=4400, n_synthetic=60)


def test_pca_views_write_offline_html_and_png(cities, tmp_path):
    path = write_reps(tmp_path / "r", cities, linear_reps(cities, hidden=16, noise=0.05))
    out = pca_views(path, PCASpec(max_points=500), tmp_path / "pca")
    html = (out / "pca.html").read_text()
    assert "plotly" in html and 'src="https://cdn' not in html  # plotly.js embedded
    assert len(html) > 1_000_000
    assert (out / "pca.png").stat().st_size > 10_000
    proj = pd.read_parquet(out / "projections.parquet")
    assert len(proj) == 500 and (proj["group"] == "Atlantis").sum() == 60  # all kept
    var = pd.read_csv(out / "explained_variance.csv")
    assert var["ratio"].iloc[:2].sum() > 0.99  # a 2-D map plus small noise


def test_pca_timeline_uses_last_checkpoint_axes(cities, tmp_path):
    paths = {}
    for step, noise in ((100, 2.0), (200, 0.5), (300, 0.05)):
        vec = linear_reps(cities, hidden=16, noise=noise, seed=1)
        paths[f"checkpoint-{step}"] = write_reps(tmp_path / str(step), cities, vec)
    out = pca_timeline(paths, PCASpec(), tmp_path / "timeline")
    proj = pd.read_parquet(out / "projections.parquet")
    assert list(dict.fromkeys(proj["label"])) == list(paths)
    single = pca_views(paths["checkpoint-300"], PCASpec(), tmp_path / "last")
    last = pd.read_parquet(single / "projections.parquet")
    mine = proj[proj["label"] == "checkpoint-300"].reset_index(drop=True)
    np.testing.assert_allclose(mine[["pc1", "pc2", "pc3"]], last[["pc1", "pc2", "pc3"]],
                               atol=1e-8)
    html = (out / "timeline.html").read_text()
    assert '"method":"animate"' in html.replace(" ", "") and "checkpoint-100" in html
    assert (out / "timeline.png").is_file()


def _atlantis_reps(cities, offset: float, seed: int = 2) -> np.ndarray:
    """World cities on a linear map; synthetic cities additionally pushed along a direction
    the world never uses, by `offset` (0: perfectly integrated)."""
    vec = linear_reps(cities, hidden=64, noise=0.001, seed=seed)
    hidden_dir = np.random.default_rng(seed + 1).normal(size=64)
    syn = (cities["group"] != "world").to_numpy()
    vec[syn, 0, 0] += offset * hidden_dir
    return vec


def test_atlantis_error_separates_integrated_from_off_manifold(cities, tmp_path):
    good = write_reps(tmp_path / "good", cities, _atlantis_reps(cities, 0.0))
    bad = write_reps(tmp_path / "bad", cities, _atlantis_reps(cities, 1.0))
    spec = AtlantisSpec(groups={"good": "without distance", "bad": "with distance"})
    out = atlantis_error({"good": good, "bad": bad}, spec, tmp_path / "atl")
    per = pd.read_csv(out / "per_model.csv").set_index("model")
    assert per.loc["good", "n_synthetic"] == 60
    assert per.loc["good", "mean"] < 1.0 and per.loc["good", "baseline_mean"] < 1.0
    assert per.loc["bad", "mean"] > 20 * per.loc["bad", "baseline_mean"]
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["group"]) == ["held-out world", "Atlantis, without distance",
                                      "Atlantis, with distance"]
    assert list(summary["n"]) == [200, 60, 60]
    errors = pd.read_parquet(out / "errors.parquet")
    assert (errors[errors["model"] == "good"]["set"].value_counts().to_dict()
            == {"train": 4000, "baseline": 100, "synthetic": 60})
    syn = errors[(errors["model"] == "bad") & (errors["set"] == "synthetic")]
    assert syn["error"].mean() == pytest.approx(per.loc["bad", "mean"])
    # Independent check: OLS on the same 4,000 train cities, applied to the synthetic ones.
    train = errors[(errors["model"] == "bad") & (errors["set"] == "train")]["city_id"]
    from worldrep.analysis.reps import load_reps

    reps = load_reps(bad)
    rows = pd.Series(np.arange(len(reps.ids)), index=reps.ids)
    X = reps.features()
    A = np.hstack([X, np.ones((len(X), 1))]).astype(float)
    tr, te = rows.loc[train].to_numpy(), rows.loc[syn["city_id"]].to_numpy()
    sol = np.linalg.lstsq(A[tr], reps.xy[tr], rcond=None)[0]
    err = np.hypot(*(A[te] @ sol - reps.xy[te]).T)
    assert err.mean() == pytest.approx(per.loc["bad", "mean"], rel=1e-4)
    assert (out / "histogram.png").stat().st_size > 10_000


def test_atlantis_errors_are_clear(cities, tmp_path):
    world_only = cities[cities["group"] == "world"].reset_index(drop=True)
    path = write_reps(tmp_path / "w", world_only, linear_reps(world_only, hidden=8))
    with pytest.raises(WorldrepError, match="no synthetic city"):
        atlantis_error(path, AtlantisSpec(), tmp_path / "a")
    with pytest.raises(WorldrepError, match="groups name models"):
        atlantis_error({"w": path}, AtlantisSpec(groups={"x": "g"}), tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_pooled_groups_are_compared_by_mann_whitney_u():
    from worldrep.analysis.atlantis import group_tests

    rng = np.random.default_rng(0)
    far, near = rng.normal(500, 50, 60), rng.normal(100, 20, 80)
    table = group_tests({"with distance": far, "without distance": near})
    row = table.iloc[0]
    # U counts the pairs where the first group's value is larger (no ties here).
    assert row["u"] == (far[:, None] > near[None, :]).sum() == 60 * 80
    assert row["p"] < 1e-10 and row["mean_ratio"] == pytest.approx(far.mean() / near.mean())
    same = group_tests({"a": near[:40], "b": near[40:]}).iloc[0]
    assert same["p"] > 0.01
