"""The local platform's settings and what follows from them per node: ports, MACs, paths (pure, no I/O)."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from components.config.local import (
    ACCELS,
    API_PORT_OFFSET,
    DEFAULT_CPUS,
    DEFAULT_DISK_GB,
    DEFAULT_IMAGE_SHA512,
    DEFAULT_IMAGE_URL,
    DEFAULT_MEMORY_MB,
    DEFAULT_PORT_BASE,
    DEFAULT_SSH_USER,
    MAX_SOCKET_PATH,
    MIN_DISK_GB,
    MIN_MEMORY_MB,
)

_SHA512 = re.compile(r"^[0-9a-f]{128}$")
_URL = re.compile(r"^(https?|file)://\S+$")
_SSH_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
ROLES = ("controller", "worker")


@dataclass(frozen=True)
class LocalNode:
    """One VM to start: its node name (and hostname), role and address on the cluster network."""

    name: str
    role: str  # "controller" or "worker"
    internal_ip: str


@dataclass(frozen=True)
class LocalSettings:
    """The stack's kthw:local* values, already defaulted (see default_state_dir, default_cache_dir)."""

    state_dir: str  # absolute: VM disks, seeds, consoles, the switch's sockets
    cache_dir: str  # absolute: base images, one file per SHA-512, kept by destroy
    image_url: str = DEFAULT_IMAGE_URL
    image_sha512: str = DEFAULT_IMAGE_SHA512
    port_base: int = DEFAULT_PORT_BASE
    memory_mb: int = DEFAULT_MEMORY_MB
    cpus: int = DEFAULT_CPUS
    disk_gb: int = DEFAULT_DISK_GB
    ssh_user: str = DEFAULT_SSH_USER
    accel: str = "auto"  # "auto": KVM where /dev/kvm works, else TCG


def default_state_dir(project: str, stack: str, environ: dict[str, str] | None = None) -> str:
    """$XDG_STATE_HOME/kthw/<project>-<stack> (~/.local/state/...): per stack, outside the checkout."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".local/state")
    return str(Path(base) / "kthw" / f"{project}-{stack}")


def default_cache_dir(environ: dict[str, str] | None = None) -> str:
    """$XDG_CACHE_HOME/kthw/images (~/.cache/...): base images, shared by every stack of the user."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".cache")
    return str(Path(base) / "kthw" / "images")


def host_number(internal_ip: str, node_cidr: str) -> int:
    """The node's host number in nodeCidr (10.240.0.21 in 10.240.0.0/24 -> 21): what its ports derive from."""
    network = ipaddress.ip_network(node_cidr)
    return int(ipaddress.ip_address(internal_ip)) - int(network.network_address)


def ssh_port(settings: LocalSettings, node: LocalNode, node_cidr: str) -> int:
    """The 127.0.0.1 port forwarded to the node's :22; stable when nodes are added or removed."""
    return settings.port_base + host_number(node.internal_ip, node_cidr)


def api_port(settings: LocalSettings, node: LocalNode, node_cidr: str) -> int | None:
    """The 127.0.0.1 port forwarded to a controller's :6443 (the admin's way in); None for a worker."""
    if node.role != "controller":
        return None
    return ssh_port(settings, node, node_cidr) + API_PORT_OFFSET


def cluster_mac(internal_ip: str) -> str:
    """The cluster NIC's MAC: locally administered, from the internal IP, so it is stable and unique per stack."""
    return "52:54:" + ":".join(f"{b:02x}" for b in ipaddress.ip_address(internal_ip).packed)


def nat_mac(internal_ip: str) -> str:
    """The NAT NIC's MAC: as the cluster NIC's, another locally administered prefix."""
    return "52:56:" + ":".join(f"{b:02x}" for b in ipaddress.ip_address(internal_ip).packed)


def net_dir(settings: LocalSettings) -> Path:
    """The switch's directory: its socket, one socket per VM, its pid file and log."""
    return Path(settings.state_dir) / "net"


