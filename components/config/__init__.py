"""ClusterConfig: the stack's configuration, read once, validated, and every derived value."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from components.config import rules, sources, stack, values
from components.config.addresses import CLUSTER_DNS_HOST_OFFSET as CLUSTER_DNS_HOST_OFFSET
from components.config.addresses import CONTROLLER_HOST_OFFSET as CONTROLLER_HOST_OFFSET
from components.config.addresses import DEFAULT_CIDRS as DEFAULT_CIDRS
from components.config.addresses import GCE_RESERVED_TAIL as GCE_RESERVED_TAIL
from components.config.addresses import MAX_CONTROLLERS as MAX_CONTROLLERS
from components.config.addresses import MIN_NODE_CIDR_PREFIX as MIN_NODE_CIDR_PREFIX
from components.config.addresses import POD_CIDR_PREFIX as POD_CIDR_PREFIX
from components.config.addresses import WORKER_HOST_OFFSET as WORKER_HOST_OFFSET
from components.config.addresses import AddressPlan, read_plan
from components.config.model import AUDIT_LEVELS as AUDIT_LEVELS
from components.config.model import AUDIT_OFF as AUDIT_OFF
from components.config.model import ClusterConfig as ClusterConfig
from components.config.model import NodeSpec as NodeSpec
from components.config.model import Versions as Versions
from components.config.names import DEFAULT_CLUSTER_NAME as DEFAULT_CLUSTER_NAME
from components.config.names import GCE_NAME_MAX as GCE_NAME_MAX
from components.config.names import KTHW_SHORT_NAME as KTHW_SHORT_NAME
from components.config.names import GceNames as GceNames
from components.config.names import cluster_name
from components.config.problems import ConfigError, ConfigErrors, Problems
from components.config.rules import PROJECT_PLACEHOLDER as PROJECT_PLACEHOLDER
from components.config.stack import GCP_KEYS as GCP_KEYS
from components.config.stack import NAMESPACE as NAMESPACE
from components.config.stack import PROJECT_FILE as PROJECT_FILE
from components.config.stack import declared_keys as declared_keys
from components.config.stack import stack_values as stack_values
from components.config.stack import unknown_keys


def from_stack() -> ClusterConfig:
    """Read the current stack's config (kthw: and gcp: namespaces) and validate it."""
    return load(*stack.read())


def load(cfg: Mapping[str, Any], gcp: Mapping[str, Any]) -> ClusterConfig:
    """Build and validate a ClusterConfig from plain mappings (the kthw: and gcp: namespaces).

    Values may arrive as strings (as `pulumi config set` stores them) or as typed values
    (as Pulumi.yaml defaults and structured stack files give them); "" means unset.
    Raises ConfigErrors naming every problem; a check that needs a value already refused is skipped.

    Every key is read once, below, in the order its problems are told: a new key is a line here
    (with its rule in rules.py or sources.py if a kind of value in values.py is not enough), a field
    of ClusterConfig, and its declaration in Pulumi.yaml.
    """
    problems = Problems()
    problems.found.extend(unknown_keys(cfg))
    region, zone = rules.placement(gcp, problems)
    plan = read_plan(cfg, problems)
    machine_types = rules.machine_types(cfg, problems)
    fields: dict[str, Any] = {
        "region": region,
        "zone": zone,
        "image": problems.check(rules.image, cfg),
        "ssh_user": problems.check(rules.ssh_user, cfg),
        "binary_mirror": problems.check(sources.binary_mirror, cfg),
        "cert_validity_hours": problems.check(rules.cert_validity_hours, cfg),
        "cert_rotation": problems.check(rules.cert_rotation, cfg),
        "etcd_backup_bucket": problems.check(rules.etcd_backup_bucket, cfg),
        "project": problems.check(rules.project, gcp),
        "admin_source_ranges": rules.admin_source_ranges(cfg, problems),
        "versions": sources.component_versions(cfg, problems),
        "audit_level": problems.check(values.choice, cfg, "auditLevel", "Metadata", (AUDIT_OFF, *AUDIT_LEVELS)),
        "metrics_server": problems.check(values.boolean, cfg, "metricsServer", True),
        "names": problems.check(cluster_name, cfg, plan.controllers, plan.pod_cidrs()),
        "binary_digests": sources.binary_digests(cfg, problems),
        "registry_mirrors": sources.registry_mirrors(cfg, problems),
    }
    if problems.found:
        raise ConfigErrors(problems.found)
    return ClusterConfig(**fields, **_nodes(plan, fields["names"], machine_types))


def _nodes(plan: AddressPlan, names: GceNames, machine_types: Mapping[str, str | None]) -> dict[str, Any]:
    """The ranges and the nodes of a valid config: each node's name, address, machine type and pod CIDR."""
    pod_cidrs = plan.pod_cidrs()
    assert plan.controllers is not None and pod_cidrs is not None, "nodes of a config with problems"

    def node(role: str, index: int, pod_cidr: str | None = None) -> NodeSpec:
        machine_type = machine_types[role]
        assert machine_type is not None
        return NodeSpec(names.node(role, index), role, index, plan.internal_ip(role, index), machine_type, pod_cidr)

    return {
        "node_cidr": str(plan.node_net),
        "cluster_cidr": str(plan.cluster_net),
        "service_cidr": str(plan.service_net),
        "controllers": tuple(node("controller", i) for i in range(plan.controllers)),
        "workers": tuple(node("worker", i, cidr) for i, cidr in enumerate(pod_cidrs)),
    }


def check_controller_shrink(previous: int, new: int) -> None:
    """Refuse removing more etcd members in one update than the cluster can lose.

    Members leave one at a time (member remove, then the VM goes), but in one update: if the ones
    that stay are fewer than a majority of today's members, a single failure during the change
    loses quorum. Shrinking by one is always allowed (2 -> 1 included); 5 -> 3 is, 3 -> 1 is not.
    """
    if new >= previous or new == previous - 1 or new >= previous // 2 + 1:
        return
    raise ConfigError(
        "controllerCount",
        new,
        f"at least {previous // 2 + 1} in one update: {previous} controllers run now and etcd must keep a majority"
        f" of them; shrink in steps (e.g. {previous} -> {previous // 2 + 1})",
    )


def even_controller_warning(config: ClusterConfig) -> str | None:
    """The warning an even controller count deserves: etcd quorum gains nothing from it."""
    n = len(config.controllers)
    if n % 2 == 0:
        return (
            f"kthw:controllerCount = {n} is even: etcd needs {n // 2 + 1} members for quorum, "
            f"so it tolerates no more failures than {n - 1} controllers would"
        )
    return None
