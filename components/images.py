"""Container images the program pins by digest: the reference a pod names, and the digests it trusts.

The image equivalent of artifacts.py's PINNED and kthw:binaryDigests. A tag can be moved on the
registry (or on a mirror in between); a digest cannot, so a pod names `repository:tag@digest` and
containerd pulls the manifest by its digest and checks every byte it fetches against it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from components import versions

METRICS_SERVER = "metrics-server"
# Every image the program pins, by the name kthw:imageDigests keys it with.
NAMES = (METRICS_SERVER,)
REPOSITORIES = {METRICS_SERVER: "registry.k8s.io/metrics-server/metrics-server"}

# Digests of registry.k8s.io's releases: the multi-arch index each tag names (what `crane digest`
# or `docker buildx imagetools inspect` prints for it), so the reference holds on any node
# architecture. Values as published beside the tags by others who pin them: v0.8.1 in minikube
# 1.38's metrics-server add-on and k3s's mirrored-metrics-server:v0.8.1 (same index digest), v0.8.0
# in k3s 1.34's mirrored-metrics-server:v0.8.0.
PINNED: dict[tuple[str, str], str] = {
    (
        METRICS_SERVER,
        versions.METRICS_SERVER,
    ): "sha256:b2d2efaf5ac3b366ed0f839d2412a2c4279d4fc2a2a733f12c52133faed36c41",
    (METRICS_SERVER, "0.8.0"): "sha256:89258156d0e9af60403eafd44da9676fd66f600c7934d468ccc17e42b199aee2",
}

# A manifest or index digest as registries print it.
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def tag(version: str) -> str:
    """Releases tag images with a leading "v" (v0.8.1)."""
    return f"v{version}"


def digest(name: str, version: str, trusted: Mapping[str, str]) -> str | None:
    """The digest `name` at `version` must have: the user's (kthw:imageDigests) first, else the pinned one."""
    return trusted.get(name) or PINNED.get((name, version))


def reference(name: str, version: str, trusted: Mapping[str, str]) -> str:
    """`repository:tag@digest`, as a pod names it; refuses a version with no digest (config catches that first)."""
    found = digest(name, version, trusted)
    if found is None:
        raise ValueError(f"{name} {version}: no pinned image digest; {missing_digest(name, version)}")
    return f"{REPOSITORIES[name]}:{tag(version)}@{found}"


def pinned_versions(name: str) -> list[str]:
    return sorted(v for n, v in PINNED if n == name)


def missing_digest(name: str, version: str) -> str:
    """What to do about a version the program has no digest for: the one-line rule config reports."""
    return (
        f"a version whose image digest the program pins ({', '.join(pinned_versions(name))}), or vouch for "
        f"{REPOSITORIES[name]}:{tag(version)} with its digest in kthw:imageDigests.{name} "
        "(sha256:..., as your registry or mirror serves it)"
    )
