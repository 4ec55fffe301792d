"""compass: `compass(c_A,c_B)=DIR`, the 8-way direction from A to B on the map plane.

θ = atan2(dy, dx) in degrees (0 = east, counter-clockwise); each of the 8 sectors is 45° wide
and centred on its direction, and a boundary angle belongs to the counter-clockwise sector
(exactly 22.5° is NE). Coincident cities point N. On the integer grid no pair lies exactly on a
boundary (the boundaries' slopes are irrational), so float atan2 decides every pair correctly.
"""

from __future__ import annotations

import numpy as np

from .base import Items, Task
from .common import cat, city_refs, draw_tuples, n_tuples, score_exact
from .registry import register

DIRECTIONS = ("E", "NE", "N", "NW", "W", "SW", "S", "SE")  # counter-clockwise from east
LABELS = ("N", "NE", "E", "SE", "S", "SW", "W", "NW")


def sector_of_angle(theta: np.ndarray) -> np.ndarray:
    """Index into DIRECTIONS of each angle in degrees (any real value)."""
    return (np.floor(np.mod(np.asarray(theta, np.float64) + 22.5, 360.0) / 45.0)
            .astype(np.int64) % 8)


def direction(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Direction label of each displacement (dx, dy); 'N' where it is zero."""
    dx, dy = np.asarray(dx, np.float64), np.asarray(dy, np.float64)
    theta = np.mod(np.degrees(np.arctan2(dy, dx)), 360.0)
    labels = np.array(DIRECTIONS)[sector_of_angle(theta)]
    return np.where((dx == 0) & (dy == 0), "N", labels)


@register
class Compass(Task):
    name = "compass"
    number = 4
    prefix = "compass("
    metric = "accuracy"
    failure_value = 0.0
    max_answer_tokens = 20

    def sample(self, s, n, rng, p):
        return Items(draw_tuples(s, n, 2, rng))

    def answers(self, s, items, p):
        a, b = items.cities[:, 0], items.cities[:, 1]
        return direction(s.world.x[b] - s.world.x[a], s.world.y[b] - s.world.y[a])

    def format(self, s, items, answers):
        refs = city_refs(s.world, items.cities)
        return cat("compass(", refs[:, 0], ",", refs[:, 1], ")=", answers)

    def n_possible(self, s, p):
        return n_tuples(s, 2)

    def score(self, world, prompts, answers, outputs, parse="strict"):
        return score_exact(answers, outputs, LABELS)
