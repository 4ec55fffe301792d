"""Training: one readable loop over pre-tokenised rows, resumable, writing HF checkpoints.

`train(spec, out)` is the stage function (the CLI and the study runner call it). The pieces
below it are independent so that a packed run can reuse them with K > 1 stacked models:

- `Rows` / `Batcher`: rows tokenised once to a uint8 matrix (on the GPU when there is one);
  epoch e visits them in a permutation drawn from (seed, e), so the data position is just the
  step number; a batch is padded to its longest row (rounded up to a multiple on CUDA, where
  every shape is a captured graph).
- `AdamW`: the reference optimizer (AdamW, global-norm clipping, linear warmup then linear
  decay, as HF's Trainer) over one flat [K, P] parameter buffer; learning rate, schedule,
  weight decay and clipping are per model.
- `Stepper`: forward, backward and update of the stacked model; on CUDA compiled and replayed
  as one CUDA graph per batch shape.

A run directory OUT holds `run.json` (what is being trained), `checkpoints/checkpoint-<step>/`
and `checkpoints/final/` (plain HF Qwen2 directories), `resume/state.pt` (optimizer, step and
weights of the newest checkpoint), `metrics.jsonl`, `curves.png`, and `manifest.json`, written
last. Running the same spec again resumes from `resume/` and ends with the same weights.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydantic
import torch

from . import artifacts, tokenizer
from .config import Strict, parse_config
from .devices import resolve_device
from .errors import WorldrepError
from .model import (
    ModelSpec,
    StackedQwen2,
    describe,
    init_model,
    load_checkpoint,
    read_checkpoint_spec,
    save_checkpoint,
    to_hf,
    to_hf_state_dict,
)
from .seeding import rng as make_rng

PRETRAIN_LR, FINETUNE_LR = 3e-4, 1e-5
RUN_FILE, METRICS_FILE, CURVES_FILE = "run.json", "metrics.jsonl", "curves.png"
RESUME_FILE = Path("resume") / "state.pt"
CURVE_METRICS = ("mean_error", "accuracy", "mean_score", "valid_rate")  # panels besides loss
CURVES_EVERY_S = 60  # redraw curves.png at a checkpoint at most this often (and at the end)


# -- the spec --------------------------------------------------------------------------------
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


class EvalSpec(Cadence):
    """Validation loss per task (and generation metrics, when worldrep.evaluate provides them)
    on a fixed subset: `rows_per_task` rows of each task drawn once from (seed, task)."""

    every: float | None = pydantic.Field(0.005, gt=0)
    rows_per_task: int = pydantic.Field(128, ge=1)
    split: Literal["validation", "test", "train"] = "validation"
    generate: bool = True
    batch_size: int = pydantic.Field(512, ge=1)


class TrainSpec(Strict):
    data: str  # a dataset or mixture directory
    model: ModelSpec | None = None  # default: the reference, or the init_from checkpoint's
    init_from: str | None = None  # an HF Qwen2 checkpoint directory to fine-tune
    optimizer: OptimizerSpec = pydantic.Field(default_factory=OptimizerSpec)
    batch_size: int = pydantic.Field(128, ge=1)
    epochs: int | None = pydantic.Field(None, ge=1)  # default 1 when steps is not given
    steps: int | None = pydantic.Field(None, ge=1)
    seed: int = 42
    loss: Literal["full", "answer"] = "full"  # reference: next-token loss on the whole row
    # auto: bf16 autocast on CUDA and on CPUs with native bf16, else fp32
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: bool | Literal["auto"] = "auto"  # auto: on CUDA
    cuda_graphs: bool | Literal["auto"] = "auto"  # auto: on CUDA
    pad_multiple: int | None = pydantic.Field(None, ge=1)  # auto: 1 on CPU, 8 on CUDA
    device: str = "auto"
    threads: int | None = pydantic.Field(None, ge=1)  # CPU threads; null: torch's default
    checkpoints: Cadence = pydantic.Field(default_factory=lambda: Cadence(every=0.025))
    eval: EvalSpec = pydantic.Field(default_factory=EvalSpec)
    log_every: int = pydantic.Field(10, ge=1)
    progress: bool = True

    @pydantic.model_validator(mode="after")
    def _length(self) -> TrainSpec:
        if self.epochs is not None and self.steps is not None:
            raise ValueError("give epochs or steps, not both")
        if self.epochs is None and self.steps is None:
            self.epochs = 1
        return self


# Settings that change how fast a run goes, not what it computes: a run may resume under
# different values (e.g. on another machine).
RUNTIME_FIELDS = ("device", "threads", "compile", "cuda_graphs", "progress", "log_every")


def load_spec(path: str | Path | None, **overrides) -> TrainSpec:
    """A TrainSpec from YAML plus command-line overrides (None = not given); `steps` replaces
    the file's `epochs`, and the reverse."""
    from .config import load_yaml

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


