"""What a training run is (`TrainSpec`), and which runs can share a pack (`PackKey`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar, Literal, NamedTuple

import pydantic

from ..config import Strict, parse_config
from ..errors import WorldrepError
from ..model import ModelSpec

PRETRAIN_LR, FINETUNE_LR = 3e-4, 1e-5


class OptimizerSpec(Strict):
    """AdamW with HF Trainer's defaults; lr defaults by start (scratch 3e-4, checkpoint 1e-5)."""

    lr: float | None = pydantic.Field(None, gt=0)
    weight_decay: float = pydantic.Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = pydantic.Field(1e-8, gt=0)
    grad_clip: float | None = pydantic.Field(1.0, gt=0)  # global norm per model; null = off
    warmup_steps: int = pydantic.Field(50, ge=0)

    @pydantic.field_validator("betas")
    @classmethod
    def _betas(cls, v):
        if not all(0 <= b < 1 for b in v):
            raise ValueError("betas must be in [0, 1)")
        return v


class Cadence(Strict):
    """When something happens: `every` < 1 is a fraction of the run (rounded up to whole steps,
    as HF), >= 1 a number of steps, null never; `at` adds explicit steps."""

    every: float | None = pydantic.Field(None, gt=0)
    at: list[int] = pydantic.Field(default_factory=list)

    def steps(self, total: int, what: str) -> set[int]:
        late = [s for s in self.at if s < 0 or s > total]
        if late:
            raise WorldrepError(f"{what}.at names steps {late} outside this run's 0..{total}")
        chosen = set(self.at)
        if self.every is not None:
            interval = math.ceil(total * self.every) if self.every < 1 else int(self.every)
            chosen.update(range(interval, total + 1, max(1, interval)))
        return chosen


class EvalCadence(Cadence):
    """Validation loss per task (and generation metrics, when worldrep.evaluate provides them)
    on a fixed subset: `rows_per_task` rows of each task drawn once from (seed, task)."""

    every: float | None = pydantic.Field(0.005, gt=0)
    rows_per_task: int = pydantic.Field(128, ge=1)
    split: Literal["validation", "test", "train"] = "validation"
    generate: bool = True
    batch_size: int = pydantic.Field(512, ge=1)


class TrainSpec(Strict):
    # Settings that change how fast a run goes, not what it computes: a run may resume under
    # different values (e.g. on another machine), and they are not part of its identity.
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = (
        "device", "threads", "compile", "cuda_graphs", "progress", "log_every", "track")

    data: str  # a dataset or mixture directory
    model: ModelSpec | None = None  # default: the reference, or the init_from checkpoint's
    init_from: str | None = None  # an HF Qwen2 checkpoint directory to fine-tune
    optimizer: OptimizerSpec = pydantic.Field(default_factory=OptimizerSpec)
    batch_size: int = pydantic.Field(128, ge=1)
    epochs: int | None = pydantic.Field(None, ge=1)  # default 1 when steps is not given
    steps: int | None = pydantic.Field(None, ge=1)
    seed: int = 42
    loss: Literal["full", "answer"] = "full"  # reference: next-token loss on the whole row
    # auto: bf16 autocast on CUDA and on CPUs with native bf16, else fp32; fp16: autocast
    # with dynamic loss scaling, as the reference trained (HF Trainer, fp16 on GPU)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # auto: on CUDA, and on CPU for runs long enough to repay the compile (CPU_COMPILE_STEPS)
    compile: bool | Literal["auto"] = "auto"
    cuda_graphs: bool | Literal["auto"] = "auto"  # auto: on CUDA
    pad_multiple: int | None = pydantic.Field(None, ge=1)  # auto: 1 on CPU, 8 on CUDA
    device: str = "auto"
    threads: int | None = pydantic.Field(None, ge=1)  # CPU threads; null: torch's default
    checkpoints: Cadence = pydantic.Field(default_factory=lambda: Cadence(every=0.025))
    eval: EvalCadence = pydantic.Field(default_factory=EvalCadence)
    log_every: int = pydantic.Field(10, ge=1)
    progress: bool = True
    # where metrics go besides metrics.jsonl: TensorBoard event files in the run directory
    # (default) and/or an offline Weights & Biases run (worldrep.tracking)
    track: list[Literal["tensorboard", "wandb"]] = pydantic.Field(
        default_factory=lambda: ["tensorboard"])

    @pydantic.model_validator(mode="after")
    def _length(self) -> TrainSpec:
        if self.epochs is not None and self.steps is not None:
            raise ValueError("give epochs or steps, not both")
        if self.epochs is None and self.steps is None:
            self.epochs = 1
        return self


