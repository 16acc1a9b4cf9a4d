"""What a platform hands the cluster: machines reachable over SSH, the API's endpoint, its front end.

The cluster (components/cluster.py) never imports a platform. A platform (platforms/gcp,
platforms/machines, platforms/local) creates or is given the machines, does what a cloud's network
would (routes, firewall, load balancer) and hands the cluster these values through `Platform`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import pulumi

from components import remote
from components.config import ClusterConfig, NodeSpec

API_PORT = 6443


@dataclass(frozen=True)
class Machine:
    """One node as the cluster sees it: its spec, how to reach it, and what its certificate names."""

    spec: NodeSpec
    host: remote.Host
    # IP SANs of the node's kubelet certificate beyond its internal IP (GCE: its external IP).
    certificate_ips: Sequence[pulumi.Input[str]] = ()
    # A digest of what restarts or replaces the machine under the cluster (image, machine type, ...):
    # a controller's etcd ready step re-runs when it changes, so the next one waits for this one.
    fingerprint: str = ""
    # The block device etcd's data lives on (a disk that outlives the VM), or None for the boot disk.
    etcd_device: str | None = None


@dataclass(frozen=True)
class ApiEndpoint:
    """Where the API answers: for the nodes (kubelets, kube-proxy), and for the admin."""

    # What kubelets and kube-proxies dial, and the service-account issuer's host.
    node_address: pulumi.Input[str]
    # What the admin's kubeconfig dials (the `kubernetes_public_address` output).
    public_address: pulumi.Input[str]
    public_port: pulumi.Input[int] = API_PORT
    # IP and DNS SANs of the API server certificate beyond the service IP, the controllers and 127.0.0.1.
    certificate_ips: Sequence[pulumi.Input[str]] = ()
    certificate_dns: Sequence[str] = ()

    @property
    def node_server(self) -> pulumi.Output[str]:
        """The URL in the kubelets' and kube-proxies' kubeconfigs."""
        return pulumi.Output.concat("https://", self.node_address, f":{API_PORT}")

    @property
    def admin_server(self) -> pulumi.Output[str]:
        """The URL in the admin's kubeconfig."""
        return pulumi.Output.format("https://{0}:{1}", self.public_address, self.public_port)


@dataclass(frozen=True)
class Rejoin:
    """How a load balancer drops a stopping API server and takes a restarted one back (GCE: a pool's health check).

    A control plane restart waits for the previous controller's to be back in the pool, and a
    stopping API server keeps serving until the pool has dropped it, so the API never loses two
    backends at once nor sends a request to one that is gone.
    """

    # Per controller, what must be there before its in-service wait can pass (its health-check proxy).
    proxies: Mapping[str, pulumi.Resource]
    # The wait script for one controller: until the pool sends it requests again.
    in_service_script: Callable[[str], str]
    # The longest a failing backend stays in the pool.
    seconds_to_leave: int


@dataclass(frozen=True)
class FrontEnd:
    """What stands between the nodes and the API servers; built before the control planes."""

    # What "the API answers on its node address" waits for.
    ready: Sequence[pulumi.Resource] = ()
    # Per worker, what it must wait for besides `ready` (GCE: the firewall rule admitting it).
    worker_access: Mapping[str, Sequence[pulumi.Resource]] = field(default_factory=dict)
    # None where nothing balances the API servers (the nodes dial one controller's address).
    rejoin: Rejoin | None = None


class Platform(Protocol):
    """The ground a cluster stands on.

    The cluster calls it in this order: ssh key, api, machines, front end (before the control planes).

    Every resource a platform creates is a child of `parent` (the cluster), named from `name`, so
    the resources' URNs do not depend on which module made them.
    """

    ssh_private_key: pulumi.Output[str]
    api: ApiEndpoint

    def machine(self, spec: NodeSpec, after: Sequence[pulumi.Resource] = ()) -> Machine:
        """Create (or take over) one node; a controller waits for `after` (the previous etcd member)."""
        ...

    def front_end(self, controllers: Sequence[Machine], ca_cert: pulumi.Input[str]) -> FrontEnd:
        """What routes the API's address to healthy controllers; built before the control planes start,
        since a health check may need the cluster CA (`ca_cert`) and nothing else."""
        ...

    def network_ready(self) -> Sequence[pulumi.Resource]:
        """What pods on different nodes need to reach each other (routes); the smoke test waits for it."""
        ...

    def backup_bucket(self) -> str | None:
        """Where etcd snapshots are copied to, if anywhere."""
        ...


class PlatformFactory(Protocol):
    """Builds a platform for a config, its resources children of `parent`."""

    def __call__(self, name: str, config: ClusterConfig, parent: pulumi.Resource) -> Platform: ...