# -- resolution: what exactly this run trains --------------------------------------------------
@dataclass
class Plan:
    spec: TrainSpec  # resolved: absolute paths, lr and model filled in
    n_rows: int
    steps_per_epoch: int
    total: int
    checkpoint_steps: set[int]
    eval_steps: set[int]
    data_hash: str | None

    def identity(self) -> dict:
        """What the run computes: two runs with equal identities end with equal weights."""
        spec = self.spec.model_dump(mode="json", exclude=set(RUNTIME_FIELDS))
        return {"spec": spec, "data_hash": self.data_hash, "total_steps": self.total}


def resolve(spec: TrainSpec, n_rows: int, data_hash: str | None = None) -> Plan:
    spec = spec.model_copy(deep=True)
    spec.data = str(Path(spec.data).resolve())
    if spec.init_from:
        spec.init_from = str(Path(spec.init_from).resolve())
        found = read_checkpoint_spec(spec.init_from)
        if spec.model is not None and spec.model.arch() != found.arch():
            diff = {k: (v, found.arch()[k]) for k, v in spec.model.arch().items()
                    if found.arch()[k] != v}
            shown = ", ".join(f"{k} {a} (checkpoint: {b})" for k, (a, b) in diff.items())
            raise WorldrepError(f"model does not match the init_from checkpoint {spec.init_from}: "
                                f"{shown}; remove 'model' to use the checkpoint's architecture")
        spec.model = found
    elif spec.model is None:
        spec.model = ModelSpec()
    if spec.optimizer.lr is None:
        spec.optimizer.lr = FINETUNE_LR if spec.init_from else PRETRAIN_LR
    if n_rows == 0:
        raise WorldrepError(f"the training split of {spec.data} has no rows")
    per_epoch = math.ceil(n_rows / spec.batch_size)
    total = spec.steps if spec.steps is not None else per_epoch * spec.epochs
    ckpts = spec.checkpoints.steps(total, "checkpoints") | {0}
    evals = spec.eval.steps(total, "eval") | {0, total}
    return Plan(spec, n_rows, per_epoch, total, ckpts, evals, data_hash)


# -- runtime: device, precision, compilation -------------------------------------------------
@dataclass
class Runtime:
    device: torch.device
    autocast: torch.dtype | None
    compile: bool
    graphs: bool
    pad_multiple: int

    @staticmethod
    def of(spec: TrainSpec) -> Runtime:
        device = resolve_device(spec.device)
        cuda = device.type == "cuda"
        auto = "bf16" if cuda or _cpu_has_bf16() else "fp32"
        precision = spec.precision if spec.precision != "auto" else auto
        graphs = cuda if spec.cuda_graphs == "auto" else bool(spec.cuda_graphs)
        if graphs and not cuda:
            raise WorldrepError("cuda_graphs needs a CUDA device; allowed here: false or auto")
        compile_ = cuda if spec.compile == "auto" else bool(spec.compile)
        multiple = spec.pad_multiple or (8 if cuda else 1)
        return Runtime(device, torch.bfloat16 if precision == "bf16" else None, compile_,
                       graphs, multiple)

    def autocast_ctx(self):
        if self.autocast is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast)


