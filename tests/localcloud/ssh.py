"""SSH to local cloud nodes from inside the namespace, with a throwaway ed25519 key."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.localcloud.net import Namespace

# For throwaway nodes: no prompts, no host key pinning (every instance makes fresh keys), no noise.
NONINTERACTIVE = (
    "-o",
    "BatchMode=yes",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
)
OPTIONS = (*NONINTERACTIVE, "-o", "ConnectTimeout=5")


@dataclass(frozen=True)
class KeyPair:
    """A private key file and its public line."""

    private: Path
    public: str

    @classmethod
    def generate(cls, directory: Path, comment: str) -> KeyPair:
        private = directory / "id_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(private)],
            check=True,
            timeout=30,
        )
        return cls(private, private.with_suffix(".pub").read_text().strip())


@dataclass(frozen=True)
class Client:
    """Runs commands on one node as one user, from inside the namespace."""

    namespace: Namespace
    key: KeyPair
    user: str
    host: str

    def run(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv = self.namespace.command("ssh", *OPTIONS, "-i", str(self.key.private), f"{self.user}@{self.host}", command)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def wait(self, deadline: float) -> float:
        """Retry a trivial command until it succeeds; the monotonic time it first did, or TimeoutError."""
        last = ""
        while time.monotonic() < deadline:
            try:
                result = self.run("true", timeout=15)
            except subprocess.TimeoutExpired:
                last = "ssh timed out"
                continue
            if result.returncode == 0:
                return time.monotonic()
            last = result.stderr.strip()
            time.sleep(1)
        raise TimeoutError(f"ssh {self.user}@{self.host} never succeeded: {last}")
