"""ClusterConfig: the stack's configuration, read once, validated, and every derived value."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from components import versions

# Where KTHW puts its nodes inside nodeCidr: controller-i at host .1i, worker-i at host .2i.
CONTROLLER_HOST_OFFSET = 10
WORKER_HOST_OFFSET = 20
MAX_CONTROLLERS = WORKER_HOST_OFFSET - CONTROLLER_HOST_OFFSET
# GCE keeps the last two addresses of every subnet (the second-to-last is reserved, the last is broadcast).
GCE_RESERVED_TAIL = 2
# The cluster DNS service takes the tenth address of serviceCidr, as KTHW's 10.32.0.10.
CLUSTER_DNS_HOST_OFFSET = 10
POD_CIDR_PREFIX = 24

# RFC 1035 labels as GCE accepts them for resource names, zones and machine types.
_GCE_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_IMAGE = re.compile(r"^([a-z][-a-z0-9]{0,61}[a-z0-9]/)?[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_VERSION = re.compile(r"^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$")
# GCP project IDs: 6-30 of lowercase letters, digits and hyphens, starting with a letter.
_PROJECT = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")
# What the example stack files ship with, so a forgotten `pulumi config set gcp:project` is caught here.
PROJECT_PLACEHOLDER = "your-gcp-project"
_SSH_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# GCS bucket names without dots (dotted names need domain verification): 3-63 characters.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]$")


class ConfigError(ValueError):
    """A stack config value the program refuses, with the key, the value and what is allowed."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key = key if ":" in key else f"kthw:{key}"
        super().__init__(f"{self.key} = {value!r} is invalid: {allowed}")


@dataclass(frozen=True)
class NodeSpec:
    """One VM of the cluster as config determines it: everything but its external IP."""

    name: str
    role: str  # "controller" or "worker"
    index: int
    internal_ip: str
    machine_type: str
    pod_cidr: str | None = None  # workers only


@dataclass(frozen=True)
class Versions:
    """Component versions, without a leading "v"."""

    kubernetes: str = versions.KUBERNETES
    etcd: str = versions.ETCD
    containerd: str = versions.CONTAINERD
    runc: str = versions.RUNC
    cni: str = versions.CNI
    crictl: str = versions.CRICTL


@dataclass(frozen=True)
class ClusterConfig:
    """Everything the program needs to know, fixed before the first resource is registered."""

    project: str | None
    region: str
    zone: str
    node_cidr: str
    cluster_cidr: str
    service_cidr: str
    image: str
    admin_source_ranges: tuple[str, ...]
    versions: Versions
    controllers: tuple[NodeSpec, ...]
    workers: tuple[NodeSpec, ...]
    ssh_user: str = "kthw"
    binary_mirror: str | None = None
    cert_validity_hours: int = 8760
    cert_rotation: int = 0
    etcd_backup_bucket: str | None = None

    @property
    def nodes(self) -> tuple[NodeSpec, ...]:
        return self.controllers + self.workers

    @property
    def kubernetes_service_ip(self) -> str:
        """The ClusterIP of the `kubernetes` service: the first address of serviceCidr."""
        return str(ipaddress.ip_network(self.service_cidr)[1])

    @property
    def cluster_dns_ip(self) -> str:
        return str(ipaddress.ip_network(self.service_cidr)[CLUSTER_DNS_HOST_OFFSET])

    @property
    def etcd_initial_cluster(self) -> str:
        """etcd's --initial-cluster: every controller's peer URL, in index order."""
        return ",".join(f"{c.name}=https://{c.internal_ip}:2380" for c in self.controllers)

    @property
    def etcd_servers(self) -> str:
        """kube-apiserver's --etcd-servers: every controller's client URL, in index order."""
        return ",".join(f"https://{c.internal_ip}:2379" for c in self.controllers)


# --- loading -----------------------------------------------------------------------------------

