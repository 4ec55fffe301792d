"""The kinds of steps that read models: representations, and the analyses over them.

Each kind's Spec is its stage's own spec (worldrep.analysis) plus the fields that name the
steps it reads (`step_model`); `stage_spec` gives the stage its own part back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydantic

from ...config import Strict
from ...errors import WorldrepError
from .base import Lazy, Ref, StepKind, get_kind, register_kind
from .runs import eval_name, eval_summary, model_depth, trained_on


def step_model(stage: type[Strict], **fields):
    """A step's Spec: the stage's spec (`stage`) plus study fields, as pydantic.create_model
    takes them (name=(type, default))."""
    return pydantic.create_model(f"{stage.__name__}Step", __base__=stage, **fields)


class AnalysisKind(StepKind):
    section = "analyses"

    def stage_spec(self, spec: dict):
        """The stage's own spec of a step's: the fields of the spec its Spec extends."""
        stage = self.Spec.__bases__[0]
        return stage.model_validate({k: v for k, v in spec.items() if k in stage.model_fields})


def _task_name(body: dict) -> dict:
    from ..grid import task_name

    if "task" in body:
        body["task"] = task_name(body["task"])
    return body


# -- representations ----------------------------------------------------------------------------
def _reps_model():
    from ...analysis.reps import RepSpec

    return step_model(RepSpec, run=(str, ...),  # a train step
                      world=(str, "world"),
                      # last, final, checkpoint-N, a comma list, or all
                      checkpoint=(str, "last"))


@register_kind
class RepsKind(AnalysisKind):
    name = "reps"
    Spec = Lazy(_reps_model)
    code = ("worldrep.analysis.reps",)
    slurm_job = "follow"

    def tasks(self, spec, steps):
        return {spec["task"]}

    def prepare(self, body):
        return _task_name(body)

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
        from ...analysis.reps import extract

        extract(inputs[spec["run"]], inputs[spec["world"]], self.stage_spec(spec), out,
                spec["checkpoint"])


# -- analyses of labelled reps steps ------------------------------------------------------------
class LabelledReps(Strict):
    label: str
    reps: str  # a reps step


def _with_reps(module: str, spec: str, min_length: int, **fields):
    """A step model: an analysis spec (`worldrep.analysis.<module>.<spec>`) plus the reps
    steps it reads (at least `min_length`) and any further study-side fields."""
    import importlib

    stage = getattr(importlib.import_module(f"worldrep.analysis.{module}"), spec)
    return step_model(stage, reps=(list[str | LabelledReps],
                                   pydantic.Field(min_length=min_length)), **fields)


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


def _reps_refs(spec: dict) -> list[Ref]:
    return [Ref(f"reps[{i}]", item["reps"], ("reps",)) for i, item in enumerate(spec["reps"])]


def _reps_inputs(spec: dict, inputs: dict[str, Path]) -> dict[str, Path]:
    """label -> reps directory (a series' last checkpoint) of each reps step read."""
    from ...analysis.reps import last_reps

    return {item["label"]: last_reps(inputs[item["reps"]]) for item in spec["reps"]}


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


def check_probe_cities(spec: dict, steps: dict) -> None:
    """A probe's n_train + n_test fit the cities each of its reps steps reads that match its
    `cities`: a probe that would fail after its models trained fails when the study loads."""
    from ...analysis.reps import city_rows
    from ...pools import select
    from .datasets import _world_of

    need = spec["n_train"] + spec["n_test"]
    for item in spec["reps"]:
        step = steps.get(item["reps"])
        if step is None or step.kind != "reps" or step.spec.get("world") not in steps:
            continue
        world = _world_of(steps[step.spec["world"]].spec)
        rep = get_kind("reps").stage_spec(step.spec)
        read = city_rows(world, rep)
        have = int(np.isin(read, select(world, spec["cities"])).sum())
        if need > have:
            raise WorldrepError(
                f"{spec['n_train']} train + {spec['n_test']} test cities requested, but the "
                f"reps step '{step.name}' reads only {have} cities matching "
                f"cities='{spec['cities']}' (ids >= {rep.min_id}); allowed: n_train + n_test "
                f"<= {have}")


def _probe_model():
    # world: where true coordinates come from (None: from the reps)
    return _with_reps("probes", "ProbeSpec", 1, world=(str | None, "world"))


@register_kind
class ProbeKind(AnalysisKind):
    name = "probe"
    Spec = Lazy(_probe_model)
    code = ("worldrep.analysis.probes",)

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
        check_probe_cities(spec, steps)

    def run(self, spec, inputs, out):
        from ...analysis.probes import run_probe
        from ...analysis.reps import by_checkpoint

        reps: dict[str, Path] = {}
        for item in spec["reps"]:  # a series of checkpoints is probed at every checkpoint
            reps.update(by_checkpoint(item["label"], inputs[item["reps"]]))
        world = inputs[spec["world"]] if spec["world"] else None
        run_probe(reps, world, self.stage_spec(spec), out)


def _cka_model():
    return _with_reps("cka", "CKASpec", 2)


@register_kind
class CKAKind(ProbeKind):
    name = "cka"
    Spec = Lazy(_cka_model)
    code = ("worldrep.analysis.cka",)

    def refs(self, spec):
        return _reps_refs(spec)

    def check(self, spec, steps):
        check_reps_layers(spec, steps)  # no split of cities to check: CKA reads them all

    def run(self, spec, inputs, out):
        from ...analysis.cka import cka_matrix

        cka_matrix(_reps_inputs(spec, inputs), self.stage_spec(spec), out)


def _convergence_model():
    # models: filled in from the study graph (what each model was trained on, its seed)
    return _with_reps("cka", "ConvergenceSpec", 2,
                      models=(dict[str, dict], pydantic.Field(default_factory=dict)))


@register_kind
class ConvergenceKind(CKAKind):
    """CKA of models that share no training task, by task count (paper Fig. 3d). Each
    model's tasks and seed come from its run's data and spec."""

    name = "convergence"
    Spec = Lazy(_convergence_model)

    def resolve(self, spec, steps):
        models = {}
        for item in spec["reps"]:
            run = steps[item["reps"]].spec["run"]  # the train step the reps step reads
            models[item["label"]] = {"tasks": trained_on(steps, run),
                                     "seed": str(steps[run].spec["seed"])}
        return {**spec, "models": models}

    def run(self, spec, inputs, out):
        from ...analysis.cka import Model, cka_by_tasks

        models = {k: Model(tuple(v["tasks"]), v["seed"]) for k, v in spec["models"].items()}
        cka_by_tasks(_reps_inputs(spec, inputs), models, self.stage_spec(spec), out)


def _atlantis_model():
    return _with_reps("atlantis", "AtlantisSpec", 1)


@register_kind
class AtlantisKind(CKAKind):
    name = "atlantis"
    Spec = Lazy(_atlantis_model)
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
        from ...analysis.atlantis import atlantis_error

        atlantis_error(_reps_inputs(spec, inputs), self.stage_spec(spec), out)


# -- analyses of one reps step, of runs, of evaluations -----------------------------------------
def _pca_model():
    from ...analysis.pca import PCASpec

    return step_model(PCASpec, reps=(str, ...),  # a reps step; a series gives a timeline
                      title=(str | None, None))


@register_kind
class PCAKind(AnalysisKind):
    name = "pca"
    Spec = Lazy(_pca_model)
    code = ("worldrep.analysis.pca",)

    def refs(self, spec):
        return [Ref("reps", spec["reps"], ("reps",))]

    def run(self, spec, inputs, out):
        from ...analysis.pca import pca_timeline, pca_views
        from ...analysis.reps import is_series, reps_series

        path, title = inputs[spec["reps"]], spec["title"] or spec["reps"]
        if is_series(path):
            pca_timeline(reps_series(path), self.stage_spec(spec), out, title=title)
        else:
            pca_views(path, self.stage_spec(spec), out, title=title)


def _speed_model():
    from ...analysis.speed import SpeedSpec

    return step_model(SpeedSpec,
                      probe=(str, ...),  # a probe step over series of the runs' checkpoints
                      runs=(list[str], pydantic.Field(min_length=1)))  # train steps


@register_kind
class SpeedKind(AnalysisKind):
    """How fast runs learn: the step and seconds at which each task leaves its plateau, and
    at which the probe finds a map (analysis/speed.py)."""

    name = "speed"
    Spec = Lazy(_speed_model)
    code = ("worldrep.analysis.speed",)

    def refs(self, spec):
        return [Ref("probe", spec["probe"], ("probe",))] + [
            Ref(f"runs[{i}]", run, ("train",)) for i, run in enumerate(spec["runs"])]

    def run(self, spec, inputs, out):
        import pandas as pd

        from ...analysis.speed import learning_speed

        probes = pd.read_csv(inputs[spec["probe"]] / "metrics.csv")
        learning_speed({run: inputs[run] for run in spec["runs"]}, probes,
                       self.stage_spec(spec), out)


class LabelledRun(Strict):
    label: str  # e.g. angle, or distance+angle (the tasks fine-tuned on, joined by '+')
    run: str  # a train step whose evaluations are read
    seed: str | None = None  # filled in from the run's spec


def _ni_model():
    from ...analysis.improvement import NISpec

    # base: the train step(s) fine-tuned from (their evaluations are the baselines); several
    # bases are told apart by their seeds, and each fine-tune is matched to its seed's
    return step_model(
        NISpec, base=(str | list[str], ...),
        world_data=(list[str], pydantic.Field(min_length=1)),  # world test sets, one a task
        atlantis_data=(list[str], pydantic.Field(min_length=1)),  # Atlantis test sets
        finetuned=(list[LabelledRun], pydantic.Field(min_length=1)),
        base_seeds=(dict[str, str], pydantic.Field(default_factory=dict)))  # filled in


@register_kind
class NIKind(AnalysisKind):
    """Normalised improvement of fine-tunes over their base: with several bases (seeds),
    seed-mean matrices and one panel per seed."""

    name = "ni"
    Spec = Lazy(_ni_model)
    code = ("worldrep.analysis.improvement",)

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
        from ...analysis.improvement import ni_matrix

        def merged(run: str, datasets: list[str]) -> dict:
            summary: dict = {}
            for d in datasets:
                summary.update(eval_summary(inputs[eval_name(run, d)]))
            return summary

        ni = self.stage_spec(spec)
        several = len(spec["base_seeds"]) > 1

        def label(item) -> str:
            return f"{item['label']}{ni.seed_separator}{item['seed']}" if several else item["label"]

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