def _cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 / AMX): there bf16 autocast
    trains about twice as fast as fp32; elsewhere bf16 is emulated and slower."""
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# -- data --------------------------------------------------------------------------------------
@dataclass
class Rows:
    """Pre-tokenised rows: ids uint8 [N, L] (right-padded, <bos> ... <eos>) on the device."""

    ids: torch.Tensor
    lengths: np.ndarray  # int64 [N]
    prompt_len: np.ndarray  # int64 [N], tokens up to and including the answer '='

    def __len__(self) -> int:
        return len(self.lengths)

    @staticmethod
    def from_texts(texts, prompt_len, device="cpu") -> Rows:
        ids, lengths = tokenizer.encode(np.asarray(texts))
        return Rows(torch.from_numpy(ids).to(device), lengths.astype(np.int64),
                    np.asarray(prompt_len, np.int64))


def load_rows(data_dir: str | Path, split: str, max_positions: int, device) -> Rows:
    from .data import load_split

    frame = load_split(data_dir, split, columns=["text", "prompt_len"])
    rows = Rows.from_texts(frame["text"].to_numpy(), frame["prompt_len"].to_numpy(), device)
    longest = int(rows.lengths.max()) if len(rows) else 0
    if longest > max_positions:
        raise WorldrepError(f"{data_dir}/{split}: a row has {longest} tokens but the model "
                            f"takes at most {max_positions} positions (model.max_positions)")
    return rows


class Batcher:
    """Batch `step` of a run: rows perm_e[b*B:(b+1)*B] where (e, b) = divmod(step, per_epoch)
    and perm_e is the permutation drawn from (seed, e); the last batch of an epoch is short
    (not dropped), unless `static` pads it with empty rows (they carry no loss)."""

    def __init__(self, rows: Rows, batch_size: int, seed: int, pad_multiple: int = 1,
                 static: bool = False):
        self.rows, self.batch_size, self.seed = rows, batch_size, seed
        self.pad_multiple, self.static = pad_multiple, static
        self.per_epoch = math.ceil(len(rows) / batch_size)
        self.device = rows.ids.device
        self._epoch: int | None = None

    def order(self, epoch: int) -> np.ndarray:
        return make_rng(self.seed, "train-order", epoch).permutation(len(self.rows))

    def _load_epoch(self, epoch: int) -> None:
        perm = self.order(epoch)
        pad = self.per_epoch * self.batch_size - len(perm)
        self._perm = perm
        self._perm_dev = torch.from_numpy(perm).to(self.device)
        lengths = np.concatenate([self.rows.lengths[perm], np.zeros(pad, np.int64)])
        widths = lengths.reshape(self.per_epoch, self.batch_size).max(axis=1)
        m = self.pad_multiple
        self._widths = np.minimum(-(-widths // m) * m, self.rows.ids.shape[1])
        self._tokens = lengths.reshape(self.per_epoch, self.batch_size).sum(axis=1)
        self._prompt = torch.from_numpy(self.rows.prompt_len[perm]).to(self.device)
        self._epoch = epoch

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(ids [B, T] int64, prompt_len [B] int64, real tokens) on the rows' device."""
        epoch, b = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._load_epoch(epoch)
        sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
        index = self._perm_dev[sl]
        width = int(self._widths[b])
        ids = self.rows.ids[index, :width].long()
        plen = self._prompt[sl]
        short = self.batch_size - len(index)
        if self.static and short:
            ids = torch.cat([ids, ids.new_zeros(short, width)])
            plen = torch.cat([plen, plen.new_zeros(short)])
        return ids, plen, int(self._tokens[b])

    def epoch_of(self, step: int) -> float:
        return step / self.per_epoch


# -- optimizer ---------------------------------------------------------------------------------
def _per_model(value, k: int, dtype=torch.float32, device=None) -> torch.Tensor:
    values = list(value) if isinstance(value, list | tuple) else [value] * k
    return torch.tensor([math.inf if v is None else v for v in values], dtype=dtype,
                        device=device)


