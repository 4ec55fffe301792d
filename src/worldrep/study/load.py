"""Study files: one declarative YAML file expanded into a graph of steps.

A study declares its world, datasets, mixtures, runs, evaluations and analyses, each by name.
A declaration may carry a `grid` (see worldrep.grid): `pt1-{x}` over seven tasks is one
declaration, seven steps. Every step gets a resolved spec (validated by its kind's pydantic
model, so a bad file fails here with the file, the step and the key), the steps it reads
(`init_from: pt1-{x}`, checked to exist and be of the right kind), and a hash of its spec and
its inputs' hashes. Its artifact directory is `OUT/<kind>/<name>-<hash>`: change one setting
and only that step and what depends on it get new directories.

Top-level keys of a study file:
  name, description, seed, out, plugins (modules registering extra step kinds),
  lists (named value lists for grids), templates (named bodies a declaration can `use`),
  defaults (per step kind), resources (per step kind, for the slurm executor),
  max_steps (the most steps the study may expand to, default 100,000; checked before any
  grid is expanded),
  world (one world, named 'world') or worlds, datasets, mixtures, runs, evals, analyses,
  steps (any kind, given by `kind:`).
"""

from __future__ import annotations

import copy
import difflib
import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pydantic

from .. import builtin_studies
from ..config import Strict, load_yaml, parse_config
from ..errors import WorldrepError
from .grid import MAX_RENDERED, MAX_STEPS, expand, grid_size, render
from .identity import Sources, StepIdentity, task_modules, without
from .kinds import get_kind

# The sections of a study file that declare steps. A declaration in an open section names its
# kind (`kind:`); in any other, its kind is the one declared for that section (StepKind.section).
SECTIONS = ("worlds", "datasets", "mixtures", "runs", "evals", "analyses", "steps")
OPEN_SECTIONS = ("analyses", "steps")
RESERVED = ("name", "grid", "where", "use", "kind")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]*")
MAX_NAME = 120  # characters: a step's files add a hash and suffixes, file names stop at 255
BUILTIN_DIR = builtin_studies.DIR  # shipped inside the package


class Resources(Strict):
    """What a step of one kind asks of a Slurm cluster."""

    partition: str | None = None
    time_min: int = pydantic.Field(60, ge=1)
    gpus: int = pydantic.Field(0, ge=0)
    cpus: int = pydantic.Field(1, ge=1)
    mem_gb: float = pydantic.Field(8, gt=0)
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    setup: list[str] = pydantic.Field(default_factory=list)  # shell lines before the job


class StudyFile(Strict):
    name: str | None = None
    description: str = ""
    seed: int | None = None
    out: str | None = None
    plugins: list[str] = pydantic.Field(default_factory=list)
    lists: dict[str, list] = pydantic.Field(default_factory=dict)
    templates: dict[str, dict] = pydantic.Field(default_factory=dict)
    defaults: dict[str, dict] = pydantic.Field(default_factory=dict)
    resources: dict[str, Resources] = pydantic.Field(default_factory=dict)
    # auto: train compatible runs that are ready together as one pack (worldrep.packplan)
    pack: Literal["auto", "off"] = "off"
    pack_limit: int = pydantic.Field(42, ge=1)  # at most this many runs in one pack
    # a study expands to at most this many steps (checked before any grid is expanded)
    max_steps: int = pydantic.Field(MAX_STEPS, ge=1)
    world: dict | None = None
    worlds: list[dict] = pydantic.Field(default_factory=list)
    datasets: list[dict] = pydantic.Field(default_factory=list)
    mixtures: list[dict] = pydantic.Field(default_factory=list)
    runs: list[dict] = pydantic.Field(default_factory=list)
    evals: list[dict] = pydantic.Field(default_factory=list)
    analyses: list[dict] = pydantic.Field(default_factory=list)
    steps: list[dict] = pydantic.Field(default_factory=list)
    # Findings the report computes from the artifacts (worldrep.study.findings)
    findings: list[dict] = pydantic.Field(default_factory=list)


@dataclass
class Step:
    name: str
    kind: str
    spec: dict
    origin: str  # where it was declared, e.g. "runs[3] 'pft{x}-{y}' (x=1, y=2)"
    group: str  # the declaration's name template: steps of one grid share it
    deps: list[str] = field(default_factory=list)
    identity: StepIdentity | None = None  # set when the graph is linked

    @property
    def hash(self) -> str:
        return self.identity.hash if self.identity else ""

    @property
    def dirname(self) -> str:
        return f"{self.name}-{self.hash}"


