"""crossing: `cross(c_1,c_2;c_3,c_4)=TRUE|FALSE`, whether segment 1-2 properly crosses 3-4.

The strict orientation test: each segment's endpoints lie strictly on opposite sides of the
other's line. Touching, shared-endpoint (cities can share coordinates) and collinear segments do
not cross. Unlike the reference's boolean ccw comparison, which called some touching cases TRUE
depending on the order of the endpoints, this answer is the same for cross(1,2;3,4),
cross(2,1;3,4) and cross(3,4;1,2). The cities are labelled in the order they are written and
nothing reorders them afterwards (the reference re-permuted them after balancing, which
silently dropped its TRUE share to about a quarter).
"""

from __future__ import annotations

import numpy as np

from ._balanced import balanced_draw, check_tuple_size
from .base import Items, Task
from .common import cat, city_refs, draw_tuples, n_tuples, score_exact
from .registry import register


def _side(x, y, a, b, c) -> np.ndarray:
    """Sign of (b - a) x (c - a): +1 left of a->b, -1 right, 0 on the line (exact int64)."""
    ax, ay = x[a].astype(np.int64), y[a].astype(np.int64)
    cross = (x[b] - ax) * (y[c] - ay) - (y[b] - ay) * (x[c] - ax)
    return np.sign(cross)


def crosses(x: np.ndarray, y: np.ndarray, quads: np.ndarray) -> np.ndarray:
    """Per row of world rows [n, 4]: does segment 0-1 properly cross segment 2-3?"""
    p1, p2, p3, p4 = quads.T
    return ((_side(x, y, p3, p4, p1) * _side(x, y, p3, p4, p2) < 0)
            & (_side(x, y, p1, p2, p3) * _side(x, y, p1, p2, p4) < 0))


@register
class Crossing(Task):
    name = "crossing"
    number = 7
    prefix = "cross("
    metric = "accuracy"
    failure_value = 0.0
    max_answer_tokens = 20
    balanced_labels = ("TRUE", "FALSE")

    def sample(self, s, n, rng, p):
        return balanced_draw(lambda k: Items(draw_tuples(s, k, 4, rng)),
                             lambda it: crosses(s.world.x, s.world.y, it.cities), n, rng,
                             self.name)

    def answers(self, s, items, p):
        return np.where(crosses(s.world.x, s.world.y, items.cities), "TRUE", "FALSE")

    def format(self, s, items, answers):
        r = city_refs(s.world, items.cities)
        return cat("cross(", r[:, 0], ",", r[:, 1], ";", r[:, 2], ",", r[:, 3], ")=", answers)

    def n_possible(self, s, p):
        check_tuple_size(s, 4, self.name)
        return n_tuples(s, 4)

    def score(self, world, prompts, answers, outputs, parse="strict"):
        return score_exact(answers, outputs, self.balanced_labels)
