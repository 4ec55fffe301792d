"""The optimizer: HF Trainer's AdamW recipe for K stacked models, and its one schedule."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import WorldrepError
from ..model import StackedQwen2
from .spec import OptimizerSpec


def learning_rate(lr: torch.Tensor, step: torch.Tensor, total: torch.Tensor,
                  warmup: torch.Tensor) -> torch.Tensor:
    """HF Trainer's linear schedule, the one worldrep has: lr * step/warmup during warmup, then
    lr * (total - step)/(total - warmup) down to 0, where `step` counts the earlier updates
    (the first update uses lr 0). The optimizer asks it in float32 for K models at once, the
    metrics log in float64 for one (`logged_lr`): the same arithmetic."""
    rising = step / warmup.clamp(min=1)
    falling = ((total - step) / (total - warmup).clamp(min=1)).clamp(min=0)
    return lr * torch.where(step < warmup, rising, falling)


def logged_lr(optimizer: OptimizerSpec, total: int, step: int) -> float:
    """The learning rate of the update after `step` earlier ones, as metrics.jsonl shows it."""
    values = torch.tensor([optimizer.lr, step, total, optimizer.warmup_steps],
                          dtype=torch.float64)
    return float(learning_rate(*values))


def _per_model(value, k: int, device=None) -> torch.Tensor:
    values = list(value) if isinstance(value, list | tuple) else [value] * k
    return torch.tensor([math.inf if v is None else v for v in values], device=device)


class AdamW:
    """AdamW + global-norm clipping + the linear schedule (`learning_rate`), HF Trainer's
    recipe, for K stacked models at once.

    The model's parameters are re-pointed into one flat [K, P] buffer, so the whole update is
    a few tensor ops and each model's norm, learning rate, decay and update count are a row.
    Weight matrices and embeddings decay; biases and norm weights do not (HF's grouping).

    `active` [K] says which models update. An inactive one (a run waiting for the others to
    catch up, or one that failed) keeps its weights, moments and update count exactly: its
    gradient is zeroed before it can reach them and its learning rate and moment weights are 0.

    With `scaled` (fp16), gradients arrive multiplied by each model's loss scale, as torch's
    GradScaler does it: they are unscaled; a model whose gradients overflowed skips its
    update and halves its scale; after 2,000 clean steps in a row the scale doubles. The
    schedule still advances on a skipped step (as HF's scheduler does); AdamW's bias
    correction counts the updates taken.
    """

    SCALE_INIT, SCALE_GROWTH_INTERVAL = 2.0 ** 16, 2000
    # The state a run resumes from: its name in resume/state.pt -> the attribute holding it.
    STATE = {"flat": "flat", "m": "m", "v": "v", "step": "updates", "taken": "taken",
             "scale": "scale", "clean": "clean"}

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
        self.updates = torch.zeros(k, device=device)  # updates done, per model
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
        return learning_rate(self.lr, self.updates, self.total, self.warmup)

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
        self.updates += on
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

    def state_tensors(self) -> list[torch.Tensor]:
        return [getattr(self, attribute) for attribute in self.STATE.values()]

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