@dataclass
class Study:
    name: str
    path: Path
    scale: float
    steps: dict[str, Step]  # in dependency order
    resources: dict[str, Resources]
    plugins: list[str]
    description: str = ""
    out: str | None = None
    pack: str = "off"
    pack_limit: int = 42
    overrides: list[str] = field(default_factory=list)  # --set KEY=VALUE, as given
    findings: list[dict] = field(default_factory=list)  # what the report holds against paper

    def default_out(self) -> Path:
        base = Path(self.out) if self.out else Path("out") / self.name
        return base if self.scale == 1 else base.with_name(f"{base.name}-scale{self.scale:g}")

    def step_dir(self, out: Path, step: Step | str) -> Path:
        step = self.steps[step] if isinstance(step, str) else step
        return Path(out) / step.kind / step.dirname

    def dependents(self, name: str) -> list[str]:
        """Every step that reads `name`, directly or not, in dependency order."""
        hit = {name}
        for step in self.steps.values():
            if any(d in hit for d in step.deps):
                hit.add(step.name)
        return [s for s in self.steps if s in hit and s != name]


# -- loading --------------------------------------------------------------------------------
def resolve_study_path(study: str | Path) -> Path:
    """A path, or the name of a built-in study (quickstart, paper)."""
    path = Path(study)
    if path.is_file():
        return path
    builtin = BUILTIN_DIR / f"{study}.yaml"
    if builtin.is_file():
        return builtin
    raise WorldrepError(f"study file not found: {study} (built-in studies: "
                        f"{', '.join(builtin_studies.names())})")


def load_study(path: str | Path, scale: float = 1.0, sources: Sources | None = None,
               overrides: list[str] | None = None) -> Study:
    """A study file expanded and linked into its step graph. `overrides` are `--set`
    settings (`KIND.KEY=VALUE` for every step of a kind, `KEY=VALUE` for the study file);
    `sources` is where the code that step identities cover is read (default: this worldrep)."""
    path = resolve_study_path(path)
    if not 1 <= scale < float("inf"):
        raise WorldrepError(f"--scale must be a finite number >= 1 (it divides sizes and "
                            f"steps), got {scale}")
    raw = load_yaml(path)
    if isinstance(raw.get("plugins"), list):  # their kinds may be named by overrides
        import_plugins([str(m) for m in raw["plugins"]])
    per_kind = _apply_top_level(raw, parse_overrides(overrides or []), path)
    sf = parse_config(StudyFile, raw, where=str(path))
    import_plugins(sf.plugins)
    builder = _Builder(path, sf, scale, sources or Sources(), per_kind)
    if sf.world is not None:
        builder.declare("worlds", "world", {"name": "world", **sf.world})
    for section in SECTIONS:
        for i, decl in enumerate(getattr(sf, section)):
            builder.declare(section, f"{section}[{i}]", decl)
    if not builder.steps:
        raise WorldrepError(f"{path}: the study declares no steps; declare a world, datasets, "
                            "runs, evals or analyses (see `worldrep plan quickstart`)")
    steps = builder.link()
    return Study(name=sf.name or path.stem, path=path, scale=scale, steps=steps,
                 resources=sf.resources, plugins=sf.plugins, description=sf.description,
                 out=sf.out, pack=sf.pack, pack_limit=sf.pack_limit,
                 overrides=list(overrides or []), findings=sf.findings)


def parse_overrides(items: list[str]) -> list[tuple[list[str], Any, str]]:
    """`KEY.PATH=VALUE` items as (path, value, item); VALUE is read as YAML (3e-4, true,
    [1, 2], null)."""
    import yaml

    out = []
    for item in items:
        key, sep, value = item.partition("=")
        path = [k for k in key.strip().split(".") if k]
        if not sep or not path:
            raise WorldrepError(f"--set '{item}': expected KEY=VALUE, e.g. "
                                "train.model.preset=tiny or pack_limit=7")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as err:
            raise WorldrepError(f"--set '{item}': the value is not valid YAML: {err}") from None
        out.append((path, parsed, item))
    return out


