"""The top component: wires network, nodes, PKI and bootstrap together by their outputs."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_tls as tls

from components.config import ClusterConfig, NodeSpec
from components.network import Network, NetworkArgs
from components.node import Node, NodeArgs


@dataclass(frozen=True)
class ClusterArgs:
    """The whole cluster is a function of its config."""

    config: ClusterConfig


class Cluster(pulumi.ComponentResource):
    """Kubernetes The Hard Way on GCE: every resource of the cluster lives below this one."""

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kthw:index:Cluster", name, None, opts)
        cfg = args.config
        child = pulumi.ResourceOptions(parent=self)

        self.network = Network(f"{name}-network", NetworkArgs(cfg), child)
        self.public_address: pulumi.Output[str] = self.network.public_address.address

        # One SSH key for every node; ED25519 is what current OpenSSH prefers and is quick to make.
        self.ssh_key = tls.PrivateKey(f"{name}-ssh-key", algorithm="ED25519", opts=child)
        self.ssh_private_key: pulumi.Output[str] = pulumi.Output.secret(self.ssh_key.private_key_openssh)

        def node(spec: NodeSpec) -> Node:
            node_args = NodeArgs(
                config=cfg,
                spec=spec,
                subnet=self.network.subnet.id,
                ssh_public_key=self.ssh_key.public_key_openssh,
                ssh_private_key=self.ssh_private_key,
            )
            return Node(f"{name}-{spec.name}", node_args, child)

        self.controllers = [node(spec) for spec in cfg.controllers]
        self.workers = [node(spec) for spec in cfg.workers]

        self.register_outputs({"public_address": self.public_address})

    def node_addresses(self, nodes: list[Node]) -> pulumi.Output[dict[str, dict[str, str]]]:
        """name -> {internal_ip, external_ip} for the stack outputs."""
        return pulumi.Output.all(*[n.external_ip for n in nodes]).apply(
            lambda ips: {
                n.spec.name: {"internal_ip": n.spec.internal_ip, "external_ip": ip} for n, ip in zip(nodes, ips, strict=True)
            }
        )
