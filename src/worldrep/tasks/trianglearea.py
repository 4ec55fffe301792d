"""trianglearea: `triarea(c_A,c_B,c_C)=S`, S = the triangle's area in squared 0.1-degree units.

The shoelace formula on integer coordinates gives twice the area exactly, so areas are k/2 and
the rounding to an integer is exactly half to even (collinear cities give 0).
"""

from __future__ import annotations

import numpy as np

from .base import Items, Task
from .common import cat, city_refs, draw_tuples, n_tuples, score_error
from .registry import register


def twice_area(x: np.ndarray, y: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """|2 * signed area| of each triangle of world rows `tri` [n, 3], exact in int64."""
    xa, xb, xc = (x[tri[:, j]].astype(np.int64) for j in range(3))
    ya, yb, yc = (y[tri[:, j]].astype(np.int64) for j in range(3))
    return np.abs(xa * (yb - yc) + xb * (yc - ya) + xc * (ya - yb))


@register
class TriangleArea(Task):
    name = "trianglearea"
    number = 2
    prefix = "triarea("
    metric = "error"
    failure_value = 3600 * 1800 / 2
    max_answer_tokens = 30

    def sample(self, s, n, rng, p):
        return Items(draw_tuples(s, n, 3, rng))

    def answers(self, s, items, p):
        area = np.round(twice_area(s.world.x, s.world.y, items.cities) / 2)  # half to even
        return area.astype(np.int64).astype(str)

    def format(self, s, items, answers):
        refs = city_refs(s.world, items.cities)
        return cat("triarea(", refs[:, 0], ",", refs[:, 1], ",", refs[:, 2], ")=", answers)

    def n_possible(self, s, p):
        return n_tuples(s, 3)

    def score(self, world, prompts, answers, outputs, parse="strict"):
        return score_error(answers, outputs, self.failure_value, parse)