def _apply_top_level(raw: dict, overrides, path: Path) -> dict[str, list]:
    """Set study-file keys (`pack_limit=7`, or inside one: `lists.seeds=[42, 1]`) in `raw`;
    return the per-kind ones by kind."""
    from .kinds import KINDS

    per_kind: dict[str, list] = {}
    for keys, value, item in overrides:
        if keys[0] in KINDS and len(keys) > 1:
            per_kind.setdefault(keys[0], []).append((keys[1:], value, item))
        elif keys[0] in StudyFile.model_fields and len(keys) == 1:
            raw[keys[0]] = value
        elif keys[0] in StudyFile.model_fields and isinstance(raw.get(keys[0], {}), dict):
            raw[keys[0]] = _set(raw.get(keys[0], {}), keys[1:], value)
        elif keys[0] in StudyFile.model_fields:
            raise WorldrepError(f"--set '{item}': the study key '{keys[0]}' holds no mapping; "
                                f"set it whole: {keys[0]}=VALUE")
        else:
            raise WorldrepError(
                f"--set '{item}': '{keys[0]}' is neither a step kind (then KIND.KEY=VALUE) nor "
                f"a study key (KEY=VALUE, or KEY.INNER=VALUE inside a mapping); kinds: {', '.join(sorted(KINDS))}; study keys: "
                f"{', '.join(k for k in StudyFile.model_fields if k not in SECTIONS)}")
    return per_kind


def _set(body: dict, keys: list[str], value: Any) -> dict:
    out = copy.deepcopy(body)
    node = out
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[keys[-1]] = copy.deepcopy(value)
    return out


