"""Hosts a test boots itself, as a `kthw:platform machines` user already has them: a LAN, SSH, no cloud.

They are the local cloud's nodes (controllers as nspawn machines, workers as qemu VMs, from the
image), booted here rather than by the gcp plugin, and recorded in the run directory's nodes.json
as cloud.py records its instances: `LocalStack` reads, reaches and stops them alike. They have no
external address: the SSH address is the internal IP, as on a LAN (KTHW's machines.txt).

With machines there is no Firewall or Route in the state for the network plane to turn into
nftables. `lan()` gives the plane what a LAN is: every node admits what comes from the node
network (the other nodes, and the admin on the namespace's bridge address) and from the pod
network (pods on other nodes, which the program's own pod routes send through each worker), and
forwards (the pod routes make every worker a router for its pods); anything else reaching a node
(the namespace's "internet" addresses) meets the plane's implied deny.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.localcloud import cloud, plane
from tests.localcloud.image import Image
from tests.localcloud.net import BRIDGE, Namespace
from tests.localcloud.nspawn import Machine
from tests.localcloud.ssh import Client, KeyPair
from tests.localcloud.vm import VM, Accel, Instance

LAN_RULE = "firewall/machines-lan"


@dataclass(frozen=True)
class Host:
    """One machine to boot: its name (hostname), role and address on the LAN."""

    name: str
    role: str
    address: str

    def listed(self, user: str) -> dict[str, Any]:
        """Its kthw:machines entry, every field given."""
        return {
            "name": self.name,
            "role": self.role,
            "address": self.address,
            "internalIp": self.address,
            "user": user,
            "port": 22,
        }


def _nodes_file(run_dir: Path) -> Path:
    return run_dir / "nodes.json"


def nodes(run_dir: Path) -> dict[str, dict[str, Any]]:
    path = _nodes_file(run_dir)
    found: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.exists() else {}
    return found


def _bridge_ports(namespace: Namespace) -> set[str]:
    out = namespace.exec_ip("-o", "link", "show", "master", BRIDGE)
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.strip()}


def boot(namespace: Namespace, image: Image, accel: Accel, run_dir: Path, host: Host, ssh_keys: str) -> None:
    """Start `host` on the bridge (a controller as an nspawn machine, a worker as a VM); returns once it runs.

    `ssh_keys` is GCE's metadata format, `user:ssh-ed25519 AAAA...`: the image's guest step makes the
    user, with passwordless sudo, at first boot.
    """
    instance = Instance(name=host.name, internal_ip=host.address, external_ip="", ssh_keys=ssh_keys)
    workdir = run_dir / "nodes" / host.name
    workdir.mkdir(parents=True, exist_ok=True)
    before = _bridge_ports(namespace)
    node: Machine | VM
    if host.role == "controller":
        node, kind = Machine(instance, image, namespace, workdir).start(), "machine"
    else:
        node, kind = VM(instance, image, accel, namespace, workdir).start(), "vm"
    assert node.process is not None
    port, deadline = "", time.monotonic() + 30
    while not port and time.monotonic() < deadline:
        new = _bridge_ports(namespace) - before
        port = sorted(new)[0] if new else ""
        if not port:
            time.sleep(0.2)
    if not port:
        node.stop()
        raise RuntimeError(f"{host.name}: no bridge port appeared; console: {node.console}")
    found = nodes(run_dir)
    # cloud.py's record: what LocalStack reads (external_ip: the address the admin reaches it at)
    # and what cloud.stop_node needs to stop it.
    found[host.name] = {
        "kind": kind,
        "pid": node.process.pid,
        "port": port,
        "tags": [host.role],
        "internal_ip": host.address,
        "external_ip": host.address,
        "loops": [],
        "workdir": str(workdir),
        "started_ns": time.time_ns(),
    }
    _nodes_file(run_dir).write_text(json.dumps(found, indent=1, sort_keys=True))


def wait_for_ssh(
    namespace: Namespace, key: KeyPair, user: str, hosts: list[Host], since: float, seconds: float
) -> dict[str, float]:
    """Seconds from `since` (monotonic) until each host's sshd accepted `user` with `key`, all within `seconds`."""
    deadline = since + seconds
    return {
        h.name: round(Client(namespace, key, user, h.address).wait(deadline) - since, 1)
        for h in sorted(hosts, key=lambda h: h.role)
    }


def lan_resources(node_cidr: str, cluster_cidr: str) -> dict[str, Any]:
    """The one rule a flat LAN amounts to, as the gcp backend's record of a Firewall."""
    rule = {"sourceRanges": [node_cidr, cluster_cidr], "allows": [{"protocol": "all"}]}
    return {LAN_RULE: {"inputs": rule}}


def lan(namespace: Namespace, run_dir: Path, node_cidr: str, cluster_cidr: str) -> None:
    """Make the namespace the LAN of the hosts in nodes.json (again after a host is added or stopped)."""
    ports = [
        # No external address, and no instance record: the plane lets a bare port forward.
        plane.Port(
            instance=name, bridge_port=n["port"], tags=tuple(n["tags"]), internal_ip=n["internal_ip"], external_ip=""
        )
        for name, n in sorted(nodes(run_dir).items())
    ]
    plane.apply(namespace.name, lan_resources(node_cidr, cluster_cidr), ports, run_dir / "plane")


def stop_all(namespace: Namespace, run_dir: Path) -> list[str]:
    """Stop every host and take the LAN's rules down; the names stopped."""
    stopped = cloud.stop_all(namespace, run_dir)
    plane.stop(namespace.name, run_dir / "plane")
    return stopped
