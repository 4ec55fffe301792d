"""The world/data commands end to end, and their one-line errors with exit code 2."""

import subprocess
import sys

import pandas as pd
from typer.testing import CliRunner

from worldrep.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_world_build_and_data_make_and_mix(tmp_path):
    w = tmp_path / "world"
    assert run("world", "build", "--out", w).exit_code == 0
    assert (w / "cities.parquet").is_file() and (w / "cities.csv").is_file()
    r = run("data", "make", "distance", "--world", w, "--out", tmp_path / "d", "--n-train", 300,
            "--n-val", 10, "--n-test", 50, "--seed", 7)
    assert r.exit_code == 0, r.output
    assert len(pd.read_parquet(tmp_path / "d" / "train.parquet")) == 300
    cfg = tmp_path / "atl.yaml"
    cfg.write_text("task: distance\npool: all\nrequire: Atlantis\nn_train: 200\nn_test: 20\n")
    r = run("data", "make", "distance", "--world", w, "--out", tmp_path / "a", "--config", cfg)
    assert r.exit_code == 0, r.output
    r = run("data", "mix", "--out", tmp_path / "m", "--source", f"{tmp_path / 'd'}:100",
            "--source", f"{tmp_path / 'a'}:200")
    assert r.exit_code == 0, r.output
    assert len(pd.read_parquet(tmp_path / "m" / "train.parquet")) == 300


def test_errors_are_one_line_exit_2(tmp_path, world_dir):
    cases = [
        (["data", "make", "distanse", "--world", world_dir, "--out", tmp_path / "x"],
         "error: unknown task 'distanse'; allowed: distance"),
        (["data", "make", "distance", "--world", tmp_path / "nowhere", "--out", tmp_path / "x"],
         "error: no finished world at"),
        (["data", "make", "distance", "--world", world_dir, "--out", tmp_path / "x",
          "--pool", "Atlantis", "--n-train", "100000"], "distinct items exist"),
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: distance\nn_trian: 5\n")
    cases.append((["data", "make", "distance", "--world", world_dir, "--out", tmp_path / "x",
                   "--config", bad], "unknown key 'n_trian'"))
    for args, message in cases:
        p = subprocess.run([sys.executable, "-m", "worldrep.cli", *map(str, args)],
                           capture_output=True, text=True)
        assert p.returncode == 2, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], p.stderr
    assert not (tmp_path / "x").exists()
