"""Similarity measures against their definitions, and the seed-aware similarity matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis_fakes import fake_cities, linear_reps, write_reps
from worldrep.analysis.cka import (
    CKASpec,
    cka_matrix,
    debiased_cka,
    knn_indices,
    linear_cka,
    mutual_knn,
    seed_aware_matrix,
)
from worldrep.errors import WorldrepError


def _rotation(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def _naive_cka(X, Y):
    """Kernel form with explicit n x n centring matrices (the reference computation)."""
    n = len(X)
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    return np.sum(K * L) / (np.linalg.norm(K) * np.linalg.norm(L))


def _naive_hsic_u(K, L):
    """Song et al. (2012) unbiased HSIC, from its definition."""
    n = len(K)
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0)
    np.fill_diagonal(L, 0)
    one = np.ones(n)
    return (np.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
            - 2 / (n - 2) * one @ K @ L @ one) / (n * (n - 3))


def test_linear_cka_equals_kernel_form():
    g = np.random.default_rng(0)
    X, Y = g.normal(size=(60, 7)) + 3, g.normal(size=(60, 5))
    Y[:, 0] += X[:, 0]
    assert linear_cka(X, Y) == pytest.approx(_naive_cka(X, Y), rel=1e-10)


def test_cka_is_one_under_rotation_scaling_and_translation():
    X = np.random.default_rng(1).normal(size=(500, 32))
    Y = 3.7 * X @ _rotation(32, 2) + 5.0
    assert linear_cka(X, Y) == pytest.approx(1.0, abs=1e-10)
    assert debiased_cka(X, Y) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)


def test_cka_near_zero_for_independent_noise():
    g = np.random.default_rng(3)
    X, Y = g.normal(size=(4000, 16)), g.normal(size=(4000, 16))
    assert linear_cka(X, Y) < 0.02  # biased estimate ~ d / n
    assert abs(debiased_cka(X, Y)) < 0.01


def test_debiased_cka_matches_definition_and_removes_dimension_bias():
    g = np.random.default_rng(4)
    X, Y = g.normal(size=(40, 6)) + 2, g.normal(size=(40, 9))
    Y[:, :3] += X[:, :3]
    K, L = X @ X.T, Y @ Y.T  # uncentred: the U-statistic does not need centring
    expected = _naive_hsic_u(K, L) / np.sqrt(_naive_hsic_u(K, K) * _naive_hsic_u(L, L))
    assert debiased_cka(X, Y) == pytest.approx(expected, rel=1e-9)
    # Independent features with d >> n: the biased estimate is large, the debiased one is not.
    A, B = g.normal(size=(100, 1000)), g.normal(size=(100, 1000))
    assert linear_cka(A, B) > 0.5
    assert abs(debiased_cka(A, B)) < 0.05


def test_mutual_knn_definition():
    g = np.random.default_rng(5)
    X = g.normal(size=(200, 8))
    Y = X @ _rotation(8, 6) * 2.0
    assert mutual_knn(X, X, k=5) == 1.0
    assert mutual_knn(X, Y, k=5) == 1.0
    assert mutual_knn(X, Y, k=5, metric="euclidean") == 1.0
    Z = g.normal(size=(200, 8))
    assert mutual_knn(X, Z, k=5) < 0.1  # chance is k / (n - 1) = 0.025
    # Against brute force: sets of the k nearest other points by Euclidean distance.
    D1 = np.linalg.norm(X[:, None] - X[None], axis=2)
    D2 = np.linalg.norm(Z[:, None] - Z[None], axis=2)
    np.fill_diagonal(D1, np.inf)
    np.fill_diagonal(D2, np.inf)
    n1, n2 = np.argsort(D1, axis=1)[:, :5], np.argsort(D2, axis=1)[:, :5]
    brute = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(n1, n2, strict=True)])
    assert mutual_knn(X, Z, k=5, metric="euclidean") == pytest.approx(brute)
    assert set(knn_indices(X, 5, "euclidean", block=7)[3]) == set(n1[3])
    with pytest.raises(WorldrepError, match="k must be between"):
        mutual_knn(X, Z, k=200)


def test_measures_reject_misaligned_inputs():
    with pytest.raises(WorldrepError, match="same cities"):
        linear_cka(np.ones((5, 2)), np.ones((6, 2)))


def test_seed_aware_matrix_on_hand_values():
    pairs = pd.DataFrame([
        ("A@1", "A@2", 0.6), ("A@1", "B@1", 0.2), ("A@1", "B@2", 0.4), ("A@2", "B@1", 0.3),
        ("A@2", "B@2", 0.5), ("B@1", "B@2", 0.9), ("A@1", "C", 0.1), ("A@2", "C", 0.3),
        ("B@1", "C", 0.5), ("B@2", "C", 0.7)], columns=["label_a", "label_b", "value"])
    configs, mean, sem, n = seed_aware_matrix(pairs, ["A@1", "A@2", "B@1", "B@2", "C"])
    assert configs == ["A", "B", "C"]
    assert mean[0, 0] == pytest.approx(0.6) and n[0, 0] == 1  # cross-seed pair only
    assert mean[1, 1] == pytest.approx(0.9)
    assert mean[0, 1] == mean[1, 0] == pytest.approx(np.mean([0.2, 0.4, 0.3, 0.5]))
    assert n[0, 1] == 4
    assert sem[0, 1] == pytest.approx(np.std([0.2, 0.4, 0.3, 0.5], ddof=1) / 2)
    assert np.isnan(mean[2, 2]) and n[2, 2] == 0  # one seed: no cross-seed pair
    assert mean[0, 2] == pytest.approx(0.2)


def test_cka_matrix_stage(tmp_path):
    cities = fake_cities(n_world=600, n_synthetic=20)
    base = linear_reps(cities, hidden=32, noise=0.5, layers=(4, 5))
    rot = np.einsum("nlph,hk->nlpk", base, _rotation(32, 7)) * 2.0
    noise = np.random.default_rng(8).normal(size=base.shape).astype(np.float32)
    a1 = write_reps(tmp_path / "a1", cities, base, layers=(4, 5))
    # Same cities in another order, one city missing: aligned by id, intersected.
    perm = np.random.default_rng(9).permutation(len(cities))[:-1]
    a2 = write_reps(tmp_path / "a2", cities.iloc[perm].reset_index(drop=True), rot[perm],
                    layers=(4, 5))
    b = write_reps(tmp_path / "b", cities, noise, layers=(4, 5))
    out = cka_matrix({"A@1": a1, "A@2": a2, "B": b},
                     CKASpec(metrics=["linear_cka", "debiased_cka", "mutual_knn"], layers=[5]),
                     tmp_path / "cka")
    m = pd.read_csv(out / "linear_cka_l5.csv", index_col=0)
    assert list(m.index) == ["A", "B"]
    assert m.loc["A", "A"] == pytest.approx(1.0, abs=1e-6)
    assert m.loc["A", "B"] < 0.1 and np.isnan(m.loc["B", "B"])
    knn = pd.read_csv(out / "mutual_knn_l5.csv", index_col=0)
    assert knn.loc["A", "A"] == pytest.approx(1.0)
    pairs = pd.read_csv(out / "pairs.csv")
    assert len(pairs) == 3 * 3 and set(pairs["layer"]) == {5}
    assert (out / "linear_cka_l5.png").stat().st_size > 5_000
    manifest = __import__("json").loads((out / "manifest.json").read_text())
    assert manifest["n_cities"] == 600 - 1  # world cities only, the missing one dropped
    with pytest.raises(WorldrepError, match="layers missing"):
        cka_matrix({"A@1": a1, "B": b}, CKASpec(layers=[3]), tmp_path / "bad")
    with pytest.raises(WorldrepError, match="at least 2 runs"):
        cka_matrix({"A@1": a1}, CKASpec(), tmp_path / "bad")


def test_convergence_pairs_models_that_share_no_task_within_a_seed(tmp_path):
    from worldrep.analysis.cka import ConvergenceSpec, Model, cka_by_tasks

    cities = fake_cities(n_world=400, n_synthetic=10)
    shared = linear_reps(cities, hidden=32, noise=0.05, seed=3)  # one map, rotated per model
    noise = np.random.default_rng(5).normal(size=shared.shape).astype(np.float32)
    specs = {  # label: (tasks, seed, representation)
        "d@1": (("distance",), "1", noise), "a@1": (("angle",), "1", shared),
        "p@1": (("perimeter",), "1", shared), "c@1": (("crossing",), "1", shared),
        "a@2": (("angle",), "2", shared),
        "da@1": (("distance", "angle"), "1", shared), "pc@1": (("perimeter", "compass"), "1",
                                                              shared),
        "dp@1": (("distance", "perimeter"), "1", noise),
    }
    paths, models = {}, {}
    for i, (label, (tasks, seed, base)) in enumerate(specs.items()):
        vectors = np.einsum("nlph,hk->nlpk", base, _rotation(32, 20 + i))
        paths[label] = write_reps(tmp_path / label.replace("@", "_"), cities, vectors)
        models[label] = Model(tasks, seed)
    out = cka_by_tasks(paths, models, ConvergenceSpec(), tmp_path / "conv")
    pairs = pd.read_csv(out / "pairs.csv")
    got = {(r.model_a, r.model_b): r.relation for r in pairs.itertuples()}
    # crossing alone is left out; pairs across seeds only for one config; shared tasks never
    assert not any("c@1" in k for k in got)
    assert got[("a@1", "a@2")] == "same config" and ("d@1", "a@2") not in got
    assert ("da@1", "dp@1") not in got and got[("da@1", "pc@1")] == "no shared task"
    assert {k for k, v in got.items() if v == "no shared task"} == {
        ("d@1", "a@1"), ("d@1", "p@1"), ("a@1", "p@1"), ("da@1", "pc@1")}  # pc, dp share P
    summary = pd.read_csv(out / "summary.csv").set_index(["relation", "n_tasks"])
    one = pairs[(pairs["relation"] == "no shared task") & (pairs["n_tasks"] == 1)]["cka"]
    assert summary.loc[("no shared task", 1), "mean"] == pytest.approx(one.mean())
    assert summary.loc[("no shared task", 1), "n"] == 3
    assert summary.loc[("same config", 1), "mean"] == pytest.approx(1.0, abs=1e-3)
    assert (out / "convergence.png").is_file()
