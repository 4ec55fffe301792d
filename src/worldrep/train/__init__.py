"""Training: one loop over K stacked runs; a single run is a pack of one.

`train_packed(specs, outs)` trains K runs of one architecture and length together, each into
its own run directory, and `train(spec, out)` is `train_packed([spec], [out])`. One 1.6M-
parameter model leaves a GPU almost idle; stacked, K of them share one step. One module a job,
in the order a step passes through them:

- `spec`: `TrainSpec` (what a run is) and `pack_key` (which runs can share a pack);
- `runtime`: how a run runs here (device, precision, compile, CUDA graphs);
- `batches`: `Batcher`, batch `step` of K runs as one [K, B, T] tensor; run k's rows at
  step s depend on (seed_k, s) alone, so the data position is just the step number;
- `optim`: `AdamW`, HF Trainer's recipe over one flat [K, P] buffer, and `learning_rate`, its
  one schedule (the update and the logged lr both ask it); an `active` mask lets a run that
  waits (after a resume the runs behind catch up) or has failed keep its state exactly while
  the others step, so a pack is never rebuilt;
- `step`: `TrainStep`, forward, backward and update of one stack (on CUDA compiled and
  replayed as one CUDA graph per batch shape), and `Stats`, what it adds up per model;
- `evaluator`: validation loss and generation metrics while training;
- `run`: `Run`, one run's directory (resume, metrics, checkpoints, manifest);
- `loop`: `train_pack`, the loop itself, top to bottom, with one `Progress` record per run.

Why packing does not change a run: each model's batch is right-padded to the pack's widest row
in that step, and short end-of-epoch batches get empty rows. Pads sit after every real token,
so causal attention never shows one to a real position, and pad targets are out of the loss,
which each model averages over its own tokens. Only float rounding of the larger shapes
differs (on CPU in fp32 a packed run's losses match its unpacked run's to ~1e-6). Running the
same spec again resumes from `resume/` and ends with the same weights (bit for bit on CPU).
"""

from .batches import Batcher, Rows, load_rows
from .curves import loss_lines, plot_curves
from .evaluator import Evaluator
from .loop import PackError, Progress, train, train_pack, train_packed
from .optim import AdamW, learning_rate, logged_lr
from .run import Run
from .runtime import CPU_COMPILE_STEPS, Runtime, models_per_stack
from .spec import (
    DEVICE_FIELDS,
    PACK_RULE,
    Cadence,
    EvalCadence,
    OptimizerSpec,
    PackKey,
    TrainSpec,
    load_spec,
    pack_key,
)
from .step import Stats, TrainStep

__all__ = [
    "CPU_COMPILE_STEPS", "DEVICE_FIELDS", "PACK_RULE", "AdamW", "Batcher", "Cadence",
    "EvalCadence", "Evaluator", "OptimizerSpec", "PackError", "PackKey", "Progress", "Rows",
    "Run", "Runtime", "Stats", "TrainSpec", "TrainStep", "learning_rate", "load_rows",
    "load_spec", "logged_lr", "loss_lines", "models_per_stack", "pack_key", "plot_curves",
    "train", "train_pack", "train_packed",
]
