"""kthw:platform and what each platform reads: the machines you list, their SSH key, the API's address."""

from __future__ import annotations

import ipaddress
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pulumi.runtime.config import is_config_secret

from components.config import values
from components.config.addresses import MAX_CONTROLLERS, POD_CIDR_PREFIX, AddressPlan
from components.config.model import NodeSpec, SshTarget
from components.config.problems import ConfigError, Problems
from components.config.stack import NAMESPACE

GCP, MACHINES, LOCAL = "gcp", "machines", "local"
PLATFORMS = (GCP, MACHINES, LOCAL)
ROLES = ("controller", "worker")
# Node names become certificate names, etcd member names and Kubernetes node names: DNS labels.
_NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_HOST = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9.]{0,251}[A-Za-z0-9])?$")
MACHINE_FIELDS = ("name", "role", "address", "internalIp", "user", "port")
MACHINES_EXAMPLE = '[{"name": "controller-0", "role": "controller", "address": "192.168.1.10"}, ...]'
SSH_KEY = "sshPrivateKey"


@dataclass(frozen=True)
class MachineList:
    """kthw:machines, read: the nodes in config order by role, and how to reach each."""

    controllers: tuple[NodeSpec, ...]
    workers: tuple[NodeSpec, ...]
    ssh_targets: Mapping[str, SshTarget]


def platform(cfg: Mapping[str, Any]) -> str:
    return values.choice(cfg, "platform", GCP, PLATFORMS)


def api_address(cfg: Mapping[str, Any]) -> str | None:
    """A load balancer you run in front of the controllers (an IP or a DNS name), or None."""
    value = str(cfg.get("apiAddress") or "") or None
    if value is not None and not _HOST.match(value):
        raise ConfigError(
            "apiAddress", value, "an IPv4 address or a DNS name that reaches tcp:6443 of every controller"
        )
    return value


def ssh_private_key(cfg: Mapping[str, Any]) -> None:
    """The machines' SSH key is given, and only as a secret (it is never written to a stack file in clear)."""
    key = f"{NAMESPACE}:{SSH_KEY}"
    if not cfg.get(SSH_KEY):
        raise ConfigError(
            SSH_KEY, "", f"a private key the machines accept: pulumi config set --secret {key} < ~/.ssh/id_ed25519"
        )
    if not is_config_secret(key):
        raise ConfigError(SSH_KEY, "(not shown)", f"a secret: pulumi config set --secret {key} < KEYFILE")


def machine_list(cfg: Mapping[str, Any], problems: Problems, plan: AddressPlan, ssh_user: str | None) -> MachineList:
    """Every machine checked on its own, then together: names, addresses and role counts."""
    raw = cfg.get("machines")
    if isinstance(raw, str) and raw.strip():
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raw = None
    if not isinstance(raw, list) or not raw:
        problems.refuse("machines", raw, f"a list of machines with kthw:platform {MACHINES}, e.g. {MACHINES_EXAMPLE}")
        return MachineList((), (), {})
    entries = [problems.check(_machine, item, index, plan.node_net, ssh_user) for index, item in enumerate(raw)]
    valid = [e for e in entries if e is not None]
    problems.found.extend(_clashes(valid))
    by_role = {role: [e for e in valid if e[0] == role] for role in ROLES}
    if len(valid) == len(entries):  # counted only when every entry was read: one problem per cause
        _check_counts(problems, plan, len(by_role["controller"]), len(by_role["worker"]))
    pod_cidrs = _pod_cidrs(plan, len(by_role["worker"]))
    controllers = tuple(
        NodeSpec(name, "controller", i, internal, "") for i, (_, name, internal, _) in enumerate(by_role["controller"])
    )
    workers = tuple(
        NodeSpec(name, "worker", i, internal, "", cidr)
        for i, ((_, name, internal, _), cidr) in enumerate(zip(by_role["worker"], pod_cidrs, strict=False))
    )
    return MachineList(controllers, workers, {name: target for _, name, _, target in valid})


