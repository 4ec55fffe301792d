"""randomwalk: `rw(M,L)=c_1,...,c_L`, a random walk of L cities with steps of length <= M.

Each step moves to a city chosen uniformly among the eligible cities (the universe) within
distance M of the current one, excluding the current one; revisits are allowed. The prompt
includes the first city and its comma (`rw(M,L)=c_1,`), so the model continues a given start.

Stuck walks: distance is symmetric, so a walk can only get stuck at its start (every later city
has the previous one within M). M and L are drawn uniformly first; the start is then drawn
uniformly among the start cities (the required group if given, else the pool) that have at
least one neighbour within M. So no walk is dropped and (M, L) stay exactly uniform, instead of
the reference's discard-and-retry that skewed M upwards. M values for which no start city has
any neighbour are left out of the draw (none, for the real world and the default range).

Scoring: with the start city taken from the prompt, score = (valid transitions / attempted
transitions) * exp(-|L_hat - L| / L), L_hat = 1 + number of generated refs. A transition is
valid when both ids exist, the distance is <= M, and it moves to a different city. An output
that is not a comma-separated list of refs is invalid and scores 0; an empty list scores 0.
"""

from __future__ import annotations

import re

import numpy as np
import pydantic

from ..errors import WorldrepError
from ._neighbours import centre_pool, neighbours
from .base import Items, RangeParams, Task
from .common import cat, join_refs, parse_refs
from .registry import register

_PROMPT = re.compile(r"rw\((\d+),(\d+)\)=c_(\d{1,4}),")


class RandomWalkParams(RangeParams):
    RANGES = (("min_max_distance", "max_max_distance"), ("min_chain_length", "max_chain_length"))
    min_max_distance: int = pydantic.Field(50, ge=1)
    max_max_distance: int = pydantic.Field(500, ge=1)
    min_chain_length: int = pydantic.Field(5, ge=2)
    max_chain_length: int = pydantic.Field(20, ge=2)


def _starts_by_reach(nb, starts: np.ndarray):
    """Start cities sorted by the smallest M that gives them a neighbour (so the starts usable
    at M are a prefix), and that M for each."""
    local = nb.local[starts]
    nearest = nb.order[local, 1]
    d = np.hypot(nb.x[local] - nb.x[nearest], nb.y[local] - nb.y[nearest])
    reach = np.ceil(d).astype(np.int64)
    by_reach = np.argsort(reach, kind="stable")
    return local[by_reach], reach[by_reach]


@register
class RandomWalk(Task):
    name = "randomwalk"
    prefix = "rw("
    metric = "score"
    failure_value = 0.0
    max_answer_tokens = 224
    Params = RandomWalkParams

    def sample(self, s, n, rng, p):
        nb = neighbours(s.world, s.universe)
        starts, reach = _starts_by_reach(nb, centre_pool(s))
        low = max(p.min_max_distance, int(reach[0]))
        if low > p.max_max_distance:
            raise WorldrepError(
                f"randomwalk: no start city has another eligible city within max_max_distance "
                f"({p.max_max_distance}); allowed: a larger max_max_distance or a larger pool")
        m = rng.integers(low, p.max_max_distance + 1, n)
        length = rng.integers(p.min_chain_length, p.max_chain_length + 1, n)
        usable = np.searchsorted(reach, m, side="right")
        cur = starts[rng.integers(0, usable)]
        walk = np.full((n, p.max_chain_length), -1, np.int64)
        walk[:, 0] = nb.rows[cur]
        for step in range(1, p.max_chain_length):
            options = nb.within(cur, m, p.max_max_distance)  # >= 1: the previous city is one
            cur = nb.order[cur, 1 + rng.integers(0, options)].astype(np.int64)
            walk[:, step] = np.where(step < length, nb.rows[cur], -1)
        return Items(walk, {"m": m, "l": length})

    def answers(self, s, items, p):
        return join_refs(s.world, items.cities)

    def values(self, answers):
        return np.full(len(answers), np.nan)

    def format(self, s, items, answers):
        return cat("rw(", items.params["m"], ",", items.params["l"], ")=", answers)

    def item_keys(self, items):
        """The walk in order (a walk and its reverse are different items), plus M and L."""
        return np.concatenate([items.cities, items.params["m"][:, None],
                               items.params["l"][:, None]], axis=1)

    def prompt_chars(self, texts):
        texts = np.asarray(texts).astype(str)
        answer_start = np.char.find(texts, ")=") + 2
        return np.strings.find(texts, ",", answer_start) + 1  # through the first city's comma

    def score(self, world, prompts, answers, outputs, parse="strict"):
        value = np.zeros(len(outputs))
        valid = np.zeros(len(outputs), bool)
        for i, (prompt, output) in enumerate(zip(prompts, outputs, strict=True)):
            head = _PROMPT.search(str(prompt))
            got = parse_refs(output)
            if head is None or got is None:
                continue
            valid[i] = True
            value[i] = _walk_score(world, int(head[1]), int(head[2]), [int(head[3]), *got])
        return value, valid


def _walk_score(world, max_step: int, length: int, ids: list[int]) -> float:
    if len(ids) < 2:
        return 0.0
    rows = world.row_of_id[np.asarray(ids)]
    a, b = rows[:-1], rows[1:]
    known = (a >= 0) & (b >= 0)
    a, b = np.maximum(a, 0), np.maximum(b, 0)
    sq_step = (world.x[a] - world.x[b]) ** 2 + (world.y[a] - world.y[b]) ** 2
    ok = known & (sq_step <= max_step**2) & (a != b)
    return float(ok.mean() * np.exp(-abs(len(ids) - length) / length))
