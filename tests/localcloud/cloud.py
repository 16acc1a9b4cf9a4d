"""The local cloud behind the engine's gcp plugin: instances boot as real nodes in the test's namespace.

`LocalCloud` is a `gcp.Backend` (the JSON state the local gcp plugin keeps) that also acts: an
instance becomes a node on the namespace's bridge with the instance's internal IP and NAT IP, its
`ssh-keys` metadata installed at first boot as GCE's guest agent does (its NAT IP is the static
address the access config names, or an ephemeral one, new at every create and every start, as
tests/engine/providers/gcp.py hands them out); a persistent disk becomes a
sparse file, attached as a loop device under /dev/disk/by-id/google-DEVICE_NAME; firewall rules,
routes and the API load balancer become the namespace's nftables rules, routes and proxy
(tests/localcloud/plane.py), resynchronised after every change to them; instance names resolve
as GCE's internal DNS resolves them (tests/localcloud/dns.py).

Controllers are systemd-nspawn machines and workers qemu VMs (KTHW_LOCALCLOUD_MACHINES names the
roles that boot as machines): without KVM a VM runs 20-50x slower, controllers need no container
runtime, and the kubelet needs the cgroup v2 only a VM's own kernel gives it here.

A stop and start (a machine type or service account change) stops a VM's qemu and boots the same
disk again, on the NAT IP the start gave it. An nspawn machine keeps its writes in memory
(`--volatile=overlay`), so it cannot be stopped and started without losing its boot disk: that is
refused, as is a new NAT IP on a running node (the guest holds its external address, set at boot).

The gcp plugin process lives for one engine operation, the nodes much longer: each node runs in a
session of its own, and what a later process needs to stop it (pid, bridge port, loop devices) is
kept in `nodes.json` beside the state.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.engine.providers import gcp
from tests.engine.providers.gcp import GceError
from tests.localcloud import dns
from tests.localcloud.image import Image
from tests.localcloud.net import BRIDGE, Namespace
from tests.localcloud.nspawn import Machine
from tests.localcloud.vm import KVM_CANDIDATES, TCG, VM, Accel, Instance, powerdown, qmp_socket

NETNS_ENV = "KTHW_LOCALCLOUD_NETNS"
RUN_ENV = "KTHW_LOCALCLOUD_RUN"
IMAGE_ENV = "KTHW_LOCALCLOUD_IMAGE"
ACCEL_ENV = "KTHW_LOCALCLOUD_ACCEL"
MACHINES_ENV = "KTHW_LOCALCLOUD_MACHINES"
# The kinds whose every change is re-applied to the namespace (plus instances: firewall targets).
PLANE_KINDS = {"firewall", "route", "httpHealthCheck", "targetPool", "forwardingRule"}
DISK_GIB = 10
# How long a stopping VM may take to shut down before it is switched off (GCE gives 90 s).
STOP_GRACE = 90


def _image(directory: Path) -> Image:
    return Image(directory / "root.img", directory / "vmlinuz", directory / "initrd.img")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]


class LocalCloud(gcp.Backend):
    """gcp.Backend whose instances, disks, rules, routes and load balancer exist in a network namespace."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.namespace = Namespace(name=os.environ[NETNS_ENV])
        self.run_dir = Path(os.environ[RUN_ENV])
        self.image = _image(Path(os.environ[IMAGE_ENV]))
        accels = {a.name: a for a in (*KVM_CANDIDATES, TCG)}
        self.accel: Accel = accels[os.environ.get(ACCEL_ENV) or TCG.name]
        self.machine_roles = set((os.environ.get(MACHINES_ENV) or "controller").split(","))
        self.nodes_file = self.run_dir / "nodes.json"

    # Node bookkeeping shared by the plugin processes of one stack.
    def nodes(self) -> dict[str, dict[str, Any]]:
        if not self.nodes_file.exists():
            return {}
        found: dict[str, dict[str, Any]] = json.loads(self.nodes_file.read_text())
        return found

    def _save_nodes(self, nodes: dict[str, dict[str, Any]]) -> None:
        tmp = self.nodes_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(nodes, indent=1, sort_keys=True))
        tmp.replace(self.nodes_file)

    # Persistent disks: sparse files, attached as loop devices.
    def disk_file(self, name: str) -> Path:
        return self.run_dir / "disks" / f"{name}.img"

    def put(self, kind: str, name: str, record: dict[str, Any]) -> None:
        super().put(kind, name, record)
        if kind == "disk" and not self.disk_file(name).exists():
            self.disk_file(name).parent.mkdir(parents=True, exist_ok=True)
            with self.disk_file(name).open("wb") as disk:
                disk.truncate(int(record["inputs"].get("size") or DISK_GIB) * 2**30)
        if kind in PLANE_KINDS:
            self.sync_plane()

    def remove(self, kind: str, name: str) -> None:
        super().remove(kind, name)
        if kind == "disk":
            self.disk_file(name).unlink(missing_ok=True)
        if kind in PLANE_KINDS:
            self.sync_plane()

    def _attach(self, disk: dict[str, Any]) -> tuple[str, str]:
        """(loop device, guest path) for one attachedDisks entry; the disk must exist."""
        name = str(disk["source"]).rsplit("/", 1)[-1]
        backing = self.disk_file(name)
        if not backing.exists():
            raise ValueError(f"The resource 'disks/{name}' was not found")
        loop = subprocess.run(
            ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()
        return loop, f"/dev/disk/by-id/google-{disk.get('deviceName') or name}"

    def _bridge_ports(self) -> set[str]:
        out = self.namespace.exec_ip("-o", "link", "show", "master", BRIDGE)
        return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.strip()}

    def create_instance(self, name: str, zone: str, inputs: dict[str, Any]) -> dict[str, Any]:
        record = super().create_instance(name, zone, inputs)
        self._boot(name, record, inputs)
        return record

    def _boot(self, name: str, record: dict[str, Any], inputs: dict[str, Any], keep_disk: bool = False) -> None:
        """Boot the instance as a node on the bridge with the record's addresses; keep_disk: a VM's start."""
        nic = record["networkInterfaces"][0]
        metadata = inputs.get("metadata") or {}
        instance = Instance(
            name=name,
            internal_ip=nic["networkIp"],
            external_ip=nic["accessConfigs"][0]["natIp"],
            ssh_keys=str(metadata.get("ssh-keys") or ""),
        )
        tags = list(inputs.get("tags") or [])
        workdir = self.run_dir / "nodes" / name
        workdir.mkdir(parents=True, exist_ok=True)
        devices = [self._attach(d) for d in inputs.get("attachedDisks") or []]
        before = self._bridge_ports()
        node: Machine | VM
        if self.machine_roles & set(tags):
            node = Machine(instance, self.image, self.namespace, workdir, devices=tuple(devices)).start()
            kind = "machine"
        else:
            if devices:
                raise ValueError(f"{name}: this local cloud attaches disks to nspawn machines only")
            node = VM(instance, self.image, self.accel, self.namespace, workdir).start(keep_disk=keep_disk)
            kind = "vm"
        assert node.process is not None
        port = ""
        deadline = time.monotonic() + 30
        while not port and time.monotonic() < deadline:
            new = self._bridge_ports() - before
            port = sorted(new)[0] if new else ""
            if not port:
                time.sleep(0.2)
        if not port:
            raise RuntimeError(f"{name}: no bridge port appeared; console: {node.console}")
        nodes = self.nodes()
        nodes[name] = {
            "kind": kind,
            "pid": node.process.pid,
            "port": port,
            "tags": tags,
            "internal_ip": instance.internal_ip,
            "external_ip": instance.external_ip,
            "loops": [loop for loop, _ in devices],
            "workdir": str(workdir),
            "started_ns": time.time_ns(),
        }
        self._save_nodes(nodes)
        self.sync_plane()

    def stop_instance(self, name: str) -> None:
        node = self.nodes().get(name)
        if node is not None and node["kind"] == "machine":
            raise GceError(
                f"{name}: an nspawn machine keeps its writes in memory, so this local cloud cannot stop and "
                "start it without losing its boot disk (boot that role as a VM: KTHW_LOCALCLOUD_MACHINES)"
            )
        super().stop_instance(name)
        if node is not None:
            stop_node(self.namespace, node, keep_disk=True)
            nodes = self.nodes()
            nodes.pop(name, None)
            self._save_nodes(nodes)
            self.sync_plane()

    def start_instance(self, name: str) -> dict[str, Any]:
        record = super().start_instance(name)
        self._boot(name, record, record["inputs"], keep_disk=True)
        return record

    def set_access_configs(self, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        if name in self.nodes():
            raise GceError(
                f"{name}: this local cloud changes a running node's external IP only when it starts "
                "(the guest holds the address it booted with)"
            )
        return super().set_access_configs(name, inputs)

    def delete_instance(self, name: str) -> None:
        super().delete_instance(name)
        nodes = self.nodes()
        node = nodes.pop(name, None)
        if node is not None:
            stop_node(self.namespace, node)
        # A VM deleted while stopped left its disk behind.
        (self.run_dir / "nodes" / name / "disk.qcow2").unlink(missing_ok=True)
        self._save_nodes(nodes)
        self.sync_plane()

    def sync_plane(self) -> None:
        """Make the namespace's rules, routes and proxy what the resources say, for the nodes that exist."""
        from tests.localcloud import plane

        ports = [
            plane.Port(
                instance=name,
                bridge_port=node["port"],
                tags=tuple(node["tags"]),
                internal_ip=node["internal_ip"],
                external_ip=node["external_ip"],
            )
            for name, node in sorted(self.nodes().items())
        ]
        plane.apply(self.namespace.name, self.resources(), ports, self.run_dir / "plane")
        names = {name: node["internal_ip"] for name, node in self.nodes().items()}
        if names:
            dns.sync(self.namespace.name, self.run_dir / "dns", names)
        else:
            dns.stop(self.run_dir / "dns")


def stop_node(namespace: Namespace, node: dict[str, Any], keep_disk: bool = False) -> None:
    """Stop one node from its record: an orderly nspawn shutdown (else kill its init), or kill qemu.

    A VM's overlay disk goes with it unless `keep_disk` (a stop that a start will follow).
    """
    pid = int(node["pid"])
    if node["kind"] == "machine":
        children = Path(f"/proc/{pid}/task/{pid}/children")
        inits = [int(p) for p in children.read_text().split()] if children.exists() else []
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        for victim in (*inits, pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
    else:
        # A stop that a start follows shuts the guest down first, as GCE's does (an ACPI power
        # button, then up to STOP_GRACE): the overlay is written with cache=unsafe, and a killed
        # qemu leaves it as a power cut would.
        if keep_disk and powerdown(Path(node["workdir"])):
            deadline = time.monotonic() + STOP_GRACE
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(RuntimeError):
            namespace.exec_ip("link", "del", node["port"])
        qmp_socket(Path(node["workdir"])).unlink(missing_ok=True)
        if not keep_disk:
            Path(node["workdir"], "disk.qcow2").unlink(missing_ok=True)
    for loop in node.get("loops") or []:
        subprocess.run(["losetup", "-d", loop], capture_output=True, timeout=30, check=False)


def stop_all(namespace: Namespace, run_dir: Path) -> list[str]:
    """Stop every node a stack left running (a test's cleanup); the names it stopped."""
    nodes_file = run_dir / "nodes.json"
    if not nodes_file.exists():
        return []
    nodes: dict[str, dict[str, Any]] = json.loads(nodes_file.read_text())
    for node in nodes.values():
        stop_node(namespace, node)
    nodes_file.write_text("{}")
    dns.stop(run_dir / "dns")
    return sorted(nodes)
