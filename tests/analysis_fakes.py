"""Synthetic city tables and representations with known answers, for the analysis tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from worldrep.analysis.reps import save_reps

REGIONS = ["Africa", "India", "China", "North America", "Western Europe"]


def fake_cities(n_world: int = 4800, n_synthetic: int = 90, seed: int = 0) -> pd.DataFrame:
    """World cities spread over the globe plus a tight synthetic 'Atlantis' cluster."""
    g = np.random.default_rng(seed)
    ids = g.choice(np.arange(1000, 10_000), n_world + n_synthetic, replace=False)
    x = np.concatenate([g.integers(-1800, 1800, n_world), g.normal(-350, 30, n_synthetic)])
    y = np.concatenate([g.integers(-600, 700, n_world), g.normal(350, 30, n_synthetic)])
    region = np.concatenate([g.choice(REGIONS, n_world), np.full(n_synthetic, "Atlantis")])
    group = np.where(region == "Atlantis", "Atlantis", "world")
    frame = pd.DataFrame({"city_id": ids, "name": [f"city{i}" for i in range(len(ids))],
                          "x": np.round(x).astype(np.int64), "y": np.round(y).astype(np.int64),
                          "country": "XX", "region": region, "group": group})
    return frame.sort_values("city_id").reset_index(drop=True)


def linear_reps(cities: pd.DataFrame, hidden: int = 128, noise: float = 0.01, seed: int = 1,
                layers=(5,), positions=("last_digit", "delimiter")) -> np.ndarray:
    """Vectors = random linear map of standardised (x, y) + Gaussian noise, per layer/position."""
    g = np.random.default_rng(seed)
    xy = cities[["x", "y"]].to_numpy(float) / 1000.0
    out = np.empty((len(cities), len(layers), len(positions), hidden), np.float32)
    for li in range(len(layers)):
        for pi in range(len(positions)):
            A = g.normal(size=(2, hidden))
            out[:, li, pi] = xy @ A + noise * g.normal(size=(len(cities), hidden))
    return out


def write_reps(path, cities: pd.DataFrame, vectors: np.ndarray, layers=(5,),
               positions=("last_digit", "delimiter")):
    return save_reps(path, cities, list(layers), list(positions), vectors, {"fake": True})


def tiny_model(seed: int = 0):
    """A random 6-layer Qwen2 with the reference vocabulary (hidden 16, for speed)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=98, hidden_size=16, intermediate_size=32, num_hidden_layers=6,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return Qwen2ForCausalLM(cfg).eval()
