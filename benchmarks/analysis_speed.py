"""Analysis speed: linear CKA of two 4,400 x 256 matrices, and OLS probes for 7 runs x 4 layers.

CKA is timed in feature space (worldrep) against the reference's kernel form, which builds the
n x n linear kernels and centres each with two dense products by H = I - 11^T/n, in the same
script, and the two values are checked to agree. The probes are the reference's protocol
(3,250 train / 1,250 test cities, OLS on x and y, R^2, MAE, Euclidean error) on synthetic
representations shaped like the reference's (4,500 cities x 2 positions x 128 per layer).

    python benchmarks/analysis_speed.py
    python benchmarks/analysis_speed.py --repeats 5 --skip-naive
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def best_of(fn, repeats: int) -> tuple[float, object]:
    """Best wall time of `repeats` calls (the machine is shared; the best is the least noisy)."""
    best, value = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t)
    return best, value


def naive_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """The reference computation: n x n kernels, centred as H K H with dense products."""
    n = len(X)
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = X @ X.T, Y @ Y.T
    Kc, Lc = H @ K @ H, H @ L @ H
    return float(np.sum(Kc * Lc) / (np.linalg.norm(Kc) * np.linalg.norm(Lc)))


def bench_cka(n: int, d: int, repeats: int, skip_naive: bool) -> dict:
    from worldrep.analysis.cka import debiased_cka, linear_cka, mutual_knn

    g = np.random.default_rng(0)
    X = g.normal(size=(n, d)).astype(np.float32)
    Y = (X @ g.normal(size=(d, d)) + g.normal(size=(n, d))).astype(np.float32)
    out = {"n": n, "d": d}
    out["linear_cka_s"], value = best_of(lambda: linear_cka(X, Y), repeats)
    out["linear_cka"] = value
    out["debiased_cka_s"], _ = best_of(lambda: debiased_cka(X, Y), repeats)
    out["mutual_knn_k10_s"], _ = best_of(lambda: mutual_knn(X, Y, k=10), max(1, repeats // 2))
    if not skip_naive:
        X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
        out["naive_nxn_s"], naive = best_of(lambda: naive_cka(X64, Y64), 1)
        out["naive_value_diff"] = abs(naive - value)
        out["speedup"] = out["naive_nxn_s"] / out["linear_cka_s"]
    return out


def bench_probes(runs: int, layers: int, repeats: int) -> dict:
    from worldrep.analysis.probes import ProbeSpec, fit_probe, split_cities

    g = np.random.default_rng(1)
    n, hidden = 4500, 128
    xy = np.stack([g.integers(-1800, 1800, n), g.integers(-600, 700, n)], 1).astype(float)
    feats = [[(xy / 1000) @ g.normal(size=(2, 2 * hidden)) + 0.3 * g.normal(size=(n, 2 * hidden))
              for _ in range(layers)] for _ in range(runs)]
    feats = [[f.astype(np.float32) for f in run] for run in feats]
    ids = np.arange(1000, 1000 + n)
    spec = ProbeSpec()

    def all_probes():
        train, test = split_cities(ids, spec.n_train, spec.n_test, spec.seed)
        return [fit_probe(X, xy, train, test, spec)[0]["x_test_r2"] for run in feats for X in run]

    seconds, r2 = best_of(all_probes, repeats)
    return {"runs": runs, "layers": layers, "probes": runs * layers, "seconds": seconds,
            "per_probe_ms": 1000 * seconds / (runs * layers), "min_x_test_r2": float(min(r2))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4400)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}")
    cka = bench_cka(args.n, args.d, args.repeats, args.skip_naive)
    print(f"linear CKA {args.n}x{args.d} (feature space): {cka['linear_cka_s'] * 1000:.1f} ms")
    print(f"debiased CKA: {cka['debiased_cka_s'] * 1000:.1f} ms; "
          f"mutual kNN (k=10): {cka['mutual_knn_k10_s'] * 1000:.0f} ms")
    if "naive_nxn_s" in cka:
        print(f"naive n x n centring-matrix CKA: {cka['naive_nxn_s']:.2f} s "
              f"(x{cka['speedup']:.0f} slower; |difference| {cka['naive_value_diff']:.1e})")
    probes = bench_probes(7, 4, args.repeats)
    print(f"OLS probes, 7 runs x 4 layers (3,250/1,250 cities, 256 features): "
          f"{probes['seconds']:.2f} s ({probes['per_probe_ms']:.0f} ms per probe)")
    print(json.dumps({"cka": cka, "probes": probes}))


if __name__ == "__main__":
    main()
