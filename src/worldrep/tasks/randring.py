"""randring: `randring(c_C,r=r,R=R,n=n)=c_...`, up to n cities with r <= d <= R from C.

The ring is the eligible cities (the universe) other than C at distance r <= d <= R. If it holds
more than n cities, a uniform random subset of n is listed; either way the listed cities are in
ascending city_id order, and the answer may be empty. r is uniform in [min_r, max_r], R uniform
in [max(min_R, r+1), max_R] (r+1 if that range is empty, as in the reference), n uniform in
[min_n, max_n]; the centre comes from the required group when one is given.

An item is (C, r, R, n): the subset is drawn from a per-item salt kept beside the item (not part
of its identity), so the answer is a pure function of the item and no prompt lands in two splits.

Scoring: n' = min(n, ring size) = the number of refs in the true answer. score = (distinct
generated cities in the ring / number of generated refs) * exp(-|#refs - n'| / n') (n' = 0: an
empty output scores 1, any other 0). The prompt's centre is not counted (reference bug 13);
unknown ids and repeats count as wrong. Ring membership is judged on the whole world, since the
scorer does not know the dataset's pool.
"""

from __future__ import annotations

import re

import numpy as np
import pydantic

from ._neighbours import centre_pool, draw_centres, neighbours
from .base import Items, RangeParams, Task
from .common import cat, city_refs, join_refs, parse_refs
from .registry import register

_PROMPT = re.compile(r"randring\(c_(\d{1,4}),r=(\d+),R=(\d+),n=(\d+)\)=")


class RandRingParams(RangeParams):
    RANGES = (("min_r", "max_r"), ("min_R", "max_R"), ("min_n", "max_n"))
    min_r: int = pydantic.Field(10, ge=0)
    max_r: int = pydantic.Field(450, ge=0)
    min_R: int = pydantic.Field(50, ge=0)
    max_R: int = pydantic.Field(500, ge=0)
    min_n: int = pydantic.Field(1, ge=1)
    max_n: int = pydantic.Field(10, ge=1)

    def outer_range(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        low = np.maximum(self.min_R, r + 1)
        return low, np.maximum(self.max_R, low)

    @property
    def largest_radius(self) -> int:
        return max(self.max_R, self.max_r + 1)


def _mix(salt: np.ndarray, i: int) -> np.ndarray:
    """splitmix64 of (salt, i): a per-item stream of uniform 64-bit integers."""
    with np.errstate(over="ignore"):
        z = salt.astype(np.uint64) + np.uint64((i + 1) * 0x9E3779B97F4A7C15 % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _subset_positions(size: np.ndarray, take: np.ndarray, salt: np.ndarray) -> np.ndarray:
    """[n, max(take)] distinct positions in [0, size), `take` per row, -1 padded: Floyd's
    algorithm, uniform over take-subsets, vectorised over rows."""
    width = int(take.max()) if len(take) else 0
    chosen = np.full((len(size), width), -1, np.int64)
    for i in range(width):
        active = i < take
        j = size - take + i  # Floyd: j runs over size-take .. size-1
        t = (_mix(salt, i) % np.maximum(j + 1, 1).astype(np.uint64)).astype(np.int64)
        seen = (chosen[:, :i] == t[:, None]).any(axis=1)
        chosen[:, i] = np.where(active, np.where(seen, j, t), -1)
    return chosen


@register
class RandRing(Task):
    name = "randring"
    prefix = "randring("
    metric = "score"
    failure_value = 0.0
    max_answer_tokens = 100
    Params = RandRingParams

    def sample(self, s, n, rng, p):
        centre = draw_centres(s, n, rng)
        r = rng.integers(p.min_r, p.max_r + 1, n)
        low, high = p.outer_range(r)
        big_r = rng.integers(low, high + 1)
        count = rng.integers(p.min_n, p.max_n + 1, n)
        salt = rng.integers(0, 2**63 - 1, n, dtype=np.int64)
        return Items(centre[:, None], {"r": r, "R": big_r, "n": count, "salt": salt})

    def answers(self, s, items, p):
        nb = neighbours(s.world, s.universe)
        local = nb.local[items.cities[:, 0]]
        # sorted row: self, then others by distance; the ring is one contiguous slice of it
        first = 1 + nb.closer(local, items.params["r"], p.largest_radius)
        end = 1 + nb.within(local, items.params["R"], p.largest_radius)
        size = np.maximum(end - first, 0)
        take = np.minimum(items.params["n"], size)
        pos = _subset_positions(size, take, items.params["salt"])
        at = np.minimum(first[:, None] + np.maximum(pos, 0), len(nb) - 1)  # pads: any slot
        members = nb.order[local[:, None], at]
        rows = np.where(pos >= 0, nb.rows[members], -1)
        ids = np.where(rows >= 0, s.world.ids[np.maximum(rows, 0)], np.iinfo(np.int64).max)
        rows = np.take_along_axis(rows, np.argsort(ids, axis=1), axis=1)
        if rows.shape[1] == 0:
            return np.full(len(rows), "", dtype=str)
        return join_refs(s.world, rows)

    def values(self, answers):
        return np.full(len(answers), np.nan)

    def format(self, s, items, answers):
        q = items.params
        return cat("randring(", city_refs(s.world, items.cities[:, 0]), ",r=", q["r"],
                   ",R=", q["R"], ",n=", q["n"], ")=", answers)

    def item_keys(self, items):
        q = items.params
        return np.stack([items.cities[:, 0], q["r"], q["R"], q["n"]], axis=1).astype(np.int64)

    def n_possible(self, s, p):
        r = np.arange(p.min_r, p.max_r + 1)
        low, high = p.outer_range(r)
        pairs = int((high - low + 1).sum())
        return float(len(centre_pool(s)) * pairs * (p.max_n - p.min_n + 1))

    def score(self, world, prompts, answers, outputs, parse="strict"):
        value = np.zeros(len(outputs))
        valid = np.zeros(len(outputs), bool)
        for i, (prompt, answer, output) in enumerate(zip(prompts, answers, outputs, strict=True)):
            head = _PROMPT.search(str(prompt))
            got = parse_refs(output)
            if head is None or got is None:
                continue
            valid[i] = True
            want = len(parse_refs(answer) or [])
            centre, r, big_r = (int(v) for v in head.groups()[:3])
            value[i] = _ring_score(world, centre, r, big_r, got, want)
        return value, valid


def _ring_score(world, centre: int, r: int, big_r: int, ids: list[int], want: int) -> float:
    if not ids:
        return 1.0 if want == 0 else 0.0
    rows = world.row_of_id[np.asarray(ids)]
    c = world.row_of_id[centre]
    known = (rows >= 0) & (c >= 0) & (rows != c)
    safe = np.maximum(rows, 0)
    d2 = (world.x[safe] - world.x[c]) ** 2 + (world.y[safe] - world.y[c]) ** 2
    in_ring = known & (d2 >= r * r) & (d2 <= big_r * big_r)
    _, first = np.unique(ids, return_index=True)
    distinct = np.zeros(len(ids), bool)
    distinct[first] = True
    fraction = float((in_ring & distinct).sum()) / len(ids)
    return fraction * float(np.exp(-abs(len(ids) - want) / max(want, 1)))