def import_plugins(modules: list[str]) -> None:
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise WorldrepError(f"plugin module '{module}' cannot be imported: {err}") from None


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _Builder:
    def __init__(self, path: Path, sf: StudyFile, scale: float, sources: Sources,
                 overrides: dict[str, list] | None = None):
        self.path, self.sf, self.scale, self.sources = path, sf, scale, sources
        self.overrides = overrides or {}
        self.steps: dict[str, Step] = {}
        self.budget = [MAX_RENDERED]  # values the steps' rendered bodies may hold in all

    def fail(self, where: str, msg: str) -> WorldrepError:
        return WorldrepError(f"{self.path}: {where}: {msg}")

    def declare(self, section: str, label: str, decl: Any) -> None:
        """Expand one declaration (`label` says where it is, e.g. runs[3]) into its steps."""
        if not isinstance(decl, dict) or "name" not in decl:
            raise self.fail(label, "each step needs a 'name' (a template such as 'pt1-{x}')")
        kind = decl.get("kind") or section_kind(section)
        if kind is None:
            raise self.fail(f"{label} '{decl['name']}'", f"'{section}' entries need a 'kind'")
        label = f"{label} '{decl['name']}'"
        room = self.sf.max_steps - len(self.steps)
        try:
            body = self.templated_body(decl)
            size = grid_size(decl.get("grid"), self.sf.lists, room)
            if size > room:
                raise WorldrepError(
                    f"the grid expands to {size:,} or more steps; the study may have "
                    f"{room:,} more (max_steps {self.sf.max_steps:,}; raise it if this is "
                    "meant)")
            bindings_list = list(expand(decl.get("grid"), decl.get("where"), self.sf.lists,
                                        limit=room))
        except WorldrepError as err:
            raise self.fail(label, str(err)) from None
        if not bindings_list:
            raise self.fail(label, "the grid and its 'where' conditions leave no step")
        for bindings in bindings_list:
            shown = ", ".join(f"{k}={v.text()}" for k, v in bindings.items())
            origin = f"{label}" + (f" ({shown})" if shown else "")
            try:
                name = render(decl["name"], bindings)
                rendered = render(body, bindings, self.sf.lists, self.budget)
            except WorldrepError as err:
                raise self.fail(origin, str(err)) from None
            self.add(kind, str(name), rendered, origin, group=str(decl["name"]))

    def templated_body(self, decl: dict) -> dict:
        uses = decl.get("use") or []
        uses = [uses] if isinstance(uses, str) else uses
        body: dict = {}
        for use in uses:
            if use not in self.sf.templates:
                raise WorldrepError(f"'use': no template named '{use}' (templates: "
                                    f"{', '.join(self.sf.templates) or 'none'})")
            body = deep_merge(body, self.sf.templates[use])
        return deep_merge(body, {k: v for k, v in decl.items() if k not in RESERVED})

    def add(self, kind_name: str, name: str, body: dict, origin: str, group: str) -> None:
        if len(name) > MAX_NAME:
            raise self.fail(f"step '{name[:40]}...' ({origin})",
                            f"a step name is at most {MAX_NAME} characters (this one has "
                            f"{len(name)})")
        if len(self.steps) >= self.sf.max_steps:
            raise self.fail(origin, f"the study has more than max_steps "
                            f"({self.sf.max_steps:,}) steps; raise max_steps if this is meant")
        where = f"step '{name}' ({origin})"
        if not NAME.fullmatch(name):
            raise self.fail(where, "a step name is letters, digits and _ . + = - "
                            "(starting with a letter or digit)")
        if name in self.steps:
            raise self.fail(where, f"the name '{name}' is already taken by the step declared "
                            f"at {self.steps[name].origin}")
        try:
            kind = get_kind(kind_name)
            body = deep_merge(self.sf.defaults.get(kind_name, {}), body)
            for keys, value, _ in self.overrides.get(kind_name, []):
                body = _set(body, keys, value)
            if self.sf.seed is not None and "seed" not in body and "seed" in _fields(kind):
                body["seed"] = self.sf.seed
            spec = kind.validate(body, where=f"{self.path}: {where}")
            spec, derived = kind.derive(name, spec)
            spec = kind.scale(spec, self.scale) if self.scale != 1 else spec
        except WorldrepError as err:
            msg = str(err)
            raise (WorldrepError(msg) if msg.startswith(str(self.path)) else
                   self.fail(where, msg)) from None
        self.steps[name] = Step(name=name, kind=kind_name, spec=spec, origin=origin, group=group)
        for d in derived:
            self.add(d.kind, d.name, d.body, f"{origin}, from '{name}'", group=f"{group}:{d.kind}")

    def link(self) -> dict[str, Step]:
        for step in self.steps.values():
            for ref in get_kind(step.kind).refs(step.spec):
                self.check_ref(step, ref)
                if ref.name not in step.deps:
                    step.deps.append(ref.name)
        ordered = self.topological()
        for step in ordered:
            try:
                step.spec = get_kind(step.kind).resolve(step.spec, self.steps)
                get_kind(step.kind).check(step.spec, self.steps)
            except WorldrepError as err:
                raise self.fail(f"step '{step.name}' ({step.origin})", str(err)) from None
        for step in ordered:
            step.identity = self.identity(step)
        return {s.name: s for s in ordered}

    def identity(self, step: Step) -> StepIdentity:
        kind = get_kind(step.kind)
        modules = kind.code_modules() + task_modules(kind.tasks(step.spec, self.steps))
        deps = [self.steps[d] for d in step.deps]
        return StepIdentity(
            kind=step.kind, spec=without(step.spec, kind.runtime),
            inputs={d.name: d.hash for d in deps}, input_bases={d.name: d.identity.base
                                                                 for d in deps},
            code={m: self.sources.digest(m) for m in self.sources.closure(modules)})

    def check_ref(self, step: Step, ref) -> None:
        where = f"step '{step.name}' ({step.origin})"
        target = self.steps.get(ref.name)
        if target is None:
            candidates = [s.name for s in self.steps.values() if s.kind in ref.kinds]
            close = difflib.get_close_matches(ref.name, candidates, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise self.fail(where, f"'{ref.key}': no {' or '.join(ref.kinds)} step named "
                            f"'{ref.name}'{hint}")
        if target.kind not in ref.kinds:
            raise self.fail(where, f"'{ref.key}': '{ref.name}' is a {target.kind} step; "
                            f"expected a {' or '.join(ref.kinds)} step")

    def topological(self) -> list[Step]:
        """Dependency order, keeping declaration order among steps that are free to run."""
        done: set[str] = set()
        order: list[Step] = []
        remaining = list(self.steps.values())
        while remaining:
            ready = [s for s in remaining if all(d in done for d in s.deps)]
            if not ready:
                cycle = ", ".join(s.name for s in remaining[:6])
                raise self.fail("steps", f"circular references among: {cycle}")
            for s in ready:
                done.add(s.name)
            order.extend(ready)
            remaining = [s for s in remaining if s.name not in done]
        return order


def section_kind(section: str) -> str | None:
    """The kind a declaration in `section` has unless it says (None in an open section): the
    first kind registered for it (a built-in one; a plugin's does not displace it)."""
    from .kinds import KINDS

    if section in OPEN_SECTIONS:
        return None
    return next((k.name for k in KINDS.values() if k.section == section), None)


def _fields(kind) -> set[str]:
    spec = kind.Spec
    return set(getattr(spec, "model_fields", {}))
