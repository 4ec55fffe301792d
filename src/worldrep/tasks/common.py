"""Vectorised building blocks shared by task modules: drawing tuples, writing and parsing text."""

from __future__ import annotations

import re

import numpy as np

from ..world import World
from .base import Sampling

ID_DIGITS = 4
_REF_RE = re.compile(r"c_(\d{1,4})")


# -- drawing -------------------------------------------------------------------------------
def distinct_rows(pool: np.ndarray, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """[n, k] rows of `pool`, distinct within each row, uniform over ordered k-tuples."""
    if k > len(pool):
        raise ValueError(f"cannot draw {k} distinct cities from a pool of {len(pool)}")
    out = pool[rng.integers(0, len(pool), size=(n, k))]
    bad = _has_repeat(out)
    while bad.any():  # redraw only the rows with a repeat; rare unless k ~ pool size
        out[bad] = pool[rng.integers(0, len(pool), size=(int(bad.sum()), k))]
        bad = _has_repeat(out)
    return out


def _has_repeat(rows: np.ndarray) -> np.ndarray:
    s = np.sort(rows, axis=1)
    return (s[:, 1:] == s[:, :-1]).any(axis=1)


def draw_tuples(s: Sampling, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """[n, k] distinct cities per row; with a required group, one random slot holds a required
    city and the others come from the pool (as the reference's must_include), kept distinct."""
    if s.required is None:
        return distinct_rows(s.pool, n, k, rng)
    rows = distinct_rows(s.pool, n, k - 1, rng) if k > 1 else np.zeros((n, 0), np.int64)
    forced = s.required[rng.integers(0, len(s.required), n)]
    bad = (rows == forced[:, None]).any(axis=1)
    while bad.any():
        forced[bad] = s.required[rng.integers(0, len(s.required), int(bad.sum()))]
        bad = (rows == forced[:, None]).any(axis=1)
    slot = rng.integers(0, k, n)
    at_slot = np.arange(k)[None, :] == slot[:, None]
    out = np.empty((n, k), np.int64)
    out[at_slot] = forced
    out[~at_slot] = rows.ravel()  # row-major fill keeps each row's pool cities in order
    return out


def varlen_tuples(s: Sampling, n: int, lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[n, max(lengths)] tuples of per-row length, padded with -1."""
    width = int(lengths.max())
    out = np.full((n, width), -1, np.int64)
    for m in np.unique(lengths):
        rows = np.flatnonzero(lengths == m)
        out[rows, :m] = draw_tuples(s, len(rows), int(m), rng)
    return out


def n_tuples(s: Sampling, k: int, ordered: bool = False) -> float:
    """Distinct k-sets (or ordered k-tuples) the sampler can produce."""
    from math import comb, perm

    count = perm if ordered else comb
    if s.required is None:
        return float(count(len(s.pool), k))
    universe = len(s.universe)
    without = len(np.setdiff1d(s.pool, s.required))
    return float(count(universe, k) - count(without, k))


# -- writing -------------------------------------------------------------------------------
def city_refs(world: World, rows: np.ndarray) -> np.ndarray:
    """'c_0865' for each world row (same shape); '' for -1."""
    table = np.array([f"c_{i:0{ID_DIGITS}d}" for i in world.ids] + [""])
    return table[np.where(rows < 0, len(table) - 1, rows)]


def join_refs(world: World, cities: np.ndarray, sep: str = ",") -> np.ndarray:
    """Per row, the city refs joined by `sep`; -1 slots (always trailing) are left out.

    Built as one byte matrix (6 bytes per ref, 1 per separator) viewed as fixed-width strings:
    numpy drops the trailing zero bytes of absent slots, so no per-row work is needed."""
    n, k = cities.shape
    if n == 0:
        return np.zeros(0, dtype=str)
    width = len(f"c_{0:0{ID_DIGITS}d}")
    refs = np.frombuffer(city_refs(world, np.arange(len(world))).astype(f"S{width}").tobytes(),
                         np.uint8).reshape(-1, width)
    refs = np.concatenate([refs, np.zeros((1, width), np.uint8)])  # row for -1
    present = cities >= 0
    mat = np.zeros((n, k * (width + 1) - 1), np.uint8)
    for j in range(k):
        start = j * (width + 1)
        if j:
            mat[:, start - 1] = np.where(present[:, j], ord(sep), 0)
        mat[:, start:start + width] = refs[np.where(present[:, j], cities[:, j], -1)]
    return mat.view(f"S{mat.shape[1]}").ravel().astype(str)


def cat(*parts) -> np.ndarray:
    """Element-wise concatenation of string arrays and scalars."""
    out = np.asarray(parts[0]).astype(str)
    for part in parts[1:]:
        out = np.strings.add(out, np.asarray(part).astype(str))
    return out


def round_half_even(v: np.ndarray) -> np.ndarray:
    return np.round(v).astype(np.int64)


# -- parsing and scoring -------------------------------------------------------------------
def parse_int(outputs: np.ndarray) -> np.ndarray:
    """The leading unsigned integer of each generated answer, NaN where there is none."""
    out = np.full(len(outputs), np.nan)
    for i, text in enumerate(outputs):
        m = re.match(r"\s*(\d{1,12})", str(text))
        if m:
            out[i] = float(m.group(1))
    return out


PARSERS = ("strict", "reference")


def parse_whole_int(outputs: np.ndarray) -> np.ndarray:
    """The unsigned integer each output is, NaN where it is anything else ('769', not
    '769x' or '7 69')."""
    pred = np.full(len(outputs), np.nan)
    for i, text in enumerate(outputs):
        t = str(text).strip()
        if t.isdigit() and len(t) <= 12:
            pred[i] = float(t)
    return pred


def score_error(answers: np.ndarray, outputs: np.ndarray, failure: float,
                parse: str = "strict") -> tuple[np.ndarray, np.ndarray]:
    """Absolute error of an integer answer, never worse than `failure` (the task's largest
    possible error, what an invalid answer scores): a stuttered '1891111' for 1874 would
    otherwise count 470 times the worst real error, and one such row in 300 makes the mean
    say a model that learned never did (the reference did not cap: a deliberate change).
    `parse`: 'strict' (the default) needs the whole output to be the integer; 'reference'
    reads its leading digits, as the reference's `=(\\d+)` did, so '769,c_12' counts as 769
    (more rows valid on early checkpoints)."""
    if parse not in PARSERS:
        from ..errors import WorldrepError

        raise WorldrepError(f"unknown parse '{parse}'; allowed: {', '.join(PARSERS)}")
    pred = parse_whole_int(outputs) if parse == "strict" else parse_int(outputs)
    valid = ~np.isnan(pred)
    err = np.minimum(np.abs(pred - answers.astype(np.float64)), failure)
    return np.where(valid, err, failure), valid


def score_exact(answers: np.ndarray, outputs: np.ndarray, allowed: tuple[str, ...]
                ) -> tuple[np.ndarray, np.ndarray]:
    outs = np.array([str(o).strip().upper() for o in outputs])
    valid = np.isin(outs, allowed)
    correct = (outs == np.char.upper(answers.astype(str))) & valid
    return correct.astype(np.float64), valid


def parse_refs(text: str) -> list[int] | None:
    """City ids of a comma-separated answer 'c_0001,c_0002'; None if malformed."""
    text = str(text).strip()
    if text == "":
        return []
    parts = text.split(",")
    ids = []
    for part in parts:
        m = _REF_RE.fullmatch(part)
        if not m:
            return None
        ids.append(int(m.group(1)))
    return ids
