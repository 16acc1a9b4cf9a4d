"""Every GCE name the cluster uses, derived from kthw:clusterName, and the rule that name must keep."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from components.config import values
from components.config.problems import ConfigError

# GCE names resource names with RFC 1035 labels of at most 63 characters.
GCE_NAME_MAX = 63
# With this cluster name every GCE name is KTHW's own (VPC kubernetes-the-hard-way, subnet kubernetes, ...).
DEFAULT_CLUSTER_NAME = "kubernetes-the-hard-way"
# KTHW's second prefix: the subnet, health check, target pool, forwarding rule and routes start with it.
KTHW_SHORT_NAME = "kubernetes"
# The hex digits of the controllers' instance ids in the target pool's name (GceNames.target_pool_of).
TARGET_POOL_DIGEST_LENGTH = 8


@dataclass(frozen=True)
class GceNames:
    """Every GCE resource name, derived from kthw:clusterName; the default gives KTHW's own names."""

    cluster: str = DEFAULT_CLUSTER_NAME

    @property
    def is_default(self) -> bool:
        return self.cluster == DEFAULT_CLUSTER_NAME

    @property
    def _short(self) -> str:
        return KTHW_SHORT_NAME if self.is_default else self.cluster

    @property
    def node_prefix(self) -> str:
        """KTHW's VMs are plain controller-0, worker-0; another cluster's carry its name in front."""
        return "" if self.is_default else f"{self.cluster}-"

    @property
    def network(self) -> str:
        """The VPC, the API's static address and the network tag every VM carries."""
        return self.cluster

    @property
    def subnet(self) -> str:
        return self._short

    @property
    def allow_internal(self) -> str:
        return f"{self.cluster}-allow-internal"

    @property
    def allow_external(self) -> str:
        return f"{self.cluster}-allow-external"

    @property
    def deny_etcd(self) -> str:
        return f"{self.cluster}-deny-etcd-from-workers"

    @property
    def allow_health_check(self) -> str:
        return f"{self.cluster}-allow-health-check"

    def worker_api_firewall(self, worker: str) -> str:
        """The rule that lets one worker's external IP reach the API on the public address."""
        return f"{self.cluster}-allow-api-from-{worker.removeprefix(self.node_prefix)}"

    @property
    def health_check(self) -> str:
        return self._short

    @property
    def target_pool(self) -> str:
        return f"{self._short}-target-pool"

    @property
    def forwarding_rule(self) -> str:
        return f"{self._short}-forwarding-rule"

    def route(self, pod_cidr: str) -> str:
        """KTHW's route name for a pod CIDR: 10.200.1.0/24 -> kubernetes-route-10-200-1-0-24."""
        return f"{self._short}-route-" + pod_cidr.replace(".", "-").replace("/", "-")

    def node(self, role: str, index: int) -> str:
        """A VM's name, which is also its hostname, its Kubernetes node name and its certificate's."""
        return f"{self.node_prefix}{role}-{index}"

    def node_address(self, node: str) -> str:
        """A VM's static external address: kubernetes-the-hard-way-worker-0, or dev-worker-0 for "dev"."""
        return f"{self.cluster}-{node.removeprefix(self.node_prefix)}"

    def target_pool_of(self, members: str) -> str:
        """The target pool for one set of controller VMs (`members`: a digest of their instance ids)."""
        return f"{self.target_pool}-{members}"

    def etcd_disk(self, controller: str) -> str:
        """A controller's etcd disk, named after its VM (so unique per cluster name): controller-0-etcd."""
        return f"{controller}-etcd"

    @property
    def backup_account(self) -> str:
        """The controllers' service account ID (6-30 characters): KTHW's own, or one per cluster name."""
        if self.is_default:
            return "kthw-controllers"
        return f"kthw-{hashlib.sha256(self.cluster.encode()).hexdigest()[:10]}-etcd"

    def every_name(self, controllers: int, pod_cidrs: Sequence[str]) -> list[str]:
        """Every GCE name a cluster of this shape uses (workers by their pod CIDRs)."""
        workers = [self.node("worker", i) for i in range(len(pod_cidrs))]
        return [
            self.network,
            self.subnet,
            self.allow_internal,
            self.allow_external,
            self.deny_etcd,
            self.allow_health_check,
            self.health_check,
            self.target_pool_of("0" * TARGET_POOL_DIGEST_LENGTH),
            self.forwarding_rule,
            *(self.node("controller", i) for i in range(controllers)),
            *(self.node_address(self.node("controller", i)) for i in range(controllers)),
            *(self.etcd_disk(self.node("controller", i)) for i in range(controllers)),
            *workers,
            *(self.node_address(w) for w in workers),
            *(self.worker_api_firewall(w) for w in workers),
            *(self.route(cidr) for cidr in pod_cidrs),
        ]


def cluster_name(cfg: Mapping[str, Any], controllers: int | None, pod_cidrs: Sequence[str] | None) -> GceNames:
    """The cluster name every GCE name derives from; each derived name must still be a GCE name.

    The length check needs the cluster's shape (None: a value it hangs on was refused, and told).
    """
    name = str(cfg.get("clusterName") or DEFAULT_CLUSTER_NAME)
    if not values.GCE_NAME.match(name):
        raise ConfigError("clusterName", name, values.GCE_NAME_RULE)
    if name == KTHW_SHORT_NAME:
        raise ConfigError(
            "clusterName",
            name,
            f"a name other than {KTHW_SHORT_NAME!r}: the default cluster's subnet and health check have it",
        )
    names = GceNames(name)
    if controllers is None or pod_cidrs is None:
        return names
    longest = max(names.every_name(controllers, pod_cidrs), key=len)
    if len(longest) > GCE_NAME_MAX:
        limit = GCE_NAME_MAX - (len(longest) - len(name))
        raise ConfigError(
            "clusterName",
            name,
            f"at most {limit} characters for this cluster: the longest GCE name made from it, "
            f"{longest!r}, must fit in {GCE_NAME_MAX}",
        )
    return names
