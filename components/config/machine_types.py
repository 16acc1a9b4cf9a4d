"""GCE machine types the program runs on: the family's disks and CPU, and the boot disk type it states."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from components.config import values
from components.config.problems import ConfigError

# GCE machine families the program runs on, each with the boot disk type it states explicitly: the
# type GCE itself picks for that family when none is given (pd-standard on the first and second
# generations, pd-balanced on C3 and C3D), so stacks made before it was explicit see no change.
# Every one of them also takes pd-balanced, the type of each controller's etcd disk.
BOOT_DISK_TYPES = {
    **dict.fromkeys(("e2", "n1", "n2", "n2d", "t2d", "c2", "c2d"), "pd-standard"),
    **dict.fromkeys(("c3", "c3d"), "pd-balanced"),
}
# Families GCE offers that the program refuses for a known reason: their disks are Hyperdisk only
# (no pd-* type at all), or their CPUs are Arm while the program installs amd64 binaries.
REFUSED_MACHINE_FAMILIES = {
    **dict.fromkeys(
        ("n4", "n4d", "c4", "c4d"),
        "takes Hyperdisk only, and the program's disks are Persistent Disk (pd-balanced etcd disks)",
    ),
    **dict.fromkeys(("t2a", "c4a", "n4a"), "is Arm, and the program installs amd64 binaries"),
}
_MACHINE_TYPE = re.compile(r"^([a-z][a-z0-9]*)-[a-z0-9]+(-[a-z0-9]+)*$")
# A custom machine type: [FAMILY-]custom-VCPUS-MEMORY_MB[-ext]; without a family it is N1's. Of the
# families above, these have custom types.
CUSTOM_MACHINE_TYPE = re.compile(r"^(?:([a-z][a-z0-9]*)-)?custom-[0-9]+-[0-9]+(-ext)?$")
CUSTOM_MACHINE_FAMILIES = ("e2", "n1", "n2", "n2d")


def machine_type(cfg: Mapping[str, Any], key: str, default: str | None = None) -> str:
    """A machine type of a family the program's disks and binaries work on; GCE's zone lookup comes later."""
    value = values.gce_name(cfg, key, default)
    family = machine_family(value)
    if family in REFUSED_MACHINE_FAMILIES:
        raise ConfigError(key, value, f"the {family.upper()} family {REFUSED_MACHINE_FAMILIES[family]}")
    if family not in BOOT_DISK_TYPES:
        known = ", ".join(BOOT_DISK_TYPES)
        raise ConfigError(key, value, f"a machine type of a family the program runs on ({known}), e.g. e2-standard-2")
    if CUSTOM_MACHINE_TYPE.match(value) and family not in CUSTOM_MACHINE_FAMILIES:
        families = ", ".join(CUSTOM_MACHINE_FAMILIES)
        raise ConfigError(key, value, f"a custom machine type of a family that has them ({families})")
    return value


def machine_family(machine_type: str) -> str:
    """e2-standard-2 -> e2, n2-custom-4-8192 -> n2, custom-2-4096 -> n1; "" for what is no machine type."""
    custom = CUSTOM_MACHINE_TYPE.match(machine_type)
    if custom:
        return custom.group(1) or "n1"
    match = _MACHINE_TYPE.match(machine_type)
    return match.group(1) if match else ""


def boot_disk_type(machine_type: str) -> str:
    """The boot disk type a VM of this (validated) machine type gets: GCE's own default for its family."""
    return BOOT_DISK_TYPES[machine_family(machine_type)]
