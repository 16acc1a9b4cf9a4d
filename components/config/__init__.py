"""ClusterConfig: the stack's configuration, read once, validated, and every derived value."""

from __future__ import annotations

import difflib
import functools
import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any

from components import versions
from components.config import stack, values
from components.config.addresses import CLUSTER_DNS_HOST_OFFSET as CLUSTER_DNS_HOST_OFFSET
from components.config.addresses import CONTROLLER_HOST_OFFSET as CONTROLLER_HOST_OFFSET
from components.config.addresses import DEFAULT_CIDRS as DEFAULT_CIDRS
from components.config.addresses import GCE_RESERVED_TAIL as GCE_RESERVED_TAIL
from components.config.addresses import MAX_CONTROLLERS as MAX_CONTROLLERS
from components.config.addresses import MIN_NODE_CIDR_PREFIX as MIN_NODE_CIDR_PREFIX
from components.config.addresses import POD_CIDR_PREFIX as POD_CIDR_PREFIX
from components.config.addresses import WORKER_HOST_OFFSET as WORKER_HOST_OFFSET
from components.config.addresses import read_plan
from components.config.model import AUDIT_LEVELS as AUDIT_LEVELS
from components.config.model import AUDIT_OFF as AUDIT_OFF
from components.config.model import ClusterConfig as ClusterConfig
from components.config.model import NodeSpec as NodeSpec
from components.config.model import Versions as Versions
from components.config.names import DEFAULT_CLUSTER_NAME as DEFAULT_CLUSTER_NAME
from components.config.names import GCE_NAME_MAX as GCE_NAME_MAX
from components.config.names import KTHW_SHORT_NAME as KTHW_SHORT_NAME
from components.config.names import GceNames as GceNames
from components.config.names import cluster_name
from components.config.problems import ConfigError, ConfigErrors, Problems
from components.config.stack import GCP_KEYS as GCP_KEYS
from components.config.stack import NAMESPACE as NAMESPACE
from components.config.stack import PROJECT_FILE as PROJECT_FILE
from components.config.stack import declared_keys as declared_keys
from components.config.stack import stack_values as stack_values
from components.config.stack import unknown_keys

_IMAGE = re.compile(r"^([a-z][-a-z0-9]{0,61}[a-z0-9]/)?[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
# GCP project IDs: 6-30 of lowercase letters, digits and hyphens, starting with a letter.
_PROJECT = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")
# What the example stack files ship with, so a forgotten `pulumi config set gcp:project` is caught here.
PROJECT_PLACEHOLDER = "your-gcp-project"
_SSH_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
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


def from_stack() -> ClusterConfig:
    """Read the current stack's config (kthw: and gcp: namespaces) and validate it."""
    return load(*stack.read())


def load(cfg: Mapping[str, Any], gcp: Mapping[str, Any]) -> ClusterConfig:
    """Build and validate a ClusterConfig from plain mappings (the kthw: and gcp: namespaces).

    Values may arrive as strings (as `pulumi config set` stores them) or as typed values
    (as Pulumi.yaml defaults and structured stack files give them); "" means unset.
    Raises ConfigErrors naming every problem; a check that needs a value already refused is skipped.
    """
    problems = Problems()
    problems.found.extend(unknown_keys(cfg))

    region = problems.check(lambda: values.gce_name(gcp, "gcp:region"))
    zone = problems.check(lambda: values.gce_name(gcp, "gcp:zone"))
    if region is not None and zone is not None and not zone.startswith(region + "-"):
        problems.found.append(str(ConfigError("gcp:zone", zone, f"a zone of region {region!r}, like {region}-a")))

    plan = read_plan(cfg, problems)
    node_net, cluster_net, service_net = plan.node_net, plan.cluster_net, plan.service_net
    controller_count, worker_count = plan.controllers, plan.workers

    machine_type = problems.check(lambda: values.gce_name(cfg, "machineType", default="e2-standard-2"))
    role_machine_types: dict[str, str | None] = {}
    for key in ("controllerMachineType", "workerMachineType"):
        if cfg.get(key) or machine_type is not None:  # an unset one follows machineType, if that is valid
            role_machine_types[key] = problems.check(values.gce_name, cfg, key, default=machine_type)

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

    validity = problems.check(lambda: values.integer(cfg, "certValidityHours", 8760))
    if validity is not None and not 24 <= validity <= 10 * 8760:
        problems.found.append(str(ConfigError("certValidityHours", validity, "between 24 hours and ten years (87600)")))
    rotation = problems.check(lambda: values.integer(cfg, "certRotation", 0))
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
        field_name: problems.check(values.version, cfg, key, default)
        for field_name, key, default in (
            ("kubernetes", "kubernetesVersion", versions.KUBERNETES),
            ("etcd", "etcdVersion", versions.ETCD),
            ("containerd", "containerdVersion", versions.CONTAINERD),
            ("runc", "runcVersion", versions.RUNC),
            ("cni", "cniVersion", versions.CNI),
            ("crictl", "crictlVersion", versions.CRICTL),
        )
    }
    audit_level = problems.check(
        functools.partial(values.choice, cfg, "auditLevel", "Metadata", (AUDIT_OFF, *AUDIT_LEVELS))
    )
    metrics_server = problems.check(values.boolean, cfg, "metricsServer", True)
    names = problems.check(cluster_name, cfg, controller_count, plan.pod_cidrs())
    binary_digests = _binary_digests(cfg, problems)
    registry_mirrors = _registry_mirrors(cfg, problems)

    if problems.found:
        raise ConfigErrors(problems.found)
    assert region is not None and zone is not None and names is not None
    assert node_net is not None and cluster_net is not None and service_net is not None
    assert controller_count is not None and worker_count is not None and machine_type is not None
    assert validity is not None and rotation is not None and admin_ranges is not None
    assert audit_level is not None and metrics_server is not None
    assert binary_digests is not None and registry_mirrors is not None

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


def _binary_digests(cfg: Mapping[str, Any], problems: Problems) -> tuple[tuple[str, str], ...] | None:
    """kthw:binaryDigests: artifact name -> the SHA-256 its download must have, replacing the pinned one."""
    digests = problems.check(lambda: values.json_object(cfg, "binaryDigests", '{"kubelet": "<sha256sum of the file>"}'))
    if digests is None:
        return None
    checked = [problems.check(_binary_digest, name, digest) for name, digest in digests.items()]
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


def _registry_mirrors(cfg: Mapping[str, Any], problems: Problems) -> tuple[tuple[str, str], ...] | None:
    """kthw:registryMirrors: registry host -> the http(s) URL containerd pulls that registry's images from."""
    example = '{"registry.k8s.io": "https://mirror.example.com:5000"}'
    mirrors = problems.check(lambda: values.json_object(cfg, "registryMirrors", example))
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


def _admin_ranges(cfg: Mapping[str, Any], problems: Problems) -> tuple[str, ...] | None:
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
    ranges = [problems.check(_admin_range, item) for item in raw]
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
