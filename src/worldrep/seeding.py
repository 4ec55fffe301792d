"""Seeded random streams derived from a study seed and a purpose, never from global state.

`rng(seed, "distance", "train")` gives the same numpy Generator in every process: names are
hashed with blake2b (Python's `hash()` is salted per process, which broke the reference's
Atlantis), then fed to a SeedSequence together with the seed.
"""

from __future__ import annotations

import hashlib

import numpy as np


def _name_words(name: str) -> list[int]:
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return [int.from_bytes(digest[:4], "little"), int.from_bytes(digest[4:], "little")]


def seed_sequence(seed: int, *names: str | int) -> np.random.SeedSequence:
    entropy: list[int] = [int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF]
    for name in names:
        entropy.extend(_name_words(str(name)))
    return np.random.SeedSequence(entropy)


def rng(seed: int, *names: str | int) -> np.random.Generator:
    """A numpy Generator for one purpose, e.g. rng(42, 'world', 'Atlantis')."""
    return np.random.Generator(np.random.PCG64(seed_sequence(seed, *names)))


def torch_seed(seed: int, *names: str | int) -> int:
    """A 63-bit integer seed for a torch.Generator, derived like `rng`."""
    return int(seed_sequence(seed, *names).generate_state(2, np.uint64)[0] >> np.uint64(1))
