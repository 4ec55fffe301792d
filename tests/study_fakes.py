"""Fake step kinds for the study engine tests (imported through a study's `plugins:`).

`fake` steps add their inputs' values to their own and write the sum; they can sleep between
files (so a runner can be killed mid-step), fail on request, and write either through
`artifact_dir` (atomic) or straight into their directory, as a resumable trainer would.
Every start is appended to the file named by $WORLDREP_FAKE_LOG, so tests see what ran.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import pydantic

from worldrep.artifacts import artifact_dir
from worldrep.config import Strict
from worldrep.study.kinds import Ref, StepKind, register_kind


class FakeSpec(Strict):
    value: int = 0
    inputs: list[str] = pydantic.Field(default_factory=list)
    sleep: float = 0.0
    files: int = pydantic.Field(1, ge=1)
    fail: bool = False
    atomic: bool = True
    steps: int = 100


def read_value(path) -> int:
    return json.loads((path / "value.json").read_text())["value"]


def _log(name: str) -> None:
    log = os.environ.get("WORLDREP_FAKE_LOG")
    if log:
        with open(log, "a") as f:
            f.write(name + "\n")


@register_kind
class FakeKind(StepKind):
    name = "fake"
    section = "steps"
    Spec = FakeSpec

    def refs(self, spec):
        return [Ref(f"inputs[{i}]", n, ("fake",)) for i, n in enumerate(spec["inputs"])]

    def scale(self, spec, s):
        return {**spec, "steps": max(1, int(spec["steps"] // s))}

    def run(self, spec, inputs, out):
        _log(out.name)
        if spec["fail"]:
            raise ValueError(f"asked to fail (value {spec['value']})")
        total = spec["value"] + sum(read_value(inputs[n]) for n in spec["inputs"])
        if spec["atomic"]:
            with artifact_dir(out) as tmp:
                self._write(tmp, spec, total)
        else:
            shutil.rmtree(out, ignore_errors=True)  # a half-written earlier attempt
            out.mkdir(parents=True)
            self._write(out, spec, total)

    @staticmethod
    def _write(directory, spec, total):
        for i in range(spec["files"]):
            (directory / f"part{i}.txt").write_text(str(i))
            time.sleep(spec["sleep"])
        (directory / "value.json").write_text(json.dumps({"value": total}))
