"""Where researchers already look: every run's metrics in TensorBoard (by default) and in
Weights & Biases (offline, on request), beside the run's own metrics.jsonl.

TensorBoard event files are written into the run directory itself, so `tensorboard --logdir
STUDY_OUT` lists every run of a study by its step directory (`train/pt1-1-s42-<hash>`) and
overlays their curves. A resumed run purges the events after its resume step, as it drops those
lines of metrics.jsonl. W&B runs offline (no network, no account): `wandb sync` uploads them
later. Both are optional dependencies (`pip install worldrep[tensorboard]`, `[wandb]`); a
missing one is said once and training goes on with metrics.jsonl alone.
"""

from __future__ import annotations

import warnings
from pathlib import Path

TRACKERS = ("tensorboard", "wandb")
_warned: set[str] = set()


def _missing(name: str, extra: str) -> None:
    if name not in _warned:
        _warned.add(name)
        warnings.warn(f"{name} is not installed (pip install 'worldrep[{extra}]'): runs log to "
                      "metrics.jsonl only", stacklevel=3)


class Trackers:
    """The trackers of one run: `log` a metrics record (a training line or an evaluation),
    `close` at the end."""

    def __init__(self, kinds: list[str], out: Path, name: str, config: dict, start_step: int):
        self.writers = []
        if "tensorboard" in kinds:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # torch's writer needs the tensorboard package
                _missing("tensorboard", "tensorboard")
            else:
                self.writers.append(("tensorboard", SummaryWriter(
                    log_dir=str(out), purge_step=start_step or None, flush_secs=30)))
        if "wandb" in kinds:
            try:
                import wandb
            except ImportError:
                _missing("wandb", "wandb")
            else:
                run = wandb.init(mode="offline", dir=str(out), name=name, config=config,
                                 reinit="create_new", settings=wandb.Settings(silent=True))
                self.writers.append(("wandb", run))

    def log(self, record: dict) -> None:
        if not self.writers or record.get("kind") == "start":
            return
        step = int(record["step"])
        evaluation = record.get("kind") == "eval"
        scalars = {(f"eval/{k}" if evaluation else f"train/{k}"): float(v)
                   for k, v in record.items() if k not in ("step", "kind", "epoch")
                   and isinstance(v, int | float) and not isinstance(v, bool)}
        for kind, writer in self.writers:
            if kind == "tensorboard":
                for tag, value in scalars.items():
                    writer.add_scalar(tag, value, step)
            else:
                writer.log(scalars, step=step)

    def close(self) -> None:
        for kind, writer in self.writers:
            if kind == "tensorboard":
                writer.close()
            else:
                writer.finish()
        self.writers = []
