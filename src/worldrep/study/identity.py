"""What a step's name stands for: its spec, its inputs and the source of the code that makes it.

A step's artifact directory is `OUT/<kind>/<name>-<hash>`. The hash covers

- the step's resolved spec, less the settings that change how fast it runs, not what it
  computes (threads, devices, progress bars, logging cadence: each kind lists its own);
- the hashes of its inputs, so a change upstream reaches everything downstream;
- the source of the code its stage runs: the stage's modules and every worldrep module they
  import (found by reading their `import` statements, function-level ones included), plus
  the module of each task whose rows the step makes, trains on, scores or prompts with.

The engine itself (worldrep.study) and the command line are not stage code: editing the
report, the CLI or the scheduler redoes nothing. Task modules are reached only through the
tasks a step names, so editing `tasks/distance.py` redoes the distance datasets and what
depends on them, not the angle ones.

Each step also has a `base` hash that leaves code out everywhere (its own and its inputs'):
with `--accept-code` a step whose base hash matches a finished directory adopts it instead
of redoing it, for code changes the user knows to be cosmetic.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import worldrep

from .. import artifacts

ENGINE = ("worldrep.study", "worldrep.cli")  # scheduling code: not part of any step's identity
NOT_CODE = ("worldrep",)  # the package's __init__: its version string, no stage code


def _is_engine(module: str) -> bool:
    return any(module == e or module.startswith(e + ".") for e in ENGINE)


@dataclass
class Sources:
    """Where module sources are read from: the installed worldrep package by default, or
    another copy of it (a test edits a copy to see what an edit would redo)."""

    root: Path = field(default_factory=lambda: Path(worldrep.__file__).parent)
    _digests: dict[str, str] = field(default_factory=dict, repr=False)
    _imports: dict[str, set[str]] = field(default_factory=dict, repr=False)
    _closures: dict[tuple[str, ...], list[str]] = field(default_factory=dict, repr=False)

    def file(self, module: str) -> Path | None:
        """The source file of a module (worldrep's from `root`, others from the import path)."""
        if module == "worldrep" or module.startswith("worldrep."):
            parts = module.split(".")[1:]
            base = self.root.joinpath(*parts)
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file():
                    return candidate
            return None
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            return None
        return Path(spec.origin) if spec and spec.origin and spec.origin.endswith(".py") else None

    def digest(self, module: str) -> str:
        if module not in self._digests:
            path = self.file(module)
            self._digests[module] = (hashlib.sha256(path.read_bytes()).hexdigest()[:12]
                                     if path else "missing")
        return self._digests[module]

    def imports(self, module: str) -> set[str]:
        """The modules `module` imports (any import statement, function-level ones too).
        `from pkg import a, b` imports the submodules a and b where they are modules, and
        pkg itself only for names that are not (a package's __init__ that re-exports its
        modules is not code of a module that reaches one of them directly)."""
        if module not in self._imports:
            path = self.file(module)
            found: set[str] = set()
            for target, names in (_imported(module, path) if path else []):
                subs = [f"{target}.{n}" for n in names]
                modules = [m for m in subs if self.file(m) is not None]
                found.update(modules)
                if len(modules) < len(subs) or not names:
                    found.add(target)
            self._imports[module] = found
        return self._imports[module]

    def closure(self, roots: list[str]) -> list[str]:
        """The roots and every module they reach through imports, engine excluded; imports
        are followed within worldrep and within the roots' own top-level packages."""
        key = tuple(sorted(roots))
        if key not in self._closures:
            self._closures[key] = self._walk(list(key))
        return self._closures[key]

    def _walk(self, roots: list[str]) -> list[str]:
        scopes = {"worldrep"} | {r.split(".")[0] for r in roots}
        seen: set[str] = set()
        todo = list(roots)
        while todo:
            module = todo.pop()
            if module in seen or _is_engine(module) or self.file(module) is None:
                continue
            seen.add(module)
            if module in NOT_CODE:
                continue
            todo += [m for m in self.imports(module) if m.split(".")[0] in scopes]
        return sorted(seen - set(NOT_CODE))


def _imported(module: str, path: Path) -> list[tuple[str, list[str]]]:
    """(module, names taken from it) for every import statement of one file, relative
    imports resolved (`import a.b` is ('a.b', []))."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target:
                out.append((target, [alias.name for alias in node.names if alias.name != "*"]))
    return out


def task_modules(tasks: set[str]) -> list[str]:
    """The module defining each task (a task is reached by name through the registry)."""
    from ..tasks import get_task

    return sorted({type(get_task(t)).__module__ for t in tasks})


@dataclass
class StepIdentity:
    """The parts of a step's identity, as recorded beside its directory (`<dir>.step.json`)."""

    kind: str
    spec: dict  # identity spec: runtime settings removed
    inputs: dict[str, str]  # input step -> its hash
    input_bases: dict[str, str]  # input step -> its base hash (code left out)
    code: dict[str, str]  # module -> source digest

    @cached_property
    def hash(self) -> str:
        return artifacts.spec_hash({"kind": self.kind, "spec": self.spec, "inputs": self.inputs,
                                    "code": self.code})

    @cached_property
    def base(self) -> str:
        return artifacts.spec_hash({"kind": self.kind, "spec": self.spec,
                                    "inputs": self.input_bases})

    def record(self) -> dict:
        return {"kind": self.kind, "hash": self.hash, "base": self.base, "spec": self.spec,
                "inputs": self.inputs, "code": self.code}


def without(spec: dict, keys: tuple[str, ...]) -> dict:
    """The spec less the runtime keys (dotted paths reach into nested settings)."""
    out = dict(spec)
    for key in keys:
        head, _, rest = key.partition(".")
        if rest and isinstance(out.get(head), dict):
            out[head] = without(out[head], (rest,))
        else:
            out.pop(head, None)
    return out


def changes(old: dict, new: dict) -> str | None:
    """Why a step whose last finished directory was made as `old` must run again as `new`
    (both step records): spec, input or code changed; None if nothing differs."""
    if old.get("spec") != new["spec"]:
        keys = sorted(_differing(old.get("spec") or {}, new["spec"]))
        return "spec changed: " + ", ".join(keys[:4]) + (" ..." if len(keys) > 4 else "")
    if old.get("inputs") != new["inputs"]:
        names = sorted(k for k in set(old.get("inputs", {})) | set(new["inputs"])
                       if old.get("inputs", {}).get(k) != new["inputs"].get(k))
        return "input changed: " + ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")
    if old.get("code") != new["code"]:
        mods = sorted(m for m in set(old.get("code", {})) | set(new["code"])
                      if old.get("code", {}).get(m) != new["code"].get(m))
        shown = [m.removeprefix("worldrep.") for m in mods]
        return "code changed: " + ", ".join(shown[:4]) + (" ..." if len(shown) > 4 else "")
    return None


def _differing(a: dict, b: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k in set(a) | set(b):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            keys |= _differing(x, y, f"{prefix}{k}.")
        elif x != y:
            keys.add(f"{prefix}{k}")
    return keys
