"""ClusterConfig: the stack's configuration, read once, validated, and every derived value."""

from __future__ import annotations

import difflib
import functools
import hashlib
import ipaddress
import itertools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pulumi
import yaml

from components import images, versions

T = TypeVar("T")

# The program's own project file: the one place that declares every kthw: key.
PROJECT_FILE = Path(__file__).resolve().parent.parent / "Pulumi.yaml"
NAMESPACE = "kthw"

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
# GCE names resource names with RFC 1035 labels of at most 63 characters.
GCE_NAME_MAX = 63
# With this cluster name every GCE name is KTHW's own (VPC kubernetes-the-hard-way, subnet kubernetes, ...).
DEFAULT_CLUSTER_NAME = "kubernetes-the-hard-way"
# KTHW's second prefix: the subnet, health check, target pool, forwarding rule and routes start with it.
KTHW_SHORT_NAME = "kubernetes"
# The smallest nodeCidr with room for worker-0 at host .20 and GCE's reserved tail.
MIN_NODE_CIDR_PREFIX = 32 - (WORKER_HOST_OFFSET + GCE_RESERVED_TAIL).bit_length()
DEFAULT_CIDRS = {"nodeCidr": "10.240.0.0/24", "clusterCidr": "10.200.0.0/16", "serviceCidr": "10.32.0.0/24"}
# kthw:auditLevel: the audit policy's catch-all level (audit.k8s.io/v1 spelling), or "off" for no audit log.
AUDIT_OFF = "off"
AUDIT_LEVELS = ("None", "Metadata", "Request", "RequestResponse")
# kthw:binaryDigests values: a SHA-256 as sha256sum prints it.
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# kthw:registryMirrors keys: a registry as an image reference names it, a DNS name or IPv4 address
# with an optional port (registry.k8s.io, docker.io, 10.0.0.5:5000), in lowercase like containerd's
# certs.d directories.
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_REGISTRY_HOST = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*(:[0-9]{{1,5}})?$")
# kthw:registryMirrors values: an http(s) URL with nothing a TOML string or a path would need escaped.
_MIRROR_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$")
# GCS bucket names without dots (dotted names need domain verification): 3-63 characters.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]$")


