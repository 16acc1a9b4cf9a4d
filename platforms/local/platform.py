"""The local platform: qemu VMs this host starts (LocalVms), then everything the machines platform does."""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_tls as tls

from components import bounds, remote
from components.config import ClusterConfig, ConfigErrors, NodeSpec
from components.machine import ApiEndpoint, FrontEnd, Machine
from platforms.local import qemu
from platforms.local import settings as local
from platforms.local.settings import LocalNode, LocalSettings
from platforms.local.vms import LocalVms, LocalVmsArgs
from platforms.machines import MachineSetup


def local_settings(config: ClusterConfig) -> LocalSettings:
    """The stack's kthw:local* values, with the per-user directories filled in."""
    options = config.local
    if options is None:
        raise ValueError("the local platform needs ClusterConfig.local")
    return LocalSettings(
        state_dir=options.state_dir or local.default_state_dir(pulumi.get_project(), pulumi.get_stack()),
        cache_dir=options.cache_dir or local.default_cache_dir(),
        image_url=options.image_url,
        image_sha512=options.image_sha512,
        port_base=options.port_base,
        memory_mb=options.memory_mb,
        cpus=options.cpus,
        disk_gb=options.disk_gb,
        ssh_user=config.ssh_user,
        accel=options.accel,
    )


def local_node(spec: NodeSpec) -> LocalNode:
    return LocalNode(spec.name, spec.role, spec.internal_ip)


def fingerprint(config: ClusterConfig, spec: NodeSpec) -> str:
    """What restarts or replaces the node's VM (image, memory, CPUs, disk, acceleration)."""
    return local.fingerprint(local_settings(config), local_node(spec))


class LocalPlatform:
    """VMs on this host, on a switch of their own: the API for the admin at 127.0.0.1, for nodes at controller-0."""

    def __init__(self, name: str, config: ClusterConfig, parent: pulumi.Resource) -> None:
        self._config = config
        self._settings = local_settings(config)
        found = local.problems(self._settings, [local_node(n) for n in config.nodes], config.node_cidr)
        if found:
            raise ConfigErrors(found)
        # Before any resource, like the checks above: a refused kthw:localAccel creates nothing.
        # Emulated VMs take several times a cloud VM's time for everything: their steps wait longer.
        try:
            accel = qemu.choose_accel(self._settings.accel)
        except RuntimeError as error:
            raise ConfigErrors([str(error)]) from None
        self.pace = bounds.CLOUD_PACE if accel == "kvm" else bounds.EMULATED_PACE
        child = pulumi.ResourceOptions(parent=parent)
        # One SSH key for every VM, given to it at first boot (cloud-init).
        self.ssh_key = tls.PrivateKey(f"{name}-ssh-key", algorithm="ED25519", opts=child)
        self.ssh_private_key: pulumi.Output[str] = pulumi.Output.secret(self.ssh_key.private_key_openssh)
        self.vms = LocalVms(
            f"{name}-local",
            LocalVmsArgs([], config.node_cidr, self.ssh_key.public_key_openssh, self._settings),
            child,
        )
        self._setup = MachineSetup(name, config, parent)
        first = config.controllers[0]
        admin_port = local.api_port(self._settings, local_node(first), config.node_cidr)
        # The nodes reach the first controller on the switch; the admin through its forwarded port.
        # 127.0.0.1 is on the API server's certificate already.
        self.api = ApiEndpoint(node_address=first.internal_ip, public_address="127.0.0.1", public_port=admin_port or 0)

    def machine(self, spec: NodeSpec, after: Sequence[pulumi.Resource] = ()) -> Machine:
        vm = self.vms.add(local_node(spec), depends_on=after)
        conn = remote.connection(vm.host, self._config.ssh_user, self.ssh_private_key, port=vm.ssh_port)
        # The VM's id is its disk's: a new disk (another image, a replacement) runs every step on it
        # again; a VM started again on its kept disk keeps its id and runs nothing again.
        return self._setup.attach(
            spec, conn, triggers=[vm.vm.id], depends_on=[vm.vm], fingerprint=vm.fingerprint, pace=self.pace
        )

    def front_end(self, controllers: Sequence[Machine], ca_cert: pulumi.Input[str]) -> FrontEnd:
        return FrontEnd()

    def network_ready(self) -> Sequence[pulumi.Resource]:
        return list(self._setup.routes)

    def backup_bucket(self) -> str | None:
        return None
