"""kthw:local*: the local platform's VMs (image, memory, CPUs, disk, ports, directories), read and checked."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.config import values
from components.config.problems import ConfigError, Problems

# Debian 12's official cloud image for generic clouds (cloud-init with NoCloud; both BIOS and UEFI
# boot), with the SHA-512 Debian publishes for it in SHA512SUMS beside it.
DEFAULT_IMAGE_URL = (
    "https://cloud.debian.org/images/cloud/bookworm/20250210-2019/debian-12-genericcloud-amd64-20250210-2019.qcow2"
)
DEFAULT_IMAGE_SHA512 = (
    "a58d86525d75fd8e139a2302531ce5d2ab75ef0273cfe78f9d53aada4b23efd4"
    "5f8433b4806fa4570cfe981c8fae26f5e5e855cbd66ba2198862f28125fd2d45"
)
# Below Linux's ephemeral range (32768-60999), so an outgoing connection never holds a VM's port.
DEFAULT_PORT_BASE = 21000
# A node's admin API port is this far above its SSH port: SSH at base+h, API at base+1000+h, h its host number.
API_PORT_OFFSET = 1000
DEFAULT_MEMORY_MB = 2048
DEFAULT_CPUS = 2
DEFAULT_DISK_GB = 20
DEFAULT_SSH_USER = "kthw"
ACCELS = ("auto", "kvm", "tcg")
# What etcd, an API server or a kubelet with a few pods needs at the least.
MIN_MEMORY_MB = 1024
# The image's root grows to the disk; the binaries and a few container images need this much.
MIN_DISK_GB = 8
# sockaddr_un.sun_path holds 108 bytes with its terminating NUL.
MAX_SOCKET_PATH = 107
_SHA512 = re.compile(r"^[0-9a-f]{128}$")
_URL = re.compile(r"^(https?|file)://\S+$")


@dataclass(frozen=True)
class LocalOptions:
    """The kthw:local* values of a stack on the local platform; "" directories mean the per-user defaults."""

    image_url: str = DEFAULT_IMAGE_URL
    image_sha512: str = DEFAULT_IMAGE_SHA512
    state_dir: str = ""
    cache_dir: str = ""
    port_base: int = DEFAULT_PORT_BASE
    memory_mb: int = DEFAULT_MEMORY_MB
    cpus: int = DEFAULT_CPUS
    disk_gb: int = DEFAULT_DISK_GB
    accel: str = "auto"


def read(cfg: Mapping[str, Any], problems: Problems) -> LocalOptions | None:
    """Every kthw:local* key by its rule; None when one was refused."""
    found: dict[str, Any] = {
        "image_url": problems.check(_image_url, cfg),
        "image_sha512": problems.check(_image_sha512, cfg),
        "state_dir": problems.check(_directory, cfg, "localStateDir"),
        "cache_dir": problems.check(_directory, cfg, "localCacheDir"),
        "port_base": problems.check(
            _at_least, cfg, "localPortBase", DEFAULT_PORT_BASE, 1024, "no root for lower ports"
        ),
        "memory_mb": problems.check(_at_least, cfg, "localMemoryMb", DEFAULT_MEMORY_MB, MIN_MEMORY_MB, "per VM"),
        "cpus": problems.check(_at_least, cfg, "localCpus", DEFAULT_CPUS, 1, "per VM"),
        "disk_gb": problems.check(_at_least, cfg, "localDiskGb", DEFAULT_DISK_GB, MIN_DISK_GB, "per VM"),
        "accel": problems.check(values.choice, cfg, "localAccel", "auto", ACCELS),
    }
    if any(v is None for v in found.values()):
        return None
    return LocalOptions(**found)


def _image_url(cfg: Mapping[str, Any]) -> str:
    url = str(cfg.get("localImageUrl") or DEFAULT_IMAGE_URL)
    if not _URL.match(url):
        raise ConfigError("localImageUrl", url, "an http(s):// or file:// URL of a qcow2 cloud image")
    return url


def _image_sha512(cfg: Mapping[str, Any]) -> str:
    digest = str(cfg.get("localImageSha512") or DEFAULT_IMAGE_SHA512)
    if not _SHA512.match(digest):
        raise ConfigError("localImageSha512", digest, "the image's SHA-512: 128 lowercase hex digits")
    return digest


def _directory(cfg: Mapping[str, Any], key: str) -> str:
    value = str(cfg.get(key) or "")
    if value and not Path(value).is_absolute():
        raise ConfigError(key, value, "an absolute path (empty: the per-user default)")
    return value


def _at_least(cfg: Mapping[str, Any], key: str, default: int, minimum: int, why: str) -> int:
    value = values.integer(cfg, key, default)
    if value < minimum:
        raise ConfigError(key, value, f"at least {minimum} ({why})")
    return value
