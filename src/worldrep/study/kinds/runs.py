"""The kinds of steps that train and evaluate models."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ...errors import WorldrepError
from .base import Derived, Lazy, Ref, StepKind, register_kind, scale_down, scale_up
from .datasets import data_tasks, split_rows

RUN_OWN = ("data", "mix", "init_from", "evals", "reps")


def _train_spec():
    from ...train import TrainSpec

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
    Spec = Lazy(_train_spec)
    code = ("worldrep.train",)
    packs = True
    rank = 2

    def tasks(self, spec, steps):  # generation metrics score the data's tasks
        return data_tasks(steps, spec["data"]) if spec["eval"]["generate"] else set()

    def validate(self, body, where):
        from ...config import parse_config

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
        """The TrainSpec of a step, its data and init_from resolved to directories."""
        fields = dict(spec, data=str(inputs[spec["data"]]))
        if spec["init_from"]:
            fields["init_from"] = str(inputs[spec["init_from"]] / "checkpoints" / "final")
        return self.Spec.model_validate(fields)

    def run(self, spec, inputs, out):
        from ...train import train

        train(self.train_spec(spec, inputs), out)

    def pack_key(self, steps, name, built=None):
        """The trainer's own `pack_key` of a run, its model that of the run it starts from;
        while the training rows are unknown its length is ("epochs", e, data)."""
        from ...train import pack_key

        spec = steps[name].spec
        fields = {k: v for k, v in spec.items() if k in self.Spec.model_fields}
        train = self.Spec.model_validate({**fields, "model": _model(steps, name),
                                          "init_from": None})
        if train.steps:
            total: int | tuple = train.steps
        else:
            rows = (split_rows(steps, spec["data"], built) or {}).get("train")
            total = (math.ceil(rows / train.batch_size) * train.epochs if rows
                     else ("epochs", train.epochs, spec["data"]))
        return pack_key(train, total)

    def pack_rule(self):
        from ...train import PACK_RULE

        return PACK_RULE

    def run_pack(self, jobs):
        from ...train import PackError, train_packed

        specs = [self.train_spec(spec, inputs) for spec, inputs, _ in jobs]
        try:
            train_packed(specs, [out for *_, out in jobs], regroup=True)
        except PackError as err:
            return dict(err.errors)
        return {}

    def cost(self, steps, name):
        from ...model import ModelSpec

        total = self.pack_key(steps, name).total_steps
        params = ModelSpec.model_validate(_model(steps, name) or {}).n_params
        return (total if isinstance(total, int) else 0), params


def _model(steps: dict, name: str) -> dict | None:
    """The model of a train step: its own, or that of the run it starts from (init_from)."""
    spec = steps[name].spec
    if spec.get("model") or not spec.get("init_from"):
        return spec.get("model")
    return _model(steps, spec["init_from"])


def model_depth(steps: dict, run: str) -> int | None:
    """The number of layers of a train step's model (its own, or its init_from's), or None
    where the study does not say."""
    from ...model import ModelSpec

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


def trained_on(steps: dict, run: str) -> list[str]:
    """The tasks of a run's training rows, in the paper's order (from the data's specs)."""
    from ...tasks import task_names

    tasks = data_tasks(steps, steps[run].spec["data"])
    return [t for t in task_names() if t in tasks]


def _eval_spec():
    from ...evaluate import EvalSpec

    class EvalStep(EvalSpec):
        run: str  # a train step
        data: str  # a dataset or mixture step whose split is evaluated

    return EvalStep


@register_kind
class EvalKind(StepKind):
    name = "eval"
    section = "evals"
    Spec = Lazy(_eval_spec)
    code = ("worldrep.evaluate",)
    slurm_job = "follow"
    rank = 1

    def tasks(self, spec, steps):
        return data_tasks(steps, spec["data"])

    def refs(self, spec):
        return [Ref("run", spec["run"], ("train",)),
                Ref("data", spec["data"], ("dataset", "mixture"))]

    def scale(self, spec, s):
        return {**spec, "limit": scale_up(spec["limit"], s)}

    def run(self, spec, inputs, out):
        from ...evaluate import EvalSpec, evaluate_run

        settings = EvalSpec.model_validate({k: v for k, v in spec.items()
                                            if k not in ("run", "data")})
        evaluate_run(inputs[spec["run"]], inputs[spec["data"]], settings, out=out)


def eval_name(run: str, data: str) -> str:
    """The step that evaluates `run` on `data` (declared through the run's `evals`)."""
    return f"{run}.eval.{data}"


def eval_summary(path: Path, checkpoint: str = "final") -> dict:
    """task -> metrics of an eval step's directory, for `checkpoint` (else the last one)."""
    summary = json.loads((Path(path) / "summary.json").read_text())
    per_checkpoint = summary and all(
        isinstance(v, dict) and v and all(isinstance(m, dict) for m in v.values())
        for v in summary.values())
    if not per_checkpoint:
        return summary
    return summary.get(checkpoint) or list(summary.values())[-1]
