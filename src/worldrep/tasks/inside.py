"""inside: `inside(c_T;c_H1,...,c_Hm)=TRUE|FALSE`, whether city T lies in the convex hull of the
m listed cities (boundary counts as inside; a hull of collinear cities holds nothing).

The test is exact integer arithmetic: T is in the closed hull of a 2-D point set iff it lies
in some closed non-degenerate triangle of three of the points (a fan triangulation of the hull
covers it), and every sign needed comes from the pairwise crosses (H_i - T) x (H_j - T).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pydantic

from ._balanced import balanced_draw, check_tuple_size
from .base import Items, RangeParams, Task
from .common import cat, city_refs, join_refs, n_tuples, score_exact, varlen_tuples
from .registry import register

MAX_HULL = 12  # the triangle test costs C(m, 3); prompts stay far below the model's context


def in_hull(x: np.ndarray, y: np.ndarray, cities: np.ndarray) -> np.ndarray:
    """Per row of world rows [n, 1 + m] (test city first, -1 = empty hull slot): is the test
    city inside the closed convex hull of the others?"""
    t, hull = cities[:, 0], cities[:, 1:]
    # An empty slot repeats the first hull city: a duplicate point leaves the hull unchanged.
    hull = np.where(hull >= 0, hull, hull[:, :1])
    dx = x[hull].astype(np.int64) - x[t].astype(np.int64)[:, None]
    dy = y[hull].astype(np.int64) - y[t].astype(np.int64)[:, None]
    m = hull.shape[1]
    cross = {(i, j): dx[:, i] * dy[:, j] - dy[:, i] * dx[:, j]
             for i, j in combinations(range(m), 2)}
    inside = np.zeros(len(cities), bool)
    for i, j, k in combinations(range(m), 3):
        a, b, c = cross[i, j], cross[j, k], -cross[i, k]
        nondegenerate = (a + b + c) != 0  # = twice the signed area of triangle (i, j, k)
        same_side = ((a >= 0) & (b >= 0) & (c >= 0)) | ((a <= 0) & (b <= 0) & (c <= 0))
        inside |= nondegenerate & same_side
    return inside


@register
class Inside(Task):
    name = "inside"
    number = 5
    prefix = "inside("
    first_delimiter = ";"
    metric = "accuracy"
    failure_value = 0.0
    max_answer_tokens = 20
    balanced_labels = ("TRUE", "FALSE")

    class Params(RangeParams):
        RANGES = (("min_n", "max_n"),)
        min_n: int = pydantic.Field(3, ge=3, le=MAX_HULL)  # hull cities per item
        max_n: int = pydantic.Field(5, ge=3, le=MAX_HULL)

    def sample(self, s, n, rng, p):
        def draw(k: int) -> Items:
            m = rng.integers(p.min_n, p.max_n + 1, k)
            cities = varlen_tuples(s, k, m + 1, rng)  # the forced city may be T or a hull city
            width = p.max_n + 1  # fixed width: item keys of every batch line up
            return Items(np.pad(cities, ((0, 0), (0, width - cities.shape[1])),
                                constant_values=-1))

        return balanced_draw(draw, lambda it: in_hull(s.world.x, s.world.y, it.cities), n,
                             rng, self.name)

    def answers(self, s, items, p):
        return np.where(in_hull(s.world.x, s.world.y, items.cities), "TRUE", "FALSE")

    def format(self, s, items, answers):
        test = city_refs(s.world, items.cities[:, 0])
        return cat("inside(", test, ";", join_refs(s.world, items.cities[:, 1:]), ")=", answers)

    def item_keys(self, items):
        """The test city, then the set of hull cities: the same cities with another test city
        are another item."""
        return np.concatenate([items.cities[:, :1], np.sort(items.cities[:, 1:], axis=1)], axis=1)

    def n_possible(self, s, p):
        check_tuple_size(s, p.max_n + 1, self.name)
        return sum(n_tuples(s, m + 1) * (m + 1) for m in range(p.min_n, p.max_n + 1))

    def score(self, world, prompts, answers, outputs, parse="strict"):
        return score_exact(answers, outputs, self.balanced_labels)
