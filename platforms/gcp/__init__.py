"""Google Cloud: the VPC, one GCE instance per node, and a network load balancer in front of the API."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pulumi
import pulumi_tls as tls
from pulumi_gcp import compute

from components.config import ClusterConfig, NodeSpec
from components.machine import ApiEndpoint, FrontEnd, Machine, Rejoin
from platforms.gcp.api_frontend import ApiFrontend, ApiFrontendArgs, render_in_service_script, seconds_to_leave
from platforms.gcp.etcd_backup import EtcdBackupStore, EtcdBackupStoreArgs
from platforms.gcp.network import Network, NetworkArgs
from platforms.gcp.node import ETCD_DEVICE, Node, NodeArgs, offered_machine_type


def fingerprint(config: ClusterConfig, spec: NodeSpec) -> str:
    """What stops or replaces a node's VM (image, machine type, zone, address): a short digest.

    A controller's etcd ready step re-runs when it changes, so the next controller waits for this
    one's etcd even when GCE only stopped and started the VM; the preview warning compares it with
    the last update's.
    """
    # The bucket: switching snapshots to a bucket on or off changes the VM's service account, which
    # GCE changes only on a stopped VM.
    parts = [config.image, spec.machine_type, config.zone, spec.internal_ip, config.node_cidr]
    parts += [f"bucket={config.etcd_backup_bucket}"] if config.etcd_backup_bucket else []
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def api_endpoint(address: pulumi.Input[str]) -> ApiEndpoint:
    """Kubelets and the admin alike reach the API through the reserved address (KTHW ch. 9, 10)."""
    return ApiEndpoint(node_address=address, public_address=address, certificate_ips=[address])


class GcpPlatform:
    """KTHW's own ground (ch. 3, 8, 11): a VPC with firewall rules and pod routes, GCE VMs, a target-pool LB."""

    def __init__(self, name: str, config: ClusterConfig, parent: pulumi.Resource) -> None:
        self._name, self._config = name, config
        self._child = pulumi.ResourceOptions(parent=parent)
        self.network = Network(f"{name}-network", NetworkArgs(config), self._child)
        self.api = api_endpoint(self.network.public_address.address)
        # One SSH key for every node; ED25519 is what current OpenSSH prefers and is quick to make.
        self.ssh_key = tls.PrivateKey(f"{name}-ssh-key", algorithm="ED25519", opts=self._child)
        self.ssh_private_key: pulumi.Output[str] = pulumi.Output.secret(self.ssh_key.private_key_openssh)
        # Optional: etcd snapshots copied to a bucket only the controllers' account may write to.
        self.backup_store = (
            EtcdBackupStore(f"{name}-etcd-backup", EtcdBackupStoreArgs(config), self._child)
            if config.etcd_backup_bucket
            else None
        )
        # Every VM names its account: the provider keeps the last email it knows when none is given.
        self.default_account = compute.get_default_service_account_output(project=config.project).email
        # One lookup per machine type, in preview as in update: a type the zone does not offer fails
        # the program before any VM is touched (see offered_machine_type).
        self.machine_types = {
            t: offered_machine_type(config, t) for t in sorted({s.machine_type for s in config.nodes})
        }
        self.nodes: dict[str, Node] = {}

    def machine(self, spec: NodeSpec, after: Sequence[pulumi.Resource] = ()) -> Machine:
        cfg = self._config
        writes_backups = self.backup_store is not None and spec.role == "controller"
        node_args = NodeArgs(
            config=cfg,
            spec=spec,
            subnet=self.network.subnet.id,
            ssh_public_key=self.ssh_key.public_key_openssh,
            ssh_private_key=self.ssh_private_key,
            service_account_email=(
                self.backup_store.service_account_email
                if self.backup_store is not None and writes_backups
                else self.default_account
            ),
            machine_type=self.machine_types[spec.machine_type],
            writes_backups=writes_backups,
            after=after,
        )
        node = Node(f"{self._name}-{spec.name}", node_args, self._child)
        self.nodes[spec.name] = node
        return Machine(
            spec=spec,
            host=node.host,
            certificate_ips=[node.external_ip],
            fingerprint=fingerprint(cfg, spec),
            etcd_device=ETCD_DEVICE if spec.role == "controller" else None,
        )

    def front_end(self, controllers: Sequence[Machine], ca_cert: pulumi.Input[str]) -> FrontEnd:
        frontend = ApiFrontend(
            f"{self._name}-api-frontend",
            ApiFrontendArgs(
                config=self._config,
                network=self.network.vpc.name,
                address=self.network.public_address.address,
                controllers=[c.host for c in controllers],
                instances=[self.nodes[c.spec.name].instance for c in controllers],
                ca_cert=ca_cert,
                worker_addresses={w.name: self.nodes[w.name].external_ip for w in self._config.workers},
            ),
            self._child,
        )
        return FrontEnd(
            ready=frontend.ready,
            worker_access={worker: [rule] for worker, rule in frontend.worker_access.items()},
            rejoin=Rejoin(
                proxies=dict(zip((c.spec.name for c in controllers), frontend.proxies, strict=True)),
                in_service_script=render_in_service_script,
                seconds_to_leave=seconds_to_leave(),
            ),
        )

    def network_ready(self) -> Sequence[pulumi.Resource]:
        # The routes exist before any VM (their next hops are known from config).
        return ()

    def backup_bucket(self) -> str | None:
        return self._config.etcd_backup_bucket or None