def vm_dir(settings: LocalSettings, name: str) -> Path:
    """One VM's directory: overlay disk, seed, console log, pid file."""
    return Path(settings.state_dir) / "vms" / name


def vm_socket(settings: LocalSettings, name: str) -> Path:
    """The VM's end of the switch: its cluster NIC's datagram socket."""
    return net_dir(settings) / f"{name}.sock"


def image_path(settings: LocalSettings) -> Path:
    """Where the verified base image lives in the cache: named by its SHA-512, so one download serves all."""
    return Path(settings.cache_dir) / f"{settings.image_sha512}.img"


def fingerprint(settings: LocalSettings, node: LocalNode) -> str:
    """A digest of what restarts or replaces the node's VM: image, memory, CPUs, disk, acceleration."""
    parts = (settings.image_sha512, settings.memory_mb, settings.cpus, settings.disk_gb, settings.accel, node.role)
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def problems(settings: LocalSettings, nodes: Sequence[LocalNode], node_cidr: str) -> list[str]:
    """Every reason these settings and nodes cannot run, one line each (empty: they can)."""
    found: list[str] = []
    if not _URL.match(settings.image_url):
        found.append(f"kthw:localImageUrl = {settings.image_url!r}: expected an http(s):// or file:// URL")
    if not _SHA512.match(settings.image_sha512):
        found.append("kthw:localImageSha512: expected 128 lowercase hex digits (as sha512sum prints them)")
    for key, value in (("localStateDir", settings.state_dir), ("localCacheDir", settings.cache_dir)):
        if not Path(value).is_absolute():
            found.append(f"kthw:{key} = {value!r}: expected an absolute path")
    if not _SSH_USER.match(settings.ssh_user) or settings.ssh_user == "root":
        found.append(f"local SSH user {settings.ssh_user!r}: expected a lowercase login name other than root")
    if settings.accel not in ACCELS:
        found.append(f"kthw:localAccel = {settings.accel!r}: expected one of {', '.join(ACCELS)}")
    if settings.memory_mb < MIN_MEMORY_MB:
        found.append(f"kthw:localMemoryMb = {settings.memory_mb}: at least {MIN_MEMORY_MB}")
    if settings.cpus < 1:
        found.append(f"kthw:localCpus = {settings.cpus}: at least 1")
    if settings.disk_gb < MIN_DISK_GB:
        found.append(f"kthw:localDiskGb = {settings.disk_gb}: at least {MIN_DISK_GB}")
    if settings.port_base < 1024:
        found.append(f"kthw:localPortBase = {settings.port_base}: at least 1024 (no root for lower ports)")
    network = ipaddress.ip_network(node_cidr)
    for node in nodes:
        if not _NODE_NAME.match(node.name):
            found.append(f"node {node.name!r}: expected a lowercase hostname")
        if node.role not in ROLES:
            found.append(f"node {node.name}: role {node.role!r} is neither controller nor worker")
        if ipaddress.ip_address(node.internal_ip) not in network:
            found.append(f"node {node.name}: {node.internal_ip} is outside nodeCidr {node_cidr}")
            continue
        h = host_number(node.internal_ip, node_cidr)
        if h >= API_PORT_OFFSET:
            found.append(f"node {node.name}: host number {h} in {node_cidr} leaves no room for its ports (< 1000)")
        elif settings.port_base + API_PORT_OFFSET + h > 65535:
            found.append(f"kthw:localPortBase = {settings.port_base}: node {node.name}'s ports pass 65535")
        sock = vm_socket(settings, node.name)
        if Path(settings.state_dir).is_absolute() and len(str(sock).encode()) > MAX_SOCKET_PATH:
            found.append(
                f"kthw:localStateDir: {sock} is longer than a unix socket path may be ({MAX_SOCKET_PATH} bytes)"
            )
    names = [n.name for n in nodes]
    found += [f"node {n} is listed twice" for n in sorted({n for n in names if names.count(n) > 1})]
    return found
