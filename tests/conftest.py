"""Shared fixtures: one real world (GeoNames + Atlantis) built once per test session, and one
torch thread for the modules that train tiny models."""

from __future__ import annotations

import pytest
import torch

from worldrep.world import World, WorldConfig, load_world, make_world


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("world") / "world"
    make_world(path, WorldConfig())
    return path


@pytest.fixture(scope="session")
def world(world_dir) -> World:
    return load_world(world_dir)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and do not stall on a busy machine); a module
    asks for it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fake_log(tmp_path, monkeypatch):
    """The file every fake step (tests/study_fakes.py) appends its name to when it starts,
    and the tests folder on the path of the processes that import the fakes."""
    import os
    from pathlib import Path

    log = tmp_path / "starts.log"
    monkeypatch.setenv("WORLDREP_FAKE_LOG", str(log))
    tests = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", tests + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return log
