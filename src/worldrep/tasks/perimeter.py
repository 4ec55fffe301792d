"""perimeter: `perimeter(c_1,...,c_m)=P` for m cities in the written order: the closed polygon's
length for m >= 3, the single distance for m = 2. Unrounded edges are summed, then rounded half
to even.
"""

from __future__ import annotations

import numpy as np
import pydantic

from ._balanced import check_tuple_size
from .base import Items, RangeParams, Task
from .common import cat, join_refs, n_tuples, round_half_even, score_error, varlen_tuples
from .registry import register

MAX_CITIES = 30  # about 7 characters per city: longer prompts outgrow the model's context


def perimeter_length(x: np.ndarray, y: np.ndarray, cities: np.ndarray) -> np.ndarray:
    """Unrounded length per row of world rows [n, w] (-1 = empty slot, at the end), summed in
    the written order with the closing edge last."""
    present = cities >= 0
    m = present.sum(axis=1)
    total = np.zeros(len(cities))
    for j in range(cities.shape[1] - 1):
        a, b = cities[:, j], cities[:, j + 1]
        edge = np.hypot(x[b] - x[a], y[b] - y[a])
        total += np.where(present[:, j + 1], edge, 0.0)
    first, last = cities[:, 0], cities[np.arange(len(cities)), m - 1]
    closing = np.hypot(x[first] - x[last], y[first] - y[last])
    return total + np.where(m >= 3, closing, 0.0)  # two cities: one distance, not there and back


@register
class Perimeter(Task):
    name = "perimeter"
    number = 6
    prefix = "perimeter("
    metric = "error"
    failure_value = 20_000.0
    max_answer_tokens = 30

    class Params(RangeParams):
        RANGES = (("min_n", "max_n"),)
        min_n: int = pydantic.Field(2, ge=2, le=MAX_CITIES)  # cities per item
        max_n: int = pydantic.Field(5, ge=2, le=MAX_CITIES)

    def sample(self, s, n, rng, p):
        m = rng.integers(p.min_n, p.max_n + 1, n)
        cities = varlen_tuples(s, n, m, rng)
        # Fixed width: item keys of every batch line up.
        return Items(np.pad(cities, ((0, 0), (0, p.max_n - cities.shape[1])), constant_values=-1))

    def answers(self, s, items, p):
        return round_half_even(perimeter_length(s.world.x, s.world.y, items.cities)).astype(str)

    def format(self, s, items, answers):
        return cat("perimeter(", join_refs(s.world, items.cities), ")=", answers)

    def n_possible(self, s, p):
        check_tuple_size(s, p.max_n, self.name)
        return sum(n_tuples(s, m) for m in range(p.min_n, p.max_n + 1))

    def score(self, world, prompts, answers, outputs, parse="strict"):
        return score_error(answers, outputs, self.failure_value, parse)
