"""Where nodes, pods and services sit: nodeCidr, clusterCidr, serviceCidr and the node counts, checked together."""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from components.config import values
from components.config.problems import ConfigError, Problems
from components.config.stack import NAMESPACE

# Where KTHW puts its nodes inside nodeCidr: controller-i at host .1i, worker-i at host .2i.
CONTROLLER_HOST_OFFSET = 10
WORKER_HOST_OFFSET = 20
MAX_CONTROLLERS = WORKER_HOST_OFFSET - CONTROLLER_HOST_OFFSET
# GCE keeps the last two addresses of every subnet (the second-to-last is reserved, the last is broadcast).
GCE_RESERVED_TAIL = 2
# The cluster DNS service takes the tenth address of serviceCidr, as KTHW's 10.32.0.10.
CLUSTER_DNS_HOST_OFFSET = 10
POD_CIDR_PREFIX = 24
# The smallest nodeCidr with room for worker-0 at host .20 and GCE's reserved tail.
MIN_NODE_CIDR_PREFIX = 32 - (WORKER_HOST_OFFSET + GCE_RESERVED_TAIL).bit_length()
DEFAULT_CIDRS = {"nodeCidr": "10.240.0.0/24", "clusterCidr": "10.200.0.0/16", "serviceCidr": "10.32.0.0/24"}


@dataclass(frozen=True)
class AddressPlan:
    """The three ranges and the node counts; None where a value was refused, so checks on it are skipped."""

    node_net: ipaddress.IPv4Network | None
    cluster_net: ipaddress.IPv4Network | None
    service_net: ipaddress.IPv4Network | None
    controllers: int | None
    workers: int | None

    def pod_cidrs(self) -> list[str] | None:
        """Worker i's pod CIDR is the i-th /24 of clusterCidr (None while either is unknown)."""
        if self.cluster_net is None or self.workers is None:
            return None
        subnets = self.cluster_net.subnets(new_prefix=POD_CIDR_PREFIX)
        return [str(net) for net in itertools.islice(subnets, self.workers)]

    def internal_ip(self, role: str, index: int) -> str:
        """A node's internal IP: controller-i at host .1i of nodeCidr, worker-i at host .2i."""
        assert self.node_net is not None, "a node's address needs a valid nodeCidr"
        offset = CONTROLLER_HOST_OFFSET if role == "controller" else WORKER_HOST_OFFSET
        return str(self.node_net[offset + index])


def read_plan(cfg: Mapping[str, Any], problems: Problems) -> AddressPlan:
    """The ranges, then the counts they have room for; every problem goes to `problems`."""
    nets = _networks(cfg, problems)
    node_net, cluster_net = nets["nodeCidr"], nets["clusterCidr"]
    controllers = problems.check(
        values.count,
        cfg,
        "controllerCount",
        3,
        MAX_CONTROLLERS,
        f"controllers sit at hosts .{CONTROLLER_HOST_OFFSET}-.{WORKER_HOST_OFFSET - 1} of nodeCidr",
    )
    max_workers = _worker_room(problems, node_net, cluster_net)
    workers = problems.check(
        values.count,
        cfg,
        "workerCount",
        3,
        max_workers,
        f"nodeCidr {node_net} and clusterCidr {cluster_net} hold at most {max_workers} workers",
    )
    return AddressPlan(node_net, cluster_net, nets["serviceCidr"], controllers, workers)


def _networks(cfg: Mapping[str, Any], problems: Problems) -> dict[str, ipaddress.IPv4Network | None]:
    """The three ranges by key: each a private CIDR, no two overlapping, each large enough for its use."""
    nets = {key: problems.check(values.network, cfg, key, default) for key, default in DEFAULT_CIDRS.items()}
    problems.found.extend(_overlaps({k: v for k, v in nets.items() if v is not None}))
    cluster_net, service_net = nets["clusterCidr"], nets["serviceCidr"]
    if cluster_net is not None and cluster_net.prefixlen > POD_CIDR_PREFIX:
        nets["clusterCidr"] = None  # no worker count fits it
        problems.refuse(
            "clusterCidr",
            cfg.get("clusterCidr"),
            f"a prefix of /{POD_CIDR_PREFIX} or shorter: each worker takes a /{POD_CIDR_PREFIX}",
        )
    if service_net is not None and service_net.num_addresses <= CLUSTER_DNS_HOST_OFFSET + 1:
        problems.refuse(
            "serviceCidr",
            str(service_net),
            f"a range that holds the cluster DNS address (host .{CLUSTER_DNS_HOST_OFFSET}): /28 or larger",
        )
    return nets


def _overlaps(nets: Mapping[str, ipaddress.IPv4Network]) -> list[str]:
    """One problem per overlapping pair, under the key the user changed (else the later one), naming both."""
    found = []
    items = list(nets.items())
    for i, (key_a, net_a) in enumerate(items):
        for key_b, net_b in items[i + 1 :]:
            if not net_a.overlaps(net_b):
                continue
            changed_a, changed_b = (str(net) != DEFAULT_CIDRS[key] for key, net in ((key_a, net_a), (key_b, net_b)))
            (key, net), (other, other_net) = (
                ((key_a, net_a), (key_b, net_b)) if changed_a and not changed_b else ((key_b, net_b), (key_a, net_a))
            )
            found.append(
                str(ConfigError(key, str(net), f"a range that does not overlap {NAMESPACE}:{other} ({other_net})"))
            )
    return found


def _worker_room(
    problems: Problems, node_net: ipaddress.IPv4Network | None, cluster_net: ipaddress.IPv4Network | None
) -> int | None:
    """How many workers nodeCidr (from host .20, before GCE's tail) and clusterCidr (a /24 each) hold.

    None where that is unknown: a range was refused, or nodeCidr has no room for any worker (told here).
    """
    if node_net is not None and node_net.num_addresses - GCE_RESERVED_TAIL - WORKER_HOST_OFFSET < 1:
        problems.refuse(
            "nodeCidr",
            str(node_net),
            f"a range with room for workers from host .{WORKER_HOST_OFFSET} and GCE's "
            f"{GCE_RESERVED_TAIL} reserved last addresses: /{MIN_NODE_CIDR_PREFIX} or larger",
        )
        return None
    if node_net is None or cluster_net is None:
        return None
    return min(
        node_net.num_addresses - GCE_RESERVED_TAIL - WORKER_HOST_OFFSET,
        2 ** (POD_CIDR_PREFIX - cluster_net.prefixlen),
    )