class ConfigError(ValueError):
    """A stack config value the program refuses, with the key, the value and what is allowed."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key = key if ":" in key else f"{NAMESPACE}:{key}"
        super().__init__(f"{self.key} = {value!r} is invalid: {allowed}")


class ConfigErrors(pulumi.RunError):
    """Every problem of a stack's config, one line each.

    A RunError, so the Python language host prints the message alone, with no traceback.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class GceNames:
    """Every GCE resource name, derived from kthw:clusterName; the default gives KTHW's own names."""

    cluster: str = DEFAULT_CLUSTER_NAME

    @property
    def is_default(self) -> bool:
        return self.cluster == DEFAULT_CLUSTER_NAME

    @property
    def _short(self) -> str:
        return KTHW_SHORT_NAME if self.is_default else self.cluster

    @property
    def node_prefix(self) -> str:
        """KTHW's VMs are plain controller-0, worker-0; another cluster's carry its name in front."""
        return "" if self.is_default else f"{self.cluster}-"

    @property
    def network(self) -> str:
        """The VPC, the API's static address and the network tag every VM carries."""
        return self.cluster

    @property
    def subnet(self) -> str:
        return self._short

    @property
    def allow_internal(self) -> str:
        return f"{self.cluster}-allow-internal"

    @property
    def allow_external(self) -> str:
        return f"{self.cluster}-allow-external"

    @property
    def deny_etcd(self) -> str:
        return f"{self.cluster}-deny-etcd-from-workers"

    @property
    def allow_health_check(self) -> str:
        return f"{self.cluster}-allow-health-check"

    def worker_api_firewall(self, worker: str) -> str:
        """The rule that lets one worker's external IP reach the API on the public address."""
        return f"{self.cluster}-allow-api-from-{worker.removeprefix(self.node_prefix)}"

    @property
    def health_check(self) -> str:
        return self._short

    @property
    def target_pool(self) -> str:
        return f"{self._short}-target-pool"

    @property
    def forwarding_rule(self) -> str:
        return f"{self._short}-forwarding-rule"

    def route(self, pod_cidr: str) -> str:
        """KTHW's route name for a pod CIDR: 10.200.1.0/24 -> kubernetes-route-10-200-1-0-24."""
        return f"{self._short}-route-" + pod_cidr.replace(".", "-").replace("/", "-")

    def node(self, role: str, index: int) -> str:
        """A VM's name, which is also its hostname, its Kubernetes node name and its certificate's."""
        return f"{self.node_prefix}{role}-{index}"

    def etcd_disk(self, controller: str) -> str:
        """A controller's etcd disk, named after its VM (so unique per cluster name): controller-0-etcd."""
        return f"{controller}-etcd"

    @property
    def backup_account(self) -> str:
        """The controllers' service account ID (6-30 characters): KTHW's own, or one per cluster name."""
        if self.is_default:
            return "kthw-controllers"
        return f"kthw-{hashlib.sha256(self.cluster.encode()).hexdigest()[:10]}-etcd"

    def every_name(self, controllers: int, pod_cidrs: Sequence[str]) -> list[str]:
        """Every GCE name a cluster of this shape uses (workers by their pod CIDRs)."""
        workers = [self.node("worker", i) for i in range(len(pod_cidrs))]
        return [
            self.network,
            self.subnet,
            self.allow_internal,
            self.allow_external,
            self.deny_etcd,
            self.allow_health_check,
            self.health_check,
            self.target_pool,
            self.forwarding_rule,
            *(self.node("controller", i) for i in range(controllers)),
            *(self.etcd_disk(self.node("controller", i)) for i in range(controllers)),
            *workers,
            *(self.worker_api_firewall(w) for w in workers),
            *(self.route(cidr) for cidr in pod_cidrs),
        ]


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
    names: GceNames = field(default_factory=GceNames)
    audit_level: str = "Metadata"  # one of AUDIT_LEVELS, or AUDIT_OFF
    metrics_server: bool = True
    # kthw:binaryDigests as (artifact, SHA-256) pairs, sorted: digests the user vouches for.
    binary_digests: tuple[tuple[str, str], ...] = ()
    # kthw:registryMirrors as (registry host, mirror URL) pairs, sorted.
    registry_mirrors: tuple[tuple[str, str], ...] = ()
    # kthw:imageDigests as (image, digest) pairs, sorted: image digests the user vouches for.
    image_digests: tuple[tuple[str, str], ...] = ()

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


# --- loading -----------------------------------------------------------------------------------

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


def stack_values() -> dict[str, Any]:
    """The stack's whole config as the SDK holds it: `namespace:key` -> value (strings, lists as JSON).

    The language host hands the config over in PULUMI_CONFIG and loads it into the runtime's map;
    an Automation API or test program sets the map directly. Both are read, the map winning.
    """
    import pulumi.runtime.config as runtime_config

    return {**pulumi.runtime.get_config_env(), **runtime_config.CONFIG.get()}


def from_stack() -> ClusterConfig:
    """Read the current stack's config (kthw: and gcp: namespaces) and validate it."""
    kthw: dict[str, Any] = {}
    for key in stack_values():
        namespace, _, name = key.partition(":")
        if namespace == NAMESPACE:
            kthw[name] = pulumi.runtime.get_config(key)
    gcp = pulumi.Config("gcp")
    return load(kthw, {f"gcp:{key}": gcp.get(key) for key in GCP_KEYS})


class _Problems:
    """Collects what is wrong with the config, so the user sees every problem at once."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def check(self, parse: Callable[[], T]) -> T | None:
        """parse()'s value, or None after noting the ConfigError it raised."""
        try:
            return parse()
        except ConfigError as error:
            self.found.append(str(error))
            return None


