"""A VM's cloud-init NoCloud seed: user-data, meta-data and network-config, rendered from its node (pure)."""

from __future__ import annotations

import ipaddress
from typing import Any

import yaml

from platforms.local.settings import LocalNode, cluster_mac, nat_mac

# The names the guest gives its NICs (matched by MAC): `ip addr show cluster` on any node.
CLUSTER_NIC = "cluster"
NAT_NIC = "nat"
# The label cloud-init's NoCloud looks for on a filesystem.
SEED_LABEL = "cidata"


def _dump(document: dict[str, Any]) -> str:
    # One line per value however long (an SSH key): what a reader greps for is where they expect it.
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=2**16)


def user_data(node: LocalNode, ssh_user: str, public_key: str) -> str:
    """The node's hostname and the one login: `ssh_user` with the program's key and passwordless sudo."""
    document = {
        "hostname": node.name,
        "preserve_hostname": False,
        # 127.0.1.1 <name> in /etc/hosts: sudo and kubelet resolve their own hostname without DNS.
        "manage_etc_hosts": True,
        "users": [
            {
                "name": ssh_user,
                "gecos": "kthw",
                "shell": "/bin/bash",
                "lock_passwd": True,
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "ssh_authorized_keys": [public_key.strip()],
            }
        ],
        "disable_root": True,
        # No ssh_pwauth: setting it makes cloud-init restart sshd mid-boot, cutting the SSH gate's
        # session; with every password locked there is nothing a password could open anyway.
        # An RSA host key costs seconds to tens of seconds of emulated CPU at first boot, and no
        # client here needs one.
        "ssh_genkeytypes": ["ed25519", "ecdsa"],
    }
    return "#cloud-config\n" + _dump(document)


def meta_data(node: LocalNode) -> str:
    """The instance id (what makes cloud-init's first boot first) and the local hostname."""
    return _dump({"instance-id": f"kthw-{node.name}", "local-hostname": node.name})


def network_config(node: LocalNode, node_cidr: str) -> str:
    """Network config v2: the internal IP on the cluster NIC, DHCP (default route, DNS) on the NAT NIC."""
    prefix = ipaddress.ip_network(node_cidr).prefixlen
    document = {
        "version": 2,
        "ethernets": {
            CLUSTER_NIC: {
                "match": {"macaddress": cluster_mac(node.internal_ip)},
                "set-name": CLUSTER_NIC,
                "addresses": [f"{node.internal_ip}/{prefix}"],
                "dhcp4": False,
                "dhcp6": False,
            },
            NAT_NIC: {
                "match": {"macaddress": nat_mac(node.internal_ip)},
                "set-name": NAT_NIC,
                "dhcp4": True,
                "dhcp6": False,
            },
        },
    }
    return _dump(document)


def seed_files(node: LocalNode, node_cidr: str, ssh_user: str, public_key: str) -> dict[str, str]:
    """File name -> content of the NoCloud seed directory."""
    return {
        "user-data": user_data(node, ssh_user, public_key),
        "meta-data": meta_data(node),
        "network-config": network_config(node, node_cidr),
    }
