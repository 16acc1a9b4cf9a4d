"""Shared fixtures: the program evaluated once per cluster shape, in update and preview mode."""

from __future__ import annotations

import pytest

from tests.harness import Recording, cached

SMALL = {"controllerCount": "1", "workerCount": "1"}
HA = {"controllerCount": "3", "workerCount": "3"}


@pytest.fixture(scope="session")
def small() -> Recording:
    return cached(SMALL)


@pytest.fixture(scope="session")
def ha() -> Recording:
    return cached(HA)


@pytest.fixture(scope="session", params=[False, True], ids=["update", "preview"])
def ha_modes(request: pytest.FixtureRequest) -> Recording:
    return cached(HA, preview=request.param)