# Every kthw: key the program reads; Pulumi.yaml declares each with its type and default.
KEYS = (
    "controllerCount",
    "workerCount",
    "nodeCidr",
    "clusterCidr",
    "serviceCidr",
    "machineType",
    "controllerMachineType",
    "workerMachineType",
    "image",
    "adminSourceRanges",
    "kubernetesVersion",
    "etcdVersion",
    "containerdVersion",
    "runcVersion",
    "cniVersion",
    "crictlVersion",
    "sshUser",
    "binaryMirror",
    "certValidityHours",
    "certRotation",
    "etcdBackupBucket",
)
GCP_KEYS = ("project", "region", "zone")


def from_stack() -> ClusterConfig:
    """Read the current stack's config (kthw: and gcp: namespaces) and validate it."""
    import pulumi

    kthw, gcp = pulumi.Config("kthw"), pulumi.Config("gcp")
    raw: dict[str, Any] = {}
    for key in KEYS:
        value = kthw.get(key)
        if value is not None:
            raw[key] = value
    return load(raw, {f"gcp:{key}": gcp.get(key) for key in GCP_KEYS})


def load(cfg: Mapping[str, Any], gcp: Mapping[str, Any]) -> ClusterConfig:
    """Build and validate a ClusterConfig from plain mappings (the kthw: and gcp: namespaces).

    Values may arrive as strings (as `pulumi config set` stores them) or as typed values
    (as Pulumi.yaml defaults and structured stack files give them).
    """
    region = _gce_name(gcp, "gcp:region", required=True)
    zone = _gce_name(gcp, "gcp:zone", required=True)
    if not zone.startswith(region + "-"):
        raise ConfigError("gcp:zone", zone, f"a zone of region {region!r}, like {region}-a")

    node_net = _network(cfg, "nodeCidr", "10.240.0.0/24")
    cluster_net = _network(cfg, "clusterCidr", "10.200.0.0/16")
    service_net = _network(cfg, "serviceCidr", "10.32.0.0/24")
    _no_overlap({"nodeCidr": node_net, "clusterCidr": cluster_net, "serviceCidr": service_net})

    if cluster_net.prefixlen > POD_CIDR_PREFIX:
        raise ConfigError(
            "clusterCidr",
            str(cluster_net),
            f"a prefix of /{POD_CIDR_PREFIX} or shorter: each worker takes a /{POD_CIDR_PREFIX}",
        )
    if service_net.num_addresses <= CLUSTER_DNS_HOST_OFFSET + 1:
        raise ConfigError(
            "serviceCidr",
            str(service_net),
            f"a range that holds the cluster DNS address (host .{CLUSTER_DNS_HOST_OFFSET}): /28 or larger",
        )

    controller_count = _count(
        cfg,
        "controllerCount",
        3,
        MAX_CONTROLLERS,
        f"controllers sit at hosts .{CONTROLLER_HOST_OFFSET}-.{WORKER_HOST_OFFSET - 1} of nodeCidr",
    )
    max_workers = min(
        node_net.num_addresses - GCE_RESERVED_TAIL - WORKER_HOST_OFFSET,
        2 ** (POD_CIDR_PREFIX - cluster_net.prefixlen),
    )
    if max_workers < 1:
        raise ConfigError(
            "nodeCidr", str(node_net), f"a range with room for workers from host .{WORKER_HOST_OFFSET}: /26 or larger"
        )
    worker_count = _count(
        cfg,
        "workerCount",
        3,
        max_workers,
        f"nodeCidr {node_net} and clusterCidr {cluster_net} hold at most {max_workers} workers",
    )

    machine_type = _gce_name(cfg, "machineType", default="e2-standard-2")
    controller_machine_type = _gce_name(cfg, "controllerMachineType", default=machine_type)
    worker_machine_type = _gce_name(cfg, "workerMachineType", default=machine_type)

    image = str(cfg.get("image") or "ubuntu-os-cloud/ubuntu-2404-lts-amd64")
    if not _IMAGE.match(image):
        raise ConfigError(
            "image",
            image,
            "an image family or name, optionally as PROJECT/FAMILY (e.g. ubuntu-os-cloud/ubuntu-2404-lts-amd64)",
        )

    controllers = tuple(
        NodeSpec(f"controller-{i}", "controller", i, str(node_net[CONTROLLER_HOST_OFFSET + i]), controller_machine_type)
        for i in range(controller_count)
    )
    pod_cidrs = cluster_net.subnets(new_prefix=POD_CIDR_PREFIX)
    workers = tuple(
        NodeSpec(
            f"worker-{i}", "worker", i, str(node_net[WORKER_HOST_OFFSET + i]), worker_machine_type, str(next(pod_cidrs))
        )
        for i in range(worker_count)
    )

    ssh_user = str(cfg.get("sshUser") or "kthw")
    if not _SSH_USER.match(ssh_user) or ssh_user == "root":
        raise ConfigError(
            "sshUser", ssh_user, "a Linux user name other than root: lowercase letters, digits, '_' and '-', at most 32"
        )

    mirror = cfg.get("binaryMirror") or None
    if mirror is not None and not re.match(r"^https?://[^\s/]+(/\S*)?$", str(mirror)):
        raise ConfigError("binaryMirror", mirror, "an http(s) URL with no spaces, e.g. https://mirror.example.com/kthw")

    validity = _int(cfg, "certValidityHours", 8760)
    if not 24 <= validity <= 10 * 8760:
        raise ConfigError("certValidityHours", validity, "between 24 hours and ten years (87600)")
    rotation = _int(cfg, "certRotation", 0)
    if rotation < 0:
        raise ConfigError(
            "certRotation", rotation, "a whole number >= 0; raise it by one to re-issue every leaf certificate"
        )

    bucket = str(cfg.get("etcdBackupBucket") or "") or None
    if bucket is not None and (not _BUCKET.match(bucket) or bucket.startswith("goog") or "google" in bucket):
        raise ConfigError(
            "etcdBackupBucket",
            bucket,
            "a new GCS bucket name: 3-63 lowercase letters, digits, '-' and '_', no 'goog' prefix (empty: no bucket)",
        )

    project = _project(gcp.get("gcp:project"))
    return ClusterConfig(
        project=str(project) if project else None,
        region=region,
        zone=zone,
        node_cidr=str(node_net),
        cluster_cidr=str(cluster_net),
        service_cidr=str(service_net),
        image=image,
        admin_source_ranges=_admin_ranges(cfg),
        versions=Versions(
            kubernetes=_version(cfg, "kubernetesVersion", versions.KUBERNETES),
            etcd=_version(cfg, "etcdVersion", versions.ETCD),
            containerd=_version(cfg, "containerdVersion", versions.CONTAINERD),
            runc=_version(cfg, "runcVersion", versions.RUNC),
            cni=_version(cfg, "cniVersion", versions.CNI),
            crictl=_version(cfg, "crictlVersion", versions.CRICTL),
        ),
        controllers=controllers,
        workers=workers,
        ssh_user=ssh_user,
        binary_mirror=str(mirror).rstrip("/") if mirror else None,
        cert_validity_hours=validity,
        cert_rotation=rotation,
        etcd_backup_bucket=bucket,
    )


