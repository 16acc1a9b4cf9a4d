"""config.load gives every ClusterConfig field a value of its own: none is left to a dataclass default."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from components.config import ClusterConfig, loader

GCP = {"gcp:project": "kthw-test", "gcp:region": "us-west1", "gcp:zone": "us-west1-c"}


def test_load_reads_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """A field load forgets would silently keep its default whatever the stack says; adding a key means a line."""
    given: dict[str, Any] = {}

    def build(**fields: Any) -> ClusterConfig:
        given.update(fields)
        return ClusterConfig(**fields)

    monkeypatch.setattr(loader, "ClusterConfig", build)
    assert loader.load({}, GCP) == ClusterConfig(**given)
    assert sorted(given) == sorted(f.name for f in dataclasses.fields(ClusterConfig))
