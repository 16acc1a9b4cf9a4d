"""The grounds a cluster can stand on, one package each; `kthw:platform` picks one per stack."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from components.config import ClusterConfig, NodeSpec
from components.config.platforms import LOCAL, MACHINES
from components.machine import PlatformFactory


@dataclass(frozen=True)
class PlatformChoice:
    """A platform's builder, and the digest of what restarts or replaces one of its nodes."""

    build: PlatformFactory
    fingerprint: Callable[[ClusterConfig, NodeSpec], str]

    def fingerprints(self, config: ClusterConfig) -> dict[str, str]:
        """controller name -> fingerprint, as the stack exports it for the next update to compare with."""
        return {c.name: self.fingerprint(config, c) for c in config.controllers}


def choose(config: ClusterConfig) -> PlatformChoice:
    """The platform `config` names. Imported lazily: a stack pays only for its own platform's SDKs."""
    if config.platform == LOCAL:
        from platforms.local.platform import LocalPlatform, fingerprint

        return PlatformChoice(build=LocalPlatform, fingerprint=fingerprint)
    if config.platform == MACHINES:
        from platforms import machines

        return PlatformChoice(build=machines.MachinesPlatform, fingerprint=machines.fingerprint)
    from platforms import gcp

    return PlatformChoice(build=gcp.GcpPlatform, fingerprint=gcp.fingerprint)
