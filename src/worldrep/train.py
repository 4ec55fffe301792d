"""Training: one loop over K stacked runs; a single run is a pack of one.

`train_packed(specs, outs)` trains K runs of one architecture and length together, each into
its own run directory, and `train(spec, out)` is `train_packed([spec], [out])`. One 1.6M-
parameter model leaves a GPU almost idle; stacked, K of them share one step. The loop
(`_train_pack`) steps every stack once per step, then each run that is due logs, evaluates,
checkpoints and finishes. Its pieces:

- `Run`: one run's state and everything it writes: identity, resume, metrics, checkpoints and
  finishing;
- `Batcher`: batch `step` of K runs as one [K, B, T] tensor; run k's rows at step s depend on
  (seed_k, s) alone, so the data position is just the step number;
- `AdamW`: HF Trainer's recipe over one flat [K, P] buffer, hyperparameters per model, and an
  `active` mask: a run that waits (after a resume the runs behind catch up) or has failed keeps
  its state exactly while the others step, so a pack is never rebuilt;
- `Step`: forward, backward and update of one stack; on CUDA compiled and replayed as one CUDA
  graph per batch shape.

Why packing does not change a run: each model's batch is right-padded to the pack's widest row
in that step, and short end-of-epoch batches get empty rows. Pads sit after every real token,
so causal attention never shows one to a real position, and pad targets are out of the loss,
which each model averages over its own tokens. Only float rounding of the larger shapes
differs (on CPU in fp32 a packed run's losses match its unpacked run's to ~1e-6).

A run directory OUT holds `run.json` (what is trained: its identity, which names no path),
`spec.yaml`, `checkpoints/checkpoint-<step>/` and `checkpoints/final/` (plain HF Qwen2
directories), `resume/state.pt` (weights, AdamW state and step of the newest checkpoint),
`metrics.jsonl`, `curves.png`, and `manifest.json`, written last. Running the same spec again
resumes from `resume/` and ends with the same weights (bit for bit on CPU).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pydantic
import torch
import torch.nn.functional as F

from . import artifacts, tokenizer
from .checkpoints import (
    checkpoint_hash,
    read_checkpoint_spec,
    read_weights,
    save_checkpoint,
    select_checkpoints,
)
from .config import Strict, parse_config
from .devices import resolve_device
from .errors import WorldrepError
from .model import (
    ModelSpec,
    StackedQwen2,
    counted_targets,
    describe,
    init_state_dict,
    load_hf_state_dict,
    select,
)
from .seeding import rng as make_rng
from .tracking import Trackers

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
    eval: EvalSpec = pydantic.Field(default_factory=EvalSpec)
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


# Settings that change how fast a run goes, not what it computes: a run may resume under
# different values (e.g. on another machine).
RUNTIME_FIELDS = ("device", "threads", "compile", "cuda_graphs", "progress", "log_every",
                  "track")


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


def _mismatch(a: PackKey, b: PackKey) -> str:
    return "; ".join(f"{name} {y!r} vs {x!r}" for name, x, y in zip(KEY_NAMES, a, b, strict=True)
                     if x != y)


# -- runtime: device, precision, compilation -------------------------------------------------
# On CPU a compiled step of the findings-size model (64 x 3, batch 64) runs ~1.4x as many
# steps a second as eager and saves ~20 ms a step, after a compile of ~45 s on a cold inductor
# cache (~15 s warm) per run: it pays from about 2,000 steps (benchmarks/tiny_step.py).
CPU_COMPILE_STEPS = 2000


@dataclass
class Runtime:
    device: torch.device
    autocast: torch.dtype | None
    compile: bool
    graphs: bool
    pad_multiple: int

    @staticmethod
    def of(spec: TrainSpec, steps: int | None = None) -> Runtime:
        """How `spec` runs here; `steps` (the run's length) decides `compile: auto` on CPU."""
        device = resolve_device(spec.device)
        cuda = device.type == "cuda"
        auto = "bf16" if cuda or _cpu_has_bf16() else "fp32"
        precision = spec.precision if spec.precision != "auto" else auto
        graphs = cuda if spec.cuda_graphs == "auto" else bool(spec.cuda_graphs)
        if graphs and not cuda:
            raise WorldrepError("cuda_graphs needs a CUDA device; allowed here: false or auto")
        pays = cuda or ((steps or 0) >= CPU_COMPILE_STEPS and _cpu_compiler() is not None)
        compile_ = pays if spec.compile == "auto" else bool(spec.compile)
        multiple = spec.pad_multiple or (8 if cuda else 1)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        return Runtime(device, dtype, compile_, graphs, multiple)

    @property
    def scaled(self) -> bool:
        """fp16 needs its loss scaled (its gradients underflow otherwise)."""
        return self.autocast == torch.float16

    def autocast_ctx(self):
        if self.autocast is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast)