def check_controller_shrink(previous: int, new: int) -> None:
    """Refuse removing more etcd members in one update than the cluster can lose.

    Members leave one at a time (member remove, then the VM goes), but in one update: if the ones
    that stay are fewer than a majority of today's members, a single failure during the change
    loses quorum. Shrinking by one is always allowed (2 -> 1 included); 5 -> 3 is, 3 -> 1 is not.
    """
    if new >= previous or new == previous - 1 or new >= previous // 2 + 1:
        return
    raise ConfigError(
        "controllerCount",
        new,
        f"at least {previous // 2 + 1} in one update: {previous} controllers run now and etcd must keep a majority"
        f" of them; shrink in steps (e.g. {previous} -> {previous // 2 + 1})",
    )


def even_controller_warning(config: ClusterConfig) -> str | None:
    """The warning an even controller count deserves: etcd quorum gains nothing from it."""
    n = len(config.controllers)
    if n % 2 == 0:
        return (
            f"kthw:controllerCount = {n} is even: etcd needs {n // 2 + 1} members for quorum, "
            f"so it tolerates no more failures than {n - 1} controllers would"
        )
    return None


# --- field parsers -----------------------------------------------------------------------------


def _int(cfg: Mapping[str, Any], key: str, default: int) -> int:
    raw = cfg.get(key, default)
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        raise ConfigError(key, raw, "a whole number")
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, int):
        return raw
    try:
        return int(str(raw).strip())
    except ValueError:
        raise ConfigError(key, raw, "a whole number") from None


