"""The quickstart study end to end, at a tiny scale (the full one is the README's job)."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from worldrep.cli import app
from worldrep.study import load_study
from worldrep.study.cache import study_states

SECTIONS = ("Training", "Task metrics", "World maps from linear probes",
            "Representational similarity (CKA)", "Atlantis reconstruction error",
            "Normalised improvement", "PCA views")


@pytest.mark.slow
def test_quickstart_at_tiny_scale_runs_every_step_and_writes_the_report(tmp_path):
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