class AdamW:
    """AdamW + global-norm clipping + linear warmup/decay, HF Trainer's recipe, for K stacked
    models at once.

    The model's parameters are re-pointed into one flat [K, P] buffer, so the whole update is
    a few tensor ops and each model's norm, learning rate and decay are a row. Weight matrices
    and embeddings decay; biases and norm weights do not (HF's grouping). The learning rate
    of an update is lr * s/warmup during warmup, then lr * (total - s)/(total - warmup), with
    s the number of earlier updates (HF's schedule: the first update uses lr 0).
    """

    def __init__(self, model: StackedQwen2, lr, total_steps, warmup_steps=50, weight_decay=0.01,
                 betas=(0.9, 0.999), eps=1e-8, grad_clip=1.0):
        self.model = model
        self.params = list(model.parameters())
        k, device = model.k, self.params[0].device
        self.sizes = [p[0].numel() for p in self.params]
        with torch.no_grad():
            self.flat = torch.cat([p.detach().reshape(k, -1) for p in self.params], dim=1)
            offset = 0
            for p, n in zip(self.params, self.sizes, strict=True):
                p.data = self.flat[:, offset:offset + n].view(p.shape)
                offset += n
        self.decay = torch.cat([torch.full((n,), float(p.dim() >= 3), device=device)
                                for p, n in zip(self.params, self.sizes, strict=True)])
        self.m = torch.zeros_like(self.flat)
        self.v = torch.zeros_like(self.flat)
        self.step = torch.zeros(k, device=device)  # updates done, per model
        self.lr = _per_model(lr, k, device=device)
        self.total = _per_model(total_steps, k, device=device)
        self.warmup = _per_model(warmup_steps, k, device=device)
        self.weight_decay = _per_model(weight_decay, k, device=device)
        self.clip = _per_model(grad_clip, k, device=device)
        self.betas, self.eps = tuple(float(b) for b in betas), float(eps)

    def lr_now(self) -> torch.Tensor:
        s, warm = self.step, self.warmup
        rising = s / warm.clamp(min=1)
        falling = ((self.total - s) / (self.total - warm).clamp(min=1)).clamp(min=0)
        return self.lr * torch.where(s < warm, rising, falling)

    @torch.no_grad()
    def update(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """Clip, then apply one AdamW update; returns each model's gradient norm (pre-clip)."""
        k = self.flat.shape[0]
        g = torch.cat([x.reshape(k, -1) for x in grads], dim=1).float()
        norm = torch.linalg.vector_norm(g, dim=1)
        g = g * (self.clip / (norm + 1e-6)).clamp(max=1)[:, None]
        lr = self.lr_now()
        b1, b2 = self.betas
        self.step += 1
        bc1, bc2 = 1 - b1 ** self.step, 1 - b2 ** self.step
        self.flat.mul_(1 - (lr * self.weight_decay)[:, None] * self.decay)
        self.m.lerp_(g, 1 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (self.v.sqrt() / bc2.sqrt()[:, None]).add_(self.eps)
        self.flat.sub_(self.m / denom * (lr / bc1)[:, None])
        return norm

    def state_tensors(self) -> list[torch.Tensor]:
        return [self.flat, self.m, self.v, self.step]

    def state_dict(self) -> dict[str, Any]:
        return {"flat": self.flat.cpu(), "m": self.m.cpu(), "v": self.v.cpu(),
                "step": self.step.cpu(), "sizes": self.sizes}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["sizes"] != self.sizes or state["flat"].shape != self.flat.shape:
            raise WorldrepError("the resume state does not fit this model")
        for name in ("flat", "m", "v", "step"):
            getattr(self, name).copy_(state[name])


# -- the step ----------------------------------------------------------------------------------
def _raise_compile_limit() -> None:
    """Every padded length is one compiled shape; the default limit (8) is too small."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))


class Stepper:
    """One training step of the stacked model: loss, gradients, clipped AdamW update.

    Losses and gradient norms accumulate on the device and are read (one sync) by `flush`.
    With `graphs`, the whole step of each batch shape is captured once as a CUDA graph and
    replayed with the batch copied into its static input buffers.
    """

    def __init__(self, model: StackedQwen2, opt: AdamW, runtime: Runtime,
                 answer_only: bool = False):
        self.model, self.opt, self.rt = model, opt, runtime
        self.answer_only = answer_only

        def loss_fn(ids, plen):
            with runtime.autocast_ctx():
                return model.loss(ids, plen)

        self.loss_fn = loss_fn
        if runtime.compile:
            _raise_compile_limit()
            self.loss_fn = torch.compile(loss_fn, dynamic=False)
        device = opt.flat.device
        self.sums = torch.zeros(2, model.k, device=device)  # loss, grad norm
        self.count = 0
        self.graphs: dict[tuple, tuple] = {}
        self.pool = None

    def _math(self, ids: torch.Tensor, plen: torch.Tensor) -> None:
        loss = self.loss_fn(ids, plen if self.answer_only else None)
        grads = torch.autograd.grad(loss.sum(), self.opt.params)
        norm = self.opt.update(grads)
        with torch.no_grad():
            self.sums += torch.stack([loss.detach().float(), norm])

    def __call__(self, ids: torch.Tensor, plen: torch.Tensor) -> None:
        """ids [K, B, T] int64, plen [K, B] int64."""
        self.count += 1
        if not self.rt.graphs:
            self._math(ids, plen)
            return
        key = tuple(ids.shape)
        if key not in self.graphs:
            self.graphs[key] = self._capture(ids, plen)
        replay, ids_buf, plen_buf = self.graphs[key]
        ids_buf.copy_(ids)
        plen_buf.copy_(plen)
        replay()

    def _capture(self, ids: torch.Tensor, plen: torch.Tensor):
        ids_buf, plen_buf = ids.clone(), plen.clone()
        state = self.opt.state_tensors() + [self.sums]
        saved = [t.clone() for t in state]
        replay = self._record(lambda: self._math(ids_buf, plen_buf))
        with torch.no_grad():  # undo the warm-up steps
            for t, s in zip(state, saved, strict=True):
                t.copy_(s)
        return replay, ids_buf, plen_buf

    def _record(self, step_fn):
        """Warm up (compile, autotune) on a side stream, then capture one step as a graph."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step_fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            step_fn()
        self.pool = graph.pool()
        return graph.replay

    def flush(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Mean loss and grad norm per model since the last flush (syncs with the device)."""
        sums = self.sums.cpu().numpy() / max(1, self.count)
        n = self.count
        self.sums.zero_()
        self.count = 0
        return sums[0], sums[1], n


# -- evaluation --------------------------------------------------------------------------------
class Evaluator:
    """Validation loss per task on a fixed subset; generation metrics when available.

    The subset is `rows_per_task` rows of each task, drawn once from (seed, task), so every
    evaluation of a run (and of its resumed continuation) sees the same rows.
    """

    def __init__(self, spec: TrainSpec, runtime: Runtime):
        from .data import load_split

        self.cfg, self.rt = spec.eval, runtime
        frame = load_split(spec.data, spec.eval.split)
        parts = []
        for task in sorted(frame["task"].unique()):
            where = np.flatnonzero(frame["task"].to_numpy() == task)
            n = min(len(where), spec.eval.rows_per_task)
            pick = make_rng(spec.seed, "eval-subset", task).choice(where, n, replace=False)
            parts.append(np.sort(pick))
        self.frame = frame.iloc[np.concatenate(parts)] if parts else frame.iloc[:0]
        self.frame = self.frame.reset_index(drop=True)
        self.rows = Rows.from_texts(self.frame["text"].to_numpy(),
                                    self.frame["prompt_len"].to_numpy(), runtime.device)
        self.tasks = self.frame["task"].to_numpy()
        self.data_dir = spec.data
        self._world = None
        self.generation_hook = _generation_hook() if spec.eval.generate else None

    @torch.no_grad()
    def losses(self, model: StackedQwen2) -> dict[str, float]:
        """Mean token loss per task over whole rows (`loss/<task>`) and over the answer only
        (`answer_loss/<task>`)."""
        n = len(self.rows)
        if n == 0:
            return {}
        full, answer = np.zeros((2, n)), np.zeros((2, n))
        for start in range(0, n, self.cfg.batch_size):
            sl = slice(start, start + self.cfg.batch_size)
            width = int(self.rows.lengths[sl].max())
            ids = self.rows.ids[sl, :width].long()[None]
            plen = torch.from_numpy(self.rows.prompt_len[sl]).to(ids.device)[None]
            with self.rt.autocast_ctx():
                ce, keep = model.token_loss(ids)
            ce = ce.float()[0]
            keep = keep[0]
            after = keep & (torch.arange(1, width, device=ids.device) >= plen[0, :, None])
            full[:, sl] = _sums(ce, keep)
            answer[:, sl] = _sums(ce, after)
        out = {}
        for task in np.unique(self.tasks):
            rows = self.tasks == task
            out[f"loss/{task}"] = float(full[0, rows].sum() / max(1, full[1, rows].sum()))
            out[f"answer_loss/{task}"] = float(answer[0, rows].sum()
                                               / max(1, answer[1, rows].sum()))
        return out

    def __call__(self, model: StackedQwen2) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            metrics = self.losses(model)
            if self.generation_hook is not None and len(self.frame):
                try:
                    world = self.world
                except WorldrepError as err:  # e.g. the dataset's world was moved away
                    warnings.warn(f"generation metrics off: {err}", stacklevel=2)
                    self.generation_hook = None
                else:
                    metrics.update(self.generation_hook(model, self.frame, world))
        finally:
            model.train(was_training)
        return metrics

    @property
    def world(self):
        if self._world is None:
            from .data import dataset_world

            self._world = dataset_world(self.data_dir)
        return self._world


def _sums(ce: torch.Tensor, keep: torch.Tensor) -> np.ndarray:
    keep = keep.to(ce.dtype)
    return torch.stack([(ce * keep).sum(1), keep.sum(1)]).cpu().numpy()


def _generation_hook():
    """Greedy-decoding metrics per task from worldrep.evaluate (`evaluate_frame` on the HF
    view of the model, then `summarize`), flattened to `<metric>/<task>` floats. Without
    that module, training evaluates losses only."""
    try:
        from .evaluate import evaluate_frame, summarize
    except ImportError:
        return None

    cache: dict[str, Any] = {}

    def hook(model: StackedQwen2, frame, world) -> dict[str, float]:
        # One HF module per run, refilled with the current weights (building one is slow).
        if "hf" not in cache:
            cache["hf"] = to_hf(model)
        else:
            cache["hf"].load_state_dict(to_hf_state_dict(model))
        results = evaluate_frame(cache["hf"], frame, world)
        out = {}
        for task, metrics in summarize(results).items():
            for name, value in metrics.items():
                if name != "n":
                    out[f"{name}/{task}"] = float(value)
        return out

    return hook


# -- run directory -----------------------------------------------------------------------------
def _check_out(out: Path, identity: dict) -> Path | None:
    """The final checkpoint if OUT already holds this finished run; an error if it holds
    another run; None when training should start or resume here."""
    digest = artifacts.spec_hash(identity)
    if artifacts.is_complete(out):
        if artifacts.read_manifest(out).get("hash") == digest:
            return out / "checkpoints" / "final"
        raise WorldrepError(f"{out} holds a finished training run of a different spec; "
                            "choose another output directory or remove it")
    run_file = out / RUN_FILE
    if run_file.is_file():
        if json.loads(run_file.read_text()).get("hash") != digest:
            raise WorldrepError(f"{out} holds an unfinished training run of a different spec; "
                                "rerun with that spec to resume it, or remove the directory")
    elif out.exists() and any(out.iterdir()):
        raise WorldrepError(f"{out} exists and is not a worldrep training run; "
                            "choose an empty or new output directory")
    return None


def _remove_partial_writes(out: Path) -> None:
    """Temporary checkpoint dirs and state files left by a killed process (never read)."""
    import shutil

    for path in [*out.glob("checkpoints/.*.tmp-*"), *out.glob("resume/.*.tmp-*")]:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _save_resume(out: Path, opt: AdamW, step: int, identity_hash: str, seed: int) -> None:
    path = out / RESUME_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"step": step, "optimizer": opt.state_dict(), "hash": identity_hash,
             # The data order is a pure function of (seed, epoch): the position is the step.
             "data": {"seed": seed, "step": step}}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_resume(out: Path, opt: AdamW, identity_hash: str) -> int:
    path = out / RESUME_FILE
    if not path.is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("hash") != identity_hash:
        raise WorldrepError(f"{path} belongs to a different run; remove {out} to start over")
    opt.load_state_dict(state["optimizer"])
    return int(state["step"])


class MetricsLog:
    """metrics.jsonl: one JSON object per line; resuming drops lines after the resume step."""

    def __init__(self, path: Path, keep_through: int):
        self.path = path
        lines = path.read_text().splitlines() if path.is_file() else []
        kept = [line for line in lines if line.strip()
                and json.loads(line).get("step", 0) <= keep_through]
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, path)

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def plot_curves(metrics_path: Path, out_png: Path) -> None:
    """Training loss, per-task validation losses and each generation metric against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [r for r in records if r.get("kind") == "eval"]
    names = sorted({k for r in evals for k in r if "/" in k})
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name.split("/")[0], []).append(name)
    panels = ["loss"] + [g for g in CURVE_METRICS if g in groups]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    ax = axes[0, 0]
    if train:
        ax.plot(*zip(*train, strict=True), color="0.6", lw=0.8, label="train")
    for name in groups.get("loss", []):
        pts = [(r["step"], r[name]) for r in evals if name in r]
        ax.plot(*zip(*pts, strict=True), marker=".", label=f"val {name.split('/', 1)[1]}")
    ax.set(xlabel="step", ylabel="token loss", yscale="log", title="loss")
    ax.legend(fontsize=7)
    for ax, group in zip(axes[0, 1:], panels[1:], strict=True):
        for name in groups[group]:
            pts = [(r["step"], r[name]) for r in evals if name in r]
            ax.plot(*zip(*pts, strict=True), marker=".", label=name.split("/", 1)[1])
        ax.set(xlabel="step", title=group, yscale="log" if group == "mean_error" else "linear")
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = out_png.with_name(f".{out_png.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out_png)


# -- the stage function ------------------------------------------------------------------------
def _train_rows(data_dir: str) -> int:
    from .data import dataset_meta

    if not artifacts.is_complete(data_dir):
        raise WorldrepError(f"no finished dataset at {data_dir} (missing manifest.json); "
                            "make one with `worldrep data make` or `worldrep data mix`")
    return int(dataset_meta(data_dir)["sizes"]["train"])


def _data_hash(data_dir: str) -> str | None:
    path = Path(data_dir)
    return artifacts.read_manifest(path).get("hash") if artifacts.is_complete(path) else None


def build_model(plan: Plan, device) -> StackedQwen2:
    spec = plan.spec
    if spec.init_from:
        return load_checkpoint(spec.init_from, device=device)
    return init_model(spec.model, spec.seed, device=device)


def train(spec: TrainSpec, out: str | Path) -> Path:
    """Train one model as `spec` says into OUT; returns OUT/checkpoints/final.

    A finished OUT of the same spec is returned as is; an unfinished one is resumed from its
    newest checkpoint and ends with the same weights as an uninterrupted run.
    """
    out = Path(out)
    rt = Runtime.of(spec)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    plan = resolve(spec, _train_rows(spec.data), _data_hash(spec.data))
    spec = plan.spec
    identity = plan.identity()
    digest = artifacts.spec_hash(identity)
    finished = _check_out(out, identity)
    if finished is not None:
        return finished
    rows = load_rows(spec.data, "train", spec.model.max_positions, rt.device)
    out.mkdir(parents=True, exist_ok=True)
    _remove_partial_writes(out)
    artifacts.write_json_atomic(out / RUN_FILE, {"hash": digest, **identity})
    artifacts.write_spec(out, spec.model_dump(mode="json"))

    model = build_model(plan, rt.device)
    o = spec.optimizer
    opt = AdamW(model, o.lr, plan.total, o.warmup_steps, o.weight_decay, o.betas, o.eps,
                o.grad_clip)
    step = _load_resume(out, opt, digest)
    # Lines after the resumed checkpoint are redone; a fresh start redoes everything.
    log = MetricsLog(out / METRICS_FILE, keep_through=step if step else -1)
    evaluator = Evaluator(spec, rt)
    loop = _Loop(plan, rt, out, model, opt, evaluator, log, digest)
    if step == 0:
        log.write({"kind": "start", "step": 0, "model": describe(spec.model),
                   "total_steps": plan.total, "rows": plan.n_rows, "device": str(rt.device)})
        loop.evaluate(0)
        loop.checkpoint(0)
    loop.run(rows, step)
    return out / "checkpoints" / "final"


class _Loop:
    """The body of `train`: steps, logging, evaluation and checkpoints of one run."""

    def __init__(self, plan, rt, out, model, opt, evaluator, log, digest):
        self.plan, self.rt, self.out = plan, rt, out
        self.model, self.opt, self.evaluator, self.log = model, opt, evaluator, log
        self.digest = digest
        self.ckpt_dir = out / "checkpoints"
        self.last_good = None
        self.plotted = time.perf_counter()

    def lr_at(self, step: int) -> float:
        o, total = self.plan.spec.optimizer, self.plan.total
        if step < o.warmup_steps:
            return o.lr * step / max(1, o.warmup_steps)
        return o.lr * max(0.0, (total - step) / max(1, total - o.warmup_steps))

    def evaluate(self, step: int) -> None:
        metrics = self.evaluator(self.model)
        if metrics:
            self.log.write({"kind": "eval", "step": step, **metrics})

    def checkpoint(self, step: int, name: str | None = None) -> None:
        if not bool(torch.isfinite(self.opt.flat).all()):
            raise self._diverged(step, "the weights")
        name = name or f"checkpoint-{step}"
        save_checkpoint(self.model, self.ckpt_dir / name, info={"step": step})
        _save_resume(self.out, self.opt, step, self.digest, self.plan.spec.seed)
        self.last_good = name

    def _diverged(self, step: int, what: str) -> WorldrepError:
        newest = self.last_good or _newest_checkpoint(self.ckpt_dir)
        keep = f"the last good checkpoint is {self.ckpt_dir / newest}" if newest else \
            "no checkpoint was written"
        return WorldrepError(f"training diverged: {what} became NaN/inf by step {step} "
                             f"(lr {self.plan.spec.optimizer.lr:g}); {keep}; try a lower "
                             "learning rate or gradient clipping")

    def run(self, rows: Rows, step: int) -> None:
        spec, total = self.plan.spec, self.plan.total
        batcher = Batcher(rows, spec.batch_size, spec.seed, self.rt.pad_multiple,
                          static=self.rt.graphs)
        stepper = Stepper(self.model, self.opt, self.rt, answer_only=spec.loss == "answer")
        bar = _progress(total, step, spec.progress)
        tick, tokens, start = time.perf_counter(), 0, step
        self.model.train()
        while step < total:
            ids, plen, n_tokens = batcher.get(step)
            stepper(ids[None], plen[None])
            step += 1
            tokens += n_tokens
            due_eval = step in self.plan.eval_steps
            due_ckpt = step in self.plan.checkpoint_steps or step == total
            if step % spec.log_every and not (due_eval or due_ckpt):
                continue
            loss, norm, n = stepper.flush()
            now = time.perf_counter()
            if not np.isfinite(loss).all() or not np.isfinite(norm).all():
                raise self._diverged(step, "the loss")
            rate = n / max(now - tick, 1e-9)
            record = {"step": step, "epoch": round(batcher.epoch_of(step), 4),
                      "loss": float(loss[0]), "lr": self.lr_at(step - 1),
                      "grad_norm": float(norm[0]), "steps_per_s": round(rate, 3),
                      "tokens_per_s": round(tokens / max(now - tick, 1e-9), 1)}
            self.log.write(record)
            bar.update(step - start)
            bar.set_postfix(loss=f"{loss[0]:.4f}", lr=f"{record['lr']:.2e}")
            start, tokens = step, 0
            if due_eval:
                self.evaluate(step)
            if step in self.plan.checkpoint_steps:
                self.checkpoint(step)
                if time.perf_counter() - self.plotted > CURVES_EVERY_S:
                    plot_curves(self.out / METRICS_FILE, self.out / CURVES_FILE)
                    self.plotted = time.perf_counter()
            tick = time.perf_counter()
        bar.close()
        self.finish(step)

    def finish(self, step: int) -> None:
        self.checkpoint(step, "final")
        plot_curves(self.out / METRICS_FILE, self.out / CURVES_FILE)
        identity = self.plan.identity()
        artifacts.write_manifest(self.out, "train", identity, steps=step,
                                 final="checkpoints/final", model=describe(self.plan.spec.model))


def _newest_checkpoint(ckpt_dir: Path) -> str | None:
    steps = [int(p.name.split("-")[1]) for p in ckpt_dir.glob("checkpoint-*")
             if p.name.split("-")[1].isdigit()]
    return f"checkpoint-{max(steps)}" if steps else None


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step",
                dynamic_ncols=True, desc="train")
