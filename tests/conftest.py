"""Shared fixtures: one real world (GeoNames + Atlantis) built once per test session."""

from __future__ import annotations

import pytest

from worldrep.world import World, WorldConfig, load_world, make_world


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("world") / "world"
    make_world(path, WorldConfig())
    return path


@pytest.fixture(scope="session")
def world(world_dir) -> World:
    return load_world(world_dir)
