"""circlecount: `circlecount(c_C,r=R)=K`, K = other eligible cities at distance <= R from C.

R is an integer radius drawn uniformly in [min_radius, max_radius] (inclusive); "eligible" is
the dataset's universe (pool plus required group). With a required group the centre is drawn
from it. An item is (centre, R), so no (centre, R) appears in two splits.
"""

from __future__ import annotations

import pydantic

from ._neighbours import centre_pool, draw_centres, neighbours
from .base import Items, RangeParams, Task
from .common import cat, city_refs, score_error
from .registry import register


class CircleCountParams(RangeParams):
    RANGES = (("min_radius", "max_radius"),)
    min_radius: int = pydantic.Field(5, ge=0)
    max_radius: int = pydantic.Field(200, ge=0)


@register
class CircleCount(Task):
    name = "circlecount"
    prefix = "circlecount("
    metric = "error"
    failure_value = 1000.0
    max_answer_tokens = 20
    Params = CircleCountParams

    def sample(self, s, n, rng, p):
        centre = draw_centres(s, n, rng)
        radius = rng.integers(p.min_radius, p.max_radius + 1, n)
        return Items(centre[:, None], {"r": radius})

    def answers(self, s, items, p):
        nb = neighbours(s.world, s.universe)
        counts = nb.within(nb.local[items.cities[:, 0]], items.params["r"], p.max_radius)
        return counts.astype(str)

    def format(self, s, items, answers):
        refs = city_refs(s.world, items.cities[:, 0])
        return cat("circlecount(", refs, ",r=", items.params["r"], ")=", answers)

    def n_possible(self, s, p):
        return float(len(centre_pool(s)) * (p.max_radius - p.min_radius + 1))

    def score(self, world, prompts, answers, outputs, parse="strict"):
        return score_error(answers, outputs, self.failure_value, parse)
