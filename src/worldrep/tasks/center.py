"""center: `center(c_1,...,c_m;in=TRUE|FALSE)=c_R`, the city nearest the centroid of the list.

m is uniform in [min_n_cities, max_n_cities]; the centroid is the mean of x and of y. With
in=TRUE the answer is the listed city nearest the centroid; with in=FALSE it is the nearest
among all eligible cities (the universe), which may be a listed one. Distances are compared
exactly (in integers scaled by m) and ties go to the smaller city_id. With a required group
every list includes a required city (the reference ignored `must_include` here).

The in= flag is a per-item parameter: each sampled batch has exactly round(n * in_true_ratio)
TRUE items in random positions, so every split is close to (not exactly at) the ratio.
An item is the set of listed cities plus the flag.
"""

from __future__ import annotations

import re
from math import comb

import numpy as np
import pydantic
from scipy.spatial import cKDTree

from .base import Items, RangeParams, Task
from .common import cat, city_refs, join_refs, varlen_tuples
from .registry import register

_CANDIDATES = 8  # k-d tree candidates per centroid before the exact tie-aware pick
_REF = re.compile(r"c_(\d{1,4})")


class CenterParams(RangeParams):
    RANGES = (("min_n_cities", "max_n_cities"),)
    min_n_cities: int = pydantic.Field(1, ge=1)
    max_n_cities: int = pydantic.Field(5, ge=1)
    in_true_ratio: float = pydantic.Field(0.5, ge=0, le=1)


def _scaled_sq_dist(world, rows, sx, sy, m):
    """m^2 * squared distance from each row's city to the centroid (sx/m, sy/m): exact."""
    return (m * world.x[rows] - sx) ** 2 + (m * world.y[rows] - sy) ** 2


def _closest(world, candidates, sx, sy, m):
    """Per row, the candidate (world row, -1 = none) nearest the centroid; ties -> smaller id."""
    c = np.maximum(candidates, 0)
    d = _scaled_sq_dist(world, c, sx[:, None], sy[:, None], m[:, None])
    big = np.iinfo(np.int64).max
    key = np.where(candidates >= 0, d, big)
    best = key.min(axis=1, keepdims=True)
    ids = np.where(key == best, world.ids[c], big)
    return c[np.arange(len(c)), ids.argmin(axis=1)], best[:, 0], key


def _closest_in_universe(world, universe, sx, sy, m):
    """Nearest universe city to each centroid: k-d tree candidates, then the exact pick; rows
    whose candidates may not hold every tied city fall back to a brute-force scan."""
    tree = cKDTree(world.xy[universe])
    k = min(_CANDIDATES, len(universe))
    centroid = np.stack([sx / m, sy / m], axis=1)
    _, idx = tree.query(centroid, k=k)
    idx = idx.reshape(len(m), k)
    best, dist, key = _closest(world, universe[idx], sx, sy, m)
    unsure = np.flatnonzero(key[:, -1] == dist) if k < len(universe) else []
    for start in range(0, len(unsure), 256):
        rows = unsure[start:start + 256]
        full = np.broadcast_to(universe, (len(rows), len(universe)))
        best[rows] = _closest(world, full, sx[rows], sy[rows], m[rows])[0]
    return best


@register
class Center(Task):
    name = "center"
    prefix = "center("
    metric = "error"
    failure_value = float(np.hypot(3600, 1800))
    max_answer_tokens = 20
    Params = CenterParams

    def sample(self, s, n, rng, p):
        m = rng.integers(p.min_n_cities, p.max_n_cities + 1, n)
        cities = varlen_tuples(s, n, m, rng)
        flag = np.zeros(n, np.int64)
        flag[: int(round(n * p.in_true_ratio))] = 1
        return Items(cities, {"in_flag": rng.permutation(flag)})

    def answers(self, s, items, p):
        w, cities = s.world, items.cities
        present = cities >= 0
        m = present.sum(axis=1)
        safe = np.maximum(cities, 0)
        sx = np.where(present, w.x[safe], 0).sum(axis=1)
        sy = np.where(present, w.y[safe], 0).sum(axis=1)
        best = _closest(w, cities, sx, sy, m)[0]
        outside = np.flatnonzero(items.params["in_flag"] == 0)
        if len(outside):
            best[outside] = _closest_in_universe(w, s.universe, sx[outside], sy[outside],
                                                 m[outside])
        return city_refs(w, best)

    def values(self, answers):
        return np.full(len(answers), np.nan)

    def format(self, s, items, answers):
        flag = np.where(items.params["in_flag"] == 1, "TRUE", "FALSE")
        return cat("center(", join_refs(s.world, items.cities), ";in=", flag, ")=", answers)

    def n_possible(self, s, p):
        u = len(s.universe)
        sets = sum(comb(u, m) for m in range(p.min_n_cities, p.max_n_cities + 1))
        flags = 1 if p.in_true_ratio in (0, 1) else 2
        return float(min(sets, 1e18) * flags)

    def score(self, world, prompts, answers, outputs, parse="strict"):
        """Euclidean distance between the generated and the true city; an output that is not
        exactly one ref to a known city is invalid and scores `failure_value`."""
        true = world.row_of_id[[int(_REF.fullmatch(str(a).strip()).group(1)) for a in answers]]
        pred = np.full(len(outputs), -1)
        for i, text in enumerate(outputs):
            match = _REF.fullmatch(str(text).strip())
            if match:
                pred[i] = world.row_of_id[int(match.group(1))]
        valid = pred >= 0
        safe = np.maximum(pred, 0)
        err = np.hypot(world.x[safe] - world.x[true], world.y[safe] - world.y[true])
        return np.where(valid, err, self.failure_value), valid
