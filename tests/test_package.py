"""worldrep as a real package: a built wheel, installed elsewhere, runs its built-in studies,
and the engine and the stages do not import each other in circles."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

import worldrep
from worldrep.study.identity import Sources

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_built_wheel_runs_the_quickstart_from_outside_the_checkout(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "-w", str(dist), str(REPO)], check=True)
    wheel = next(dist.glob("worldrep-*.whl"))
    env_dir = tmp_path / "env"
    # The fresh environment sees this machine's packages (torch is large) but not the
    # checkout: worldrep itself comes from the wheel.
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    str(wheel)], check=True)
    where = subprocess.run([str(python), "-c", "import worldrep; print(worldrep.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert str(env_dir) in where and str(REPO) not in where
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    listed = subprocess.run([str(env_dir / "bin" / "worldrep"), "plan", "paper"],
                            capture_output=True, text=True, cwd=elsewhere)
    assert listed.returncode == 0, listed.stderr
    result = subprocess.run([str(env_dir / "bin" / "worldrep"), "quickstart", "--scale", "400",
                             "--out", "q"], capture_output=True, text=True, cwd=elsewhere)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (elsewhere / "q" / "report.html").is_file()


def _modules() -> list[str]:
    root = Path(worldrep.__file__).parent
    names = []
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_another_that_imports_it_back():
    """Function-level imports count too: the engine is two layers (stages, then the
    engine over them), not a circle of modules reaching into each other."""
    sources, modules = Sources(), _modules()
    graph = {m: {x for x in sources.imports(m) if x in modules and x != m} for m in modules}
    assert _cycles(graph) == []


def test_the_stages_never_import_the_engine():
    sources, modules = Sources(), _modules()
    stages = [m for m in modules if not m.startswith(("worldrep.study", "worldrep.cli"))]
    reach = {m: {x for x in sources.imports(m) if x.startswith("worldrep.study")}
             for m in stages}
    assert {m: r for m, r in reach.items() if r} == {}


SCHEDULER = ("worldrep.study.units", "worldrep.study.runner", "worldrep.study.executors",
             "worldrep.study.backends", "worldrep.study.plan")


def test_the_scheduler_knows_no_step_kind_by_name():
    """Which steps pack, share a Slurm job or lead its resources is asked of the kinds
    (StepKind.packs, data, slurm_job, rank): no kind's name is spelled in the scheduling."""
    import ast

    from worldrep.study.kinds import KINDS

    sources = Sources()
    for module in SCHEDULER:
        tree = ast.parse(sources.file(module).read_text())
        named = {node.value for node in ast.walk(tree)
                 if isinstance(node, ast.Constant) and node.value in KINDS}
        assert named == set(), (module, named)


def test_the_engine_imports_no_private_name_of_a_stage():
    import ast

    sources, found = Sources(), []
    for module in _modules():
        if not module.startswith("worldrep.study"):
            continue
        for node in ast.walk(ast.parse(sources.file(module).read_text())):
            if isinstance(node, ast.ImportFrom) and not (node.module or "").startswith(
                    ("study", "worldrep.study")) and node.level != 1:
                found += [f"{module}: {a.name}" for a in node.names if a.name.startswith("_")]
    assert found == []


def test_each_kind_takes_its_runtime_fields_from_its_stage():
    from worldrep.analysis.reps import RepSpec
    from worldrep.evaluate import EvalSpec
    from worldrep.study.kinds import get_kind
    from worldrep.train import TrainSpec

    assert get_kind("train").runtime == TrainSpec.RUNTIME_FIELDS
    assert get_kind("eval").runtime == EvalSpec.RUNTIME_FIELDS
    assert get_kind("reps").runtime == RepSpec.RUNTIME_FIELDS
