"""What a run measures while it trains: validation loss per task, and generation metrics."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..errors import WorldrepError
from ..model import StackedQwen2, counted_targets
from ..seeding import rng as make_rng
from .batches import Rows
from .runtime import Runtime
from .spec import TrainSpec


class Evaluator:
    """Validation loss per task on a fixed subset, and greedy-decoding metrics per task
    (worldrep.evaluate on the model itself, flattened to `<metric>/<task>` floats).

    The subset is `rows_per_task` rows of each task, drawn once from (seed, task), so every
    evaluation of a run (and of its resumed continuation) sees the same rows.
    """

    def __init__(self, spec: TrainSpec, runtime: Runtime):
        from ..data import load_split

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
        from ..evaluate import evaluate_frame, summarize

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
            from ..data import dataset_world

            self._world = dataset_world(self.data_dir)
        return self._world


def _sums(ce: torch.Tensor, keep: torch.Tensor) -> np.ndarray:
    keep = keep.to(ce.dtype)
    return torch.stack([(ce * keep).sum(1), keep.sum(1)]).cpu().numpy()
