"""A run's directory: what it trains, and everything it writes.

OUT holds `run.json` (what is trained: its identity, which names no path), `spec.yaml`,
`checkpoints/checkpoint-<step>/` and `checkpoints/final/` (plain HF Qwen2 directories),
`resume/state.pt` (weights, AdamW state and step of the newest checkpoint), `metrics.jsonl`
(and TensorBoard events), `curves.png`, and `manifest.json`, written last.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch

from .. import artifacts
from ..checkpoints import (
    checkpoint_hash,
    checkpoint_name,
    read_checkpoint_spec,
    read_weights,
    save_checkpoint,
    select_checkpoints,
)
from ..errors import WorldrepError
from ..model import ModelSpec, describe, init_state_dict
from ..tracking import Trackers
from .curves import plot_curves
from .optim import AdamW
from .runtime import Runtime
from .spec import FINETUNE_LR, PRETRAIN_LR, TrainSpec

RUN_FILE, METRICS_FILE, CURVES_FILE = "run.json", "metrics.jsonl", "curves.png"
RESUME_FILE = Path("resume") / "state.pt"
CURVES_EVERY_S = 60  # redraw curves.png at a checkpoint at most this often (and at the end)


class Run:
    """One training run's directory OUT: what it trains (the resolved spec, its length and
    identity) and what it writes there: run.json and spec.yaml, metrics.jsonl and curves.png,
    checkpoints with their resume state, and last the manifest. It holds no training state:
    the loop's `Progress` says how far the run is, and its stack holds its weights."""

    def __init__(self, spec: TrainSpec, out: str | Path):
        """Resolve `spec` (absolute paths, model and lr filled in) and the run's length; this
        writes nothing."""
        self.out = Path(out)
        spec, init_hash = _resolved(spec)
        from ..data import dataset_meta

        self.spec, self.n_rows = spec, int(dataset_meta(spec.data)["sizes"]["train"])
        if self.n_rows == 0:
            raise WorldrepError(f"the training split of {spec.data} has no rows")
        self.per_epoch = math.ceil(self.n_rows / spec.batch_size)
        self.total = spec.steps if spec.steps is not None else self.per_epoch * spec.epochs
        self.rt = Runtime.of(spec, self.total)
        self.checkpoint_steps = spec.checkpoints.steps(self.total, "checkpoints") | {0}
        self.eval_steps = spec.eval.steps(self.total, "eval") | {0, self.total}
        # What the run computes, by content: two runs with equal identities end with equal
        # weights, wherever their data, init checkpoint and OUT lie.
        self.identity = {
            "spec": spec.model_dump(mode="json",
                                    exclude={*TrainSpec.RUNTIME_FIELDS, "data", "init_from"}),
            "data_hash": artifacts.read_manifest(spec.data).get("hash"), "init_hash": init_hash,
            "total_steps": self.total}
        self.digest = artifacts.spec_hash(self.identity)
        self.trackers: Trackers | None = None  # open from `open` to `finish` or `close`
        self.plotted = 0.0  # when curves.png was last drawn

    def finished(self) -> bool:
        """Whether OUT holds this run finished; an error if it holds anything but this run
        (finished or not) or nothing."""
        if artifacts.is_complete(self.out):
            if artifacts.read_manifest(self.out).get("hash") == self.digest:
                return True
            raise WorldrepError(f"{self.out} holds a finished training run of a different spec; "
                                "choose another output directory or remove it")
        run_file = self.out / RUN_FILE
        if run_file.is_file():
            if json.loads(run_file.read_text()).get("hash") != self.digest:
                raise WorldrepError(f"{self.out} holds an unfinished training run of a different "
                                    "spec; rerun with that spec to resume it, or remove the "
                                    "directory")
        elif self.out.exists() and any(self.out.iterdir()):
            raise WorldrepError(f"{self.out} exists and is not a worldrep training run; "
                                "choose an empty or new output directory")
        return False

    def initial_weights(self) -> dict[str, torch.Tensor]:
        """HF-named weights at step 0: the init_from checkpoint's, or the reference init."""
        if self.spec.init_from:
            return read_weights(self.spec.init_from)
        return init_state_dict(self.spec.model, self.spec.seed)

    def open(self) -> dict | None:
        """Create or reopen OUT for writing: its identity and spec, metrics.jsonl cut back to
        the newest checkpoint, the trackers. Returns that checkpoint's resume state (weights,
        AdamW state and step: `resume/state.pt`), or None for a fresh start."""
        self.out.mkdir(parents=True, exist_ok=True)
        for tmp in [*self.out.glob(".*.tmp-*"), *self.out.glob("checkpoints/.*.tmp-*"),
                    *self.out.glob("resume/.*.tmp-*")]:  # left by a killed writer; never read
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
        artifacts.write_json_atomic(self.out / RUN_FILE, {"hash": self.digest, **self.identity})
        # The resolved spec, its inputs named by content (their paths differ on every machine)
        artifacts.write_spec(self.out, {
            **self.spec.model_dump(mode="json"), "data": f"dataset {self.identity['data_hash']}",
            "init_from": (f"checkpoint {self.identity['init_hash']}" if self.spec.init_from
                          else None)})
        state = None
        if (self.out / RESUME_FILE).is_file():
            state = _load_resume(self.out)
            if state.get("hash") != self.digest:
                raise WorldrepError(f"{self.out / RESUME_FILE} belongs to a different run; "
                                    f"remove {self.out} to start over")
        step = int(state["step"]) if state else 0
        # Lines after the resumed checkpoint are redone; a fresh start redoes everything.
        log = self.out / METRICS_FILE
        lines = log.read_text().splitlines() if log.is_file() else []
        kept = [line for line in lines
                if line.strip() and step and json.loads(line).get("step", 0) <= step]
        artifacts.write_atomic(log, lambda tmp: tmp.write_text("".join(f"{x}\n" for x in kept)))
        self.trackers = Trackers(self.spec.track, self.out, self.out.name, self.identity, step)
        self.plotted = time.perf_counter()
        return state

    def log(self, record: dict) -> None:
        with (self.out / METRICS_FILE).open("a") as f:
            f.write(json.dumps(record) + "\n")
        self.trackers.log(record)

    def due(self, step: int) -> bool:
        """Whether the loop reports at `step`: a metrics line, an evaluation, a checkpoint or
        the end."""
        return (step % self.spec.log_every == 0 or step in self.eval_steps
                or step in self.checkpoint_steps or step == self.total)

    def checkpoint(self, step: int, opt: AdamW, k: int, name: str | None = None) -> None:
        """An HF checkpoint of model k of `opt` at `step`, then the resume state that points
        at it."""
        if not bool(torch.isfinite(opt.flat[k]).all()):
            raise self.diverged(step, "the weights")
        save_checkpoint(opt.model, self.out / "checkpoints" / (name or checkpoint_name(step)),
                        k=k, info={"step": step})
        state = {"step": step, "optimizer": opt.state_dict(k), "hash": self.digest,
                 # The data order is a pure function of (seed, epoch): the position is the step.
                 "data": {"seed": self.spec.seed, "step": step}}
        (self.out / RESUME_FILE).parent.mkdir(exist_ok=True)
        artifacts.write_atomic(self.out / RESUME_FILE, lambda tmp: torch.save(state, tmp))

    def redraw_curves(self) -> None:
        """Redraw curves.png (at a checkpoint), at most every CURVES_EVERY_S seconds."""
        if time.perf_counter() - self.plotted > CURVES_EVERY_S:
            plot_curves(self.out / METRICS_FILE, self.out / CURVES_FILE, self.spec.loss)
            self.plotted = time.perf_counter()

    def finish(self) -> None:
        """The last writes of a run whose final checkpoint is saved: the curves, and the
        manifest that makes OUT a finished artifact."""
        plot_curves(self.out / METRICS_FILE, self.out / CURVES_FILE, self.spec.loss)
        self.close()
        artifacts.write_manifest(self.out, "train", self.identity, steps=self.total,
                                 final="checkpoints/final", model=describe(self.spec.model),
                                 data_dir=self.spec.data, init_from_dir=self.spec.init_from)

    def close(self) -> None:
        """Close the trackers (a run that failed keeps what it logged)."""
        if self.trackers is not None:
            self.trackers.close()

    def diverged(self, step: int, what: str) -> WorldrepError:
        try:
            keep = f"the last good checkpoint is {select_checkpoints(self.out, 'last')[0]}"
        except WorldrepError:
            keep = "no checkpoint was written"
        return WorldrepError(f"training diverged: {what} became NaN/inf by step {step} "
                             f"(lr {self.spec.optimizer.lr:g}); {keep}; try a lower "
                             "learning rate or gradient clipping")


