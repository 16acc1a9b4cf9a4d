"""etcd's quorum and kthw:controllerCount: the warning an even count earns, and how far one update may shrink."""

from __future__ import annotations

from components.config.model import ClusterConfig
from components.config.problems import ConfigError


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
