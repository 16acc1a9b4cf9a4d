"""Shared fixtures (the program evaluated once per cluster shape, in update and preview mode) and the tiers.

Each test of a tier beyond unit and artifacts is marked with its tier and with `slow`, here, from where it
lives and what it calls, so `python -m pytest -m "not slow"` is the contributors' quick run and a plain
`pytest` still runs everything.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Generator
from typing import Any

import pytest

from tests import upstream
from tests.harness import ROOT, Recording, cached

# The tiers whose tests are `slow`; the markers are declared in pyproject.toml.
SLOW_TIERS = ("lifecycle", "upstream", "engine", "localcloud", "live")
# A folder per tier: everything under it belongs to that tier.
TIER_FOLDERS = {
    ROOT / "tests" / "engine": "engine",
    ROOT / "tests" / "localcloud": "localcloud",
    # The real command provider against its stand-in: both need the source builds.
    ROOT / "tests" / "contract": "upstream",
}
# Calls that need the source builds (tests/upstream): a test that makes one, itself or in a fixture it
# uses, is of the upstream tier. upstream.require refuses a test that is not of a slow tier.
UPSTREAM_CALLS = ("upstream.require(", "isolated_cli(")
# A test that starts real etcd members of its own (itself or in a fixture made for it alone) drives the
# cluster through a change or a failure, 15-30 s each: the lifecycle tier. A cluster that a whole module
# shares (scope="module") is the artifact tier's etcd on loopback, and stays in the quick run.
LIFECYCLE_CALLS = ("Loopback(",)

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for folder, tier in TIER_FOLDERS.items():
            if item.path.is_relative_to(folder):
                item.add_marker(tier)
        if _calls(item, UPSTREAM_CALLS):
            item.add_marker("upstream")
        if _calls(item, LIFECYCLE_CALLS, scope="function"):
            item.add_marker("lifecycle")
        if any(item.get_closest_marker(tier) for tier in SLOW_TIERS):
            item.add_marker("slow")


def _calls(item: pytest.Item, calls: tuple[str, ...], scope: str | None = None) -> bool:
    """Whether the test, or a fixture it uses (directly or through another; of `scope`, if given), makes a call."""
    if not isinstance(item, pytest.Function):
        return False
    functions: list[Callable[..., Any]] = [item.function]
    for name in item.fixturenames:
        definitions = item._fixtureinfo.name2fixturedefs.get(name, ())
        functions.extend(d.func for d in definitions if scope is None or d.scope == scope)
    return any(call in _source(f) for f in functions for call in calls)


@functools.cache
def _source(function: Callable[..., Any]) -> str:
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):  # built in, or made at run time: none of ours
        return ""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    """Tell tests/upstream which test runs, so a build required by a test of no slow tier fails it."""
    upstream.running = item
    try:
        return (yield)
    finally:
        upstream.running = None
