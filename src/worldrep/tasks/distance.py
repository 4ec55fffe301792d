"""distance: `dist(c_A,c_B)=D`, D = round(Euclidean distance) in 0.1-degree units."""

from __future__ import annotations

import numpy as np

from .base import Items, Task
from .common import cat, city_refs, draw_tuples, n_tuples, round_half_even, score_error
from .registry import register


@register
class Distance(Task):
    name = "distance"
    number = 1
    prefix = "dist("
    metric = "error"
    failure_value = float(np.hypot(3600, 1800))
    max_answer_tokens = 20

    def sample(self, s, n, rng, p):
        return Items(draw_tuples(s, n, 2, rng))

    def answers(self, s, items, p):
        a, b = items.cities[:, 0], items.cities[:, 1]
        d = np.hypot(s.world.x[a] - s.world.x[b], s.world.y[a] - s.world.y[b])
        return round_half_even(d).astype(str)

    def format(self, s, items, answers):
        refs = city_refs(s.world, items.cities)
        return cat("dist(", refs[:, 0], ",", refs[:, 1], ")=", answers)

    def n_possible(self, s, p):
        return n_tuples(s, 2)

    def score(self, world, prompts, answers, outputs, parse="strict"):
        return score_error(answers, outputs, self.failure_value, parse)
