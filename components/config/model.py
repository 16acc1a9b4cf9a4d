"""The types config is read into: ClusterConfig, its nodes and its component versions, and what they derive."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from components import versions
from components.config.addresses import CLUSTER_DNS_HOST_OFFSET
from components.config.local import LocalOptions
from components.config.names import GceNames

# kthw:auditLevel: the audit policy's catch-all level (audit.k8s.io/v1 spelling), or "off" for no audit log.
AUDIT_OFF = "off"
AUDIT_LEVELS = ("None", "Metadata", "Request", "RequestResponse")


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
class SshTarget:
    """How the program reaches one of your machines (kthw:machines): SSH host (an IP or a name), port and user."""

    host: str
    port: int
    user: str


@dataclass(frozen=True)
class Versions:
    """Component versions, without a leading "v"."""

    kubernetes: str = versions.KUBERNETES
    etcd: str = versions.ETCD
    containerd: str = versions.CONTAINERD
    runc: str = versions.RUNC
    cni: str = versions.CNI
    crictl: str = versions.CRICTL
    metrics_server: str = versions.METRICS_SERVER


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
    # kthw:etcdBackupBucketImport: adopt the existing bucket of that name instead of creating it.
    etcd_backup_bucket_import: bool = False
    names: GceNames = field(default_factory=GceNames)
    audit_level: str = "Metadata"  # one of AUDIT_LEVELS, or AUDIT_OFF
    metrics_server: bool = True
    # kthw:binaryDigests as (artifact, SHA-256) pairs, sorted: digests the user vouches for.
    binary_digests: tuple[tuple[str, str], ...] = ()
    # kthw:registryMirrors as (registry host, mirror URL) pairs, sorted.
    registry_mirrors: tuple[tuple[str, str], ...] = ()
    # kthw:imageDigests as (image, digest) pairs, sorted: image digests the user vouches for.
    image_digests: tuple[tuple[str, str], ...] = ()
    # kthw:maxUnavailableWorkers: how many workers a rolling change drains and restarts at once.
    max_unavailable_workers: int = 1
    # kthw:platform: gcp, machines or local.
    platform: str = "gcp"
    # With platform machines: node name -> how to reach it; and the API's address, if you run a load balancer.
    ssh_targets: Mapping[str, SshTarget] = field(default_factory=dict)
    api_address: str | None = None
    # With platform local: the VMs' settings.
    local: LocalOptions | None = None

    @property
    def audit_enabled(self) -> bool:
        return self.audit_level != AUDIT_OFF

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
