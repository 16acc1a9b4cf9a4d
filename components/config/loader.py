"""load: every key read once, by its rule, into one problem collector, then one ClusterConfig."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from components.config import local, platforms, rules, sources, stack, values
from components.config.addresses import AddressPlan, read_plan
from components.config.model import AUDIT_LEVELS, AUDIT_OFF, ClusterConfig, NodeSpec
from components.config.names import GceNames, cluster_name
from components.config.problems import ConfigErrors, Problems


def from_stack() -> ClusterConfig:
    """Read the current stack's config (kthw: and gcp: namespaces) and validate it."""
    return load(*stack.read())


def load(cfg: Mapping[str, Any], gcp: Mapping[str, Any]) -> ClusterConfig:
    """Build and validate a ClusterConfig from plain mappings (the kthw: and gcp: namespaces).

    Values may arrive as strings (as `pulumi config set` stores them) or as typed values
    (as Pulumi.yaml defaults and structured stack files give them); "" means unset.
    Raises ConfigErrors naming every problem; a check that needs a value already refused is skipped.

    Every key is read once, below, in the order its problems are told. A new key is a line here
    (its rule in rules.py or sources.py where a kind of value from values.py is not enough), a
    field of ClusterConfig (model.py), and its declaration in Pulumi.yaml.
    """
    problems = Problems()
    problems.found.extend(stack.unknown_keys(cfg))
    platform = problems.check(platforms.platform, cfg)
    on_gcp = platform in (None, platforms.GCP)
    region, zone = rules.placement(gcp, problems) if on_gcp else ("", "")
    plan = read_plan(cfg, problems)
    machine_types = rules.machine_types(cfg, problems) if on_gcp else {"controller": "", "worker": ""}
    ssh_user = problems.check(rules.ssh_user, cfg)
    machines = platforms.machine_list(cfg, problems, plan, ssh_user) if platform == platforms.MACHINES else None
    if machines is not None:
        problems.check(platforms.ssh_private_key, cfg)
    problems.found.extend(platforms.misplaced_keys(cfg, platform))
    local_options = local.read(cfg, problems)
    fields: dict[str, Any] = {
        "platform": platform,
        "region": region,
        "zone": zone,
        "image": problems.check(rules.image, cfg) if on_gcp else "",
        "ssh_user": ssh_user,
        "binary_mirror": problems.check(sources.binary_mirror, cfg),
        "cert_validity_hours": problems.check(rules.cert_validity_hours, cfg),
        "cert_rotation": problems.check(rules.cert_rotation, cfg),
        "etcd_backup_bucket": problems.check(rules.etcd_backup_bucket, cfg),
        "etcd_backup_bucket_import": problems.check(rules.etcd_backup_bucket_import, cfg),
        "project": problems.check(rules.project, gcp) if on_gcp else None,
        "api_address": problems.check(platforms.api_address, cfg) if machines is not None else None,
        # Read on every platform, so a bad value is told wherever it is set; kept on the local one.
        "local": local_options if platform == platforms.LOCAL else None,
        "admin_source_ranges": rules.admin_source_ranges(cfg, problems),
        "versions": sources.component_versions(cfg, problems),
        "audit_level": problems.check(values.choice, cfg, "auditLevel", "Metadata", (AUDIT_OFF, *AUDIT_LEVELS)),
        "metrics_server": problems.check(values.boolean, cfg, "metricsServer", True),
        "names": problems.check(cluster_name, cfg, plan.controllers, plan.pod_cidrs()),
        "binary_digests": sources.binary_digests(cfg, problems),
        "registry_mirrors": sources.registry_mirrors(cfg, problems),
        "max_unavailable_workers": problems.check(
            values.count, cfg, "maxUnavailableWorkers", 1, None, "workers drained at once"
        ),
    }
    # The metrics-server version deployed needs a digest, pinned or vouched for (None: not deployed or refused).
    deployed = fields["versions"].metrics_server if fields["versions"] and fields["metrics_server"] else None
    fields["image_digests"] = sources.image_digests(cfg, problems, deployed)
    if problems.found:
        raise ConfigErrors(problems.found)
    if machines is not None:
        return ClusterConfig(**fields, **_ranges(plan), **platforms.machine_layout(machines))
    return ClusterConfig(**fields, **_ranges(plan), **_layout(plan, fields["names"], machine_types))


def _ranges(plan: AddressPlan) -> dict[str, Any]:
    """The three ranges of a valid config, as ClusterConfig keeps them."""
    return {
        "node_cidr": str(plan.node_net),
        "cluster_cidr": str(plan.cluster_net),
        "service_cidr": str(plan.service_net),
    }


def _layout(plan: AddressPlan, names: GceNames, machine_types: Mapping[str, str | None]) -> dict[str, Any]:
    """The nodes of a valid config by count: each node's name, address, machine type and pod CIDR."""
    pod_cidrs = plan.pod_cidrs()
    assert plan.controllers is not None and pod_cidrs is not None, "the layout of a config with problems"

    def node(role: str, index: int, pod_cidr: str | None = None) -> NodeSpec:
        machine_type = machine_types[role]
        assert machine_type is not None, "the layout of a config with problems"
        return NodeSpec(names.node(role, index), role, index, plan.internal_ip(role, index), machine_type, pod_cidr)

    return {
        "ssh_targets": {},
        "controllers": tuple(node("controller", i) for i in range(plan.controllers)),
        "workers": tuple(node("worker", i, cidr) for i, cidr in enumerate(pod_cidrs)),
    }