def load_spec(path: str | Path | None, **overrides) -> TrainSpec:
    """A TrainSpec from YAML plus command-line overrides (None = not given); `steps` replaces
    the file's `epochs`, and the reverse."""
    from ..config import load_yaml

    data = load_yaml(path) if path else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    if "steps" in given:
        data.pop("epochs", None)
    if "epochs" in given:
        data.pop("steps", None)
    data.update(given)
    if not data.get("data"):
        raise WorldrepError(f"{path or 'the training spec'} names no data: set 'data:' in the "
                            "spec or pass --data DIR (a dataset or mixture directory)")
    return parse_config(TrainSpec, data, where=str(path) if path else "train spec")


# -- which runs can share a pack ---------------------------------------------------------------
DEVICE_FIELDS = ("device", "precision", "compile", "cuda_graphs", "pad_multiple", "threads")


class PackKey(NamedTuple):
    """What the runs of one pack share: one stacked model, one step count and batch size, one
    device, one AdamW update. Everything else (data, seed, init or init_from, learning rate,
    schedule, clipping, weight decay, loss, cadences) is each run's own."""

    architecture: tuple
    total_steps: int | tuple  # the study planner's ("epochs", e, data) while rows are unknown
    batch_size: int
    device_settings: tuple  # DEVICE_FIELDS, as given
    adamw_betas_eps: tuple

    def describe(self) -> str:
        """One line for people: the architecture, the length, the batch and the device."""
        a = dict(self.architecture)
        arch = (f"hidden {a['hidden']}, {a['layers']} layers, {a['heads']} heads, "
                f"MLP {a['intermediate']}")
        if isinstance(self.total_steps, int):
            length = f"{self.total_steps:,} steps"
        else:
            length = f"{self.total_steps[1]} epochs of {self.total_steps[2]} (size unknown)"
        device = dict(zip(DEVICE_FIELDS, self.device_settings, strict=True))
        shown = ", ".join(f"{k} {v}" for k, v in device.items()
                          if v is not None and v != "auto") or "device auto"
        return f"{arch}; {length}; batch {self.batch_size}; {shown}"

    def mismatch(self, other: PackKey) -> str:
        """What `other` has that this key has not, part by part."""
        return "; ".join(f"{name} {y!r} vs {x!r}" for name, x, y
                         in zip(KEY_NAMES, self, other, strict=True) if x != y)


def pack_key(spec: TrainSpec, total_steps: int | tuple) -> PackKey:
    """The key of a run (its model that of its init_from checkpoint, if it has one): runs with
    equal keys may share a pack. The trainer and the study's pack planner both ask this."""
    o, model = spec.optimizer, spec.model or ModelSpec()
    return PackKey(tuple(sorted(model.arch().items())), total_steps, spec.batch_size,
                   tuple(getattr(spec, f) for f in DEVICE_FIELDS), (tuple(o.betas), o.eps))


_KEY_WORDS = {"device_settings": f"device settings ({', '.join(DEVICE_FIELDS)})",
              "adamw_betas_eps": "AdamW betas/eps"}
KEY_NAMES = [_KEY_WORDS.get(f, f.replace("_", " ")) for f in PackKey._fields]
PACK_RULE = f"runs pack together when they share {', '.join(KEY_NAMES[:-1])} and {KEY_NAMES[-1]}"
