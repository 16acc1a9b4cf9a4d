"""The top component: wires network, nodes, PKI and bootstrap together by their outputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_tls as tls

from components.addons import Addons, AddonsArgs, SmokeTest, SmokeTestArgs
from components.api_frontend import ApiFrontend, ApiFrontendArgs
from components.config import ClusterConfig, NodeSpec
from components.control_plane import ControlPlaneArgs, ControlPlaneNode
from components.etcd import EtcdMember, EtcdMemberArgs
from components.etcd_backup import EtcdBackupStore, EtcdBackupStoreArgs
from components.kubeconfig import ADMIN_USER, encryption_config_output, kubeconfig_output
from components.network import API_PORT, Network, NetworkArgs
from components.node import Node, NodeArgs
from components.pki import Pki, PkiArgs
from components.worker import WorkerArgs, WorkerNode


@dataclass(frozen=True)
class ClusterArgs:
    """The whole cluster is a function of its config."""

    config: ClusterConfig


class Cluster(pulumi.ComponentResource):
    """Kubernetes The Hard Way on GCE: every resource of the cluster lives below this one.

    The bootstrap graph is wide across workers, deliberately narrow across controllers: every
    node's steps hang off its own SSH gate; controllers come (and are replaced) one at a time, each
    after the previous one's etcd member is ready, so etcd never loses quorum; each control plane
    waits for its own member and for the previous controller's control plane to be back in the
    load balancer; every worker waits only for the control planes and the API front end, never for
    another worker in the graph (workers take turns through a lock inside the cluster, and only
    when a running worker changes). Adding workers adds parallel branches, so `pulumi up` takes
    about as long for 100 workers as for 3.
    """

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("kthw:index:Cluster", name, None, opts)
        cfg = args.config
        child = pulumi.ResourceOptions(parent=self)

        self.network = Network(f"{name}-network", NetworkArgs(cfg), child)
        self.public_address: pulumi.Output[str] = self.network.public_address.address

        # One SSH key for every node; ED25519 is what current OpenSSH prefers and is quick to make.
        self.ssh_key = tls.PrivateKey(f"{name}-ssh-key", algorithm="ED25519", opts=child)
        self.ssh_private_key: pulumi.Output[str] = pulumi.Output.secret(self.ssh_key.private_key_openssh)

        # Optional: etcd snapshots copied to a bucket only the controllers' account may write to.
        self.backup_store = (
            EtcdBackupStore(f"{name}-etcd-backup", EtcdBackupStoreArgs(cfg), child) if cfg.etcd_backup_bucket else None
        )

        def node(spec: NodeSpec, after: Sequence[pulumi.Resource] = ()) -> Node:
            node_args = NodeArgs(
                config=cfg,
                spec=spec,
                subnet=self.network.subnet.id,
                ssh_public_key=self.ssh_key.public_key_openssh,
                ssh_private_key=self.ssh_private_key,
                after=after,
                service_account_email=(
                    self.backup_store.service_account_email
                    if self.backup_store is not None and spec.role == "controller"
                    else None
                ),
            )
            return Node(f"{name}-{spec.name}", node_args, child)

        self.workers = [node(spec) for spec in cfg.workers]

        self.pki = Pki(
            f"{name}-pki",
            PkiArgs(
                config=cfg,
                public_address=self.public_address,
                worker_external_ips={w.spec.name: w.external_ip for w in self.workers},
            ),
            child,
        )
        encryption_config = encryption_config_output(self.pki.encryption_key)

        # KTHW ch. 7: one etcd member per controller. Controller i's VM and etcd restart wait for
        # controller i-1's member to be healthy and caught up (and for its leave step, so a shrink
        # removes members from the highest index down, one at a time). The engine therefore
        # replaces, restarts or stops controllers one by one and etcd keeps its quorum. The price:
        # a fresh cluster's controllers are also created one after another (VM, SSH, etcd download
        # and start, about 1.5-2 minutes each on GCE), which Pulumi cannot tell apart from a
        # replacement; the first member founds the cluster and each next one joins it.
        self.controllers: list[Node] = []
        self.etcd: list[EtcdMember] = []
        for spec in cfg.controllers:
            previous = self.etcd[-1:]
            controller = node(spec, after=[m for p in previous for m in (p.started, p.leave)])
            self.controllers.append(controller)
            self.etcd.append(
                EtcdMember(
                    f"{name}-{spec.name}-etcd",
                    EtcdMemberArgs(
                        config=cfg,
                        spec=spec,
                        host=controller.host,
                        ca=self.pki.ca,
                        server=self.pki.api_server,
                        after=[p.started for p in previous],
                        backup_bucket=cfg.etcd_backup_bucket,
                    ),
                    child,
                )
            )
        # KTHW ch. 8: the load balancer in front of the API servers, with a health-check proxy on
        # each controller; the proxies need nothing but nginx and the CA, so they are there before
        # any API server starts.
        self.api_frontend = ApiFrontend(
            f"{name}-api-frontend",
            ApiFrontendArgs(
                config=cfg,
                network=self.network.vpc.name,
                address=self.public_address,
                controllers=[c.host for c in self.controllers],
                instances=[c.instance for c in self.controllers],
                ca_cert=self.pki.ca.cert_pem,
                worker_addresses={w.spec.name: w.external_ip for w in self.workers},
            ),
            child,
        )

        # Every API server talks to every etcd member, and starts once its own is ready. Controller
        # i's services (re)start only after controller i-1's control plane is healthy and back in the
        # load balancer's pool, so a change restarts one API server at a time and the pool always has
        # the others. On a fresh cluster this adds little: controller i's VM already waits for
        # controller i-1's etcd member.
        self.control_plane: list[ControlPlaneNode] = []
        for c, member, proxy in zip(self.controllers, self.etcd, self.api_frontend.proxies, strict=True):
            self.control_plane.append(
                ControlPlaneNode(
                    f"{name}-{c.spec.name}-control-plane",
                    ControlPlaneArgs(
                        config=cfg,
                        spec=c.spec,
                        host=c.host,
                        public_address=self.public_address,
                        pki=self.pki,
                        encryption_config=encryption_config,
                        # Its own member healthy means the cluster has its quorum; waiting for every
                        # member would keep each replaced controller's API server down to the last.
                        etcd_members=[member.started],
                        after=[p.in_service for p in self.control_plane[-1:]],
                        health_proxy=proxy,
                    ),
                    child,
                )
            )
        control_plane_healthy = [cp.healthy for cp in self.control_plane]
        control_plane_in_service = [cp.in_service for cp in self.control_plane]

        # KTHW ch. 9: kubelets register through the public address, so they wait for the front end;
        # and for every control plane, since a kubelet may not be newer than any API server.
        # Controller-0's admin drains and uncordons them around their restarts.
        self.worker_nodes = [
            WorkerNode(
                f"{name}-{w.spec.name}-bootstrap",
                WorkerArgs(
                    config=cfg,
                    spec=w.spec,
                    host=w.host,
                    public_address=self.public_address,
                    ca=self.pki.ca,
                    kubelet=self.pki.kubelets[w.spec.name],
                    kube_proxy=self.pki.kube_proxy,
                    control_plane_ready=[
                        *control_plane_in_service,
                        *self.api_frontend.ready,
                        self.api_frontend.worker_access[w.spec.name],
                    ],
                    admin=self.controllers[0].host,
                ),
                child,
            )
            for w in self.workers
        ]
        workers_ready = [w.schedulable for w in self.worker_nodes]

        first_controller = self.controllers[0].host
        self.addons = Addons(
            f"{name}-addons",
            AddonsArgs(
                config=cfg,
                host=first_controller,
                depends_on=control_plane_healthy,
                workers_ready=workers_ready,
                ca_cert=self.pki.ca.cert_pem,
                metrics_server_tls=self.pki.metrics_server,
            ),
            child,
        )
        # KTHW ch. 13, last: a cluster that fails it fails `pulumi up`.
        self.smoke_test = SmokeTest(
            f"{name}-smoke-test",
            SmokeTestArgs(
                config=cfg,
                controller=first_controller,
                probe=self.workers[0].host,
                public_address=self.public_address,
                depends_on=[
                    self.addons.rbac,
                    self.addons.dns,
                    *([self.addons.metrics_server] if self.addons.metrics_server else []),
                    *workers_ready,
                    # Also each ready step: a rebuilt worker replaces it, and its new id re-runs the test.
                    *(w.ready for w in self.worker_nodes),
                    *self.api_frontend.ready,
                    *(step for m in self.etcd for step in (m.leave, m.backup)),
                ],
            ),
            child,
        )

        # KTHW ch. 10: the admin's kubeconfig reaches the cluster through the load balancer.
        self.admin_kubeconfig: pulumi.Output[str] = kubeconfig_output(
            server=pulumi.Output.concat("https://", self.public_address, f":{API_PORT}"),
            user=ADMIN_USER,
            ca=self.pki.ca,
            client=self.pki.admin,
        )
        self.ca_certificate: pulumi.Output[str] = self.pki.ca.cert_pem

        self.register_outputs({"public_address": self.public_address, "ca_certificate": self.ca_certificate})

    def node_addresses(self, nodes: list[Node]) -> pulumi.Output[dict[str, dict[str, str]]]:
        """name -> {internal_ip, external_ip} for the stack outputs."""
        return pulumi.Output.all(*[n.external_ip for n in nodes]).apply(
            lambda ips: {
                n.spec.name: {"internal_ip": n.spec.internal_ip, "external_ip": ip}
                for n, ip in zip(nodes, ips, strict=True)
            }
        )