def _cpu_compiler() -> str | None:
    """The C++ compiler inductor builds CPU kernels with (none: compile stays off on CPU)."""
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")


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
    """Batch `step` of K runs as one [K, B, T] tensor.

    Run k's rows at step s are perm[b*B:(b+1)*B] of its own rows, where (e, b) = divmod(s, its
    steps per epoch) and perm is the permutation drawn from (seed_k, e). The last batch of an
    epoch is short, not dropped: empty rows fill it (they carry no loss). T is the widest run's
    longest row, rounded up to `pad_multiple` (on CUDA every shape is a captured graph). All
    runs' rows live in one table (runs on the same `Rows` share it), so a step is one gather.
    """

    def __init__(self, rows: list[Rows], batch_size: int, seeds: list[int],
                 pad_multiple: int = 1):
        tables = list({id(r): r for r in rows}.values())
        width = max(t.ids.shape[1] for t in tables)
        device = tables[0].ids.device
        starts = dict(zip(map(id, tables), np.cumsum([0] + [len(t) for t in tables]),
                          strict=False))
        self.table = torch.cat([F.pad(t.ids, (0, width - t.ids.shape[1])) for t in tables]
                               + [torch.zeros(1, width, dtype=torch.uint8, device=device)])
        self.prompt = torch.cat([torch.from_numpy(t.prompt_len) for t in tables]
                                + [torch.zeros(1, dtype=torch.int64)]).to(device)
        self.rows, self.seeds, self.offsets = rows, seeds, [int(starts[id(r)]) for r in rows]
        self.batch_size, self.pad_multiple = batch_size, pad_multiple
        self.per_epoch = [math.ceil(len(r) / batch_size) for r in rows]
        self._epochs: dict[int, tuple] = {}  # run -> (epoch, index, widths, tokens) per batch

    def order(self, k: int, epoch: int) -> np.ndarray:
        return make_rng(self.seeds[k], "train-order", epoch).permutation(len(self.rows[k]))

    def _epoch(self, k: int, epoch: int) -> tuple:
        if self._epochs.get(k, (None,))[0] != epoch:
            perm, n, size = self.order(k, epoch), self.per_epoch[k], self.batch_size
            pad = n * size - len(perm)
            empty = len(self.table) - 1
            index = np.concatenate([perm + self.offsets[k], np.full(pad, empty)]).reshape(n, size)
            lengths = np.concatenate([self.rows[k].lengths[perm], np.zeros(pad, np.int64)])
            lengths = lengths.reshape(n, size)
            m = self.pad_multiple
            widths = np.minimum(-(-lengths.max(axis=1) // m) * m, self.table.shape[1])
            self._epochs[k] = (epoch, torch.from_numpy(index).to(self.table.device), widths,
                               lengths.sum(axis=1))
        return self._epochs[k]

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """(ids [K, B, T] int64, prompt_len [K, B] int64, real tokens per run [K])."""
        picks, widths, tokens = [], [], []
        for k, n in enumerate(self.per_epoch):
            epoch, b = divmod(step, n)
            _, index, width, count = self._epoch(k, epoch)
            picks.append(index[b])
            widths.append(width[b])
            tokens.append(count[b])
        index = torch.stack(picks)
        return self.table[index, :int(max(widths))].long(), self.prompt[index], np.asarray(tokens)


# -- optimizer ---------------------------------------------------------------------------------
def _per_model(value, k: int, device=None) -> torch.Tensor:
    values = list(value) if isinstance(value, list | tuple) else [value] * k
    return torch.tensor([math.inf if v is None else v for v in values], device=device)


class AdamW:
    """AdamW + global-norm clipping + linear warmup/decay, HF Trainer's recipe, for K stacked
    models at once.

    The model's parameters are re-pointed into one flat [K, P] buffer, so the whole update is
    a few tensor ops and each model's norm, learning rate, decay and step count are a row.
    Weight matrices and embeddings decay; biases and norm weights do not (HF's grouping). The
    learning rate of an update is lr * s/warmup during warmup, then lr * (total - s)/(total -
    warmup), with s the number of earlier updates (HF's schedule: the first update uses lr 0).

    `active` [K] says which models update. An inactive one (a run waiting for the others to
    catch up, or one that failed) keeps its weights, moments and step count exactly: its
    gradient is zeroed before it can reach them and its learning rate and moment weights are 0.

    With `scaled` (fp16), gradients arrive multiplied by each model's loss scale, as torch's
    GradScaler does it: they are unscaled; a model whose gradients overflowed skips its
    update and halves its scale; after 2,000 clean steps in a row the scale doubles. The
    schedule still advances on a skipped step (as HF's scheduler does); AdamW's bias
    correction counts the updates taken.
    """

    SCALE_INIT, SCALE_GROWTH_INTERVAL = 2.0 ** 16, 2000

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
        self.taken = torch.zeros(k, device=device)  # of which not skipped (fp16 overflow)
        self.scale = torch.full((k,), self.SCALE_INIT, device=device)
        self.clean = torch.zeros(k, device=device)  # clean steps since the scale last changed
        self.scaled = False
        self.active, self._flags = torch.ones(k, device=device), [True] * k
        self.lr = _per_model(lr, k, device)
        self.total = _per_model(total_steps, k, device)
        self.warmup = _per_model(warmup_steps, k, device)
        self.weight_decay = _per_model(weight_decay, k, device)
        self.clip = _per_model(grad_clip, k, device)
        self.betas, self.eps = tuple(float(b) for b in betas), float(eps)

    def set_active(self, flags: list[bool]) -> None:
        if flags != self._flags:  # a copy to the device only when it changes, never a sync
            self._flags = list(flags)
            self.active.copy_(torch.tensor(flags, dtype=self.active.dtype))

    def lr_now(self) -> torch.Tensor:
        s, warm = self.step, self.warmup
        rising = s / warm.clamp(min=1)
        falling = ((self.total - s) / (self.total - warm).clamp(min=1)).clamp(min=0)
        return self.lr * torch.where(s < warm, rising, falling)

    @torch.no_grad()
    def update(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """Clip, then one AdamW update of the active models; returns each model's gradient
        norm (before clipping)."""
        k, on = self.flat.shape[0], self.active
        g = torch.cat([x.reshape(k, -1) for x in grads], dim=1).float()
        if self.scaled:
            g = g / self.scale[:, None]
            finite = torch.isfinite(g).all(dim=1)
            g = torch.where(finite[:, None], g, 0.0)
            self.clean = torch.where(on > 0, torch.where(finite, self.clean + 1, 0.0), self.clean)
            grow = self.clean >= self.SCALE_GROWTH_INTERVAL
            self.scale.copy_(torch.where(finite, torch.where(grow, self.scale * 2, self.scale),
                                         self.scale / 2) * on + self.scale * (1 - on))
            self.clean.masked_fill_(grow, 0)
        norm = torch.linalg.vector_norm(g, dim=1)
        lr = self.lr_now() * on
        self.step += on
        if self.scaled:
            on = on * finite  # an overflowed model skips this update (the schedule moves on)
        g = torch.where(on[:, None] > 0, g * (self.clip / (norm + 1e-6)).clamp(max=1)[:, None],
                        0.0)
        lr = lr * on
        b1, b2 = self.betas
        self.taken += on
        # A model that has taken no update yet (fp16 skipped its first) must not divide 0/0.
        bc1, bc2 = (torch.where(self.taken > 0, 1 - b ** self.taken, 1.0) for b in (b1, b2))
        self.flat.mul_(1 - (lr * self.weight_decay)[:, None] * self.decay)
        self.m.lerp_(g, ((1 - b1) * on)[:, None])
        self.v.lerp_(g * g, ((1 - b2) * on)[:, None])
        denom = (self.v.sqrt() / bc2.sqrt()[:, None]).add_(self.eps)
        self.flat.sub_(self.m / denom * torch.where(on > 0, lr / bc1, 0.0)[:, None])
        return norm

    STATE = ("flat", "m", "v", "step", "taken", "scale", "clean")

    def state_tensors(self) -> list[torch.Tensor]:
        return [getattr(self, name) for name in self.STATE]

    def state_dict(self, k: int = 0) -> dict[str, Any]:
        """Model k's rows: what the same run trained alone would save."""
        rows = {n: t[k:k + 1].detach().to("cpu", copy=True)
                for n, t in zip(self.STATE, self.state_tensors(), strict=True)}
        return {**rows, "sizes": self.sizes}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any], k: int = 0) -> None:
        if state["sizes"] != self.sizes or state["flat"].shape[1] != self.flat.shape[1]:
            raise WorldrepError("the resume state does not fit this model")
        for name, t in zip(self.STATE, self.state_tensors(), strict=True):
            t[k:k + 1].copy_(state[name])


# -- the step ----------------------------------------------------------------------------------
def _raise_compile_limit() -> None:
    """Every padded length is one compiled shape; the default limit (8) is too small."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))


class Step:
    """One training step of a stack: loss, gradients, clipped AdamW update of its active models.

    Each model's loss, gradient norm and step count add up on the device in `sums` (read by
    `flush`: one sync). With `graphs`, the whole step of each batch shape is captured once as a
    CUDA graph and replayed with the batch copied into its static input buffers. `answer`
    [K] says which models count only the answer's tokens (the others get prompt length 0:
    every target counts, exactly the full loss).
    """

    def __init__(self, model: StackedQwen2, opt: AdamW, runtime: Runtime,
                 answer: list[bool] | None = None):
        self.opt, self.rt = opt, runtime
        opt.scaled = runtime.scaled
        device = opt.flat.device
        self.answer = torch.tensor(answer, device=device)[:, None] if any(answer or []) else None
        # the same flags on the host, for `_first` (no device copy on the hot path)
        self._answer_host = self.answer.cpu() if self.answer is not None else None

        def loss_fn(ids, plen, first):
            with runtime.autocast_ctx():
                return model.loss(ids, plen, first)

        self.loss_fn, self.update = loss_fn, opt.update
        if runtime.compile:
            _raise_compile_limit()
            # CUDA graphs need static shapes; on CPU one graph serves every batch width.
            self.loss_fn = torch.compile(loss_fn, dynamic=not runtime.graphs)
        if runtime.compile and not runtime.graphs:
            # The update is ~20 elementwise passes over the flat buffer: fused into a few (a
            # CUDA graph already replays them without launch overhead).
            self.update = torch.compile(opt.update, dynamic=False)
        self.sums = torch.zeros(3, model.k, device=device)  # loss, grad norm, steps
        self.graphs: dict[tuple, tuple] = {}
        self.pool = None

    def _math(self, ids: torch.Tensor, plen: torch.Tensor, first: int = 0) -> None:
        loss = self.loss_fn(ids, None if self.answer is None else plen * self.answer, first)
        scaled = (loss * self.opt.scale).sum() if self.opt.scaled else loss.sum()
        grads = torch.autograd.grad(scaled, self.opt.params)
        norm = self.update(grads)
        with torch.no_grad():
            new = torch.stack([loss.detach().float(), norm, torch.ones_like(norm)])
            self.sums += torch.where(self.opt.active > 0, new, 0.0)

    def __call__(self, ids: torch.Tensor, plen: torch.Tensor) -> None:
        """ids [K, B, T] int64, plen [K, B] int64."""
        if not self.rt.graphs:
            self._math(ids, plen, self._first(plen))
            return
        key = tuple(ids.shape)
        if key not in self.graphs:
            self.graphs[key] = self._capture(ids, plen)
        replay, ids_buf, plen_buf = self.graphs[key]
        ids_buf.copy_(ids)
        plen_buf.copy_(plen)
        replay()

    def _first(self, plen: torch.Tensor) -> int:
        """The first target any model counts (the batch's earliest answer with `loss:
        answer`, else 0): the LM head and cross-entropy skip the positions before it. A host
        read of plen, so only off the CUDA-graph path (whose shapes are static)."""
        if self.answer is None:
            return 0
        return max(int((plen.cpu() * self._answer_host).min()) - 1, 0)

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

    def flush(self) -> np.ndarray:
        """[3, K]: each model's summed loss, gradient norm and steps since the last flush."""
        sums = self.sums.cpu().numpy().copy()
        self.sums.zero_()
        return sums


# -- evaluation --------------------------------------------------------------------------------
class Evaluator:
    """Validation loss per task on a fixed subset, and greedy-decoding metrics per task
    (worldrep.evaluate on the model itself, flattened to `<metric>/<task>` floats).

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
        self.generate = spec.eval.generate

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
            full[:, sl] = _sums(ce, keep[0])
            answer[:, sl] = _sums(ce, counted_targets(ids, plen)[0])
        out = {}
        for task in np.unique(self.tasks):
            rows = self.tasks == task
            out[f"loss/{task}"] = float(full[0, rows].sum() / max(1, full[1, rows].sum()))
            out[f"answer_loss/{task}"] = float(answer[0, rows].sum()
                                               / max(1, answer[1, rows].sum()))
        return out

    def __call__(self, model: StackedQwen2) -> dict[str, float]:
        """Metrics of a K=1 model."""
        from .evaluate import evaluate_frame, summarize

        model.eval()
        metrics = self.losses(model)
        if self.generate and len(self.frame):
            try:
                world = self.world
            except WorldrepError as err:  # e.g. the dataset's world was moved away
                warnings.warn(f"generation metrics off: {err}", stacklevel=2)
                self.generate = False
            else:
                for task, values in summarize(evaluate_frame(model, self.frame, world)).items():
                    metrics.update({f"{name}/{task}": float(v) for name, v in values.items()
                                    if name != "n"})
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


# -- one run -----------------------------------------------------------------------------------
class Run:
    """One training run: what it trains (the resolved spec and its identity), how far it is,
    and everything it writes to OUT: run.json and spec.yaml, metrics.jsonl and curves.png,
    checkpoints with their resume state, and last the manifest. Its weights and AdamW state
    live in row `k` of a stack's optimizer (`open`)."""

    def __init__(self, spec: TrainSpec, out: str | Path):
        """Resolve `spec` (absolute paths, model and lr filled in) and the run's length; this
        writes nothing."""
        self.out = Path(out)
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
        from .data import dataset_meta

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
            "spec": spec.model_dump(mode="json", exclude={*RUNTIME_FIELDS, "data", "init_from"}),
            "data_hash": artifacts.read_manifest(spec.data).get("hash"), "init_hash": init_hash,
            "total_steps": self.total}
        self.digest = artifacts.spec_hash(self.identity)
        self.step, self.error, self.done = 0, None, False

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

    def open(self, opt: AdamW, k: int, rows: Rows) -> None:
        """Create or reopen OUT and load the run's state into row k of `opt`: weights,
        moments and step of its newest checkpoint, from resume/state.pt when there is one."""
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
        self.opt, self.k, self.rows = opt, k, rows
        if (self.out / RESUME_FILE).is_file():
            state = _load_resume(self.out)
            if state.get("hash") != self.digest:
                raise WorldrepError(f"{self.out / RESUME_FILE} belongs to a different run; "
                                    f"remove {self.out} to start over")
            opt.load_state_dict(state["optimizer"], k)
            self.step = int(state["step"])
        # Lines after the resumed checkpoint are redone; a fresh start redoes everything.
        log = self.out / METRICS_FILE
        lines = log.read_text().splitlines() if log.is_file() else []
        kept = [line for line in lines
                if line.strip() and self.step and json.loads(line).get("step", 0) <= self.step]
        _write_atomic(log, lambda tmp: tmp.write_text("".join(line + "\n" for line in kept)))
        self.evaluator = Evaluator(self.spec, self.rt)
        self.trackers = Trackers(self.spec.track, self.out, self.out.name, self.identity,
                                 self.step)
        self.sums, self.tokens = np.zeros(3), 0  # loss, grad norm, steps since the last report
        self.tick = self.plotted = time.perf_counter()

    def log(self, record: dict) -> None:
        with (self.out / METRICS_FILE).open("a") as f:
            f.write(json.dumps(record) + "\n")
        self.trackers.log(record)

    def due(self, step: int) -> bool:
        return (step % self.spec.log_every == 0 or step in self.eval_steps
                or step in self.checkpoint_steps or step == self.total)

    def begin(self, packed: int) -> None:
        """Step 0 of a fresh run: the start record, the first evaluation and checkpoint."""
        self.log({"kind": "start", "step": 0, "model": describe(self.spec.model),
                  "total_steps": self.total, "rows": self.n_rows, "device": str(self.rt.device),
                  "packed": packed})
        self.evaluate(0)
        self.checkpoint(0)

    def report(self, step: int) -> dict:
        """The metrics line of the steps since the last report, then what is due at `step`:
        the evaluation, the checkpoint, the end. A NaN/inf loss is an error."""
        loss, norm = self.sums[:2] / max(1.0, self.sums[2])
        if not (np.isfinite(loss) and np.isfinite(norm)):
            raise self.diverged(step, "the loss")
        elapsed = max(time.perf_counter() - self.tick, 1e-9)
        record = {"step": step, "epoch": round(step / self.per_epoch, 4), "loss": float(loss),
                  "lr": self.lr_at(step - 1), "grad_norm": float(norm),
                  "steps_per_s": round(self.sums[2] / elapsed, 3),
                  "tokens_per_s": round(self.tokens / elapsed, 1)}
        self.log(record)
        self.sums[:], self.tokens = 0, 0
        if step in self.eval_steps:
            self.evaluate(step)
        if step in self.checkpoint_steps:
            self.checkpoint(step)
            if time.perf_counter() - self.plotted > CURVES_EVERY_S:
                plot_curves(self.out / METRICS_FILE, self.out / CURVES_FILE, self.spec.loss)
                self.plotted = time.perf_counter()
        if step == self.total:
            self.finish()
        self.tick = time.perf_counter()
        return record

    def lr_at(self, step: int) -> float:
        o = self.spec.optimizer
        if step < o.warmup_steps:
            return o.lr * step / max(1, o.warmup_steps)
        return o.lr * max(0.0, (self.total - step) / max(1, self.total - o.warmup_steps))

    def evaluate(self, step: int) -> None:
        metrics = self.evaluator(select(self.opt.model, self.k))
        if metrics:
            self.log({"kind": "eval", "step": step, **metrics})

    def checkpoint(self, step: int, name: str | None = None) -> None:
        """An HF checkpoint of the weights at `step`, then the resume state that points at it."""
        if not bool(torch.isfinite(self.opt.flat[self.k]).all()):
            raise self.diverged(step, "the weights")
        save_checkpoint(self.opt.model, self.out / "checkpoints" / (name or f"checkpoint-{step}"),
                        k=self.k, info={"step": step})
        state = {"step": step, "optimizer": self.opt.state_dict(self.k), "hash": self.digest,
                 # The data order is a pure function of (seed, epoch): the position is the step.
                 "data": {"seed": self.spec.seed, "step": step}}
        (self.out / RESUME_FILE).parent.mkdir(exist_ok=True)
        _write_atomic(self.out / RESUME_FILE, lambda tmp: torch.save(state, tmp))

    def finish(self) -> None:
        self.checkpoint(self.total, "final")
        plot_curves(self.out / METRICS_FILE, self.out / CURVES_FILE, self.spec.loss)
        self.trackers.close()
        artifacts.write_manifest(self.out, "train", self.identity, steps=self.total,
                                 final="checkpoints/final", model=describe(self.spec.model),
                                 data_dir=self.spec.data, init_from_dir=self.spec.init_from)
        self.done = True

    def diverged(self, step: int, what: str) -> WorldrepError:
        try:
            keep = f"the last good checkpoint is {select_checkpoints(self.out, 'last')[0]}"
        except WorldrepError:
            keep = "no checkpoint was written"
        return WorldrepError(f"training diverged: {what} became NaN/inf by step {step} "
                             f"(lr {self.spec.optimizer.lr:g}); {keep}; try a lower "
                             "learning rate or gradient clipping")


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


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no temporary behind
        raise


def loss_lines(records: list[dict], loss: str = "full") -> list[tuple[str, list, str]]:
    """(label, points, style) of the loss panel: the training loss, then the validation loss
    of the same kind per task (solid) and of the other kind (dotted), each kind named: with
    `loss: answer` the training loss is answer-only, so its validation twin is too."""
    same, other = ("answer_loss", "loss") if loss == "answer" else ("loss", "answer_loss")
    words = {"answer_loss": "answer-only", "loss": "whole-row"}
    evals = [r for r in records if r.get("kind") == "eval"]
    lines = [(f"train ({words[same]} loss)",
              [(r["step"], r["loss"]) for r in records if "loss" in r], "-")]
    for kind, style in ((same, "-"), (other, ":")):
        for name in sorted({k for r in evals for k in r if k.split("/")[0] == kind}):
            lines.append((f"val {name.split('/', 1)[1]} ({words[kind]})",
                          [(r["step"], r[name]) for r in evals if name in r], style))
    return lines


def plot_curves(metrics_path: Path, out_png: Path, loss: str = "full") -> None:
    """Training loss and the validation loss of the same kind (answer-only or whole-row:
    `loss`) per task, the other kind dashed, then each generation metric against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
    evals = [r for r in records if r.get("kind") == "eval"]
    names = sorted({k for r in evals for k in r if "/" in k})
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name.split("/")[0], []).append(name)
    panels = ["loss"] + [g for g in CURVE_METRICS if g in groups]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    ax = axes[0, 0]
    for i, (label, pts, style) in enumerate(loss_lines(records, loss)):
        if not pts:
            continue
        extra = {"color": "0.6", "lw": 0.8} if i == 0 else {"marker": "." if style == "-"
                                                              else None}
        ax.plot(*zip(*pts, strict=True), style, label=label, **extra)
    ax.set(xlabel="step", ylabel="token loss", yscale="log",
           title="loss (answer-only)" if loss == "answer" else "loss (whole row)")
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


# -- the loop ----------------------------------------------------------------------------------
class PackError(WorldrepError):
    """Some runs of a pack failed; the others finished. `errors` maps OUT -> message."""

    def __init__(self, errors: dict[str, str], total: int):
        self.errors = errors
        shown = "; ".join(f"{out}: {msg}" for out, msg in errors.items())
        super().__init__(f"{len(errors)} of {total} packed runs failed: {shown}")


def models_per_stack(k: int, device: torch.device) -> int:
    """How many of a pack's K runs share one stacked step: all of them on CUDA, where one
    tiny model leaves the device idle and the pack is one compiled CUDA graph. On CPU one:
    there a stacked step was measured slower per model than single runs (by 0-10% for tiny
    models, ~20% for the reference model at batch 128: each op's tensors outgrow the caches,
    and above 32 MB glibc maps fresh pages for every allocation), so a CPU pack steps its runs
    in turn, exactly as fast as running them one after another, in one process."""
    return k if device.type != "cpu" else 1


class Stack(NamedTuple):
    """Consecutive runs of a pack stacked in one model: its optimizer, step and batches."""

    runs: list[Run]
    opt: AdamW
    step: Step
    batches: Batcher


def _stack(runs: list[Run], rt: Runtime, rows: dict) -> Stack:
    model = StackedQwen2(runs[0].spec.model, k=len(runs))
    for k, run in enumerate(runs):
        load_hf_state_dict(model, run.initial_weights(), k)
    model = model.to(rt.device)
    o = [run.spec.optimizer for run in runs]
    opt = AdamW(model, [x.lr for x in o], [run.total for run in runs],
                [x.warmup_steps for x in o], [x.weight_decay for x in o], o[0].betas, o[0].eps,
                [x.grad_clip for x in o])
    for k, run in enumerate(runs):
        run.open(opt, k, rows[run.spec.data])
    return Stack(runs, opt, Step(model, opt, rt, [run.spec.loss == "answer" for run in runs]),
                 Batcher([run.rows for run in runs], runs[0].spec.batch_size,
                         [run.spec.seed for run in runs], rt.pad_multiple))


def _train_pack(runs: list[Run], stack: int | None) -> None:
    """Train the runs of one pack key to their end. Each step, every stack steps its runs that
    are at that step and have not failed; the others wait (the active mask), so runs resumed
    from different steps catch up without repeating or skipping one. Then every run that is
    due logs, evaluates, checkpoints or finishes; one that diverges stops alone."""
    from tqdm.auto import tqdm

    rt, total, spec = runs[0].rt, runs[0].total, runs[0].spec
    if spec.threads:
        torch.set_num_threads(spec.threads)
    rows = {}
    for run in runs:  # runs on the same data share its rows
        if run.spec.data not in rows:
            rows[run.spec.data] = load_rows(run.spec.data, "train", spec.model.max_positions,
                                            rt.device)
    per = stack or models_per_stack(len(runs), rt.device)
    stacks = [_stack(runs[i:i + per], rt, rows) for i in range(0, len(runs), per)]
    for run in runs:
        if run.step == 0:
            run.begin(packed=len(runs))
        elif run.step == total:  # killed after its last checkpoint, before the final one
            run.finish()
    step = min(run.step for run in runs)
    bar = tqdm(total=total, initial=step, disable=not any(r.spec.progress for r in runs),
               unit="step", dynamic_ncols=True, desc=f"train x{len(runs)}" if runs[1:] else "train")
    while step < total and any(run.error is None and not run.done for run in runs):
        stepped = []
        for st in stacks:
            active = [run.error is None and run.step == step for run in st.runs]
            if not any(active):
                continue
            st.opt.set_active(active)
            ids, plen, tokens = st.batches.get(step)
            st.step(ids, plen)
            for run, on, n in zip(st.runs, active, tokens, strict=True):
                if on:
                    run.step, run.tokens = step + 1, run.tokens + int(n)
                    stepped.append(run)
        step += 1
        due = [run for run in stepped if run.due(step)]
        if not due:
            continue
        for st in stacks:  # one sync: every run's sums since the last flush
            for run, sums in zip(st.runs, st.step.flush().T, strict=True):
                run.sums += sums
        for run in due:
            try:
                record = run.report(step)
            except WorldrepError as err:  # diverged: this run stops, the others go on
                run.error = str(err)
            else:
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
        bar.update(step - bar.n)
    bar.close()
    for run in runs:  # a run that failed keeps what it logged
        run.trackers.close()


def train_packed(specs: list[TrainSpec], outs: list[str | Path], regroup: bool = False,
                 stack: int | None = None) -> list[Path]:
    """Train each `specs[i]` into `outs[i]`, together; returns each OUT/checkpoints/final.

    Finished OUTs are left as they are and unfinished ones resume, each from its own newest
    checkpoint. The runs must share a `pack_key`; otherwise this is an error, or with `regroup`
    the runs are split into compatible packs trained one after another (and a run whose spec is
    invalid fails alone). A run that diverges stops alone; one `PackError` reports the failed
    runs after the others have finished. `stack` is at most how many runs share one stacked
    step (default `models_per_stack`); it changes speed and float rounding, nothing else.
    """
    outs = [Path(o) for o in outs]
    if len(specs) != len(outs) or not specs:
        raise WorldrepError(f"train_packed needs one output directory per spec; got "
                            f"{len(specs)} specs and {len(outs)} outs")
    resolved = [o.resolve() for o in outs]
    if dupes := sorted({str(o) for o in resolved if resolved.count(o) > 1}):
        raise WorldrepError(f"packed runs need distinct output directories; repeated: "
                            f"{', '.join(dupes)}")
    errors: dict[str, str] = {}
    packs: dict[PackKey, list[Run]] = {}
    for spec, out in zip(specs, outs, strict=True):
        try:
            run = Run(spec, out)
            if not run.finished():
                packs.setdefault(pack_key(run.spec, run.total), []).append(run)
        except WorldrepError as err:
            if not regroup:
                raise
            errors[str(out)] = str(err)
    keys = list(packs)
    if len(keys) > 1 and not regroup:
        first, other = packs[keys[0]][0], packs[keys[1]][0]
        raise WorldrepError(f"runs cannot be packed together: {other.out} differs from "
                            f"{first.out} in {_mismatch(keys[0], keys[1])}; {PACK_RULE}")
    for runs in packs.values():
        _train_pack(runs, stack)
        errors.update({str(run.out): run.error for run in runs if run.error})
    if errors:
        raise PackError(errors, len(specs))
    return [o / "checkpoints" / "final" for o in outs]


def train(spec: TrainSpec, out: str | Path) -> Path:
    """Train one model as `spec` says into OUT (a pack of one); returns OUT/checkpoints/final.

    A finished OUT of the same spec is returned as is; an unfinished one is resumed from its
    newest checkpoint and ends with the same weights as an uninterrupted run.
    """
    try:
        return train_packed([spec], [out])[0]
    except PackError as err:
        raise WorldrepError(*err.errors.values()) from None
