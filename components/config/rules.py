"""The rule of each key that stands on its own: placement (gcp:), machines, access, certificates, backups.

Each rule returns the value or raises ConfigError; a key whose items can each be wrong (a list) reports
every bad item into Problems. A check across keys lives with the keys it relates (addresses, names).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any

from components.config import machine_types as machine_types_module
from components.config import values
from components.config.problems import ConfigError, Problems

_IMAGE = re.compile(r"^([a-z][-a-z0-9]{0,61}[a-z0-9]/)?[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
# GCP project IDs: 6-30 of lowercase letters, digits and hyphens, starting with a letter.
_PROJECT = re.compile(r"^[a-z][-a-z0-9]{4,28}[a-z0-9]$")
# What the example stack files ship with, so a forgotten `pulumi config set gcp:project` is caught here.
PROJECT_PLACEHOLDER = "your-gcp-project"
_SSH_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# GCS bucket names without dots (dotted names need domain verification): 3-63 characters.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9_-]{1,61}[a-z0-9]$")
# Each role's own machine type key; unset, the role runs on kthw:machineType.
ROLE_MACHINE_TYPE_KEYS = {"controller": "controllerMachineType", "worker": "workerMachineType"}


def placement(gcp: Mapping[str, Any], problems: Problems) -> tuple[str | None, str | None]:
    """gcp:region and gcp:zone, the zone one of the region's."""
    region = problems.check(values.gce_name, gcp, "gcp:region")
    zone = problems.check(values.gce_name, gcp, "gcp:zone")
    if region is not None and zone is not None and not zone.startswith(region + "-"):
        problems.refuse("gcp:zone", zone, f"a zone of region {region!r}, like {region}-a")
    return region, zone


def project(gcp: Mapping[str, Any]) -> str | None:
    """The GCP project, if the stack sets one (else the provider falls back to its own settings)."""
    raw = gcp.get("gcp:project")
    if raw is None or raw == "":
        return None
    value = str(raw)
    if value == PROJECT_PLACEHOLDER:
        raise ConfigError("gcp:project", value, "your own project: pulumi config set gcp:project YOUR-PROJECT")
    if not _PROJECT.match(value):
        raise ConfigError("gcp:project", value, "a GCP project ID: 6-30 lowercase letters, digits and '-'")
    return value


def machine_types(cfg: Mapping[str, Any], problems: Problems) -> dict[str, str | None]:
    """Each role's machine type (role -> type): the role's own key, else kthw:machineType."""
    machine_type = problems.check(machine_types_module.machine_type, cfg, "machineType", default="e2-standard-2")
    by_role: dict[str, str | None] = {}
    for role, key in ROLE_MACHINE_TYPE_KEYS.items():
        by_role[role] = None
        if cfg.get(key) or machine_type is not None:  # an unset one follows machineType, if that is valid
            by_role[role] = problems.check(machine_types_module.machine_type, cfg, key, default=machine_type)
    return by_role


def image(cfg: Mapping[str, Any]) -> str:
    value = str(cfg.get("image") or "ubuntu-os-cloud/ubuntu-2404-lts-amd64")
    if not _IMAGE.match(value):
        raise ConfigError(
            "image",
            value,
            "an image family or name, optionally as PROJECT/FAMILY (e.g. ubuntu-os-cloud/ubuntu-2404-lts-amd64)",
        )
    return value


def ssh_user(cfg: Mapping[str, Any]) -> str:
    value = str(cfg.get("sshUser") or "kthw")
    if not _SSH_USER.match(value) or value == "root":
        raise ConfigError(
            "sshUser", value, "a Linux user name other than root: lowercase letters, digits, '_' and '-', at most 32"
        )
    return value


def admin_source_ranges(cfg: Mapping[str, Any], problems: Problems) -> tuple[str, ...] | None:
    """Who may reach SSH, the API and ping from outside: a non-empty list of IPv4 CIDRs."""
    raw = cfg.get("adminSourceRanges") or ["0.0.0.0/0"]
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            problems.refuse("adminSourceRanges", raw, 'a list of CIDRs, e.g. ["203.0.113.0/24"]')
            return None
    if not isinstance(raw, list) or not raw:
        problems.refuse("adminSourceRanges", raw, 'a non-empty list of CIDRs, e.g. ["203.0.113.0/24"]')
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


def cert_validity_hours(cfg: Mapping[str, Any]) -> int:
    hours = values.integer(cfg, "certValidityHours", 8760)
    if not 24 <= hours <= 10 * 8760:
        raise ConfigError("certValidityHours", hours, "between 24 hours and ten years (87600)")
    return hours


def cert_rotation(cfg: Mapping[str, Any]) -> int:
    rotation = values.integer(cfg, "certRotation", 0)
    if rotation < 0:
        raise ConfigError(
            "certRotation", rotation, "a whole number >= 0; raise it by one to re-issue every leaf certificate"
        )
    return rotation


def etcd_backup_bucket(cfg: Mapping[str, Any]) -> str | None:
    """A bucket the program creates for etcd snapshots, or None for no backups."""
    bucket = str(cfg.get("etcdBackupBucket") or "") or None
    if bucket is not None and (not _BUCKET.match(bucket) or bucket.startswith("goog") or "google" in bucket):
        raise ConfigError(
            "etcdBackupBucket",
            bucket,
            "a new GCS bucket name: 3-63 lowercase letters, digits, '-' and '_', no 'goog' prefix (empty: no bucket)",
        )
    return bucket


def etcd_backup_bucket_import(cfg: Mapping[str, Any]) -> bool:
    """Adopt the bucket kthw:etcdBackupBucket names (kept by an earlier destroy) instead of creating it."""
    adopt = values.boolean(cfg, "etcdBackupBucketImport", False)
    if adopt and not cfg.get("etcdBackupBucket"):
        raise ConfigError(
            "etcdBackupBucketImport", True, "true only with kthw:etcdBackupBucket set (the bucket to adopt)"
        )
    return adopt
