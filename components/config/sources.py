"""Where binaries and images come from: component versions, binary mirror, binary digests, registry mirrors.

Each rule returns the value or raises ConfigError; an object's rule reports every bad entry into Problems.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from components import images, versions
from components.config import values
from components.config.model import Versions
from components.config.problems import ConfigError, Problems
from components.downloads import NAMES, SHA256

# Each field of Versions, the key that sets it, and its default.
VERSION_KEYS = (
    ("kubernetes", "kubernetesVersion", versions.KUBERNETES),
    ("etcd", "etcdVersion", versions.ETCD),
    ("containerd", "containerdVersion", versions.CONTAINERD),
    ("runc", "runcVersion", versions.RUNC),
    ("cni", "cniVersion", versions.CNI),
    ("crictl", "crictlVersion", versions.CRICTL),
    ("metrics_server", "metricsServerVersion", versions.METRICS_SERVER),
)
_BINARY_MIRROR = re.compile(r"^https?://[^\s/]+(/\S*)?$")
# kthw:registryMirrors keys: a registry as an image reference names it, a DNS name or IPv4 address
# with an optional port (registry.k8s.io, docker.io, 10.0.0.5:5000), in lowercase like containerd's
# certs.d directories.
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_REGISTRY_HOST = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*(:[0-9]{{1,5}})?$")
# kthw:registryMirrors values: an http(s) URL with nothing a TOML string or a path would need escaped.
_MIRROR_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$")


def component_versions(cfg: Mapping[str, Any], problems: Problems) -> Versions | None:
    """Every component's version (VERSION_KEYS); None when any is refused (each refusal is told)."""
    checked = {field: problems.check(values.version, cfg, key, default) for field, key, default in VERSION_KEYS}
    found = {field: version for field, version in checked.items() if version is not None}
    return Versions(**found) if len(found) == len(checked) else None


def binary_mirror(cfg: Mapping[str, Any]) -> str | None:
    """The base URL binaries are fetched from instead of their projects' (air-gapped installs), or None."""
    mirror = cfg.get("binaryMirror") or None
    if mirror is None:
        return None
    if not _BINARY_MIRROR.match(str(mirror)):
        raise ConfigError("binaryMirror", mirror, "an http(s) URL with no spaces, e.g. https://mirror.example.com/kthw")
    return str(mirror).rstrip("/")


def binary_digests(cfg: Mapping[str, Any], problems: Problems) -> tuple[tuple[str, str], ...] | None:
    """kthw:binaryDigests: artifact name -> the SHA-256 its download must have, replacing the pinned one."""
    digests = problems.check(values.json_object, cfg, "binaryDigests", '{"kubelet": "<sha256sum of the file>"}')
    if digests is None:
        return None
    checked = [problems.check(_binary_digest, name, digest) for name, digest in digests.items()]
    return tuple(sorted(c for c in checked if c is not None)) if None not in checked else None


def _binary_digest(name: str, digest: object) -> tuple[str, str]:
    if name not in NAMES:
        close = difflib.get_close_matches(name, NAMES, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"one of {', '.join(NAMES)}"
        raise ConfigError("binaryDigests", {name: digest}, f"{name!r} is not an artifact the program downloads: {hint}")
    if not isinstance(digest, str) or not SHA256.match(digest):
        raise ConfigError(
            "binaryDigests",
            {name: digest},
            f"the SHA-256 of {name}'s download: 64 lowercase hex digits, as `sha256sum FILE` prints them",
        )
    return name, digest


def image_digests(
    cfg: Mapping[str, Any], problems: Problems, metrics_server_version: str | None
) -> tuple[tuple[str, str], ...] | None:
    """kthw:imageDigests: image -> the digest its pull must have, replacing the pinned one.

    The metrics-server version deployed (None: not deployed, or its version already refused) needs a
    digest from one or the other.
    """
    found = problems.check(values.json_object, cfg, "imageDigests", '{"metrics-server": "sha256:<digest>"}')
    if found is None:
        return None
    checked = [problems.check(_image_digest, name, digest) for name, digest in found.items()]
    if None in checked:
        return None
    trusted = tuple(sorted(c for c in checked if c is not None))
    version = metrics_server_version
    if version is not None and images.digest(images.METRICS_SERVER, version, dict(trusted)) is None:
        problems.found.append(
            str(ConfigError("metricsServerVersion", version, images.missing_digest(images.METRICS_SERVER, version)))
        )
        return None
    return trusted


def _image_digest(name: str, digest: object) -> tuple[str, str]:
    if name not in images.NAMES:
        close = difflib.get_close_matches(name, images.NAMES, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"one of {', '.join(images.NAMES)}"
        raise ConfigError("imageDigests", {name: digest}, f"{name!r} is not an image the program pins: {hint}")
    if not isinstance(digest, str) or not images.DIGEST.match(digest):
        raise ConfigError(
            "imageDigests",
            {name: digest},
            f"the digest of {name}'s image: sha256: and 64 lowercase hex digits, as the registry reports it",
        )
    return name, digest


def registry_mirrors(cfg: Mapping[str, Any], problems: Problems) -> tuple[tuple[str, str], ...] | None:
    """kthw:registryMirrors: registry host -> the http(s) URL containerd pulls that registry's images from."""
    example = '{"registry.k8s.io": "https://mirror.example.com:5000"}'
    mirrors = problems.check(values.json_object, cfg, "registryMirrors", example)
    if mirrors is None:
        return None
    checked = [problems.check(_registry_mirror, host, url) for host, url in mirrors.items()]
    return tuple(sorted(c for c in checked if c is not None)) if None not in checked else None


def _registry_mirror(host: str, url: object) -> tuple[str, str]:
    if not _REGISTRY_HOST.match(host):
        raise ConfigError(
            "registryMirrors",
            {host: url},
            f"{host!r} is not a registry host: a lowercase DNS name or IPv4 address with an optional :port",
        )
    if not isinstance(url, str) or not _MIRROR_URL.match(url):
        raise ConfigError(
            "registryMirrors",
            {host: url},
            f"the mirror of {host}: an http(s) URL, e.g. https://mirror.example.com:5000",
        )
    return host, url.rstrip("/")
