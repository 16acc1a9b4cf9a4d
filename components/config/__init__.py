"""ClusterConfig: the stack's configuration, read once, validated, and every derived value.

The package's face: every public name of its modules, so `from components.config import X` serves.
Reading: stack.py (the stack's values, the keys Pulumi.yaml declares), loader.py (load: each key once).
Rules: values.py (by kind of value), rules.py and sources.py (by key), problems.py (telling them all).
Types and what derives from them: model.py, names.py (GCE names), addresses.py (CIDRs, node IPs).
Between updates: quorum.py (controllerCount against etcd's quorum).
"""

from __future__ import annotations

from components.config.addresses import (
    CLUSTER_DNS_HOST_OFFSET,
    CONTROLLER_HOST_OFFSET,
    DEFAULT_CIDRS,
    GCE_RESERVED_TAIL,
    MAX_CONTROLLERS,
    MIN_NODE_CIDR_PREFIX,
    POD_CIDR_PREFIX,
    WORKER_HOST_OFFSET,
)
from components.config.loader import from_stack, load
from components.config.machine_types import (
    BOOT_DISK_TYPES,
    CUSTOM_MACHINE_TYPE,
    REFUSED_MACHINE_FAMILIES,
    boot_disk_type,
    machine_family,
)
from components.config.model import AUDIT_LEVELS, AUDIT_OFF, ClusterConfig, NodeSpec, SshTarget, Versions
from components.config.names import (
    DEFAULT_CLUSTER_NAME,
    GCE_NAME_MAX,
    KTHW_SHORT_NAME,
    TARGET_POOL_DIGEST_LENGTH,
    GceNames,
)
from components.config.problems import ConfigError, ConfigErrors
from components.config.quorum import check_controller_shrink, even_controller_warning
from components.config.rules import PROJECT_PLACEHOLDER
from components.config.stack import GCP_KEYS, NAMESPACE, PROJECT_FILE, declared_keys, stack_values

__all__ = [
    "AUDIT_LEVELS",
    "AUDIT_OFF",
    "BOOT_DISK_TYPES",
    "CLUSTER_DNS_HOST_OFFSET",
    "CONTROLLER_HOST_OFFSET",
    "CUSTOM_MACHINE_TYPE",
    "DEFAULT_CIDRS",
    "DEFAULT_CLUSTER_NAME",
    "GCE_NAME_MAX",
    "GCE_RESERVED_TAIL",
    "GCP_KEYS",
    "KTHW_SHORT_NAME",
    "MAX_CONTROLLERS",
    "MIN_NODE_CIDR_PREFIX",
    "NAMESPACE",
    "POD_CIDR_PREFIX",
    "PROJECT_FILE",
    "PROJECT_PLACEHOLDER",
    "REFUSED_MACHINE_FAMILIES",
    "TARGET_POOL_DIGEST_LENGTH",
    "WORKER_HOST_OFFSET",
    "ClusterConfig",
    "ConfigError",
    "ConfigErrors",
    "GceNames",
    "NodeSpec",
    "SshTarget",
    "Versions",
    "boot_disk_type",
    "check_controller_shrink",
    "declared_keys",
    "even_controller_warning",
    "from_stack",
    "load",
    "machine_family",
    "stack_values",
]
