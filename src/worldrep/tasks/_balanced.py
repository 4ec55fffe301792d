"""Drawing items of a yes/no task with both answers equally often, by rejection.

A task whose TRUE answer is rare (a crossing, a point inside a hull) would otherwise need many
rounds of the dataset's unique-item loop to collect its TRUE share. Rejection keeps each label's
items uniform among the items with that label, exactly as drawing until a bucket is full does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import WorldrepError
from .base import Items, Sampling
from .common import n_tuples

MAX_CHUNK = 1 << 20  # candidates labelled at once: bounds memory, not speed
NEVER_SEEN_AFTER = 200_000  # candidates without one label: that label is impossible
MAX_DRAWN_PER_ITEM = 50  # give up (return fewer items) past this many candidates per item


def balanced_draw(draw: Callable[[int], Items], is_first: Callable[[Items], np.ndarray],
                  n: int, rng: np.random.Generator, task: str,
                  labels: tuple[str, str] = ("TRUE", "FALSE")) -> Items:
    """About n items, (n+1)//2 with `is_first` true and n//2 false, in random order. Returns
    fewer when one label is too rare to fill (the caller reports the shortfall); fails when
    one label never occurs in the pool."""
    want = np.array([(n + 1) // 2, n // 2])
    have = np.zeros(2, np.int64)
    seen = np.zeros(2, np.int64)
    parts: list[Items] = []
    drawn, chunk = 0, min(max(n, 1024), MAX_CHUNK)
    while (have < want).any() and drawn < MAX_DRAWN_PER_ITEM * max(n, 1024):
        cand = draw(chunk)
        first = is_first(cand)
        drawn += chunk
        seen += [int(first.sum()), int((~first).sum())]
        for label, rows in ((0, np.flatnonzero(first)), (1, np.flatnonzero(~first))):
            rows = rows[: want[label] - have[label]]
            have[label] += len(rows)
            parts.append(cand.take(rows))
        if drawn >= NEVER_SEEN_AFTER and (seen == 0).any():
            missing = labels[int(np.argmin(seen))]
            raise WorldrepError(f"{task}: no item with answer {missing} among {drawn} random "
                                f"draws from this pool (e.g. its cities are collinear); "
                                f"allowed: a pool where both answers occur")
        rate = np.maximum(seen, 1) / drawn  # observed share of each label so far
        need = np.max((want - have) / rate)
        chunk = int(min(MAX_CHUNK, max(1024, 1.1 * need)))
    items = Items.concat(parts)
    return items.take(rng.permutation(len(items)))


def check_tuple_size(s: Sampling, k: int, task: str) -> None:
    """Fail early when the pool cannot supply k distinct cities per item."""
    short = k > len(s.universe) or (s.required is not None and k - 1 > len(s.pool))
    if short or n_tuples(s, k) == 0:
        raise WorldrepError(f"{task}: items need {k} distinct cities but the pool offers "
                            f"{len(s.universe)}; allowed: a larger pool or a smaller max_n")
