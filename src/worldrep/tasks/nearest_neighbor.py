"""nearest_neighbor: `nearest(c_Q,k)=c_N1,...,c_Nk`, the k eligible cities closest to Q.

Neighbours are listed by ascending distance, ties broken by the smaller city_id, and never
include Q itself (the reference listed Q as its own first neighbour in subset pools). The query
comes from the required group when one is given, the neighbours from the whole universe. An
item is (Q, k), so `n_possible` = |query pool| * (max_k - min_k + 1).

Scoring: Jaccard index of the generated and true id sets. An output is valid when it parses as
a comma-separated list of city refs (possibly empty). Unlike the reference, a list of the wrong
length is still scored by its Jaccard index rather than zeroed.
"""

from __future__ import annotations

import numpy as np
import pydantic

from ..errors import WorldrepError
from ._neighbours import centre_pool, draw_centres, neighbours
from .base import Items, RangeParams, Task
from .common import cat, city_refs, join_refs, parse_refs
from .registry import register


class NearestParams(RangeParams):
    RANGES = (("min_k", "max_k"),)
    min_k: int = pydantic.Field(1, ge=1)
    max_k: int = pydantic.Field(5, ge=1)


@register
class NearestNeighbor(Task):
    name = "nearest_neighbor"
    prefix = "nearest("
    metric = "score"
    failure_value = 0.0
    max_answer_tokens = 100
    Params = NearestParams

    def sample(self, s, n, rng, p):
        if p.max_k >= len(s.universe):
            raise WorldrepError(f"nearest_neighbor: max_k ({p.max_k}) must be smaller than the "
                                f"number of eligible cities ({len(s.universe)})")
        query = draw_centres(s, n, rng)
        return Items(query[:, None], {"k": rng.integers(p.min_k, p.max_k + 1, n)})

    def answers(self, s, items, p):
        nb = neighbours(s.world, s.universe)
        k = items.params["k"]
        width = int(k.max()) if len(k) else 1
        local = nb.order[nb.local[items.cities[:, 0]], 1: width + 1]  # slot 0 is the query
        rows = np.where(np.arange(width)[None, :] < k[:, None], nb.rows[local], -1)
        return join_refs(s.world, rows)

    def values(self, answers):
        return np.full(len(answers), np.nan)

    def format(self, s, items, answers):
        refs = city_refs(s.world, items.cities[:, 0])
        return cat("nearest(", refs, ",", items.params["k"], ")=", answers)

    def n_possible(self, s, p):
        return float(len(centre_pool(s)) * (p.max_k - p.min_k + 1))

    def score(self, world, prompts, answers, outputs, parse="strict"):
        value = np.zeros(len(outputs))
        valid = np.zeros(len(outputs), bool)
        for i, (answer, output) in enumerate(zip(answers, outputs, strict=True)):
            got = parse_refs(output)
            if not got:  # k >= 1, so an empty answer is as malformed as garbage
                continue
            true = set(parse_refs(answer) or [])
            union = true | set(got)
            value[i] = len(true & set(got)) / len(union) if union else 1.0
            valid[i] = True
        return value, valid
