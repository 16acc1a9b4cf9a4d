"""The real upstream binaries and the Pulumi CLI, built from source by tests.upstream.build."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.upstream.build import Recipe

# The test pytest runs now (tests/conftest.py sets it); None outside a test, as in `python -m tests.upstream.build`.
running: pytest.Item | None = None


def recipe(name: str) -> Recipe:
    # Imported here so `python -m tests.upstream.build` does not find its own module half-loaded.
    from tests.upstream.build import recipes

    return next(r for r in recipes() if r.name == name)


def require(name: str) -> Path:
    """The bin directory of a built recipe; a test without it skips, and fails under CI=true.

    Only a test of a slow tier may ask (tests/conftest.py marks the ones it sees asking), so the quick
    run `pytest -m "not slow"` never needs a build.
    """
    if running is not None and running.get_closest_marker("slow") is None:
        pytest.fail(
            f"{running.nodeid} needs the {name} build but is not marked slow: tests/conftest.py marks a test"
            " upstream when it, or a fixture it uses, makes one of the calls in UPSTREAM_CALLS; add this one's"
        )
    found = recipe(name)
    if found.built():
        return found.out / "bin"
    message = f"{name} {found.version} is not built: python -m tests.upstream.build {name} (.ci/run does)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
