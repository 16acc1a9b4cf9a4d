"""The command stand-in's SSH executor for the local cloud: tests.engine.ssh's, inside the cloud's namespace.

Nodes exist only in the local cloud's network namespace, so ssh runs there, from its "internet"
address, as an admin's machine reaches GCE's external IPs. Everything else (the dial loop, the
run, the record of each run for the tier's timeline) is tests.engine.ssh.SshExecutor's.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.engine import ssh
from tests.localcloud.cloud import NETNS_ENV


class SshExecutor(ssh.SshExecutor):
    """Runs scripts over SSH in the namespace named by $KTHW_LOCALCLOUD_NETNS; records each run."""

    # The program's SSH gate dials with no limit; a VM that never answers must still end the test.
    dial_limit_seconds = 15 * 60

    def __init__(self, record: Path) -> None:
        super().__init__(record)
        self.netns = os.environ[NETNS_ENV]

    def prefix(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.netns}"]
