"""The worked examples of docs/architecture.md run as written: add a task, change the training
loop, add an analysis kind. Each example's blocks run in order in an empty directory, in a
fresh process (a task or kind it registers stays out of this one): a block that starts with
`# file: NAME` is written to NAME, any other Python block runs with `python`, a shell block
with `bash` (`worldrep` being this checkout's command)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import worldrep

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)


def examples() -> dict[str, list[tuple[str, str]]]:
    """Example title -> its (language, code) blocks, in order."""
    text = DOC.read_text().split("## Where to start", 1)[1]
    out = {}
    for part in text.split("\n### ")[1:]:
        title, _, body = part.partition("\n")
        out[title.strip()] = BLOCK.findall(body)
    return out


def run_example(title: str, where: Path) -> str:
    """Run one example's blocks in `where`; their output, joined."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(where), str(Path(worldrep.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    shell = f'worldrep() {{ "{sys.executable}" -m worldrep.cli "$@"; }}\nset -e\n'
    output = []
    for lang, code in examples()[title]:
        first = code.splitlines()[0]
        if first.startswith("# file: "):
            (where / first.removeprefix("# file: ").strip()).write_text(code)
            continue
        command = [sys.executable, "-c", code] if lang == "python" else ["bash", "-c",
                                                                          shell + code]
        result = subprocess.run(command, cwd=where, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        output.append(result.stdout)
    return "\n".join(output)


def test_the_document_has_the_three_examples():
    assert list(examples()) == ["Add a task", "Change the training loop",
                                "Add an analysis kind"]
    assert all(examples().values())


def test_add_a_task(tmp_path):
    out = run_example("Add a task", tmp_path)
    rows = re.findall(r"'(manh\(c_\d{4},c_\d{4}\)=\d+)'", out)
    assert len(rows) == 3, out


def test_change_the_training_loop(tmp_path):
    out = run_example("Change the training loop", tmp_path)
    losses = [float(x) for x in re.findall(r"answer loss ([\d.]+)", out)]
    assert losses and losses[-1] < losses[0], out


@pytest.mark.slow
def test_add_an_analysis_kind(tmp_path):
    out = run_example("Add an analysis kind", tmp_path)
    assert out.splitlines()[-3].startswith("region,cities"), out
    for name in ("by-region", "by-country"):
        (done,) = [p for p in (tmp_path / "out" / "citycount").glob(f"{name}-*") if p.is_dir()]
        assert (done / "counts.csv").is_file() and (done / "manifest.json").is_file()
