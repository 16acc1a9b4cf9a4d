"""The local platform: qemu VMs the program starts itself on the host running `pulumi up`, without root."""

from platforms.local.settings import LocalNode, LocalSettings, default_cache_dir, default_state_dir
from platforms.local.vms import LocalMachine, LocalVms, LocalVmsArgs

__all__ = [
    "LocalMachine",
    "LocalNode",
    "LocalSettings",
    "LocalVms",
    "LocalVmsArgs",
    "default_cache_dir",
    "default_state_dir",
]
