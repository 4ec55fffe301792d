"""What every task is: sampling, answers, text, item identity, parsing and scoring.

A task module defines one `Task` subclass and registers it. Items are arrays: `cities` holds
world row indices, shape [n, k], padded with -1 when tuples vary in length; `params` holds
per-item integers such as k, r or the in= flag. Everything is vectorised over items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import pydantic

from ..config import Strict
from ..world import World


@dataclass
class Items:
    cities: np.ndarray  # int64 [n, k] world rows, -1 = no city in this slot
    params: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.cities)

    def take(self, index: np.ndarray) -> Items:
        return Items(self.cities[index], {k: v[index] for k, v in self.params.items()})

    @staticmethod
    def concat(parts: list[Items]) -> Items:
        width = max(p.cities.shape[1] for p in parts)
        cities = np.concatenate([np.pad(p.cities, ((0, 0), (0, width - p.cities.shape[1])),
                                        constant_values=-1) for p in parts])
        keys = parts[0].params.keys()
        return Items(cities, {k: np.concatenate([p.params[k] for p in parts]) for k in keys})


@dataclass
class Sampling:
    """Where a task may draw cities from, for one dataset."""

    world: World
    pool: np.ndarray  # rows that may appear anywhere
    required: np.ndarray | None = None  # if set: every item includes >= 1 of these rows

    @property
    def universe(self) -> np.ndarray:
        """Every row an item may contain (pool plus required): the answer's candidate set."""
        if self.required is None:
            return self.pool
        return np.union1d(self.pool, self.required)


class NoParams(Strict):
    pass


class RangeParams(Strict):
    """Task parameters with ranges: each (low, high) pair of `RANGES` must be in order."""

    RANGES: ClassVar[tuple[tuple[str, str], ...]] = ()

    @pydantic.model_validator(mode="after")
    def _ordered(self):
        for low, high in self.RANGES:
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} ({getattr(self, low)}) must be <= {high} "
                                 f"({getattr(self, high)})")
        return self


class Task:
    name: ClassVar[str]
    number: ClassVar[int | None] = None  # 1..7 for the paper's tasks
    prefix: ClassVar[str]  # text before the first city id, e.g. "dist("
    first_delimiter: ClassVar[str] = ","  # what follows the first city id in the prompt
    metric: ClassVar[Literal["error", "accuracy", "score"]]
    failure_value: ClassVar[float]  # what an invalid answer scores (reference constants)
    max_answer_tokens: ClassVar[int]  # generation budget after the prompt, <eos> included
    Params: ClassVar[type[Strict]] = NoParams
    # Categorical tasks whose answer labels are balanced (e.g. ("TRUE", "FALSE")).
    balanced_labels: ClassVar[tuple[str, ...] | None] = None

    # -- generation ------------------------------------------------------------------------
    def sample(self, s: Sampling, n: int, rng: np.random.Generator, p) -> Items:
        raise NotImplementedError

    def answers(self, s: Sampling, items: Items, p) -> np.ndarray:
        """The true answer text of each item (array of str)."""
        raise NotImplementedError

    def values(self, answers: np.ndarray) -> np.ndarray:
        """Numeric value of each answer text (NaN for non-numeric tasks)."""
        if self.metric == "error" and self.failure_value:
            return answers.astype(np.float64)
        return np.full(len(answers), np.nan)

    def format(self, s: Sampling, items: Items, answers: np.ndarray) -> np.ndarray:
        """Compact text of each row: prompt plus answer, no <bos>/<eos>."""
        raise NotImplementedError

    def item_keys(self, items: Items) -> np.ndarray:
        """[n, m] int64 identity of each item: equal rows are the same item (for dedup and
        split disjointness). Default: the sorted set of cities plus every parameter."""
        cities = np.sort(items.cities, axis=1)
        extra = [v.astype(np.int64)[:, None] for _, v in sorted(items.params.items())]
        return np.concatenate([cities, *extra], axis=1)

    def n_possible(self, s: Sampling, p) -> float:
        """How many distinct items exist (an upper bound is fine; inf when astronomically many)."""
        return float("inf")

    def labels(self, answers: np.ndarray) -> np.ndarray:
        return answers

    # -- evaluation ------------------------------------------------------------------------
    def prompt_chars(self, texts: np.ndarray) -> np.ndarray:
        """Characters of each text that form the prompt: up to and including the task's own
        answer '=' (the `)=` that closes the argument list), not the first '=' in the text."""
        return np.strings.find(np.asarray(texts, dtype=str), ")=") + 2

    def score(self, world: World, prompts: np.ndarray, answers: np.ndarray,
              outputs: np.ndarray, parse: str = "strict") -> tuple[np.ndarray, np.ndarray]:
        """Per row (value, valid): value is the error (metric 'error'), 1/0 correctness
        ('accuracy') or a score in [0, 1] ('score'); invalid rows get `failure_value`.
        `parse` is how a numeric answer is read (`PARSERS`): the whole output (strict), or
        its leading digits as the reference did (reference)."""
        raise NotImplementedError
