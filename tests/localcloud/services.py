"""What the scenario tests share: the namespace's "internet" (mirror, registry) and readings of a stack.

`running()` gives each test module a namespace of its own with the admin's source address, the
binary mirror (serving two Kubernetes releases) and the registry (the images built here); the
program reaches them at addresses a user's air-gapped network could have, through kthw:binaryMirror,
kthw:binaryDigests, kthw:registryMirrors and kthw:imageDigests (the metrics-server built here).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.localcloud import mirror, plane, registry
from tests.localcloud.net import BRIDGE, Namespace
from tests.localcloud.stack import LocalStack, format_timeline
from tests.upstream import build

ADMIN_RANGE = "192.0.2.0/24"
MIRROR = ("192.0.2.20", 8080)
REGISTRY = ("192.0.2.30", 5000)
MIRROR_URL = f"http://{MIRROR[0]}:{MIRROR[1]}"
REGISTRY_URL = f"http://{REGISTRY[0]}:{REGISTRY[1]}"
COMMAND = "command:remote:Command"


@dataclass(frozen=True)
class Services:
    """The namespace with its "internet": the binary mirror (two Kubernetes releases) and the registry."""

    namespace: Namespace
    previous: mirror.Mirror  # build.PREVIOUS_KUBERNETES: what the 1+1 stack starts at
    current: mirror.Mirror  # versions.KUBERNETES, the program's default
    registry_mirrors: dict[str, str]
    mirror_root: Path  # what the mirror serves: a test may lay out more releases into it
    image_digests: dict[str, str]  # kthw:imageDigests: the digest of the metrics-server built here


def mirror_keys(binaries: mirror.Mirror) -> dict[str, object]:
    """The stack file's keys for `binaries` served by the namespace's mirror (a bump writes them over the old)."""
    return {f"kthw:{k}": v for k, v in binaries.config(MIRROR_URL).items()}


def base_config(controllers: int, workers: int, binaries: mirror.Mirror, services: Services) -> dict[str, Any]:
    """A stack file a user of the local cloud would keep: sizes, the admin range, the mirrors.

    metrics-server runs at the release the upstream build makes (the Go module proxy's), from the
    registry, by the digest of the image built here.
    """
    return {
        "gcp:project": "kthw-localcloud",
        "gcp:region": "us-west1",
        "gcp:zone": "us-west1-c",
        "kthw:controllerCount": controllers,
        "kthw:workerCount": workers,
        "kthw:adminSourceRanges": [ADMIN_RANGE],
        **mirror_keys(binaries),
        "kthw:registryMirrors": services.registry_mirrors,
        "kthw:metricsServerVersion": build.METRICS_SERVER,
        "kthw:imageDigests": services.image_digests,
    }


def smoke_output(stack: LocalStack) -> str:
    """What the program's smoke test steps (in-cluster checks, then the public probe) printed, from the state."""
    exported = json.loads(stack("stack", "export", "--show-secrets").stdout)
    steps = {
        r["urn"].rsplit("::", 1)[-1]: str((r.get("outputs") or {}).get("stdout") or "")
        for r in exported["deployment"]["resources"]
        if r["type"] == COMMAND and "-smoke-test-" in r["urn"]
    }
    assert sorted(steps) == ["kthw-smoke-test-cluster", "kthw-smoke-test-public"], sorted(steps)
    return steps["kthw-smoke-test-cluster"] + steps["kthw-smoke-test-public"]


def assert_one_worker_smoke_test_passed(stack: LocalStack, version: str, api_url: str = "") -> None:
    """A 1+1 stack's smoke test printed every check: worker-0 Ready, each in-cluster check, its metrics, and the
    public probe's version (at `api_url` when given: where the platform puts the API)."""
    out = smoke_output(stack)
    checks = (
        "nodes: worker-0 is Ready",
        "encryption:",
        "deployment:",
        "dns:",
        "audit:",
        "metrics: kubectl top nodes reports worker-0",
        f"{api_url}/version serves v{version}" if api_url else f"serves v{version}",
    )
    for check in checks:
        assert check in out, out


def vms_and_certificates(stack: LocalStack) -> dict[str, str]:
    """urn -> id of every VM, key and certificate: a replacement changes the id."""
    kinds = ("gcp:compute/instance:Instance", "tls:")
    return {r["urn"]: str(r.get("id")) for r in stack.resources() if r["type"].startswith(kinds)}


def print_timeline(stack: LocalStack, label: str, figures: dict[str, object]) -> None:
    hosts = {n["external_ip"]: name for name, n in stack.nodes().items()}
    events = stack.timeline()
    print(f"\n--- timeline: {label} (start, end, took, node, op, step) ---\n{format_timeline(events, hosts)}")
    figures[f"{stack.name}_timings"] = stack.timings


@contextlib.contextmanager
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """The namespace with its "internet": the admin's address, the binary mirror and the registry."""
    namespace = Namespace(name=f"kthw-lc-{os.getpid()}-c").create()
    processes = []
    try:
        plane.internet_setup(namespace.name)
        # One mirror serves both releases: the stack starts at the patch before the program's and
        # scenario 5 bumps it.
        root = tmp_path_factory.mktemp("mirror")
        previous = mirror.build_mirror(root, kubernetes_version=build.PREVIOUS_KUBERNETES)
        current = mirror.build_mirror(root)
        for address in (MIRROR[0], REGISTRY[0]):
            namespace.exec_ip("addr", "add", f"{address}/32", "dev", BRIDGE)
        processes.append(mirror.serve_mirror(namespace.name, MIRROR[0], MIRROR[1], root))
        store = tmp_path_factory.mktemp("registry")
        processes.append(registry.serve_registry(namespace.name, REGISTRY[0], REGISTRY[1], store))
        images = registry.build_images()
        registry.push(images, REGISTRY_URL, namespace.name)
        yield Services(
            namespace,
            previous,
            current,
            registry.registry_mirrors(REGISTRY_URL),
            mirror_root=root,
            image_digests=registry.metrics_server_digests(images),
        )
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=30)
        namespace.destroy()
