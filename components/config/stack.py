"""The running stack's config as Pulumi holds it, and the kthw: keys Pulumi.yaml declares."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pulumi
import yaml

# The program's own project file: the one place that declares every kthw: key.
PROJECT_FILE = Path(__file__).resolve().parents[2] / "Pulumi.yaml"
NAMESPACE = "kthw"
GCP_KEYS = ("project", "region", "zone")


@functools.cache
def declared_keys() -> tuple[str, ...]:
    """Every kthw: key, as Pulumi.yaml declares it (without the namespace): the one list of valid keys."""
    declared = yaml.safe_load(PROJECT_FILE.read_text()).get("config") or {}
    keys = []
    for key in declared:
        namespace, _, name = str(key).rpartition(":")
        if namespace in ("", NAMESPACE):
            keys.append(name)
    return tuple(keys)


def unknown_keys(cfg: Mapping[str, Any]) -> list[str]:
    """A problem per key Pulumi.yaml does not declare, with the closest declared key (a typo is the usual cause)."""
    known = declared_keys()
    by_lower = {k.lower(): k for k in known}
    found = []
    for key in sorted(set(cfg) - set(known)):
        close = difflib.get_close_matches(key.lower(), list(by_lower), n=1)
        hint = (
            f"did you mean {NAMESPACE}:{by_lower[close[0]]}?"
            if close
            else "Pulumi.yaml declares " + ", ".join(f"{NAMESPACE}:{k}" for k in known)
        )
        found.append(f"{NAMESPACE}:{key} is not a known key: {hint}")
    return found


def stack_values() -> dict[str, Any]:
    """The stack's whole config as the SDK holds it: `namespace:key` -> value (strings, lists as JSON).

    The language host hands the config over in PULUMI_CONFIG and loads it into the runtime's map;
    an Automation API or test program sets the map directly. Both are read, the map winning.
    """
    import pulumi.runtime.config as runtime_config

    return {**pulumi.runtime.get_config_env(), **runtime_config.CONFIG.get()}


def read() -> tuple[dict[str, Any], dict[str, Any]]:
    """The running stack's kthw: values (by key, without the namespace) and its gcp: values (by full key)."""
    kthw: dict[str, Any] = {}
    for key in stack_values():
        namespace, _, name = key.partition(":")
        if namespace == NAMESPACE:
            kthw[name] = pulumi.runtime.get_config(key)
    gcp = pulumi.Config("gcp")
    return kthw, {f"gcp:{key}": gcp.get(key) for key in GCP_KEYS}
