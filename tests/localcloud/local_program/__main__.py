"""The local platform alone: one controller and one worker VM on the stack's switch, as the CLI runs it."""

import pulumi

from platforms.local import (
    LocalNode,
    LocalSettings,
    LocalVms,
    LocalVmsArgs,
    default_cache_dir,
    default_state_dir,
)

config = pulumi.Config()
settings = LocalSettings(
    state_dir=config.get("localStateDir") or default_state_dir(pulumi.get_project(), pulumi.get_stack()),
    cache_dir=config.get("localCacheDir") or default_cache_dir(),
    image_url=config.require("localImageUrl"),
    image_sha512=config.require("localImageSha512"),
    port_base=config.require_int("localPortBase"),
    memory_mb=config.require_int("localMemoryMb"),
    cpus=config.require_int("localCpus"),
    disk_gb=config.require_int("localDiskGb"),
    accel=config.require("localAccel"),
)
nodes = [
    LocalNode("controller-0", "controller", "10.240.0.10"),
    LocalNode("worker-0", "worker", "10.240.0.20"),
]
vms = LocalVms("local", LocalVmsArgs(nodes, "10.240.0.0/24", config.require("sshPublicKey"), settings))
pulumi.export(
    "machines",
    {
        name: {"host": m.host, "ssh_port": m.ssh_port, "api_port": m.api_port, "accel": m.vm.accel_used}
        for name, m in vms.machines.items()
    },
)
