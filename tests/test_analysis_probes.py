"""Probes: estimators against independent least squares, metrics, splits, the probe stage."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis_fakes import fake_cities, linear_reps, write_reps
from worldrep.analysis.probes import (
    LinearProbe,
    ProbeSpec,
    RidgeCVProbe,
    RidgeProbe,
    r2_score,
    run_probe,
    split_cities,
)
from worldrep.artifacts import is_complete
from worldrep.errors import WorldrepError


def _data(n=500, d=20, noise=0.1, seed=0):
    g = np.random.default_rng(seed)
    X = g.normal(size=(n, d))
    W = g.normal(size=(d, 2))
    return X, X @ W + 3.0 + noise * g.normal(size=(n, 2))


def test_ols_matches_lstsq_with_intercept():
    X, y = _data()
    probe = LinearProbe().fit(X, y)
    A = np.hstack([X, np.ones((len(X), 1))])
    sol = np.linalg.lstsq(A, y, rcond=None)[0]
    np.testing.assert_allclose(probe.coef_, sol[:-1], atol=1e-8)
    np.testing.assert_allclose(probe.intercept_, sol[-1], atol=1e-8)
    assert probe.predict(X).shape == (len(X), 2)
    assert probe.score(X, y) == pytest.approx(np.mean(r2_score(y, A @ sol)))


def test_ols_single_target_and_rank_deficient_min_norm():
    g = np.random.default_rng(1)
    X = g.normal(size=(30, 60))  # more features than rows: infinitely many exact fits
    y = g.normal(size=30)
    probe = LinearProbe().fit(X, y)
    assert probe.predict(X).shape == (30,)
    np.testing.assert_allclose(probe.predict(X), y, atol=1e-6)
    Xc = X - X.mean(0)
    np.testing.assert_allclose(probe.coef_[:, 0], np.linalg.pinv(Xc) @ (y - y.mean()), atol=1e-6)


def test_ols_ill_conditioned_matches_lstsq():
    g = np.random.default_rng(2)
    X = g.normal(size=(400, 5))
    X = np.hstack([X, X[:, :1] + 1e-7 * g.normal(size=(400, 1))])  # nearly collinear pair
    y = X @ g.normal(size=6) + 0.1 * g.normal(size=400)
    A = np.hstack([X, np.ones((400, 1))])
    sol = np.linalg.lstsq(A, y, rcond=None)[0]
    np.testing.assert_allclose(LinearProbe().fit(X, y).predict(X), A @ sol, atol=1e-6)


def test_ridge_closed_form_and_small_alpha_is_ols():
    X, y = _data(d=10)
    alpha = 25.0
    Xc, yc = X - X.mean(0), y - y.mean(0)
    expected = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(10), Xc.T @ yc)
    np.testing.assert_allclose(RidgeProbe(alpha).fit(X, y).coef_, expected, atol=1e-9)
    np.testing.assert_allclose(RidgeProbe(1e-9).fit(X, y).coef_, LinearProbe().fit(X, y).coef_,
                               atol=1e-6)


def test_ridge_cv_is_seeded_and_prefers_shrinkage_for_noise():
    X, y = _data(n=200, d=50, noise=0.01)
    clean = RidgeCVProbe(random_state=3).fit(X, y)
    again = RidgeCVProbe(random_state=3).fit(X, y)
    assert clean.alpha_ == again.alpha_
    np.testing.assert_array_equal(clean.cv_mse_, again.cv_mse_)
    noise = RidgeCVProbe(random_state=3).fit(X, np.random.default_rng(9).normal(size=(200, 2)))
    assert clean.alpha_ < noise.alpha_
    with pytest.raises(WorldrepError, match="alphas must be positive"):
        RidgeCVProbe(alphas=[0.0, 1.0]).fit(X, y)


def test_r2_score_definition():
    y = np.array([[1.0, 2.0], [2.0, 4.0], [3.0, 9.0]])
    pred = np.array([[1.0, 3.0], [2.0, 4.0], [4.0, 8.0]])
    for j in range(2):
        ss_res = ((y[:, j] - pred[:, j]) ** 2).sum()
        ss_tot = ((y[:, j] - y[:, j].mean()) ** 2).sum()
        assert r2_score(y, pred)[j] == pytest.approx(1 - ss_res / ss_tot)


def test_split_is_disjoint_seeded_and_order_free():
    ids = np.random.default_rng(0).permutation(np.arange(1000, 6000))
    train, test = split_cities(ids, 3250, 1250, seed=42)
    assert len(train) == 3250 and len(test) == 1250
    assert not set(train) & set(test)
    shuffled = np.random.default_rng(1).permutation(len(ids))
    train2, test2 = split_cities(ids[shuffled], 3250, 1250, seed=42)
    assert set(ids[train]) == set(ids[shuffled][train2])
    assert set(ids[test]) == set(ids[shuffled][test2])
    other, _ = split_cities(ids, 3250, 1250, seed=43)
    assert set(ids[other]) != set(ids[train])
    with pytest.raises(WorldrepError, match="only 5000 are available"):
        split_cities(ids, 4000, 1001, seed=0)


@pytest.fixture(scope="module")
def linear_dir(tmp_path_factory):
    cities = fake_cities()
    vectors = linear_reps(cities, hidden=48, layers=(4, 5), noise=0.01)
    return write_reps(tmp_path_factory.mktemp("reps") / "lin", cities, vectors, layers=(4, 5))


def test_probe_on_linear_representations_recovers_coordinates(linear_dir, tmp_path):
    out = run_probe(linear_dir, None, ProbeSpec(), tmp_path / "probe")
    assert is_complete(out)
    table = pd.read_csv(out / "metrics.csv")
    row = table.iloc[0]
    assert row["n_train"] == 3250 and row["n_test"] == 1250 and row["n_features"] == 192
    assert row["x_test_r2"] > 0.999 and row["y_test_r2"] > 0.999
    assert row["test_mean_error"] < 2.0  # noise 0.01 in units of 1000 -> a few tenths
    preds = pd.read_parquet(out / "predictions.parquet")
    assert (preds["split"] == "test").sum() == 1250
    test = preds[preds["split"] == "test"]
    err = np.hypot(test["pred_x"] - test["x"], test["pred_y"] - test["y"])
    assert err.mean() == pytest.approx(row["test_mean_error"])
    assert (out / "map.png").stat().st_size > 10_000


def test_probe_each_layer_and_random_features(linear_dir, tmp_path):
    cities = fake_cities()
    noise = np.random.default_rng(5).normal(size=(len(cities), 1, 2, 64)).astype(np.float32)
    rand = write_reps(tmp_path / "rand", cities, noise)
    out = run_probe({"lin": linear_dir, "rand": rand}, None,
                    ProbeSpec(each_layer=True, method="ridge"), tmp_path / "probe")
    table = pd.read_csv(out / "metrics.csv")
    assert list(zip(table["label"], table["layers"].astype(str), strict=True)) == [
        ("lin", "4"), ("lin", "5"), ("rand", "5")]
    assert (table[table["label"] == "lin"]["x_test_r2"] > 0.999).all()
    assert table[table["label"] == "rand"]["x_test_r2"].iloc[0] < 0.05
    assert "alpha" in table.columns
    assert len(list(out.glob("map_*.png"))) == 3


def test_probe_errors_are_clear(linear_dir, tmp_path):
    with pytest.raises(WorldrepError, match=r"layer\(s\) \[3\] not in"):
        run_probe(linear_dir, None, ProbeSpec(layers=[3]), tmp_path / "p")
    with pytest.raises(WorldrepError, match="requested but only"):
        run_probe(linear_dir, None, ProbeSpec(cities="Atlantis"), tmp_path / "p")
    assert not (tmp_path / "p").exists()
    with pytest.raises(WorldrepError, match="no finished representations"):
        run_probe(tmp_path / "missing", None, ProbeSpec(), tmp_path / "p")


def test_probe_takes_truth_from_world(world, tmp_path):
    rows = np.flatnonzero(world.ids >= 1000)
    cities = world.cities.iloc[rows].reset_index(drop=True)
    vectors = linear_reps(cities)
    wrong = cities.assign(x=0, y=0)  # stored coordinates are wrong; the world's are right
    path = write_reps(tmp_path / "r", wrong, vectors)
    out = run_probe(path, world, ProbeSpec(), tmp_path / "probe")
    assert pd.read_csv(out / "metrics.csv")["x_test_r2"].iloc[0] > 0.999
    spec = json.loads(json.dumps(__import__("yaml").safe_load((out / "spec.yaml").read_text())))
    assert spec["probe"]["n_train"] == 3250
