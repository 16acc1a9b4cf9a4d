"""The top component: wires a platform's machines, the PKI and the bootstrap together by their outputs."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components.addons import Addons, AddonsArgs, SmokeTest, SmokeTestArgs
from components.config import ClusterConfig
from components.control_plane import ControlPlaneArgs, ControlPlaneNode
from components.etcd import EtcdMember, EtcdMemberArgs
from components.kubeconfig import ADMIN_USER, encryption_config_output, kubeconfig_output
from components.machine import Machine, PlatformFactory
from components.pki import Pki, PkiArgs
from components.worker import WorkerArgs, WorkerNode


@dataclass(frozen=True)
class ClusterArgs:
    """The whole cluster is a function of its config and the platform it stands on."""

    config: ClusterConfig
    platform: PlatformFactory


class Cluster(pulumi.ComponentResource):
    """Kubernetes The Hard Way: every resource of the cluster, the platform's included, lives below this one.

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

        # The platform's resources are children of this component too, named as before the platforms
        # were split out, so a stack's resources keep their URNs.
        self.platform = args.platform(name, cfg, self)
        api = self.platform.api
        self.public_address: pulumi.Output[str] = pulumi.Output.from_input(api.public_address)
        self.ssh_private_key: pulumi.Output[str] = self.platform.ssh_private_key

        self.workers: list[Machine] = [self.platform.machine(spec) for spec in cfg.workers]

        self.pki = Pki(
            f"{name}-pki",
            PkiArgs(
                config=cfg,
                api=api,
                worker_certificate_ips={w.spec.name: w.certificate_ips for w in self.workers},
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
        self.controllers: list[Machine] = []
        self.etcd: list[EtcdMember] = []
        for spec in cfg.controllers:
            previous = self.etcd[-1:]
            controller = self.platform.machine(spec, after=[m for p in previous for m in (p.started, p.leave)])
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
                        backup_bucket=self.platform.backup_bucket(),
                        device=controller.etcd_device,
                        fingerprint=controller.fingerprint,
                    ),
                    child,
                )
            )
        # KTHW ch. 8: what routes the API's address to the controllers. GCE's health-check proxies
        # need nothing but nginx and the CA, so they are there before any API server starts.
        self.front_end = self.platform.front_end(self.controllers, self.pki.ca.cert_pem)

        # Every API server talks to every etcd member, and starts once its own is ready. Controller
        # i's services (re)start only after controller i-1's control plane is healthy and back in the
        # load balancer's pool, so a change restarts one API server at a time and the pool always has
        # the others. On a fresh cluster this adds little: controller i's VM already waits for
        # controller i-1's etcd member.
        self.control_plane: list[ControlPlaneNode] = []
        for c, member in zip(self.controllers, self.etcd, strict=True):
            self.control_plane.append(
                ControlPlaneNode(
                    f"{name}-{c.spec.name}-control-plane",
                    ControlPlaneArgs(
                        config=cfg,
                        spec=c.spec,
                        host=c.host,
                        public_address=api.node_address,
                        pki=self.pki,
                        encryption_config=encryption_config,
                        # Its own member healthy means the cluster has its quorum; waiting for every
                        # member would keep each replaced controller's API server down to the last.
                        etcd_members=[member.started],
                        after=[p.in_service for p in self.control_plane[-1:]],
                        rejoin=self.front_end.rejoin,
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
                    public_address=api.node_address,
                    ca=self.pki.ca,
                    kubelet=self.pki.kubelets[w.spec.name],
                    kube_proxy=self.pki.kube_proxy,
                    control_plane_ready=[
                        *control_plane_in_service,
                        *self.front_end.ready,
                        *self.front_end.worker_access.get(w.spec.name, ()),
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
                public_address=api.node_address,
                depends_on=[
                    self.addons.rbac,
                    self.addons.dns,
                    *([self.addons.metrics_server] if self.addons.metrics_server else []),
                    *workers_ready,
                    # Also each ready step: a rebuilt worker replaces it, and its new id re-runs the test.
                    *(w.ready for w in self.worker_nodes),
                    *self.front_end.ready,
                    *self.platform.network_ready(),
                    *(step for m in self.etcd for step in (m.leave, m.backup)),
                ],
            ),
            child,
        )

        # KTHW ch. 10: the admin's kubeconfig reaches the cluster through the platform's public endpoint.
        self.admin_kubeconfig: pulumi.Output[str] = kubeconfig_output(
            server=api.admin_server,
            user=ADMIN_USER,
            ca=self.pki.ca,
            client=self.pki.admin,
        )
        self.ca_certificate: pulumi.Output[str] = self.pki.ca.cert_pem

        self.register_outputs({"public_address": self.public_address, "ca_certificate": self.ca_certificate})

    def node_addresses(self, nodes: list[Machine]) -> pulumi.Output[dict[str, dict[str, str]]]:
        """name -> {internal_ip, external_ip} for the stack outputs; external_ip is how SSH reaches the node."""
        return pulumi.Output.all(*[n.host.connection.host for n in nodes]).apply(
            lambda hosts: {
                n.spec.name: {"internal_ip": n.spec.internal_ip, "external_ip": str(host)}
                for n, host in zip(nodes, hosts, strict=True)
            }
        )
