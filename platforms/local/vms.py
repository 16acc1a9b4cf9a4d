"""LocalVms: the base image, the switch and one qemu VM per node, with how to reach each over SSH."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi

from platforms.local import settings as local
from platforms.local.provider import BaseImage, Switch, VirtualMachine
from platforms.local.seed import seed_files
from platforms.local.settings import LocalNode, LocalSettings

# Every VM's forwarded ports listen here only: nothing of the cluster is reachable from the LAN.
SSH_HOST = "127.0.0.1"


@dataclass(frozen=True)
class LocalVmsArgs:
    """The nodes config derives, nodeCidr, the program's SSH public key and the kthw:local* settings."""

    nodes: Sequence[LocalNode]
    node_cidr: str
    ssh_public_key: pulumi.Input[str]
    settings: LocalSettings


@dataclass(frozen=True)
class LocalMachine:
    """One started VM as the rest of the program reaches it: SSH (and a controller's API) on this host."""

    node: LocalNode
    host: str
    ssh_port: int
    api_port: int | None  # controllers only: 127.0.0.1:<api_port> is the VM's :6443
    vm: VirtualMachine  # for depends_on and triggers
    fingerprint: str  # changes when the VM restarts or is replaced (image, memory, CPUs, disk, accel)


class LocalVms(pulumi.ComponentResource):
    """The stack's VMs on the host that runs `pulumi up`, on a private switch, with NAT out and SSH in."""

    machines: dict[str, LocalMachine]

    def __init__(self, name: str, args: LocalVmsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kthw:local:LocalVms", name, None, opts)
        s = args.settings
        found = local.problems(s, args.nodes, args.node_cidr)
        if found:
            raise ValueError("local platform: " + "; ".join(found))
        self._name, self._args = name, args
        child = pulumi.ResourceOptions(parent=self)
        self.image = BaseImage(f"{name}-image", s.image_url, s.image_sha512, s.cache_dir, child)
        self.switch = Switch(f"{name}-switch", str(local.net_dir(s)), child)
        self.machines = {}
        for node in args.nodes:
            self.add(node)
        self.register_outputs({"image": self.image.path})

    def add(self, node: LocalNode, depends_on: Sequence[pulumi.Resource] = ()) -> LocalMachine:
        """Start one more VM; `depends_on` orders it (a controller after the previous one's etcd member)."""
        machine = self._machine(self._name, node, self._args, depends_on)
        self.machines[node.name] = machine
        return machine

    def _machine(
        self, name: str, node: LocalNode, args: LocalVmsArgs, depends_on: Sequence[pulumi.Resource]
    ) -> LocalMachine:
        s = args.settings
        ssh_port = local.ssh_port(s, node, args.node_cidr)
        api_port = local.api_port(s, node, args.node_cidr)
        seed = pulumi.Output.from_input(args.ssh_public_key).apply(
            lambda key: seed_files(node, args.node_cidr, s.ssh_user, key)
        )
        props: dict[str, pulumi.Input[object]] = {
            "name": node.name,
            "directory": str(local.vm_dir(s, node.name)),
            "net_dir": str(local.net_dir(s)),
            "base_image": self.image.path,
            "disk_gb": s.disk_gb,
            "memory_mb": s.memory_mb,
            "cpus": s.cpus,
            "accel": s.accel,
            "cluster_mac": local.cluster_mac(node.internal_ip),
            "nat_mac": local.nat_mac(node.internal_ip),
            "ssh_port": ssh_port,
            # 0 for none: the engine drops None inputs, and no port is 0.
            "api_port": api_port or 0,
            "seed": seed,
        }
        vm = VirtualMachine(
            f"{name}-{node.name}",
            props,
            pulumi.ResourceOptions(parent=self, depends_on=[self.switch, *depends_on]),
        )
        return LocalMachine(node, SSH_HOST, ssh_port, api_port, vm, local.fingerprint(s, node))