def load(cfg: Mapping[str, Any], gcp: Mapping[str, Any]) -> ClusterConfig:
    """Build and validate a ClusterConfig from plain mappings (the kthw: and gcp: namespaces).

    Values may arrive as strings (as `pulumi config set` stores them) or as typed values
    (as Pulumi.yaml defaults and structured stack files give them); "" means unset.
    Raises ConfigErrors naming every problem; a check that needs a value already refused is skipped.
    """
    problems = _Problems()
    problems.found.extend(_unknown_keys(cfg))

    region = problems.check(lambda: _gce_name(gcp, "gcp:region", required=True))
    zone = problems.check(lambda: _gce_name(gcp, "gcp:zone", required=True))
    if region is not None and zone is not None and not zone.startswith(region + "-"):
        problems.found.append(str(ConfigError("gcp:zone", zone, f"a zone of region {region!r}, like {region}-a")))

    nets = {key: problems.check(functools.partial(_network, cfg, key, DEFAULT_CIDRS[key])) for key in DEFAULT_CIDRS}
    node_net, cluster_net, service_net = nets["nodeCidr"], nets["clusterCidr"], nets["serviceCidr"]
    problems.found.extend(_overlaps({k: v for k, v in nets.items() if v is not None}))

    if cluster_net is not None and cluster_net.prefixlen > POD_CIDR_PREFIX:
        cluster_net = None  # no worker count fits it
        problems.found.append(
            str(
                ConfigError(
                    "clusterCidr",
                    cfg.get("clusterCidr"),
                    f"a prefix of /{POD_CIDR_PREFIX} or shorter: each worker takes a /{POD_CIDR_PREFIX}",
                )
            )
        )
    if service_net is not None and service_net.num_addresses <= CLUSTER_DNS_HOST_OFFSET + 1:
        problems.found.append(
            str(
                ConfigError(
                    "serviceCidr",
                    str(service_net),
                    f"a range that holds the cluster DNS address (host .{CLUSTER_DNS_HOST_OFFSET}): /28 or larger",
                )
            )
        )

    controller_count = problems.check(
        lambda: _count(
            cfg,
            "controllerCount",
            3,
            MAX_CONTROLLERS,
            f"controllers sit at hosts .{CONTROLLER_HOST_OFFSET}-.{WORKER_HOST_OFFSET - 1} of nodeCidr",
        )
    )
    max_workers: int | None = None
    if node_net is not None and node_net.num_addresses - GCE_RESERVED_TAIL - WORKER_HOST_OFFSET < 1:
        problems.found.append(
            str(
                ConfigError(
                    "nodeCidr",
                    str(node_net),
                    f"a range with room for workers from host .{WORKER_HOST_OFFSET} and GCE's "
                    f"{GCE_RESERVED_TAIL} reserved last addresses: /{MIN_NODE_CIDR_PREFIX} or larger",
                )
            )
        )
    elif node_net is not None and cluster_net is not None:
        max_workers = min(
            node_net.num_addresses - GCE_RESERVED_TAIL - WORKER_HOST_OFFSET,
            2 ** (POD_CIDR_PREFIX - cluster_net.prefixlen),
        )
    worker_count = problems.check(
        lambda: _count(
            cfg,
            "workerCount",
            3,
            max_workers,
            f"nodeCidr {node_net} and clusterCidr {cluster_net} hold at most {max_workers} workers",
        )
    )

    machine_type = problems.check(lambda: _gce_name(cfg, "machineType", default="e2-standard-2"))
    role_machine_types: dict[str, str | None] = {}
    for key in ("controllerMachineType", "workerMachineType"):
        if cfg.get(key) or machine_type is not None:  # an unset one follows machineType, if that is valid
            role_machine_types[key] = problems.check(functools.partial(_gce_name, cfg, key, default=machine_type))

    image = str(cfg.get("image") or "ubuntu-os-cloud/ubuntu-2404-lts-amd64")
    if not _IMAGE.match(image):
        problems.found.append(
            str(
                ConfigError(
                    "image",
                    image,
                    "an image family or name, optionally as PROJECT/FAMILY "
                    "(e.g. ubuntu-os-cloud/ubuntu-2404-lts-amd64)",
                )
            )
        )

    ssh_user = str(cfg.get("sshUser") or "kthw")
    if not _SSH_USER.match(ssh_user) or ssh_user == "root":
        problems.found.append(
            str(
                ConfigError(
                    "sshUser",
                    ssh_user,
                    "a Linux user name other than root: lowercase letters, digits, '_' and '-', at most 32",
                )
            )
        )

    mirror = cfg.get("binaryMirror") or None
    if mirror is not None and not re.match(r"^https?://[^\s/]+(/\S*)?$", str(mirror)):
        problems.found.append(
            str(
                ConfigError(
                    "binaryMirror", mirror, "an http(s) URL with no spaces, e.g. https://mirror.example.com/kthw"
                )
            )
        )

    validity = problems.check(lambda: _int(cfg, "certValidityHours", 8760))
    if validity is not None and not 24 <= validity <= 10 * 8760:
        problems.found.append(str(ConfigError("certValidityHours", validity, "between 24 hours and ten years (87600)")))
    rotation = problems.check(lambda: _int(cfg, "certRotation", 0))
    if rotation is not None and rotation < 0:
        problems.found.append(
            str(
                ConfigError(
                    "certRotation",
                    rotation,
                    "a whole number >= 0; raise it by one to re-issue every leaf certificate",
                )
            )
        )

    bucket = str(cfg.get("etcdBackupBucket") or "") or None
    if bucket is not None and (not _BUCKET.match(bucket) or bucket.startswith("goog") or "google" in bucket):
        problems.found.append(
            str(
                ConfigError(
                    "etcdBackupBucket",
                    bucket,
                    "a new GCS bucket name: 3-63 lowercase letters, digits, '-' and '_', no 'goog' prefix"
                    " (empty: no bucket)",
                )
            )
        )

    project = problems.check(lambda: _project(gcp.get("gcp:project")))
    admin_ranges = _admin_ranges(cfg, problems)
    component_versions = {
        field_name: problems.check(functools.partial(_version, cfg, key, default))
        for field_name, key, default in (
            ("kubernetes", "kubernetesVersion", versions.KUBERNETES),
            ("etcd", "etcdVersion", versions.ETCD),
            ("containerd", "containerdVersion", versions.CONTAINERD),
            ("runc", "runcVersion", versions.RUNC),
            ("cni", "cniVersion", versions.CNI),
            ("crictl", "crictlVersion", versions.CRICTL),
            ("metrics_server", "metricsServerVersion", versions.METRICS_SERVER),
        )
    }
    audit_level = problems.check(functools.partial(_choice, cfg, "auditLevel", "Metadata", (AUDIT_OFF, *AUDIT_LEVELS)))
    metrics_server = problems.check(functools.partial(_bool, cfg, "metricsServer", True))
    names = problems.check(lambda: _cluster_name(cfg, controller_count, worker_count, cluster_net))
    binary_digests = _binary_digests(cfg, problems)
    registry_mirrors = _registry_mirrors(cfg, problems)
    image_digests = _image_digests(cfg, problems, component_versions["metrics_server"] if metrics_server else None)

    if problems.found:
        raise ConfigErrors(problems.found)
    assert region is not None and zone is not None and names is not None
    assert node_net is not None and cluster_net is not None and service_net is not None
    assert controller_count is not None and worker_count is not None and machine_type is not None
    assert validity is not None and rotation is not None and admin_ranges is not None
    assert audit_level is not None and metrics_server is not None
    assert binary_digests is not None and registry_mirrors is not None and image_digests is not None

    controllers = tuple(
        NodeSpec(
            names.node("controller", i),
            "controller",
            i,
            str(node_net[CONTROLLER_HOST_OFFSET + i]),
            role_machine_types["controllerMachineType"] or machine_type,
        )
        for i in range(controller_count)
    )
    pod_cidrs = cluster_net.subnets(new_prefix=POD_CIDR_PREFIX)
    workers = tuple(
        NodeSpec(
            names.node("worker", i),
            "worker",
            i,
            str(node_net[WORKER_HOST_OFFSET + i]),
            role_machine_types["workerMachineType"] or machine_type,
            str(next(pod_cidrs)),
        )
        for i in range(worker_count)
    )
    return ClusterConfig(
        project=str(project) if project else None,
        region=region,
        zone=zone,
        node_cidr=str(node_net),
        cluster_cidr=str(cluster_net),
        service_cidr=str(service_net),
        image=image,
        admin_source_ranges=admin_ranges,
        versions=Versions(**{k: v for k, v in component_versions.items() if v is not None}),
        controllers=controllers,
        workers=workers,
        ssh_user=ssh_user,
        binary_mirror=str(mirror).rstrip("/") if mirror else None,
        cert_validity_hours=validity,
        cert_rotation=rotation,
        etcd_backup_bucket=bucket,
        names=names,
        audit_level=audit_level,
        metrics_server=metrics_server,
        binary_digests=binary_digests,
        registry_mirrors=registry_mirrors,
        image_digests=image_digests,
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


def _bool(cfg: Mapping[str, Any], key: str, default: bool) -> bool:
    raw = cfg.get(key, default)
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text not in ("true", "false"):
        raise ConfigError(key, raw, "true or false")
    return text == "true"


def _object(cfg: Mapping[str, Any], key: str, example: str) -> dict[str, Any]:
    """A string-keyed object: a mapping, or its JSON as the language host hands it over; unset is {}."""
    raw = cfg.get(key)
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise ConfigError(key, raw, f"an object, e.g. {example}") from None
    if not isinstance(raw, dict):
        raise ConfigError(key, raw, f"an object, e.g. {example}")
    return {str(k): v for k, v in raw.items()}


def _binary_digests(cfg: Mapping[str, Any], problems: _Problems) -> tuple[tuple[str, str], ...] | None:
    """kthw:binaryDigests: artifact name -> the SHA-256 its download must have, replacing the pinned one."""
    digests = problems.check(lambda: _object(cfg, "binaryDigests", '{"kubelet": "<sha256sum of the file>"}'))
    if digests is None:
        return None
    checked = [problems.check(functools.partial(_binary_digest, name, digest)) for name, digest in digests.items()]
    return tuple(sorted(c for c in checked if c is not None)) if None not in checked else None


def _binary_digest(name: str, digest: object) -> tuple[str, str]:
    # Imported here: artifacts builds on ClusterConfig, so it cannot be imported at the top.
    from components.artifacts import NAMES

    if name not in NAMES:
        close = difflib.get_close_matches(name, NAMES, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"one of {', '.join(NAMES)}"
        raise ConfigError("binaryDigests", {name: digest}, f"{name!r} is not an artifact the program downloads: {hint}")
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise ConfigError(
            "binaryDigests",
            {name: digest},
            f"the SHA-256 of {name}'s download: 64 lowercase hex digits, as `sha256sum FILE` prints them",
        )
    return name, digest


def _image_digests(
    cfg: Mapping[str, Any], problems: _Problems, metrics_server_version: str | None
) -> tuple[tuple[str, str], ...] | None:
    """kthw:imageDigests: image -> the digest its pull must have, replacing the pinned one.

    The metrics-server version deployed (None: not deployed, or its version already refused) needs a
    digest from one or the other.
    """
    found = problems.check(lambda: _object(cfg, "imageDigests", '{"metrics-server": "sha256:<digest>"}'))
    if found is None:
        return None
    checked = [problems.check(functools.partial(_image_digest, name, digest)) for name, digest in found.items()]
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


def _registry_mirrors(cfg: Mapping[str, Any], problems: _Problems) -> tuple[tuple[str, str], ...] | None:
    """kthw:registryMirrors: registry host -> the http(s) URL containerd pulls that registry's images from."""
    example = '{"registry.k8s.io": "https://mirror.example.com:5000"}'
    mirrors = problems.check(lambda: _object(cfg, "registryMirrors", example))
    if mirrors is None:
        return None
    checked = [problems.check(functools.partial(_registry_mirror, host, url)) for host, url in mirrors.items()]
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


def _choice(cfg: Mapping[str, Any], key: str, default: str, allowed: tuple[str, ...]) -> str:
    """One of `allowed`, matched case-insensitively and returned as `allowed` spells it."""
    raw = cfg.get(key) or default
    by_lower = {a.lower(): a for a in allowed}
    value = by_lower.get(str(raw).strip().lower())
    if value is None:
        raise ConfigError(key, raw, f"one of {', '.join(allowed)}")
    return value


def _count(cfg: Mapping[str, Any], key: str, default: int, maximum: int | None, why: str) -> int:
    """A count of at least 1; at most `maximum` where that is known (None: it hangs on a value refused)."""
    n = _int(cfg, key, default)
    if maximum is None and n < 1:
        raise ConfigError(key, n, "at least 1")
    if maximum is not None and not 1 <= n <= maximum:
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


def _overlaps(nets: Mapping[str, ipaddress.IPv4Network]) -> list[str]:
    """One problem per overlapping pair, under the key the user changed (else the later one), naming both."""
    found = []
    items = list(nets.items())
    for i, (key_a, net_a) in enumerate(items):
        for key_b, net_b in items[i + 1 :]:
            if not net_a.overlaps(net_b):
                continue
            changed_a, changed_b = (str(net) != DEFAULT_CIDRS[key] for key, net in ((key_a, net_a), (key_b, net_b)))
            (key, net), (other, other_net) = (
                ((key_a, net_a), (key_b, net_b)) if changed_a and not changed_b else ((key_b, net_b), (key_a, net_a))
            )
            found.append(
                str(ConfigError(key, str(net), f"a range that does not overlap {NAMESPACE}:{other} ({other_net})"))
            )
    return found


def _unknown_keys(cfg: Mapping[str, Any]) -> list[str]:
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


def _cluster_name(
    cfg: Mapping[str, Any],
    controllers: int | None,
    workers: int | None,
    cluster_net: ipaddress.IPv4Network | None,
) -> GceNames:
    """The cluster name every GCE name derives from; each derived name must still be a GCE name."""
    name = str(cfg.get("clusterName") or DEFAULT_CLUSTER_NAME)
    if not _GCE_NAME.match(name):
        raise ConfigError(
            "clusterName", name, "a GCE name: lowercase letters, digits and '-', starting with a letter, at most 63"
        )
    if name == KTHW_SHORT_NAME:
        raise ConfigError(
            "clusterName",
            name,
            f"a name other than {KTHW_SHORT_NAME!r}: the default cluster's subnet and health check have it",
        )
    names = GceNames(name)
    if controllers is None or workers is None or cluster_net is None:
        return names  # the length check needs the shape; its own problem is reported already
    pod_cidrs = [str(net) for net in itertools.islice(cluster_net.subnets(new_prefix=POD_CIDR_PREFIX), workers)]
    longest = max(names.every_name(controllers, pod_cidrs), key=len)
    if len(longest) > GCE_NAME_MAX:
        limit = GCE_NAME_MAX - (len(longest) - len(name))
        raise ConfigError(
            "clusterName",
            name,
            f"at most {limit} characters for this cluster: the longest GCE name made from it, "
            f"{longest!r}, must fit in {GCE_NAME_MAX}",
        )
    return names


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


def _admin_ranges(cfg: Mapping[str, Any], problems: _Problems) -> tuple[str, ...] | None:
    raw = cfg.get("adminSourceRanges") or ["0.0.0.0/0"]
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            problems.found.append(
                str(ConfigError("adminSourceRanges", raw, 'a list of CIDRs, e.g. ["203.0.113.0/24"]'))
            )
            return None
    if not isinstance(raw, list) or not raw:
        problems.found.append(
            str(ConfigError("adminSourceRanges", raw, 'a non-empty list of CIDRs, e.g. ["203.0.113.0/24"]'))
        )
        return None
    ranges = [problems.check(functools.partial(_admin_range, item)) for item in raw]
    return tuple(r for r in ranges if r is not None) if None not in ranges else None


def _admin_range(item: object) -> str:
    try:
        net = ipaddress.ip_network(str(item), strict=True)
    except ValueError:
        raise ConfigError("adminSourceRanges", item, "an IPv4 CIDR with no host bits set") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise ConfigError(
            "adminSourceRanges",
            item,
            "an IPv4 CIDR: the subnet is IPv4-only, and one GCE firewall rule cannot mix address families",
        )
    return str(net)
