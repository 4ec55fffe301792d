"""The quickstart study end to end, at a tiny scale (the full one is the README's job), run
twice: into an absolute directory and into a relative one elsewhere. An artifact's name stands
for its bytes: both runs give the same step directories holding the same bytes."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from worldrep.cli import app
from worldrep.study import load_study
from worldrep.study.cache import study_states

SECTIONS = ("Findings", "The world inside the model", "How fast it learned", "Training",
            "Task metrics", "World maps from linear probes",
            "Representational similarity (CKA)", "Atlantis reconstruction error",
            "Normalised improvement", "PCA views")
# What a result is made of: tables, weights, representations, specs. Not logs with timings
# (metrics.jsonl), manifests (they carry the time they were written) or the report page.
RESULTS = (".parquet", ".safetensors", ".npz", ".csv", ".yaml", ".html", ".pt")
NOT_RESULTS = ("manifest.json", "metrics.jsonl", "report.html")


def result_bytes(out: Path) -> dict[str, str]:
    found = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        if (path.is_file() and path.suffix in RESULTS + (".json",)
                and path.name not in NOT_RESULTS and rel.parts[0] != "slurm"
                and not path.name.endswith((".step.json", ".lock"))):
            found[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.mark.slow
def test_quickstart_at_tiny_scale_gives_the_same_bytes_in_any_directory(tmp_path, monkeypatch):
    out = tmp_path / "quickstart"
    result = CliRunner().invoke(app, ["quickstart", "--scale", "100", "--out", str(out)])
    assert result.exit_code == 0, result.output
    study = load_study("quickstart", scale=100)
    states = study_states(study, out)
    assert {s.state for s in states.values()} == {"done"}
    page = (out / "report.html").read_text()
    for section in SECTIONS:
        assert f"<h2>{section}</h2>" in page
    assert page.count("data:image/png;base64,") >= 8
    # Self-contained: no stylesheet, script or image is fetched from anywhere.
    assert not re.search(r"<(script|link|img|iframe)[^>]*\s(src|href)=['\"]?(https?:)?//", page)
    # Running it again does nothing: every step is cached.
    again = CliRunner().invoke(app, ["run", "quickstart", "--scale", "100", "--out", str(out)])
    assert again.exit_code == 0 and f"0 ran, {len(study.steps)} already done" in again.output
    # The same study into a relative directory somewhere else: the same bytes.
    elsewhere = tmp_path / "a" / "b"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    second = CliRunner().invoke(app, ["run", "quickstart", "--scale", "100", "--out",
                                      os.path.join("rel", "qs"), "--jobs", "2"])
    assert second.exit_code == 0, second.output
    first_bytes, second_bytes = result_bytes(out), result_bytes(elsewhere / "rel" / "qs")
    assert set(first_bytes) == set(second_bytes)  # the same step directories
    kinds = {Path(p).parts[0] for p in first_bytes}
    assert {"dataset", "mixture", "train", "eval", "reps", "probe", "cka", "atlantis", "ni",
            "pca", "speed"} <= kinds
    assert any(p.endswith("model.safetensors") for p in first_bytes)
    differ = sorted(p for p in first_bytes if first_bytes[p] != second_bytes[p])
    assert differ == []
