"""`worldrep analyze ...`: every subcommand end to end, and one-line errors with exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from analysis_fakes import fake_cities, linear_reps, tiny_model, write_reps
from worldrep.cli import app

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def reps_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    cities = fake_cities(n_world=4200, n_synthetic=40)
    return {name: write_reps(root / name, cities,
                             linear_reps(cities, hidden=16, noise=0.05, seed=i, layers=(4, 5)),
                             layers=(4, 5))
            for i, name in enumerate(["a1", "a2", "b1"])}


def test_analyze_reps_from_a_run(world_dir, tmp_path):
    run = tmp_path / "run"
    tiny_model(0).save_pretrained(run / "checkpoints" / "checkpoint-10")
    tiny_model(1).save_pretrained(run / "checkpoints" / "final")
    r = cli("analyze", "reps", run, "--world", world_dir, "--out", tmp_path / "one",
            "--cities", "region:Korea", "--layer", "1", "--layer", "6")
    assert r.exit_code == 0, r.output
    z = np.load(tmp_path / "one" / "reps.npz")
    assert z["layers"].tolist() == [1, 6] and z["vectors"].shape[1:] == (2, 2, 16)
    # The newest checkpoint ('last', the default): named by content, its path kept for people.
    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert manifest["checkpoint"].endswith("checkpoints/final")
    assert "checkpoint_hash" in (tmp_path / "one" / "spec.yaml").read_text()
    r = cli("analyze", "reps", run, "--world", world_dir, "--out", tmp_path / "all",
            "--checkpoint", "all", "--cities", "region:Korea")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["checkpoint-10", "final"]
    r = cli("analyze", "pca", tmp_path / "all", "--out", tmp_path / "timeline")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "timeline" / "timeline.html").is_file()


def test_analyze_probe_cka_pca_atlantis(reps_dirs, tmp_path):
    a1, a2, b1 = reps_dirs.values()
    r = cli("analyze", "probe", f"A={a1}", b1, "--out", tmp_path / "probe", "--layer", "5",
            "--n-train", "2000", "--n-test", "500")
    assert r.exit_code == 0, r.output
    table = pd.read_csv(tmp_path / "probe" / "metrics.csv")
    assert table["label"].tolist() == ["A", "b1"] and (table["n_train"] == 2000).all()
    r = cli("analyze", "cka", f"A@1={a1}", f"A@2={a2}", f"B={b1}", "--out", tmp_path / "cka",
            "--metric", "linear_cka", "--metric", "debiased_cka", "--layer", "5")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "cka" / "debiased_cka_l5.png").is_file()
    r = cli("analyze", "pca", a1, "--out", tmp_path / "pca", "--max-points", "300")
    assert r.exit_code == 0, r.output
    assert len(pd.read_parquet(tmp_path / "pca" / "projections.parquet")) == 300
    r = cli("analyze", "atlantis", f"x={a1}", f"y={b1}", "--out", tmp_path / "atl",
            "--group", "x=with distance", "--n-train", "3000")
    assert r.exit_code == 0, r.output
    summary = pd.read_csv(tmp_path / "atl" / "summary.csv")
    assert summary["group"].tolist() == ["held-out world", "Atlantis, with distance", "Atlantis"]


def test_analyze_ni(tmp_path):
    def summary(path, **values):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({k: {"mean_error": v} for k, v in values.items()}))
        return path

    world = summary(tmp_path / "base" / "evals" / "world" / "final" / "summary.json",
                    distance=10.0, angle=1.0)
    atl = summary(tmp_path / "base" / "evals" / "atlantis" / "final" / "summary.json",
                  distance=100.0, angle=100.0)
    ft = summary(tmp_path / "ft" / "evals" / "atlantis" / "final" / "summary.json",
                 distance=10.0, angle=10.0)
    r = cli("analyze", "ni", "--ft", f"distance={ft.parent}", "--base-world", world,
            "--base-atlantis", atl.parent, "--out", tmp_path / "ni")
    assert r.exit_code == 0, r.output
    m = pd.read_csv(tmp_path / "ni" / "ni_single.csv", index_col=0)
    assert m.loc["distance", "distance"] == pytest.approx(1.0)
    assert m.loc["distance", "angle"] == pytest.approx(0.5)


def test_analyze_errors_are_one_line(reps_dirs, tmp_path):
    r = cli("analyze", "cka", reps_dirs["a1"], "--out", tmp_path / "x")
    assert r.exit_code == 2 and "error: similarity needs at least 2 runs" in r.output
    r = cli("analyze", "probe", tmp_path / "nothing", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "error: no finished representations" in r.output
    r = cli("analyze", "cka", "A=", "--out", tmp_path / "x")
    assert r.exit_code == 2 and "expected LABEL=PATH" in r.output
    r = cli("analyze", "probe", reps_dirs["a1"], "--out", tmp_path / "x", "--method", "lasso")
    assert r.exit_code == 2 and "method" in r.output
    assert not (tmp_path / "x").exists()