def _resolved(spec: TrainSpec) -> tuple[TrainSpec, str | None]:
    """`spec` with absolute paths, its model and lr filled in, its data checked to be a
    finished dataset; and the init_from checkpoint's hash (None: from scratch)."""
    spec = spec.model_copy(deep=True)
    spec.data = str(Path(spec.data).resolve())
    init_hash = None
    if spec.init_from:
        spec.init_from = str(Path(spec.init_from).resolve())
        found = read_checkpoint_spec(spec.init_from)
        if spec.model is not None and spec.model.arch() != found.arch():
            shown = ", ".join(f"{k} {v} (checkpoint: {found.arch()[k]})"
                              for k, v in spec.model.arch().items() if found.arch()[k] != v)
            raise WorldrepError(f"model does not match the init_from checkpoint "
                                f"{spec.init_from}: {shown}; remove 'model' to use the "
                                "checkpoint's architecture")
        spec.model, init_hash = found, checkpoint_hash(spec.init_from)
    elif spec.model is None:
        spec.model = ModelSpec()
    if spec.optimizer.lr is None:
        spec.optimizer.lr = FINETUNE_LR if spec.init_from else PRETRAIN_LR
    if not artifacts.is_complete(spec.data):
        raise WorldrepError(f"no finished dataset at {spec.data} (missing manifest.json); "
                            "make one with `worldrep data make` or `worldrep data mix`")
    return spec, init_hash


def _load_resume(out: Path) -> dict:
    """resume/state.pt, or a WorldrepError naming it and the checkpoints it could restart
    from (a truncated or foreign file is never unpickled beyond tensors)."""
    try:
        state = torch.load(out / RESUME_FILE, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and {"step", "optimizer", "hash"} <= set(state):
            return state
        problem = "it does not hold a resume state"
    except Exception as err:  # noqa: BLE001 - truncated, random or foreign bytes
        problem = f"it cannot be read ({type(err).__name__})"
    try:
        found = ", ".join(p.name for p in select_checkpoints(out, "all"))
    except WorldrepError:
        found = "none"
    raise WorldrepError(f"{out / RESUME_FILE}: {problem}; the run's checkpoints: {found}. "
                        f"Remove {out / RESUME_FILE.parent} to restart the run from step 0, "
                        f"or remove {out} to start over")
