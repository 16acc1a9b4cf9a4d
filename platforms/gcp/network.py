"""The cluster's network (KTHW ch. 3 and 11): VPC, subnet, firewall rules, API address, pod routes."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_gcp import compute

from components.config import ClusterConfig
from components.machine import API_PORT

ETCD_PORTS = "2379-2380"
# Below the default 1000 of every allow rule here.
ETCD_DENY_PRIORITY = 900


@dataclass(frozen=True)
class NetworkArgs:
    """What the network needs: the validated config."""

    config: ClusterConfig


class Network(pulumi.ComponentResource):
    """The VPC (KTHW's `kubernetes-the-hard-way`) and everything attached to it before any VM exists."""

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kthw:index:Network", name, None, opts)
        cfg, names = args.config, args.config.names
        # Explicit cloud names are fixed by config, so a replacement must delete the old one first.
        named = pulumi.ResourceOptions(parent=self, delete_before_replace=True)

        self.vpc = compute.Network(
            f"{name}-vpc",
            name=names.network,
            auto_create_subnetworks=False,
            opts=named,
        )
        self.subnet = compute.Subnetwork(
            f"{name}-subnet",
            name=names.subnet,
            network=self.vpc.id,
            region=cfg.region,
            ip_cidr_range=cfg.node_cidr,
            opts=named,
        )
        # Nodes and pods talk freely among themselves (KTHW ch. 3): every protocol the cluster uses.
        self.allow_internal = compute.Firewall(
            f"{name}-allow-internal",
            name=names.allow_internal,
            network=self.vpc.name,
            allows=[
                compute.FirewallAllowArgs(protocol="tcp"),
                compute.FirewallAllowArgs(protocol="udp"),
                compute.FirewallAllowArgs(protocol="icmp"),
            ],
            source_ranges=[cfg.node_cidr, cfg.cluster_cidr],
            opts=named,
        )
        # etcd trusts any certificate the cluster CA signed, and kubelet certificates are such:
        # keep workers and pods off etcd's ports altogether, so only controllers reach them.
        # GCE evaluates the lower priority number first, so this deny wins over allow-internal.
        self.deny_etcd = compute.Firewall(
            f"{name}-deny-etcd",
            name=names.deny_etcd,
            network=self.vpc.name,
            priority=ETCD_DENY_PRIORITY,
            denies=[compute.FirewallDenyArgs(protocol="tcp", ports=[ETCD_PORTS])],
            source_ranges=[cfg.cluster_cidr],
            source_tags=["worker"],
            target_tags=["controller"],
            opts=named,
        )
        # From outside, only SSH, the API and ping, and only from the admins' ranges.
        self.allow_external = compute.Firewall(
            f"{name}-allow-external",
            name=names.allow_external,
            network=self.vpc.name,
            allows=[
                compute.FirewallAllowArgs(protocol="tcp", ports=["22", str(API_PORT)]),
                compute.FirewallAllowArgs(protocol="icmp"),
            ],
            source_ranges=list(cfg.admin_source_ranges),
            target_tags=[names.network],
            opts=named,
        )
        self.public_address = compute.Address(
            f"{name}-public-address",
            name=names.network,
            region=cfg.region,
            opts=named,
        )
        # KTHW ch. 11: pods reach pods on other workers through one route per worker. The next hop
        # is the worker's internal IP, known from config, so routes need not wait for the VMs.
        self.routes = [
            compute.Route(
                f"{name}-route-{worker.name}",
                name=names.route(worker.pod_cidr or ""),
                network=self.vpc.name,
                dest_range=worker.pod_cidr or "",
                next_hop_ip=worker.internal_ip,
                opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True, depends_on=[self.subnet]),
            )
            for worker in cfg.workers
        ]
        self.register_outputs(
            {
                "network": self.vpc.name,
                "subnet": self.subnet.name,
                "public_address": self.public_address.address,
            }
        )
