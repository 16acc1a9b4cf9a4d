"""A throwaway OpenSSH server on loopback: its own host key, its own authorized keys, high ports.

It listens on two loopback addresses (127.0.0.1 and 127.0.0.2) and two ports, so a connection's
host and port can change and each script can tell where it ran (SSH_CONNECTION). ExposeAuthInfo
tells a script which key logged in; AcceptEnv lets `environment` through for KTHW_* and the real
provider's PULUMI_COMMAND_*; SetEnv puts the test's own tools first on PATH (a `sudo` that just
runs its command, for the program's scripts). Sessions log in as the user running the tests.
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.processes import kill_tree
from tests.tools import require_tool

HOSTS = ("127.0.0.1", "127.0.0.2")


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's choice)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class Key:
    """A client key: the private key's text and the base64 blob of its public key."""

    private: str
    blob: str

    @property
    def tag(self) -> str:
        """How a script names the key it logged in with: the blob's tail, from $SSH_USER_AUTH."""
        return self.blob[-12:]


def keygen(path: Path, comment: str) -> Key:
    subprocess.run(
        [require_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        timeout=30,
    )
    return Key(path.read_text(), path.with_suffix(".pub").read_text().split()[1])


@dataclass
class Sshd:
    """One sshd in the foreground, stopped (with every session it forked) by `stop`."""

    directory: Path
    ports: tuple[int, int]
    keys: dict[str, Key]
    bin_dir: Path  # first on the sessions' PATH
    user: str = field(default_factory=getpass.getuser)
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, directory: Path, key_names: tuple[str, ...] = ("A", "B"), env: dict[str, str] | None = None) -> Sshd:
        """Start it; `env` is set in every session (sshd's SetEnv), after PATH."""
        sshd = require_tool("sshd")
        directory.mkdir(parents=True, exist_ok=True)
        keys = {name: keygen(directory / f"client-{name}", f"kthw-contract-{name}") for name in key_names}
        (directory / "authorized_keys").write_text(
            "".join((directory / f"client-{name}.pub").read_text() for name in key_names)
        )
        subprocess.run(
            [require_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-f", str(directory / "host_key")],
            check=True,
            timeout=30,
        )
        bin_dir = directory / "bin"
        bin_dir.mkdir()
        # The program's scripts call sudo; the sessions already run as the test's user.
        (bin_dir / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
        (bin_dir / "sudo").chmod(0o755)
        ports = (free_port(), free_port())
        session_env = {
            "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
            # bash sources the user's ~/.bashrc when sshd starts it, unless it is not the first
            # shell: a session here is a fresh VM's, with no rc file of this machine's user in it.
            "SHLVL": "1",
            **(env or {}),
        }
        config = [
            *(f"Port {p}" for p in ports),
            *(f"ListenAddress {h}" for h in HOSTS),
            f"HostKey {directory / 'host_key'}",
            f"AuthorizedKeysFile {directory / 'authorized_keys'}",
            "PidFile none",
            "StrictModes no",
            "UsePAM no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "ExposeAuthInfo yes",
            "AcceptEnv KTHW_* PULUMI_COMMAND_*",
            "SetEnv " + " ".join(f"{k}={v}" for k, v in session_env.items()),
            "MaxStartups 100:30:200",
            "LogLevel ERROR",
        ]
        (directory / "sshd_config").write_text("\n".join(config) + "\n")
        if os.geteuid() == 0:
            # sshd as root insists on its privilege separation directory.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        process = subprocess.Popen(
            [sshd, "-D", "-e", "-f", str(directory / "sshd_config")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(directory / "sshd.log").open("wb"),
            start_new_session=True,
        )
        server = cls(directory, ports, keys, bin_dir, process=process)
        server._wait_listening()
        return server

    def _wait_listening(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        pending = {(h, p) for h in HOSTS for p in self.ports}
        while pending:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.directory / 'sshd.log').read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"sshd is not listening on {sorted(pending)}")
            for address in sorted(pending):
                with socket.socket() as probe:
                    probe.settimeout(1)
                    if probe.connect_ex(address) == 0:
                        pending.discard(address)
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the listener and every session it forked."""
        if self.process is None:
            return
        kill_tree(self.process.pid)
        self.process.wait(timeout=10)
        self.process = None
