"""angle: `angle(c_A,c_B,c_C)=θ`, the unsigned angle at the middle city B between B→A and B→C,
in whole degrees 0..180 (half to even); 0 when B coincides with A or C.

An item is the set of three cities: the same triangle with another middle city never lands in
two splits (its three angles sum to 180, so one would give the others away).
"""

from __future__ import annotations

import numpy as np

from .base import Items, Task
from .common import cat, city_refs, draw_tuples, n_tuples, round_half_even, score_error
from .registry import register


def angle_degrees(x: np.ndarray, y: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Angle at tri[:, 1] in degrees (float); atan2(|cross|, dot) equals the arccos of the
    normalised dot product but stays accurate near 0 and 180 degrees."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    ux, uy = (x[a] - x[b]).astype(np.float64), (y[a] - y[b]).astype(np.float64)
    vx, vy = (x[c] - x[b]).astype(np.float64), (y[c] - y[b]).astype(np.float64)
    theta = np.degrees(np.arctan2(np.abs(ux * vy - uy * vx), ux * vx + uy * vy))
    degenerate = ((ux == 0) & (uy == 0)) | ((vx == 0) & (vy == 0))
    return np.where(degenerate, 0.0, theta)


@register
class Angle(Task):
    name = "angle"
    number = 3
    prefix = "angle("
    metric = "error"
    failure_value = 180.0
    max_answer_tokens = 30

    def sample(self, s, n, rng, p):
        return Items(draw_tuples(s, n, 3, rng))

    def answers(self, s, items, p):
        return round_half_even(angle_degrees(s.world.x, s.world.y, items.cities)).astype(str)

    def format(self, s, items, answers):
        refs = city_refs(s.world, items.cities)
        return cat("angle(", refs[:, 0], ",", refs[:, 1], ",", refs[:, 2], ")=", answers)

    def n_possible(self, s, p):
        return n_tuples(s, 3)

    def score(self, world, prompts, answers, outputs, parse="strict"):
        return score_error(answers, outputs, self.failure_value, parse)
