"""One training step of a stack: loss, gradients and the AdamW update, eager or as a graph."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np
import torch

from ..model import StackedQwen2
from .optim import AdamW
from .runtime import Runtime


class Stats(NamedTuple):
    """What the step adds up per model until it is read: the mean token loss, the gradient
    norm (before clipping) and the number of steps, each summed. On the device (and as
    `TrainStep.flush` returns it) one row per field, one column per model; per run, floats."""

    loss: Any
    grad_norm: Any
    steps: Any

    @staticmethod
    def of(sums: np.ndarray, k: int) -> Stats:
        """Model k's column of flushed sums, as floats."""
        return Stats(*(float(v) for v in sums[:, k]))

    def plus(self, other: Stats) -> Stats:
        return Stats(*(a + b for a, b in zip(self, other, strict=True)))

    def means(self) -> tuple[float, float]:
        """The mean loss and gradient norm over the steps summed."""
        n = max(1.0, self.steps)
        return self.loss / n, self.grad_norm / n


NO_STATS = Stats(0.0, 0.0, 0.0)


def _raise_compile_limit() -> None:
    """Every padded length is one compiled shape; the default limit (8) is too small."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))


@contextmanager
def _deterministic(on: bool):
    """Deterministic algorithms while `on`, as before after. A step compiled for the CPU
    needs them once it has more than one thread: inductor otherwise adds the embedding's
    gradient rows with atomic adds across threads, in whatever order the threads arrive, and
    two runs of one spec on two cores drift apart by an ulp by step 20 and, by step 2,500,
    to different maps (the quickstart's base: held-out y R² 0.83 in one run, 0.78 in the
    next). With them, inductor keeps ATen's deterministic kernel for that one op (no cost on
    two threads; on one, where the adds come in order anyway, it would cost ~2 %, so it stays
    off). Scoped to the step: dynamo guards on the flag, so it holds the same at every call."""
    if not on:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


class TrainStep:
    """One training step of a stack: loss, gradients, clipped AdamW update of its active models.

    Each model's `Stats` add up on the device in `sums` (read by `flush`: one sync). With
    `graphs`, the whole step of each batch shape is captured once as a CUDA graph and
    replayed with the batch copied into its static input buffers. `answer` [K] says which
    models count only the answer's tokens (the others get prompt length 0: every target
    counts, exactly the full loss).
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
        # Compiled CPU steps on several threads need deterministic algorithms (`_deterministic`);
        # CUDA keeps its own kernels (its deterministic mode would need a cuBLAS workspace).
        self.deterministic = runtime.compile and device.type == "cpu"
        self.sums = torch.zeros(len(Stats._fields), model.k, device=device)
        self.graphs: dict[tuple, tuple] = {}
        self.pool = None

    def _math(self, ids: torch.Tensor, plen: torch.Tensor, first: int = 0) -> None:
        loss = self.loss_fn(ids, None if self.answer is None else plen * self.answer, first)
        scaled = (loss * self.opt.scale).sum() if self.opt.scaled else loss.sum()
        grads = torch.autograd.grad(scaled, self.opt.params)
        norm = self.update(grads)
        with torch.no_grad():
            new = torch.stack(Stats(loss.detach().float(), norm, torch.ones_like(norm)))
            self.sums += torch.where(self.opt.active > 0, new, 0.0)

    def __call__(self, ids: torch.Tensor, plen: torch.Tensor) -> None:
        """ids [K, B, T] int64, plen [K, B] int64."""
        if not self.rt.graphs:
            with _deterministic(self.deterministic and torch.get_num_threads() > 1):
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
        """[len(Stats), K]: each model's `Stats` since the last flush (a row each); zeroes
        them."""
        sums = self.sums.cpu().numpy().copy()
        self.sums.zero_()
        return sums
