"""What a step kind is: the adapter between a study's declarations and one stage function.

A kind knows about its steps: how to validate a declaration into a resolved spec (`Spec`: the
stage's own spec, plus the fields that name other steps), which fields name other steps
(`refs`), how `--scale` shrinks it (`scale`), and how to run it (`run(spec, inputs, out)`,
where `inputs` maps each referenced step name to its finished artifact directory). Stages
never learn which executor or study called them: they receive plain specs and paths, exactly
as from the command line.

The engine schedules steps by what their kinds declare (`packs`, `data`, `slurm_job`,
`rank`), never by a kind's name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from ...config import Strict, parse_config
from ...errors import WorldrepError


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


SlurmJob = Literal["own", "batch", "lead_in", "follow"]


class StepKind:
    name: ClassVar[str]
    section: ClassVar[str]  # the study-file section that declares steps of this kind
    Spec: ClassVar[type[Strict]]
    # The stage modules a step of this kind runs (their imports are followed; see
    # worldrep.study.identity). Default: the kind's own module (a plugin's).
    code: ClassVar[tuple[str, ...]] = ()

    # -- how the engine schedules steps of this kind (worldrep.study.units, .runner) --------
    # Ready steps of this kind with equal `pack_key`s run as one unit (`run_pack`).
    packs: ClassVar[bool] = False
    # It makes data that other steps read (a world, datasets, mixtures).
    data: ClassVar[bool] = False
    # Its Slurm job: "own" (a job a step, or a pack for a kind that `packs`); "batch" (the
    # steps of this kind at one depth of the graph share a job); "lead_in" (it runs first in
    # the job of the packed steps that alone read it, else as "batch"); "follow" (it joins the
    # steps that follow the one packed step it reads, in a job after it, when it reads
    # nothing else but data; else "own").
    slurm_job: ClassVar[SlurmJob] = "own"
    # A job of steps of several kinds asks for the resources of the kind ranked highest.
    rank: ClassVar[int] = 0

    @property
    def runtime(self) -> tuple[str, ...]:
        """Spec keys that change how fast a step runs, not what it makes: not in its
        identity. The stage's spec names them (Strict.RUNTIME_FIELDS; a plugin's Spec may be
        any pydantic model, which names none)."""
        return getattr(self.Spec, "RUNTIME_FIELDS", ())

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
        """Turn inline parts of a declaration into steps of their own (e.g. a run's `evals:`
        into evaluation steps, so that changing the list never retrains a model)."""
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

    # -- kinds that pack ---------------------------------------------------------------------
    def pack_key(self, steps: dict, name: str, built: dict[str, str] | None = None):
        """The key of a step (`built`: finished input directories by step name, if any):
        steps with equal keys may share a pack. Needs `packs`."""
        raise NotImplementedError

    def pack_rule(self) -> str:
        """Which steps pack together, in words."""
        raise NotImplementedError

    def run_pack(self, jobs: list[tuple[dict, dict[str, Path], Path]]) -> dict[str, str]:
        """Run the steps (spec, inputs, out) as one pack; returns the error of each step that
        failed, by its output directory (the others finished)."""
        raise NotImplementedError

    def cost(self, steps: dict, name: str) -> tuple[int, int] | None:
        """(model-steps, parameters) of a step that trains a model, for the plan's GPU-time
        estimate; None for a step that trains none."""
        return None


KINDS: dict[str, StepKind] = {}


def register_kind(cls: type[StepKind]) -> type[StepKind]:
    KINDS[cls.name] = cls()
    return cls


def get_kind(name: str) -> StepKind:
    if name not in KINDS:
        raise WorldrepError(f"unknown step kind '{name}'; allowed: {', '.join(sorted(KINDS))}")
    return KINDS[name]


def leading_kind(kinds: list[str]) -> str:
    """The kind whose resources a job of steps of these kinds asks for: the highest `rank`
    (of equals, the last)."""
    return max(reversed(kinds), key=lambda k: get_kind(k).rank)


class Lazy:
    """A Spec built on first use from a stage module's pydantic model plus study fields, so
    that importing the kinds does not import torch or the analysis modules."""

    def __init__(self, build):
        self.build, self.model = build, None

    def __get__(self, obj, owner):
        if self.model is None:
            self.model = self.build()
        return self.model


def scale_up(n: int | None, s: float) -> int | None:
    """Dataset sizes round up, so that a mixture drawing floor(n/s) rows always finds them."""
    if n is None or n == 0 or s == 1:
        return n
    return max(1, math.ceil(n / s))


def scale_down(n: int | None, s: float) -> int | None:
    if n is None or n == 0 or s == 1:
        return n
    return max(1, math.floor(n / s))