def _count(cfg: Mapping[str, Any], key: str, default: int, maximum: int, why: str) -> int:
    n = _int(cfg, key, default)
    if not 1 <= n <= maximum:
        raise ConfigError(key, n, f"between 1 and {maximum} ({why})")
    return n


def _network(cfg: Mapping[str, Any], key: str, default: str) -> ipaddress.IPv4Network:
    raw = cfg.get(key) or default
    if "/" not in str(raw):  # ip_network would read a bare address as a /32
        raise ConfigError(key, raw, "an IPv4 CIDR with a prefix length, like 10.240.0.0/24")
    try:
        net = ipaddress.ip_network(str(raw), strict=True)
    except ValueError:
        raise ConfigError(key, raw, "an IPv4 CIDR with no host bits set, like 10.240.0.0/24") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise ConfigError(key, raw, "an IPv4 CIDR (GCE subnets and KTHW's routes are IPv4)")
    if not net.is_private:
        raise ConfigError(key, raw, "a private (RFC 1918) range")
    return net


def _no_overlap(nets: Mapping[str, ipaddress.IPv4Network]) -> None:
    items = list(nets.items())
    for i, (key_a, net_a) in enumerate(items):
        for key_b, net_b in items[i + 1 :]:
            if net_a.overlaps(net_b):
                raise ConfigError(key_b, str(net_b), f"a range that does not overlap {key_a} ({net_a})")


def _gce_name(cfg: Mapping[str, Any], key: str, default: str | None = None, required: bool = False) -> str:
    raw = cfg.get(key) or default
    if raw is None:
        raise ConfigError(key, None, f"required: set it with `pulumi config set {key} ...`")
    value = str(raw)
    if not _GCE_NAME.match(value):
        raise ConfigError(
            key, value, "a GCE name: lowercase letters, digits and '-', starting with a letter, at most 63"
        )
    return value


def _version(cfg: Mapping[str, Any], key: str, default: str) -> str:
    raw = str(cfg.get(key) or default)
    value = raw.removeprefix("v")
    if not _VERSION.match(value):
        raise ConfigError(key, raw, "a release version like 1.32.3 (a leading 'v' is allowed)")
    return value


def _project(raw: object) -> str | None:
    """The GCP project, if the stack sets one (else the provider falls back to its own settings)."""
    if raw is None or raw == "":
        return None
    project = str(raw)
    if project == PROJECT_PLACEHOLDER:
        raise ConfigError("gcp:project", project, "your own project: pulumi config set gcp:project YOUR-PROJECT")
    if not _PROJECT.match(project):
        raise ConfigError("gcp:project", project, "a GCP project ID: 6-30 lowercase letters, digits and '-'")
    return project


def _admin_ranges(cfg: Mapping[str, Any]) -> tuple[str, ...]:
    raw = cfg.get("adminSourceRanges", ["0.0.0.0/0"])
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise ConfigError("adminSourceRanges", raw, 'a list of CIDRs, e.g. ["203.0.113.0/24"]') from None
    if not isinstance(raw, list) or not raw:
        raise ConfigError("adminSourceRanges", raw, 'a non-empty list of CIDRs, e.g. ["203.0.113.0/24"]')
    ranges: list[str] = []
    for item in raw:
        try:
            ranges.append(str(ipaddress.ip_network(str(item), strict=True)))
        except ValueError:
            raise ConfigError("adminSourceRanges", item, "an IPv4 or IPv6 CIDR with no host bits set") from None
    return tuple(ranges)