def _machine(
    item: object, index: int, node_net: ipaddress.IPv4Network | None, ssh_user: str | None
) -> tuple[str, str, str, SshTarget]:
    """(role, name, internal IP, SSH target) of the index-th entry of kthw:machines."""
    where = f"machines[{index}]"
    if not isinstance(item, dict):
        raise ConfigError(where, item, f"an object with {', '.join(MACHINE_FIELDS)}")
    unknown = sorted(set(item) - set(MACHINE_FIELDS))
    if unknown:
        raise ConfigError(where, item, f"only the fields {', '.join(MACHINE_FIELDS)} (not {', '.join(unknown)})")
    name = str(item.get("name") or "")
    if not _NODE_NAME.match(name):
        raise ConfigError(f"{where}.name", name, "a node name: lowercase letters, digits and '-', at most 63")
    role = str(item.get("role") or "")
    if role not in ROLES:
        raise ConfigError(f"{where}.role", role, "controller or worker")
    address = str(item.get("address") or "")
    if not _HOST.match(address):
        raise ConfigError(
            f"{where}.address", address, "the IPv4 address or DNS name the program reaches it at over SSH"
        )
    internal = str(item.get("internalIp") or address)
    try:
        internal_ip = ipaddress.IPv4Address(internal)
    except ValueError:
        raise ConfigError(
            f"{where}.internalIp", internal, "the IPv4 address the nodes reach it at (needed when address is a name)"
        ) from None
    if node_net is not None and (
        internal_ip not in node_net or internal_ip in (node_net.network_address, node_net.broadcast_address)
    ):
        raise ConfigError(f"{where}.internalIp", internal, f"a host address of kthw:nodeCidr ({node_net})")
    user = str(item.get("user") or ssh_user or "kthw")
    port = values.integer({"port": item.get("port")}, "port", 22)
    if not 0 < port < 65536:
        raise ConfigError(f"{where}.port", port, "a TCP port, 1-65535")
    return role, name, str(internal_ip), SshTarget(address, port, user)


def _clashes(entries: Sequence[tuple[str, str, str, SshTarget]]) -> list[str]:
    """A machine listed twice (by name, or by SSH address and port), or two machines with one internal IP.

    One line per pair of entries, for the first thing they share: a machine pasted twice shares all
    three, and is one mistake.
    """
    found = []
    told: set[tuple[int, int]] = set()
    for what, key in (
        ("name", lambda e: e[1]),
        ("SSH address", lambda e: f"{e[3].host}:{e[3].port}"),
        ("internal IP", lambda e: e[2]),
    ):
        seen: dict[str, int] = {}
        for index, entry in enumerate(entries):
            value = key(entry)
            first = seen.setdefault(value, index)
            if first != index and (first, index) not in told:
                told.add((first, index))
                shared = f"one machine per {what}: {entries[first][1]} and {entry[1]} share it"
                found.append(str(ConfigError("machines", value, shared)))
    return found


def _check_counts(problems: Problems, plan: AddressPlan, controllers: int, workers: int) -> None:
    """The role counts etcd's rules and the pod network allow."""
    if not 1 <= controllers <= MAX_CONTROLLERS:
        problems.refuse(
            "machines", f"{controllers} controllers", f"1 to {MAX_CONTROLLERS} controllers (etcd runs on each)"
        )
    room = 2 ** (POD_CIDR_PREFIX - plan.cluster_net.prefixlen) if plan.cluster_net is not None else None
    if workers < 1 or (room is not None and workers > room):
        limit = f" (clusterCidr {plan.cluster_net} holds {room})" if room is not None else ""
        problems.refuse("machines", f"{workers} workers", f"at least one worker, at most one per /24{limit}")


def _pod_cidrs(plan: AddressPlan, workers: int) -> list[str]:
    if plan.cluster_net is None:
        return []
    subnets = plan.cluster_net.subnets(new_prefix=POD_CIDR_PREFIX)
    return [str(net) for net in itertools.islice(subnets, workers)]


def machine_layout(machines: MachineList) -> dict[str, Any]:
    """The ClusterConfig fields kthw:machines fills in."""
    return {"controllers": machines.controllers, "workers": machines.workers, "ssh_targets": machines.ssh_targets}


# Keys that mean something on one platform only, and which: set on another, they are a mistake.
PLATFORM_KEYS = {"apiAddress": (MACHINES,), "machines": (MACHINES,), SSH_KEY: (MACHINES,), "etcdBackupBucket": (GCP,)}


def misplaced_keys(cfg: Mapping[str, Any], platform: str | None) -> list[str]:
    """A problem per key set for another platform than the stack's."""
    if platform is None:
        return []
    found = []
    for key, used_on in PLATFORM_KEYS.items():
        if cfg.get(key) not in (None, "", [], "[]") and platform not in used_on:
            shown = "(not shown)" if key == SSH_KEY else cfg.get(key)
            found.append(
                str(ConfigError(key, shown, f"unset: it is used with kthw:platform {' or '.join(used_on)} only"))
            )
    return found
