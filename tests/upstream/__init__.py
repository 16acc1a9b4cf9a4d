"""The real upstream binaries and the Pulumi CLI, built from source by tests.upstream.build."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.upstream.build import Recipe


def recipe(name: str) -> Recipe:
    # Imported here so `python -m tests.upstream.build` does not find its own module half-loaded.
    from tests.upstream.build import recipes

    return next(r for r in recipes() if r.name == name)


def require(name: str) -> Path:
    """The bin directory of a built recipe; a test without it skips, and fails under CI=true."""
    found = recipe(name)
    if found.built():
        return found.out / "bin"
    message = f"{name} {found.version} is not built: python -m tests.upstream.build {name} (.ci/run does)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)
